"""``bench report``: one Markdown report from a sweep, its exports and on-device results,
ending in a verdict on the study's claim that is computed from the data.

    bench report --runs RUNS --exports EXPORTS --results A.jsonl [B.jsonl ...] --out REPORT
                 [--budgets 10,50,200,1000] [--alpha 0.05] [--min-images 30]

Without ``--budgets``, each device gets four budgets spaced evenly on a log scale across its
own measured p50 range (fastest to slowest model, two significant figures): fixed budgets
that all exceed every p50 of a fast machine would give four identical rows.

Writes ``REPORT/report.md`` and its figures (``REPORT/*.png``), atomically:

1. the study's tables from ``RUNS/results.jsonl`` (built by ``train.summary``, not rewritten);
2. the export table from ``EXPORTS/manifest.json``;
3. per device (result lines grouped by ``device_name``; several results files combine): one
   row per artifact x runtime x threads x mode with latency, efficiency (GMAC/s and its share of
   the CPU's fp32 peak, each peak stated with its source: ``bench.peak``), memory, size and accuracy;
4. per device: accuracy against p50 latency and against model size, with the Pareto fronts;
5. per device: the verdict on the claim (see ``DECISION_RULE``), with its reasons as sentences
   built from the numbers.

Lines with an ``error`` are listed and left out. Lines run under emulation (qemu) keep their
accuracy, which emulation does not change, but their latency is never used.
The verdict itself is computed in ``bench.verdict`` and the figures drawn by ``bench.plots``.
No TensorFlow is imported; matplotlib is imported only to draw.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from device.options import at_least, fraction, positive_numbers
from bench.plots import plot_front
from bench.calibration import mix_section, section as calibration_section
from bench.jobs import line_problem
from bench.verdict import (DECISION_RULE, DEFAULT_ALPHA, DEFAULT_BUDGETS_MS, DEFAULT_MARGIN, DEFAULT_MIN_IMAGES,
                           RECOMMENDATION_RULE, DeviceVerdict, Point, acc_ci, decide, is_emulated, is_mobile, line_ci,
                           ms_text, num, percent, recommend)
from device import exports_manifest
from device.classifier import RECOMMENDATION
from device.atomic import check_output_folder, read_jsonl_records, skipped_warning, write_bytes, write_text
from device.command import Exit, run_command
from device.metrics import MCNEMAR_CONVENTION, mcnemar
from device import sweep_tables
from device.sweep_tables import markdown_table, short
from device.sweep_results import RESULTS, aggregate, best_level, load_runs, overall_best

MB = 1e6


@dataclass(frozen=True)
class ReportConfig:
    """What ``bench report`` reads and writes; built by the CLI.

    Attributes:
        results: ``bench run`` JSON-lines files (one or several devices each).
        out: the report folder.
        runs: the sweep folder (``results.jsonl``), or None to leave the study tables out.
        exports: the exports folder (``manifest.json``), or None to leave the export table out.
        budgets_ms: p50 latency budgets, in ms; None derives four per device (``derive_budgets``).
        alpha: significance level of the paired test.
        min_images: fewer paired images than this makes the verdict inconclusive.
        floors: ``bench floors`` files: the floors on the images the results were scored on,
            each model paired with them by McNemar's test.
        margin: the equivalence margin of the verdict's accuracy gap (a share: 0.01 is a point).
    """

    results: tuple[Path, ...]
    out: Path
    runs: Path | None = None
    exports: Path | None = None
    budgets_ms: tuple[float, ...] | None = DEFAULT_BUDGETS_MS
    alpha: float = DEFAULT_ALPHA
    min_images: int = DEFAULT_MIN_IMAGES
    floors: tuple[Path, ...] = ()
    margin: float = DEFAULT_MARGIN

    def __post_init__(self):
        if not (isinstance(self.margin, (int, float)) and 0.0 < self.margin < 1.0):
            raise ValueError(f"--margin {100 * self.margin:g}: expected accuracy points between 0 and 100")
        if not self.results:
            raise ValueError("at least one results file is needed (--results)")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.budgets_ms is not None and (not self.budgets_ms or any(not 0 < b < float("inf") for b in self.budgets_ms)):
            raise ValueError(f"budgets must be positive milliseconds, got {list(self.budgets_ms)}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {self.min_images}")
        for option, folder, wanted in (("--runs", self.runs, RESULTS), ("--exports", self.exports, exports_manifest.MANIFEST)):
            if folder is not None and not (Path(folder) / wanted).is_file():
                raise ValueError(f"{option} {folder}: no {wanted} there; expected the "
                                 f"{'sweep' if option == '--runs' else 'exports'} folder (or leave {option} out)")


def load_results(paths, log: Callable[[str], None] | None = None) -> tuple[dict[str, list[dict]], list[dict]]:
    """Read result files and group their lines by device.

    Args:
        paths: ``bench run`` JSON-lines files.
        log: told, in one warning per file, of the lines that are not result lines (a crash's
            fragment, JSON that is not an object, a line without ``artifact_id`` or with a
            negative latency: ``bench.jobs.line_problem``); they are left in the file and not counted.

    Returns:
        ``(by_device, errors)``: lines without an error by ``device_name`` (in file order),
        and the lines with an error (each with ``_source``, the file it came from).

    Raises:
        ValueError: a file is missing; the message names it.
    """
    by_device: dict[str, list[dict]] = {}
    errors: list[dict] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such results file")
        lines, skipped = read_jsonl_records(path, line_problem)
        if skipped and log is not None:
            log(skipped_warning(path, skipped))
        for line in lines:
            line = {**line, "_source": str(path)}
            if line.get("error"):
                errors.append(line)
            else:
                by_device.setdefault(str(line.get("device_name") or "unknown device"), []).append(line)
    if not by_device and not errors:
        raise ValueError(f"{', '.join(str(p) for p in paths)}: no complete result line; expected the JSON lines "
                         f"`bench run` writes")
    return by_device, errors


# --- markdown -----------------------------------------------------------------------------

def _study_section(runs: Path | None) -> list[str]:
    lines = ["## 1. The study's tables (training sweep)", ""]
    if runs is None:
        return lines + ["No sweep folder given (--runs); the study's tables are left out.", ""]
    try:
        ok, failures, _superseded = load_runs(Path(runs))
    except ValueError as exc:
        return lines + [f"No study tables: {exc}", ""]
    levels = aggregate(ok)
    lines += [f"From `{Path(runs) / RESULTS}`: {len(ok)} successful runs of {len(levels)} backbones, "
              f"{len(failures)} failed. Tables built as `train.summary` builds them (`device.sweep_tables`); Wilson 95% intervals.", ""]
    if not levels:
        return lines + ["No successful run.", ""]
    baseline = [s for stats in levels.values() for s in stats if s.level == 0]
    if baseline:
        lines += ["### Level 0 (head only)", ""]
        lines += sweep_tables.markdown_table(["Backbone", "Family", "Val accuracy [95% CI]", "Macro-F1", "Trainable params", "PTR"],
                                [[s.backbone, _family(s.backbone), sweep_tables.accuracy_cell(s),
                                  sweep_tables.spread(s.f1_mean, s.f1_std, ".3f"), sweep_tables.params_text(s.trainable_params),
                                  sweep_tables.ratio_text(s.ptr)] for s in baseline])
    best = {backbone: best_level(stats) for backbone, stats in levels.items()}
    overall = overall_best(best)
    lines += ["### Best level per backbone", ""]
    lines += sweep_tables.best_section(Path(runs), best, overall)
    families = {b: _family(b) for b in best}
    lines += ["Families (registry `mobile` flag): "
              + "; ".join(f"{b}: {f}" for b, f in families.items()) + ".", ""]
    return lines


def _family(backbone: str) -> str:
    return {True: "mobile", False: "non-mobile", None: "unknown"}[is_mobile(backbone)]


def _export_section(exports: Path | None) -> list[str]:
    lines = ["## 2. Exported models", ""]
    if exports is None:
        return lines + ["No exports folder given (--exports); the export table is left out.", ""]
    from bench.jobs import BenchError, load_manifest

    try:
        artifacts = load_manifest(exports)
    except BenchError as exc:
        return lines + [f"No export table: {exc}", ""]
    fp32 = {(a.get("backbone"), a.get("level"), a.get("seed"), a.get("format")): a for a in artifacts
            if a.get("variant") == "fp32" and not a.get("error")}
    rows = []
    for a in artifacts:
        size = num(a.get("size_bytes"))
        base = fp32.get((a.get("backbone"), a.get("level"), a.get("seed"), a.get("format")))
        base_size = num(base.get("size_bytes")) if base else None
        ratio = "1.00" if a.get("variant") == "fp32" and size else (
            f"{size / base_size:.2f}" if size and base_size else "n/a")
        rows.append([str(a.get("artifact_id")), str(a.get("backbone")), _family(str(a.get("backbone"))),
                     str(a.get("variant")), str(a.get("format")), _size_mb(size), ratio, _mmacs(a.get("macs")),
                     percent(num(a.get("val_accuracy"))), _points(num(a.get("accuracy_delta"))),
                     percent(num(a.get("agreement"))), _sci(num(a.get("max_abs_diff"))),
                     short(str(a.get("error"))) if a.get("error") else
                     f"WARNING: {short(str(a['warning']))}" if a.get("warning") else ""])
    lines += [f"From `{Path(exports) / 'manifest.json'}`: {len(artifacts)} artifact(s), "
              f"{sum(bool(a.get('error')) for a in artifacts)} with an export error. Size ratio: the artifact's "
              "size over the fp32 artifact of the same model and format. MMAC: millions of multiply-accumulates "
              "per image, counted from the artifact's graph. Delta: accuracy minus the Keras model's; "
              "agreement: share of images where its prediction equals the Keras model's; max diff: largest "
              "absolute difference of a class probability.", ""]
    lines += markdown_table(["Artifact", "Backbone", "Family", "Variant", "Format", "Size MB", "Size / fp32", "MMAC",
                     "Val accuracy", "Delta vs Keras", "Agreement", "Max diff", "Error or warning"], rows)
    return lines


def _mmacs(value) -> str:
    value = num(value)
    return "n/a" if value is None else f"{value / 1e6:.4g}"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} pts"


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _mb(value) -> str:
    value = num(value)
    return "n/a" if value is None else f"{value / MB:.1f}"


def _size_mb(value) -> str:
    value = num(value)
    if not value:
        return "n/a"
    # Two decimals for real models; three significant digits keep a tiny test model above 0.00.
    return f"{value / MB:.2f}" if value >= MB else f"{value / MB:.3g}"


def _device_header(device: str, lines: list[dict]) -> list[str]:
    first = lines[0]
    ram = num(first.get("ram_bytes"))
    runtimes = sorted({f"{ln.get('runtime_package') or ln.get('runtime')} {ln.get('runtime_version') or ''}".strip()
                       for ln in lines})
    facts = [f"CPU {first.get('cpu_model') or 'n/a'} ({first.get('arch') or 'n/a'}, {first.get('cores') or 'n/a'} cores)",
             f"RAM {ram / 2 ** 30:.1f} GiB" if ram else "RAM n/a", f"OS {first.get('os') or 'n/a'}",
             f"Python {first.get('python') or 'n/a'}", f"governor {first.get('governor') or 'n/a'}",
             f"runtimes: {', '.join(runtimes)}",
             f"from {', '.join(sorted({Path(ln['_source']).name for ln in lines}))}"]
    common = _common_notes(lines)
    shared = ["Notes on every line: " + "; ".join(common) + ".", ""] if common else []
    return [f"### {device}", "", "; ".join(facts) + ".", ""] + shared + _efficiency_text(lines)


def _efficiency_cell(line: dict) -> str:
    """``GMAC/s (NN%)`` of a line: its MACs per image over its p50, and its share of the peak."""
    gmacs, fraction = num(line.get("gmacs_per_s")), num(line.get("fraction_of_peak"))
    if gmacs is None or is_emulated(line):
        return "n/a"
    return f"{gmacs:.3g}" + (f" ({100 * fraction:.0f}%)" if fraction is not None else "")


def _efficiency_text(lines: list[dict]) -> list[str]:
    """How the efficiency column is computed, and each peak it divides by, with its source."""
    measured = [ln for ln in lines if num(ln.get("gmacs_per_s")) is not None and not is_emulated(ln)]
    if not measured:
        return ["No line of this device has its model's multiply-accumulates (`macs`) and a kernel-mode "
                "latency outside emulation, so the efficiency column is empty.", ""]
    peaks = sorted({(str(ln.get("runtime")), int(ln.get("threads") or 0), num(ln.get("peak_gmacs_per_s")),
                     str(ln.get("peak_source"))) for ln in measured})
    text = ["Efficiency: GMAC/s is the model's multiply-accumulates per image (`macs`, counted from the "
            "exported graph's convolution, dense and matmul ops) over its p50 latency; % of peak divides it by "
            "the CPU's peak for the line's runtime, threads and arithmetic: fp32 for float models, int8 for "
            "int8, qat and dynamic ones (1 MAC = 1 multiply-accumulate):", ""]
    text += [f"- {runtime}, {threads} thread(s): "
             + (f"{peak:.4g} GMAC/s, {source}" if peak is not None else source) for runtime, threads, peak, source in peaks]
    return text + [""]


def _common_notes(lines: list[dict]) -> list[str]:
    # notes every line of a device carries (e.g. how the dataset was indexed) are said once
    # above its table, not in each row
    sets = [[str(n) for n in ln.get("notes") or []] for ln in lines]
    return [n for n in sets[0] if all(n in other for other in sets[1:])] if len(sets) > 1 else []


def _majority_share(labels) -> float | None:
    """The accuracy of always answering the most common class of these labels."""
    if not labels:
        return None
    counts = np.bincount(np.asarray(labels, dtype=int))
    return float(counts.max() / counts.sum())


def _device_table(lines: list[dict]) -> list[str]:
    common = set(_common_notes(lines))
    rows = []
    for ln in sorted(lines, key=lambda x: (str(x.get("artifact_id")), str(x.get("runtime")),
                                           int(x.get("threads") or 0), str(x.get("mode")))):
        low, high = num(ln.get("latency_ms_p50_ci_low")), num(ln.get("latency_ms_p50_ci_high"))
        p50 = ms_text(num(ln.get("latency_ms_p50"))) + (f" [{ms_text(low)}, {ms_text(high)}]" if low is not None and high is not None else "")
        acc = num(ln.get("accuracy"))
        a_low, a_high = line_ci(ln) if acc is not None else (None, None)
        notes = [str(n) for n in ln.get("notes") or [] if str(n) not in common]
        if ln.get("export_warning"):
            notes.insert(0, f"EXPORT WARNING: {ln['export_warning']}")
        if is_emulated(ln):
            notes.insert(0, "EMULATED: latency not meaningful")
        share = _majority_share(ln.get("label_indices"))
        if acc is not None and share is not None and a_low is not None and a_low <= share:
            notes.insert(0, f"NOT ABOVE CHANCE: its interval reaches {percent(share)}, the score of always answering "
                            f"the most common class of these images")
        rows.append([str(ln.get("artifact_id")), _family(str(ln.get("backbone"))), str(ln.get("runtime")),
                     str(ln.get("threads")), str(ln.get("mode")), p50, ms_text(num(ln.get("latency_ms_p90"))),
                     ms_text(num(ln.get("latency_ms_p99"))), _efficiency_cell(ln), _mb(ln.get("peak_rss_bytes")),
                     _mb(ln.get("rss_increase_bytes")), _size_mb(ln.get("size_bytes")),
                     f"{percent(acc)} [{percent(a_low)}, {percent(a_high)}]", _sci(num(ln.get("macro_f1"))),
                     percent(num(ln.get("agreement"))), short("; ".join(notes), 300)])
    return markdown_table(["Artifact", "Family", "Runtime", "Threads", "Mode", "p50 ms [95% CI]", "p90 ms", "p99 ms",
                   "GMAC/s (% of peak)", "Peak RSS MB", "RSS increase MB", "Size MB", "Accuracy [Wilson 95%]", "Macro-F1", "Agreement",
                   "Notes"], rows)


def _errors_section(errors: list[dict]) -> list[str]:
    lines = ["### Lines with an error (left out)", ""]
    if not errors:
        return lines + ["None.", ""]
    return lines + markdown_table(["Device", "Artifact", "Runtime", "Threads", "Mode", "File", "Error"],
                          [[str(e.get("device_name")), str(e.get("artifact_id")), str(e.get("runtime")),
                            str(e.get("threads")), str(e.get("mode")), Path(e["_source"]).name,
                            short(str(e.get("error")))] for e in errors])


def _verdict_lines(v: DeviceVerdict) -> list[str]:
    lines = [f"### {v.device}: the claim is **{v.verdict}**", ""]
    lines += [f"- {reason}" for reason in v.reasons] + [""]
    if v.points:
        lines += markdown_table(["Model", "Family", "Accuracy [Wilson 95%]", "p50 ms", "Size MB", "Latency front",
                         "Size front"],
                        [[p.label, p.family, acc_ci(p),
                          ms_text(p.p50_ms) + (" (emulated)" if is_emulated(p.line) else ""),
                          _size_mb(p.size_bytes),
                          "yes" if p in v.latency_front else ("n/a" if p not in v.latency_points else "no"),
                          "yes" if p in v.size_front else "no"] for p in v.points])
    if v.budgets:
        lines += markdown_table(["p50 budget", "Most accurate model within it", "Family", "Accuracy", "p50 ms"],
                        [[f"{b:g} ms", p.label if p else "none fits", p.family if p else "",
                          percent(p.accuracy) if p else "", ms_text(p.p50_ms) if p else ""] for b, p in v.budgets])
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "device"


def _evidence_section(runs: str | os.PathLike | None, by_device: dict[str, list[dict]]) -> list[str]:
    """Where every accuracy comes from: data, weights, split and image count, and the floors."""
    lines = ["## What the accuracies are measured on", ""]
    sweep = Path(runs) if runs else None
    floors = None
    if sweep is not None:
        try:
            ok, _failed, _ = load_runs(sweep)
            lines += sweep_tables.provenance(sweep, ok)[:-1]
            floors = sweep_tables.read_floors(sweep)
        except sweep_tables.FloorsError as exc:
            lines.append(f"- Floors: {exc}.")
        except ValueError as exc:
            lines.append(f"- Sweep `{sweep}`: not readable here ({exc}).")
    else:
        lines.append("- No sweep folder given (`--runs`): the data source and weights are not known to this report.")
    on_val = []
    for device, device_lines in by_device.items():
        seen = sorted({(str(l.get("split", "?")), int(l.get("n_images") or 0), shown_path(l.get("data", "?")))
                       for l in device_lines if l.get("accuracy") is not None})
        for split, n, data in seen:
            lines.append(f"- {device}: accuracy on the `{split}` split of `{data}`, {n} images.")
            if split != "test":
                on_val.append(device)
    if floors:
        lines.append(f"- Floors on the sweep's {floors.get('n')} test images: always {floors.get('majority_class')} "
                     f"{100 * float(floors.get('majority_accuracy', float('nan'))):.1f}%, logistic regression on "
                     f"image features {100 * float(floors.get('features_accuracy', float('nan'))):.1f}%.")
    if on_val:
        lines.append(f"- **Warning**: the verdict for {', '.join(sorted(set(on_val)))} rests on images that are "
                     "not the test split; validation images chose epochs and levels, so their accuracy is optimistic.")
    lines.append(f"- Paired tests: {MCNEMAR_CONVENTION}")
    return lines + [""]


def with_export_warnings(by_device: dict[str, list[dict]], exports: Path | None) -> dict[str, list[dict]]:
    """The lines, each given ``export_warning`` where its artifact's manifest record has a
    ``warning`` (an agreement with the Keras model below the variant's threshold at export),
    so that the device tables and the verdict show it, not only the export's console."""
    if exports is None:
        return by_device
    try:
        warnings = {aid: str(r["warning"]) for aid, r in exports_manifest.read(exports).items() if r.get("warning")}
    except ValueError:
        return by_device  # the export section says why the manifest cannot be read
    return {device: [{**ln, "export_warning": warnings[str(ln.get("artifact_id"))]}
                     if str(ln.get("artifact_id")) in warnings else ln for ln in lines]
            for device, lines in by_device.items()}


def read_floors_file(path: str | os.PathLike) -> dict:
    """A ``bench floors`` file, checked for the fields the pairing needs.

    Raises:
        ValueError: missing, not JSON, or without the per-image lists; the message names it.
    """
    import json

    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--floors {path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:
        raise ValueError(f"--floors {path}: not JSON; expected a file written by `bench floors`") from None
    need = ("images_sha256", "label_indices", "features_pred_indices", "features_accuracy", "majority_accuracy")
    if not isinstance(record, dict) or any(k not in record for k in need):
        raise ValueError(f"--floors {path}: expected a file written by `bench floors` (with {', '.join(need)})")
    return {**record, "_source": str(path)}


def floors_pairs(files: list[dict], verdicts: dict, alpha: float) -> tuple[list[dict], int]:
    """Each model point paired with the floors file scored on its very images.

    Returns:
        ``(pairs, unmatched)``: one dict per paired point (device, artifact, accuracies,
        McNemar b, c and p against the feature baseline, ``beats``), and how many points
        had no floors file on their images or no per-image predictions.
    """
    by_images = {f["images_sha256"]: f for f in files}
    pairs, unmatched = [], 0
    for device, v in verdicts.items():
        for point in sorted(v.points, key=lambda p: -p.accuracy):
            floor = by_images.get(point.line.get("images_sha256"))
            pred, truth = point.line.get("pred_indices"), point.line.get("label_indices")
            if floor is None or not pred or truth != floor["label_indices"]:
                unmatched += 1
                continue
            truth = np.asarray(truth)
            test = mcnemar(np.asarray(pred) == truth, np.asarray(floor["features_pred_indices"]) == truth)
            pairs.append({"device": device, "artifact_id": point.artifact_id, "label": point.label,
                          "family": point.family, "accuracy": point.accuracy, "floors": floor["_source"],
                          "features_accuracy": floor["features_accuracy"],
                          "majority_accuracy": floor["majority_accuracy"], "b": test["b"], "c": test["c"],
                          "n": test["n"], "p_value": test["p_value"], "accuracy_diff": test["accuracy_diff"],
                          "beats_features": bool(test["accuracy_diff"] > 0 and test["p_value"] < alpha)})
    return pairs, unmatched


def _floors_section(files: list[dict], pairs: list[dict], unmatched: int, alpha: float) -> list[str]:
    """Each model against the floors scored on the very same images (McNemar, exact)."""
    if not files:
        return []
    lines = ["## Against the floors on the same images", ""]
    for f in files:
        lines.append(f"- `{f['_source']}`: {f.get('n')} `{f.get('split')}` images of `{f.get('data')}`; floors fitted "
                     f"on the training split of `{f.get('train_data')}`: always {f.get('majority_class')} "
                     f"{percent(f['majority_accuracy'])}, logistic regression on image features "
                     f"{percent(f['features_accuracy'])} [{percent(f.get('features_accuracy_ci_low'))}, "
                     f"{percent(f.get('features_accuracy_ci_high'))}].")
    lines += [""]
    if pairs:
        lines += [f"McNemar's exact test of each model against the feature baseline on the same images (b and c "
                  f"as stated at the top). Beats it: higher accuracy and p < {alpha:g}.", ""]
        lines += markdown_table(["Device", "Model", "Family", "Accuracy", "Feature floor", "Difference (points)", "b / c",
                         "McNemar p", "Beats it"],
                        [[q["device"], q["label"], q["family"], percent(q["accuracy"]), percent(q["features_accuracy"]),
                          f"{100 * q['accuracy_diff']:+.1f}", f"{q['b']} / {q['c']}", f"{q['p_value']:.2g}",
                          "yes" if q["beats_features"] else "no"] for q in pairs])
    if unmatched:
        lines += [f"{unmatched} model line(s) were scored on other images than any floors file, or carry no "
                  f"per-image predictions; they are not paired.", ""]
    return lines


# --- machine-readable outputs ---------------------------------------------------------------

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
        row = {**line, "family": _family(str(line.get("backbone"))), "emulated": is_emulated(line),
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


# --- entry points -------------------------------------------------------------------------

def device_floors(v: DeviceVerdict, pairs: list[dict]) -> dict:
    """The floors drawn on a device's plots: the majority class (from the scored labels) and the
    feature floor where a floors file was scored on the same images."""
    labels = next((p.line.get("label_indices") for p in v.points if p.line.get("label_indices")), None)
    mine = [q for q in pairs if q["device"] == v.device]
    return {"majority": _majority_share(labels) if labels else None,
            "features": mine[0]["features_accuracy"] if mine else None}


def floor_reasons(verdicts: dict, pairs: list[dict], alpha: float) -> None:
    """Add to each device's reasons whether any model beats the feature floor on its images."""
    for device, v in verdicts.items():
        mine = [q for q in pairs if q["device"] == device]
        if not mine:
            continue
        beat = [q for q in mine if q["beats_features"]]
        floor = percent(mine[0]["features_accuracy"])
        v.reasons.append(f"Against the feature floor ({floor} on the same images, McNemar at alpha {alpha:g}): "
                         + (f"{len(beat)} of {len(mine)} models beat it." if beat else
                            "no model beats it, so none of these accuracies is evidence of a learnt image "
                            "classifier beyond six hand-made measurements, and the verdict compares models "
                            "that are no better than that floor."))


def _figures_section(out: Path, verdicts: dict, md: list[str], pairs: list[dict] = ()) -> list[Path]:
    """Section 4: per device, accuracy against latency and against size (appended to ``md``)."""
    figures: list[Path] = []
    md += ["## 4. Accuracy against latency and size", "",
           "One point per model (its fastest measured configuration); the dashed step line is the "
           "Pareto front; the horizontal lines are the floors on the same images (the majority class, "
           "and the feature floor where `--floors` scored these images).", ""]
    for device, v in verdicts.items():
        slug = _slug(device)
        floors = device_floors(v, list(pairs))
        md += [f"### {device}", ""]
        if v.latency_points:
            path = out / f"accuracy_vs_latency_{slug}.png"
            write_bytes(path, plot_front(v.latency_points, v.latency_front, lambda p: p.p50_ms,
                                    f"p50 latency, {v.mode} mode (ms, log scale)",
                                    f"{device}: accuracy against latency", [b for b, _ in v.budgets], floors))
            figures.append(path)
            md += [f"![{device}: accuracy against p50 latency]({path.name})", ""]
        elif v.points:
            md += ["No latency plot: every line of this device ran under emulation, where latency is not "
                   "meaningful.", ""]
        if not any(p.size_bytes for p in v.points):
            md += ["No size plot: no line of this device records its model's file size.", ""]
        else:
            path = out / f"accuracy_vs_size_{slug}.png"
            write_bytes(path, plot_front(v.points, v.size_front, lambda p: p.size_bytes / MB if p.size_bytes else None,
                                    "model file size (MB, log scale)", f"{device}: accuracy against model size",
                                    floors=floors))
            figures.append(path)
            md += [f"![{device}: accuracy against model size]({path.name})", ""]
    return figures


def write_report(config: ReportConfig, log: Callable[[str], object] = print) -> dict:
    """Build ``report.md`` and its figures, ``verdict.json`` (the decision per device, its
    reasons and every number it used, and each model against the floors) and ``devices.csv``
    (one row per results line, errors included).

    Args:
        config: inputs, output folder and the decision rule's parameters.
        log: called with one line per file written.

    Returns:
        ``{"report": Path, "figures": [Path, ...], "verdicts": {device: verdict}}``.

    Raises:
        ValueError: a results file is missing.
    """
    out = check_output_folder(config.out, "--out")
    by_device, errors = load_results(config.results, log)  # refused input leaves no folder behind
    by_device = with_export_warnings(by_device, config.exports)
    verdicts = {device: decide(device, lines, config.budgets_ms, config.alpha, config.min_images, config.margin)
                for device, lines in by_device.items()}

    md = ["# SkyEdge benchmark report", "",
          "Claim under test (Sabeesh & Bolla, 2022): mobile networks \"may not always be ideal for deployment "
          "on a low-compute device, as they had consistently lower validation accuracies\".", "",
          f"Results: {', '.join(f'`{p}`' for p in config.results)}: "
          f"{sum(len(v) for v in by_device.values())} line(s) on {len(by_device)} device(s), "
          f"{len(errors)} line(s) with an error (listed, left out).", "",
          f"Equivalence margin of the verdict: **{100 * config.margin:g} accuracy point(s)** (`--margin`): a mobile "
          f"model within it of the best non-mobile model, shown by a one-sided test at alpha {config.alpha:g}, "
          f"contradicts the claim; one worse by more than it, significantly, supports it.", "",
          ]
    md += _evidence_section(config.runs, by_device)
    floor_files = [read_floors_file(p) for p in config.floors]
    pairs, unmatched = floors_pairs(floor_files, verdicts, config.alpha)
    floor_reasons(verdicts, pairs, config.alpha)
    md += _floors_section(floor_files, pairs, unmatched, config.alpha)
    md += ["## Verdicts at a glance", ""]
    md += [f"- {d}: **{v.verdict}**" for d, v in verdicts.items()] or ["- no device has a usable line"]
    md += [""]
    md += _study_section(config.runs)
    md += _export_section(config.exports)

    md += ["## 3. Devices: latency, memory, size and accuracy", "",
           "One row per artifact x runtime x threads x mode. Latency in ms (p50 with its bootstrap 95% "
           "interval), memory and size in MB (10^6 bytes); accuracy with its Wilson 95% interval; agreement "
           "with the Keras model's predictions.", ""]
    for device, lines in by_device.items():
        md += _device_header(device, lines) + _device_table(lines)
    md += _errors_section(errors)

    out.mkdir(parents=True, exist_ok=True)
    figures = _figures_section(out, verdicts, md, pairs)
    budgets = (f"{', '.join(f'{b:g}' for b in config.budgets_ms)} ms (p50)" if config.budgets_ms else
               "per device, four spaced evenly on a log scale across its measured p50 range: "
               + "; ".join(f"{d}: {', '.join(f'{b:g}' for b, _ in v.budgets)} ms" for d, v in verdicts.items() if v.budgets))
    md += ["## 5. Verdict", "", "### Decision rule", "",
           DECISION_RULE.replace("alpha", f"alpha ({config.alpha:g})"), "",
           f"Latency budgets: {budgets}. Minimum paired images: {config.min_images}.", ""]
    for v in verdicts.values():
        md += _verdict_lines(v)
    if not verdicts:
        md += ["No device has a line without error; no verdict.", ""]
    md += _recommendation_section(config, verdicts, out, log)
    md += _probability_sections(by_device, out, figures)

    import json

    write_text(out / "verdict.json", json.dumps(verdict_record(config, verdicts, pairs), indent=2) + "\n")
    write_text(out / "devices.csv", devices_csv(by_device, errors))
    log(f"wrote {out / 'verdict.json'}")
    log(f"wrote {out / 'devices.csv'}")
    report = out / "report.md"
    write_text(report, "\n".join(md).rstrip() + "\n")
    for path in figures:
        log(f"wrote {path}")
    log(f"wrote {report}")
    return {"report": report, "figures": figures, "verdicts": {d: v.verdict for d, v in verdicts.items()}}


def _probability_sections(by_device: dict[str, list[dict]], out: Path, figures: list[Path]) -> list[str]:
    """Sections 7 and 8: calibration and abstention, and the study's class mix, per device
    (their figures appended to ``figures``)."""
    md = ["## 7. Probabilities: calibration and abstention", ""]
    for device, lines in by_device.items():
        section_md, section_figures = calibration_section(device, lines, out, _slug(device))
        md += [f"### {device}", ""] + section_md
        figures += section_figures
    md += ["## 8. On the study's class mix", ""]
    for device, lines in by_device.items():
        md += [f"### {device}", ""] + mix_section(device, lines)
    return md


def _recommendation_section(config: ReportConfig, verdicts: dict, out: Path, log) -> list[str]:
    """The model to deploy per device; ``recommendation.json`` in the report folder and, with
    ``--exports``, in the exports folder too (where ``skyedge classify --model EXPORTS`` reads
    it: the first device's pick)."""
    import json

    picks = {device: recommend(v, config.alpha) for device, v in verdicts.items()}
    md = ["## 6. Recommendation", "", f"Rule: {RECOMMENDATION_RULE}. It is chosen on the scored images, so its "
          f"accuracy there is a choice's, not a fresh estimate.", ""]
    md += [f"- {device}: **{p.label if p else 'none'}** ({why})" for device, (p, why) in picks.items()] + [""]
    first = next(((d, p, why) for d, (p, why) in picks.items() if p is not None), None)
    if first is None:
        return md
    record = {"artifact_id": first[1].artifact_id, "device": first[0], "reason": first[2], "rule": RECOMMENDATION_RULE,
              "per_device": {d: (p.artifact_id if p else None) for d, (p, _w) in picks.items()}}
    write_text(out / RECOMMENDATION, json.dumps(record, indent=2) + "\n")
    if config.exports is not None and (Path(config.exports) / exports_manifest.MANIFEST).is_file():
        try:
            write_text(Path(config.exports) / RECOMMENDATION, json.dumps(record, indent=2) + "\n")
            log(f"wrote {Path(config.exports) / RECOMMENDATION} (skyedge classify --model EXPORTS uses it)")
        except OSError as exc:
            log(f"note: could not write the recommendation into {config.exports} ({exc.strerror or exc}); "
                f"skyedge classify there picks the most accurate on validation instead")
    return md


def main(argv: list[str] | None = None) -> int:
    """Command line: ``bench report ...`` (see the module docstring).

    Args:
        argv: arguments after ``report`` (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 when an input is missing or an option is invalid.
    """
    parser = argparse.ArgumentParser(prog="bench report",
                                     description="Report and verdict from a sweep, its exports and bench run results.")
    parser.add_argument("--runs", type=Path, help="sweep folder holding results.jsonl")
    parser.add_argument("--exports", type=Path, help="exports folder holding manifest.json")
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="bench run JSON-lines file(s)")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--budgets", type=positive_numbers, default=DEFAULT_BUDGETS_MS,
                        help="p50 budgets in ms, e.g. 10,50,200 (default: four per device, log-spaced across its "
                             "measured p50 range)")
    parser.add_argument("--alpha", type=fraction(low_open=True), default=DEFAULT_ALPHA,
                        help="significance level of the tests")
    parser.add_argument("--margin", type=fraction(low_open=True, high=100.0), default=100 * DEFAULT_MARGIN,
                        help="equivalence margin of the verdict, in accuracy points (default %(default)g)")
    parser.add_argument("--min-images", type=at_least(1), default=DEFAULT_MIN_IMAGES,
                        help="fewer paired images make the verdict inconclusive")
    parser.add_argument("--floors", type=Path, nargs="+", default=(),
                        help="`bench floors` file(s): each model is tested against the feature baseline on the same images")
    args = parser.parse_args(argv)
    return run_command(lambda: _report(args), (ValueError,), "the report folder is written only when it is complete")


def _report(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("bench report draws its figures with matplotlib, which is not installed: "
                         "pip install 'skyedge[report]' (a device only needs skyedge[device] for bench run)")
    config = ReportConfig(results=tuple(args.results), out=args.out, runs=args.runs, exports=args.exports,
                          budgets_ms=args.budgets, alpha=args.alpha, min_images=args.min_images, margin=args.margin / 100,
                          floors=tuple(args.floors))
    result = write_report(config, log=lambda line: print(line, file=sys.stderr))
    for device, verdict in result["verdicts"].items():
        print(f"{device}: claim {verdict}")
    print(result["report"])
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
