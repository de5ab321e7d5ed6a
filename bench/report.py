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
   the CPU's peak for the line's arithmetic, fp32 or int8, each peak stated with its source:
   ``bench.peak``), memory, size and accuracy;
4. per device: accuracy against p50 latency and against model size, with the Pareto fronts;
5. per device: the verdict on the claim (see ``DECISION_RULE``), with its reasons as sentences
   built from the numbers.

Lines with an ``error`` are listed and left out. Lines run under emulation (qemu) keep their
accuracy, which emulation does not change, but their latency is never used.
The verdict itself is computed in ``bench.verdict`` and the figures drawn by ``bench.plots``;
the tables are ``bench.report_tables``', the floors ``bench.report_floors``' and the files
beside the Markdown (``devices.csv``, ``verdict.json``) ``bench.report_records``'.
No TensorFlow is imported; matplotlib is imported only to draw.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from device.options import at_least, fraction, positive_numbers
from bench.plots import plot_front
from bench.calibration import mix_section, section as calibration_section
from bench.jobs import line_problem
from bench.verdict import (DECISION_RULE, DEFAULT_ALPHA, DEFAULT_BUDGETS_MS, DEFAULT_MARGIN, DEFAULT_MIN_IMAGES, RECOMMENDATION_RULE, DeviceVerdict, acc_ci, decide, is_emulated, ms_text, percent, recommend)
from device import exports_manifest
from device.classifier import RECOMMENDATION
from device.atomic import check_output_folder, read_jsonl_records, skipped_warning, write_bytes, write_text
from device.command import Exit, run_command
from device.metrics import MCNEMAR_CONVENTION
from device import sweep_tables
from device.sweep_tables import markdown_table
from device.sweep_results import RESULTS, load_runs
from bench.report_floors import device_floors, floor_reasons, floors_pairs, floors_section, read_floors_file
from bench.report_records import devices_csv, shown_path, verdict_record
from bench.report_tables import (MB, device_header, device_table, errors_section, export_section, size_mb_text,
                                 study_section)


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


def _verdict_lines(v: DeviceVerdict) -> list[str]:
    lines = [f"### {v.device}: the claim is **{v.verdict}**", ""]
    lines += [f"- {reason}" for reason in v.reasons] + [""]
    if v.points:
        lines += markdown_table(["Model", "Family", "Accuracy [Wilson 95%]", "p50 ms", "Size MB", "Latency front",
                         "Size front"],
                        [[p.label, p.family, acc_ci(p),
                          ms_text(p.p50_ms) + (" (emulated)" if is_emulated(p.line) else ""),
                          size_mb_text(p.size_bytes),
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
    md += floors_section(floor_files, pairs, unmatched, config.alpha)
    md += ["## Verdicts at a glance", ""]
    md += [f"- {d}: **{v.verdict}**" for d, v in verdicts.items()] or ["- no device has a usable line"]
    md += [""]
    md += study_section(config.runs)
    md += export_section(config.exports)

    md += ["## 3. Devices: latency, memory, size and accuracy", "",
           "One row per artifact x runtime x threads x mode. Latency in ms (p50 with its bootstrap 95% "
           "interval), memory and size in MB (10^6 bytes); accuracy with its Wilson 95% interval; agreement "
           "with the Keras model's predictions.", ""]
    for device, lines in by_device.items():
        md += device_header(device, lines) + device_table(lines)
    md += errors_section(errors)

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


if __name__ == "__main__":
    sys.exit(main())
