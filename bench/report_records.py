"""What ``bench report`` writes beside the Markdown: ``devices.csv`` (every measured line) and
``verdict.json`` (each device's verdict with its figures). TensorFlow-free."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING


from bench.verdict import DECISION_RULE, Point, is_emulated
from bench.report_tables import family


if TYPE_CHECKING:
    from bench.report import ReportConfig


DEVICES_CSV_COLUMNS = (
    "device_name", "artifact_id", "backbone", "family", "variant", "format", "runtime", "runtime_version",
    "threads", "mode", "emulated", "latency_ms_p50", "latency_ms_p50_ci_low", "latency_ms_p50_ci_high",
    "latency_ms_p5", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "peak_rss_bytes", "rss_increase_bytes", "size_bytes", "data", "split",
    "n_images", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "agreement", "cpu_model", "arch",
    "error", "macs", "gmacs_per_s", "peak_gmacs_per_s", "fraction_of_peak", "peak_source",
)


def shown_path(path) -> str:
    """A recorded path as the report shows it: relative to the folder ``bench report`` runs in
    when it lies below it (a report copied elsewhere then names no folder of this machine),
    else as recorded."""
    text = str(path)
    try:
        return str(Path(text).relative_to(Path.cwd())) if Path(text).is_absolute() else text
    except ValueError:
        return text


def devices_csv(by_device: dict[str, list[dict]], errors: list[dict]) -> str:
    """One row per results line (errors included), the columns of ``DEVICES_CSV_COLUMNS``."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DEVICES_CSV_COLUMNS)
    for line in [ln for lines in by_device.values() for ln in lines] + errors:
        row = {**line, "family": family(str(line.get("backbone"))), "emulated": is_emulated(line),
               "data": shown_path(line["data"]) if line.get("data") else None}
        writer.writerow(["" if row.get(k) is None else row.get(k) for k in DEVICES_CSV_COLUMNS])
    return buffer.getvalue()


def _point_record(p: Point | None) -> dict | None:
    if p is None:
        return None
    return {"artifact_id": p.artifact_id, "backbone": p.backbone, "variant": p.variant, "format": p.format,
            "mobile": p.mobile, "accuracy": p.accuracy, "accuracy_ci_low": p.ci_low, "accuracy_ci_high": p.ci_high,
            "latency_ms_p50": p.p50_ms, "size_bytes": p.size_bytes, "runtime": p.line.get("runtime"),
            "threads": p.line.get("threads"), "n_images": p.line.get("n_images"), "split": p.line.get("split")}


def verdict_record(config: "ReportConfig", verdicts: dict, pairs: list[dict]) -> dict:
    """Everything the verdict used, per device: the decision, its reasons and every number."""
    return {
        "format_version": 1,
        "claim": "mobile networks may not always be ideal for deployment on a low-compute device, as they had "
                 "consistently lower validation accuracies (Sabeesh & Bolla, 2022)",
        "rule": DECISION_RULE, "alpha": config.alpha, "margin": config.margin,
        "budgets_ms": list(config.budgets_ms) if config.budgets_ms else "derived per device from its p50 range",
        "min_images": config.min_images, "results": [str(p) for p in config.results],
        "devices": {d: {"verdict": v.verdict, "reasons": list(v.reasons), "mode": v.mode,
                        "emulated_lines": v.emulated, "best_mobile": _point_record(v.best_mobile),
                        "best_other": _point_record(v.best_other), "mcnemar_mobile_vs_other": v.test,
                        "gap": v.gap and {k: v.gap[k] for k in ("gap", "ci_low", "ci_high", "margin", "n_images",
                                                               "n_seeds", "n_seeds_mobile", "n_seeds_other", "draws")},
                        "p_equivalence": v.gap and v.gap["p_equivalence"],
                        "p_noninferiority": v.gap and v.gap["p_noninferiority"],
                        "p_inferiority": v.gap and v.gap["p_inferiority"], "n_seeds": v.gap and v.gap["n_seeds"],
                        "points": [_point_record(p) for p in v.points],
                        "latency_front": [p.artifact_id for p in v.latency_front],
                        "size_front": [p.artifact_id for p in v.size_front],
                        "budgets": [{"budget_ms": b, "artifact_id": p.artifact_id if p else None} for b, p in v.budgets]}
                    for d, v in verdicts.items()},
        "against_floors": pairs,
    }
