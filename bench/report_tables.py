"""The tables of ``bench report``: the study's (from ``train.summary``'s files), the exports',
and each device's, with the cell formats they share. TensorFlow-free."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.verdict import is_emulated, is_mobile, line_ci, ms_text, num, percent
from device import sweep_tables
from device.exports_manifest import NO_SPREAD, rescue_summary
from device.sweep_tables import markdown_table, short
from device.sweep_results import RESULTS, aggregate, best_level, load_runs, overall_best


MB = 1e6


def family(backbone: str) -> str:
    return {True: "mobile", False: "non-mobile", None: "unknown"}[is_mobile(backbone)]


def _mmacs(value) -> str:
    value = num(value)
    return "n/a" if value is None else f"{value / 1e6:.4g}"


def points_text(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} pts"


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def mb_text(value) -> str:
    value = num(value)
    return "n/a" if value is None else f"{value / MB:.1f}"


def size_mb_text(value) -> str:
    value = num(value)
    if not value:
        return "n/a"
    # Two decimals for real models; three significant digits keep a tiny test model above 0.00.
    return f"{value / MB:.2f}" if value >= MB else f"{value / MB:.3g}"


def device_header(device: str, lines: list[dict]) -> list[str]:
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


def majority_share(labels) -> float | None:
    """The accuracy of always answering the most common class of these labels."""
    if not labels:
        return None
    counts = np.bincount(np.asarray(labels, dtype=int))
    return float(counts.max() / counts.sum())


def study_section(runs: Path | None) -> list[str]:
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
                                [[s.backbone, family(s.backbone), sweep_tables.accuracy_cell(s),
                                  sweep_tables.spread(s.f1_mean, s.f1_std, ".3f"), sweep_tables.params_text(s.trainable_params),
                                  sweep_tables.ratio_text(s.ptr)] for s in baseline])
    best = {backbone: best_level(stats) for backbone, stats in levels.items()}
    overall = overall_best(best)
    lines += ["### Best level per backbone", ""]
    lines += sweep_tables.best_section(Path(runs), best, overall)
    families = {b: family(b) for b in best}
    lines += ["Families (registry `mobile` flag): "
              + "; ".join(f"{b}: {f}" for b, f in families.items()) + ".", ""]
    return lines


def export_section(exports: Path | None) -> list[str]:
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
        rows.append([str(a.get("artifact_id")), str(a.get("backbone")), family(str(a.get("backbone"))),
                     str(a.get("variant")), str(a.get("format")), size_mb_text(size), ratio, _mmacs(a.get("macs")),
                     percent(num(a.get("val_accuracy"))), points_text(num(a.get("accuracy_delta"))),
                     percent(num(a.get("agreement"))), _sci(num(a.get("max_abs_diff"))), _worst_int8(a),
                     _rescue(a),
                     short(str(a.get("error"))) if a.get("error") else
                     f"WARNING: {short(str(a['warning']))}" if a.get("warning") else ""])
    lines += [f"From `{Path(exports) / 'manifest.json'}`: {len(artifacts)} artifact(s), "
              f"{sum(bool(a.get('error')) for a in artifacts)} with an export error. Size ratio: the artifact's "
              "size over the fp32 artifact of the same model and format. MMAC: millions of multiply-accumulates "
              "per image, counted from the artifact's graph. Delta: accuracy minus the Keras model's; "
              "agreement: share of images where its prediction equals the Keras model's; max diff: largest "
              "absolute difference of a class probability. Worst int8 layer (int8 artifacts): the layer whose "
              "int8 output differs most from its float output, relative to the spread of that output (root mean "
              "squared error over a standard deviation, on calibration images; every layer is in the export's "
              "int8-layers/ CSV). Int8 rescue: what the export did where the plain int8 model agreed with the "
              "Keras model on fewer than 97% of the validation images (robust ranges, layers kept in float) "
              "and what it cost.", ""]
    lines += markdown_table(["Artifact", "Backbone", "Family", "Variant", "Format", "Size MB", "Size / fp32", "MMAC",
                     "Val accuracy", "Delta vs Keras", "Agreement", "Max diff", "Worst int8 layer", "Int8 rescue",
                             "Error or warning"],
                            rows)
    return lines


def _rescue(record: dict) -> str:
    """What the int8 rescue did for this artifact (empty where it was not needed)."""
    try:
        return rescue_summary(record.get("int8_rescue"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return "unreadable"


def _worst_int8(record: dict) -> str:
    """``"block_16_project 31%"``: the record's worst int8 layer and its error relative to its signal."""
    rows = record.get("int8_worst_layers") or []
    try:
        if not rows:
            return ""
        relative = float(rows[0]["relative_rmse"])
        return f"{rows[0]['layer']} {'error, no spread' if relative >= NO_SPREAD else f'{100 * relative:.0f}%'}"
    except (KeyError, TypeError, ValueError):
        return "unreadable"


def device_table(lines: list[dict]) -> list[str]:
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
        share = majority_share(ln.get("label_indices"))
        if acc is not None and share is not None and a_low is not None and a_low <= share:
            notes.insert(0, f"NOT ABOVE CHANCE: its interval reaches {percent(share)}, the score of always answering "
                            f"the most common class of these images")
        rows.append([str(ln.get("artifact_id")), family(str(ln.get("backbone"))), str(ln.get("runtime")),
                     str(ln.get("threads")), str(ln.get("mode")), p50, ms_text(num(ln.get("latency_ms_p90"))),
                     ms_text(num(ln.get("latency_ms_p99"))), _efficiency_cell(ln), mb_text(ln.get("peak_rss_bytes")),
                     mb_text(ln.get("rss_increase_bytes")), size_mb_text(ln.get("size_bytes")),
                     f"{percent(acc)} [{percent(a_low)}, {percent(a_high)}]", _sci(num(ln.get("macro_f1"))),
                     percent(num(ln.get("agreement"))), short("; ".join(notes), 300)])
    return markdown_table(["Artifact", "Family", "Runtime", "Threads", "Mode", "p50 ms [95% CI]", "p90 ms", "p99 ms",
                   "GMAC/s (% of peak)", "Peak RSS MB", "RSS increase MB", "Size MB", "Accuracy [Wilson 95%]", "Macro-F1", "Agreement",
                   "Notes"], rows)


def errors_section(errors: list[dict]) -> list[str]:
    lines = ["### Lines with an error (left out)", ""]
    if not errors:
        return lines + ["None.", ""]
    return lines + markdown_table(["Device", "Artifact", "Runtime", "Threads", "Mode", "File", "Error"],
                          [[str(e.get("device_name")), str(e.get("artifact_id")), str(e.get("runtime")),
                            str(e.get("threads")), str(e.get("mode")), Path(e["_source"]).name,
                            short(str(e.get("error")))] for e in errors])
