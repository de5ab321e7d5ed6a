"""Summary of a sweep folder: one CSV, one Markdown report and the plots, from its records.

    python -m train.summary ROOT

Reads ``ROOT/results.jsonl`` (one flat record per run, as the sweep appends them) and each
run's ``history.csv`` and ``val_predictions.csv``, and writes, atomically:

- ``ROOT/summary.csv``: one row per successful run, sorted by backbone, level, seed;
- ``ROOT/summary.md``: baseline, accuracy per level, best level per backbone (with a paired
  McNemar test against the best backbone), seeds, failures, and a note on intervals;
- ``ROOT/plots/``: accuracy against level per backbone, all backbones against LTR, and the
  training curves of each backbone's best level.

Every figure in the report is computed from the records; nothing is written by hand, so a
rebuilt summary always agrees with the runs it describes. No TensorFlow is imported, so a
summary can be rebuilt anywhere the folder is copied.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from device.atomic import write_bytes, write_text
from device.command import Exit, run_command
from device.dataset import LABELS
from device.metrics import MCNEMAR_CONVENTION, mcnemar
from device.predictions import PredictionsError, correct_by_path
from device.sweep_results import (HISTORY, LevelStats, aggregate, as_float, as_int, best_level,
                                   load_runs, overall_best, read_history)

PREDICTIONS = "val_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
BASELINE = "baseline.json"
BASELINE_PREDICTIONS = "baseline_test_predictions.csv"
PLOTS = "plots"
SHARD_RECORDS = "sweep-shard*of*.json"  # one per shard, written by train.sweep

# The columns of summary.csv, in this order; scalar fields a record has beyond these are
# appended in sorted order, so new record fields reach the CSV without a change here.
COLUMNS: tuple[str, ...] = (
    "run_id", "run_dir", "backbone", "level", "seed", "img_size", "epochs", "epochs_run",
    "best_epoch", "val_n", "val_accuracy", "val_accuracy_ci_low", "val_accuracy_ci_high",
    "val_macro_f1", "test_n", "test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_macro_f1",
    *(f"val_{metric}_{label}" for label in LABELS for metric in ("precision", "recall", "f1")),
    "trainable_params", "total_params", "layers_total", "ltr", "ptr", "first_trainable_layer",
    "wall_seconds", "train_images_per_s", "cache_features", "weights",
)
EXCLUDED = frozenset({"val_confusion", "test_confusion", "error"})

FIGSIZE = (7.0, 4.5)
DPI = 120


def shard_status(root: Path, runs: list[dict], failures: list[dict]) -> list[dict]:
    """Each shard's planned runs that have no line in ``results.jsonl`` or only failed ones.

    Reads the records the sweep writes per shard (``sweep-shard<i>of<n>.json``); returns one
    dict per record, in shard order: ``shard`` ("i/n"), ``runs`` (count planned),
    ``missing`` and ``failed`` (run ids). A shard of an array with no record at all (it never
    started) is listed with ``runs`` None.
    """
    done = {r.get("run_id") for r in runs}
    failed_ids = {f.get("run_id") for f in failures}
    status = []
    for path in sorted(Path(root).glob(SHARD_RECORDS)):
        try:
            record = json.loads(path.read_text())
            planned = [str(r) for r in record["runs"]]
            shard = f"{record['shard'][0]}/{record['shard'][1]}"
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue  # a record cut short is rewritten by its shard's next start
        status.append({"shard": shard, "runs": len(planned),
                       "missing": [r for r in planned if r not in done and r not in failed_ids],
                       "failed": [r for r in planned if r in failed_ids and r not in done]})
    seen = {s["shard"] for s in status}
    for count in {int(s["shard"].split("/")[1]) for s in status}:
        status += [{"shard": f"{i}/{count}", "runs": None, "missing": ["(this shard never started)"], "failed": []}
                   for i in range(count) if f"{i}/{count}" not in seen]
    return sorted(status, key=lambda s: tuple(int(p) for p in s["shard"].split("/"))[::-1])


def read_floors(root: Path) -> dict | None:
    """The sweep's ``baseline.json`` (majority class and feature baseline on the test split)."""
    try:
        record = json.loads((Path(root) / BASELINE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def test_vs_features(root: Path, run: dict) -> dict | None:
    """McNemar's test of a run against the feature baseline on the test images.

    ``b`` counts test images the run got right and the baseline wrong; ``None`` when either
    predictions file is missing or they share no image.
    """
    return _paired(_correct(_run_file(root, run, TEST_PREDICTIONS)), _correct(Path(root) / BASELINE_PREDICTIONS))


def describe_weights(weights: str | None) -> str:
    """Where a sweep's starting weights came from, in words (``--weights`` as recorded)."""
    text = str(weights or "none")
    if text == "imagenet":
        return "ImageNet (Keras applications)"
    if text == "none":
        return "random initialisation (no pretrained weights)"
    return f"in-domain pretrained or user-supplied weights from `{text}`"


def paired_test(root: Path, run_a: dict, run_b: dict) -> dict | None:
    """McNemar's test of two runs on the validation images both of them predicted.

    Predictions are joined on the ``path`` column of each run's ``val_predictions.csv``.

    Args:
        root: the sweep folder (``run_dir`` is relative to it).
        run_a: the first record (``b`` counts images it got right and ``run_b`` wrong).
        run_b: the second record.

    Returns:
        ``device.metrics.mcnemar``'s dict plus ``same_images`` (both files hold exactly the
        same paths), ``n_a`` and ``n_b`` (images in each file); ``None`` when a file is
        missing or the runs share no image.
    """
    return _paired(_correct(_run_file(root, run_a, PREDICTIONS)), _correct(_run_file(root, run_b, PREDICTIONS)))


def _paired(a: dict[str, bool] | None, b: dict[str, bool] | None) -> dict | None:
    """McNemar on the images two prediction files share, with how far they overlap."""
    if a is None or b is None:
        return None
    common = sorted(set(a) & set(b))
    if not common:
        return None
    result = mcnemar([a[p] for p in common], [b[p] for p in common])
    result.update(same_images=set(a) == set(b), n_a=len(a), n_b=len(b))
    return result


def write_summary(root: Path, log: Callable[[str], object] = print) -> dict[str, Path]:
    """Rebuild ``summary.csv``, ``summary.md`` and ``plots/`` of a sweep folder.

    Args:
        root: the sweep folder holding ``results.jsonl`` and the run folders.
        log: called with one line per file written and per problem met (a missing history).

    Returns:
        The paths written, by name: ``summary_csv``, ``summary_md``, ``accuracy_vs_level``,
        and ``accuracy_vs_level_<backbone>`` and ``curves_<backbone>`` for each backbone.

    Raises:
        ValueError: ``results.jsonl`` is missing or empty (the message names it).
    """
    root = Path(root)
    runs, failures, superseded = load_runs(root)
    levels = aggregate(runs)
    paths: dict[str, Path] = {}

    csv_path = root / "summary.csv"
    write_text(csv_path, _summary_csv(runs))
    paths["summary_csv"] = csv_path
    log(f"wrote {csv_path} ({len(runs)} runs)")

    import importlib.util

    if levels and importlib.util.find_spec("matplotlib") is None:
        log("note: matplotlib is not installed, so the plots are left out (the tables are complete); "
            "install the report extra for them: pip install 'skyedge[report]'")
    elif levels:
        plots = root / PLOTS
        plots.mkdir(parents=True, exist_ok=True)
        for name, data in _plots(root, levels, log).items():
            path = plots / f"{name}.png"
            write_bytes(path, data)
            paths[name] = path
            log(f"wrote {path}")

    md_path = root / "summary.md"
    write_text(md_path, _summary_md(root, runs, levels, failures, superseded, paths))
    paths["summary_md"] = md_path
    log(f"wrote {md_path}")
    return paths


def _run_file(root: Path, run: dict, name: str) -> Path | None:
    return Path(root) / str(run["run_dir"]) / name if run.get("run_dir") else None


def _correct(path: Path | None) -> dict[str, bool] | None:
    """``{image path: prediction right}`` of a predictions file; None when absent or unreadable."""
    if path is None:
        return None
    try:
        return correct_by_path(path)
    except PredictionsError:
        return None


# --- summary.csv --------------------------------------------------------------------------

def _summary_csv(runs: list[dict]) -> str:
    extra = sorted({key for run in runs for key, value in run.items()
                    if key not in COLUMNS and key not in EXCLUDED and not isinstance(value, (list, dict))})
    columns = [*COLUMNS, *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run in runs:
        writer.writerow({key: ("" if run.get(key) is None else run.get(key)) for key in columns})
    return buffer.getvalue()


# --- summary.md ---------------------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "n/a"


def accuracy_cell(stats: LevelStats) -> str:
    ci = f"[{_pct(stats.ci_low)}, {_pct(stats.ci_high)}]"
    if stats.n_seeds > 1:
        return f"{_pct(stats.acc_mean)} ± {_pct(stats.acc_std)}% {ci}"
    return f"{_pct(stats.acc_mean)}% {ci}"


def _test_cell(stats: LevelStats) -> str:
    if not math.isfinite(stats.test_mean):
        return "n/a"
    ci = f"[{_pct(stats.test_ci_low)}, {_pct(stats.test_ci_high)}]"
    if stats.n_seeds > 1 and math.isfinite(stats.test_std):
        return f"{_pct(stats.test_mean)} ± {_pct(stats.test_std)}% {ci}"
    return f"{_pct(stats.test_mean)}% {ci}"


def _floor_cell(floors: dict, name: str) -> str:
    return (f"{_pct(as_float(floors.get(name + '_accuracy')))}% [{_pct(as_float(floors.get(name + '_accuracy_ci_low')))}, "
            f"{_pct(as_float(floors.get(name + '_accuracy_ci_high')))}]")


def provenance(root: Path, runs: list[dict]) -> list[str]:
    """Markdown bullets: data source, weights' origin and splits, from the first run's saved config."""
    config: dict = {}
    for run in runs:
        try:
            config = json.loads((root / str(run.get("run_dir", "")) / "config.json").read_text(encoding="utf-8"))
            break
        except (OSError, ValueError):
            continue
    weights = sorted({str(r.get("weights")) for r in runs if r.get("weights") is not None})
    bn = sorted({str(r.get("bn", "study")) for r in runs})
    data = config.get("data") or config.get("data_resolved") or "unknown"  # as the user named it
    split = (f"{config.get('train_n', '?')} train / {config.get('val_n', '?')} validation / "
             f"{config.get('test_n', 0)} test images")
    return [f"- Data: `{data}` ({split}); validation chooses epochs and levels, test is only scored.",
            f"- Weights: {'; '.join(describe_weights(w) for w in weights) or 'unknown'}.",
            f"- BatchNorm while fine-tuning: {', '.join(bn)}.", ""]


def spread(mean: float, std: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if math.isfinite(std):
        return f"{mean:{fmt}} ± {std:{fmt}}"
    return f"{mean:{fmt}}"


def _epochs(stats: LevelStats) -> str:
    # whole epochs when every seed ran the same number ("8", not "8.0")
    same = not math.isfinite(stats.epochs_std) or stats.epochs_std == 0  # one seed, or all equal
    if math.isfinite(stats.epochs_mean) and same and float(stats.epochs_mean).is_integer():
        return f"{stats.epochs_mean:.0f}"
    return spread(stats.epochs_mean, stats.epochs_std, ".1f")


def _ids(run_ids: list[str]) -> str:
    return "none" if not run_ids else ", ".join(run_ids[:8]) + (f" and {len(run_ids) - 8} more" if len(run_ids) > 8 else "")


def params_text(value: int | None) -> str:
    return f"{value:,}" if value is not None else "n/a"


def ratio_text(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def _p_value(value: float) -> str:
    return f"{value:.3g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(row):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(r) for r in rows), ""]


def _floors_section(floors: dict | None) -> list[str]:
    lines = ["## Floors (test images)", ""]
    if not floors:
        return lines + ["No floors: the dataset has no test split (or `baseline.json` is missing).", ""]
    lines += markdown_table(["Floor", "Test accuracy [95% CI]", "Macro-F1"],
                            [["majority class (" + str(floors.get("majority_class")) + ")",
                              _floor_cell(floors, "majority"), f"{as_float(floors.get('majority_macro_f1')):.3f}"],
                             ["logistic regression on " + str(len(floors.get("features", []))) + " image features",
                              _floor_cell(floors, "features"), f"{as_float(floors.get('features_macro_f1')):.3f}"]])
    return lines + [f"Both floors are trained on the training split and scored on the same {floors.get('n')} test "
                    "images as every run (`device.baseline`). A model is evidence only where it beats both.", ""]


def _summary_md(root: Path, runs: list[dict], levels: dict[str, list[LevelStats]],
                failures: list[dict], superseded: int, plots: dict[str, Path]) -> str:
    n_values = sorted({as_int(r.get("val_n")) for r in runs if as_int(r.get("val_n")) is not None})
    lines = ["# Sweep summary", ""]
    lines += provenance(root, runs)
    counts = (f"{len(runs)} successful runs of {len(levels)} backbones; {len(failures)} failed run{'' if len(failures) == 1 else 's'}"
              + (f"; {superseded} failed attempts later rerun successfully" if superseded else "") + ".")
    lines += [counts]
    if n_values:
        images = str(n_values[0]) if len(n_values) == 1 else f"{n_values[0]} to {n_values[-1]}"
        lines += [f"Validation images per run: {images}. Accuracies are given with their Wilson 95% "
                  "interval; across several seeds, mean ± sample std with the mean of the seeds' bounds."]
    lines += [""]

    lines += _floors_section(read_floors(root))

    lines += ["## Level 0 (head only)", ""]
    baseline = [s for stats in levels.values() for s in stats if s.level == 0]
    if baseline:
        lines += markdown_table(["Backbone", "Val accuracy [95% CI]", "Macro-F1", "Trainable params", "PTR"],
                        [[s.backbone, accuracy_cell(s), spread(s.f1_mean, s.f1_std, ".3f"),
                          params_text(s.trainable_params), ratio_text(s.ptr)] for s in baseline])
    else:
        lines += ["No level-0 run succeeded.", ""]

    lines += ["## Accuracy per level", ""]
    for backbone, stats in levels.items():
        lines += [f"### {backbone}", ""]
        lines += markdown_table(["Level k", "LTR", "PTR", "Trainable params", "Val accuracy [95% CI]", "Macro-F1",
                         "Test accuracy [95% CI]", "Epochs", "Wall s", "Seeds"],
                        [[str(s.level), ratio_text(s.ltr), ratio_text(s.ptr), params_text(s.trainable_params),
                          accuracy_cell(s), spread(s.f1_mean, s.f1_std, ".3f"), _test_cell(s),
                          _epochs(s), spread(s.wall_mean, s.wall_std, ".0f"),
                          str(s.n_seeds)] for s in stats])
        if f"accuracy_vs_level_{backbone}" in plots:
            lines += [f"![{backbone}: accuracy against level]({PLOTS}/accuracy_vs_level_{backbone}.png)", ""]

    best = {backbone: best_level(stats) for backbone, stats in levels.items()}
    lines += ["## Best level per backbone", ""]
    overall = None
    if best:
        overall = overall_best(best)
        lines += best_section(root, best, overall)
    else:
        lines += ["No successful run.", ""]

    lines += ["## Seeds", ""]
    seeded = [s for stats in levels.values() for s in stats if s.n_seeds > 1]
    if seeded:
        lines += markdown_table(["Backbone", "Level k", "Seeds", "Mean", "Std", "Min", "Max"],
                        [[s.backbone, str(s.level), str(s.n_seeds), f"{_pct(s.acc_mean)}%",
                          f"{_pct(s.acc_std)} pts", f"{_pct(s.acc_min)}%", f"{_pct(s.acc_max)}%"]
                         for s in seeded])
    else:
        lines += ["Every level ran with a single seed; no spread over seeds can be given.", ""]

    lines += ["## Failures", ""]
    if failures:
        lines += markdown_table(["Run", "Backbone", "Level k", "Seed", "Error"],
                        [[str(f.get("run_id", "")), str(f.get("backbone", "")), str(f.get("level", "")),
                          str(f.get("seed", "")), _short(str(f.get("error", "")))] for f in failures])
    else:
        lines += ["No run failed.", ""]

    shards = [s for s in shard_status(root, runs, failures) if int(s["shard"].split("/")[1]) > 1]
    if shards:
        lines += ["## Shards", ""]
        lines += markdown_table(["Shard", "Runs planned", "Missing (no line yet)", "Failed"],
                        [[s["shard"], "?" if s["runs"] is None else str(s["runs"]), _ids(s["missing"]), _ids(s["failed"])]
                         for s in shards])

    lines += ["## Reading these numbers", ""]
    lines += _reading_notes(best, overall)
    return "\n".join(lines).rstrip() + "\n"


def best_section(root: Path, best: dict[str, LevelStats], overall: LevelStats) -> list[str]:
    ref_run = overall.reference
    rows = []
    for backbone, s in best.items():
        if s is overall:
            p_cell, pair_cell = "reference", f"seed {ref_run.get('seed')}"
        else:
            test = paired_test(root, s.reference, ref_run)
            if test is None:
                p_cell, pair_cell = "n/a", f"no shared {PREDICTIONS}"
            else:
                p_cell = f"{_p_value(test['p_value'])} (b={test['b']}, c={test['c']})"
                pair_cell = (f"same images ({test['n']})" if test["same_images"]
                             else f"{test['n']} shared of {test['n_a']} / {test['n_b']} images")
        floor_test = test_vs_features(root, s.reference)
        floor_cell = ("n/a" if floor_test is None else
                      f"{_p_value(floor_test['p_value'])} (b={floor_test['b']}, c={floor_test['c']})")
        rows.append([backbone, str(s.level), ratio_text(s.ltr), ratio_text(s.ptr), accuracy_cell(s),
                     spread(s.f1_mean, s.f1_std, ".3f"), p_cell, pair_cell, _test_cell(s), floor_cell])
    lines = markdown_table(["Backbone", "Best level", "LTR", "PTR", "Val accuracy [95% CI]", "Macro-F1",
                    f"McNemar p vs {overall.backbone} (val)", "Paired on", "Test accuracy [95% CI]",
                    "McNemar p vs features (test)"], rows)
    lines += [f"Best backbone overall: {overall.backbone} at level {overall.level}. McNemar: exact two-sided "
              f"test on the discordant images between the lowest-seed run of each best level and that of "
              f"{overall.backbone} (seed {ref_run.get('seed')}), joined on `path`. {MCNEMAR_CONVENTION} The best level is chosen on "
              f"validation accuracy; the test column is measured once, after every choice.", ""]
    return lines


def _reading_notes(best: dict[str, LevelStats], overall: LevelStats | None) -> list[str]:
    lines = ["- Differences between accuracies whose 95% intervals overlap are not evidence of a "
             "difference; a paired McNemar test on the same images is the test to read.", ]
    if overall is None:
        return lines + [""]
    others = [s for s in best.values() if s is not overall]
    overlapping = [s.backbone for s in others if s.ci_high >= overall.ci_low]
    separate = [s.backbone for s in others if s.ci_high < overall.ci_low]
    lines.append(f"- Best-level intervals overlapping that of {overall.backbone} "
                 f"[{_pct(overall.ci_low)}, {_pct(overall.ci_high)}]: "
                 f"{', '.join(overlapping) if overlapping else 'none'}.")
    if separate:
        lines.append(f"- Best-level intervals entirely below it: {', '.join(separate)}.")
    return lines + [""]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- plots --------------------------------------------------------------------------------

def _plots(root: Path, levels: dict[str, list[LevelStats]], log: Callable[[str], object]) -> dict[str, bytes]:
    # Figure + the Agg canvas directly rather than pyplot: no global backend switch and no
    # figure registry to leak across calls in a long sweep process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def new_figure():
        fig = Figure(figsize=FIGSIZE, dpi=DPI)
        FigureCanvasAgg(fig)
        return fig

    def png(fig) -> bytes:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()

    out: dict[str, bytes] = {}
    for backbone, stats in levels.items():
        out[f"accuracy_vs_level_{backbone}"] = png(_plot_levels(new_figure(), backbone, stats))
    out["accuracy_vs_level"] = png(_plot_all(new_figure(), levels))
    for backbone, stats in levels.items():
        top = best_level(stats)
        run = top.reference
        rows = read_history(root / str(run.get("run_dir", "")) / HISTORY)
        if not rows:
            log(f"no {HISTORY} for {run.get('run_id')}; curves of {backbone} skipped")
            continue
        history = {key: np.array([row[key] for row in rows]) for key in rows[0]}
        out[f"curves_{backbone}"] = png(_plot_curves(new_figure(), backbone, top, history))
    return out


def _error_bars(stats: list[LevelStats]) -> tuple[np.ndarray, np.ndarray]:
    acc = np.array([100 * s.acc_mean for s in stats])
    err = np.array([[100 * (s.acc_mean - s.ci_low) for s in stats], [100 * (s.ci_high - s.acc_mean) for s in stats]])
    return acc, np.clip(err, 0, None)


def _plot_levels(fig, backbone: str, stats: list[LevelStats]):
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax = fig.add_subplot(1, 1, 1)
    k = np.array([s.level for s in stats])
    acc, err = _error_bars(stats)
    several = any(s.n_seeds > 1 for s in stats)
    label = "val accuracy (mean over seeds), Wilson 95% CI" if several else "val accuracy, Wilson 95% CI"
    handles = [ax.errorbar(k, acc, yerr=err, fmt="o-", color="tab:blue", capsize=3, label=label)]
    if several:
        seeds_k = [s.level for s in stats for _ in s.runs]
        seeds_acc = [100 * float(r["val_accuracy"]) for s in stats for r in s.runs]
        handles.append(ax.scatter(seeds_k, seeds_acc, s=12, color="tab:blue", alpha=0.35, zorder=3,
                                  label="single seeds"))
    top = best_level(stats)
    handles.append(ax.scatter([top.level], [100 * top.acc_mean], marker="*", s=180, color="gold",
                              edgecolor="black", zorder=4, label=f"best level (k={top.level})"))
    ax.set_xlabel("trainable layers k (last k layers of the backbone)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    # Levels are whole layer counts; label them directly when few, else only integer ticks.
    if len(k) <= 15:
        ax.set_xticks(k)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    params = [(s.level, s.trainable_params) for s in stats if s.trainable_params]
    if params:
        twin = ax.twinx()
        pk, pv = zip(*params)
        millions = np.array(pv, dtype=float) / 1e6
        handles += twin.plot(pk, millions, "s--", color="tab:orange", alpha=0.8, markersize=4,
                             label="trainable parameters")
        if millions.max() / millions.min() > 100:
            twin.set_yscale("log")
            # Plain numbers read better than 10^-2 powers for a count in millions.
            twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        twin.set_ylabel("trainable parameters (millions)", color="tab:orange")
        # Accuracy is the quantity read off this plot: draw it above the parameter line.
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        twin.tick_params(axis="y", colors="tab:orange")
    ax.set_title(f"{backbone}: validation accuracy and trainable parameters by level")
    # Below the axes: inside, it would hide points of one of the two y axes.
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small", frameon=False)
    return fig


def _plot_all(fig, levels: dict[str, list[LevelStats]]):
    ax = fig.add_subplot(1, 1, 1)
    for backbone, stats in levels.items():
        ltr = np.array([s.ltr for s in stats])
        acc, err = _error_bars(stats)
        ax.errorbar(ltr, acc, yerr=err, fmt="o-", capsize=2, markersize=4, label=backbone)
    ax.set_xlabel("layer tuning ratio LTR (k / layers in backbone)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy by layer tuning ratio (Wilson 95% CI)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=2 if len(levels) > 5 else 1)
    return fig


def _plot_curves(fig, backbone: str, top: LevelStats, history: dict[str, np.ndarray]):
    run = top.reference
    epoch = history["epoch"]
    best_epoch = as_int(run.get("best_epoch"))
    panels = (("accuracy", "accuracy (%)", 100.0), ("loss", "loss (cross-entropy)", 1.0))
    for index, (key, ylabel, scale) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, index)
        for column, name, style in ((key, "training", "-"), (f"val_{key}", "validation", "--")):
            if column in history:
                ax.plot(epoch, scale * history[column], style, marker="o", markersize=3, label=name)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{backbone}, level {top.level}, seed {run.get('seed')}: training curves")
    return fig


# --- command line -------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m train.summary ROOT``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 every planned run succeeded, 3 the summary is written but some
        shard's runs are missing or failed (each named), 2 when the folder has no usable
        results.
    """
    parser = argparse.ArgumentParser(prog="python -m train.summary",
                                     description="Rebuild summary.csv, summary.md and plots/ of a sweep folder.")
    parser.add_argument("root", type=Path, help="sweep folder holding results.jsonl")
    args = parser.parse_args(argv)
    return run_command(lambda: _summarize(args.root), (ValueError,), "rerun the same command")


def _summarize(root: Path) -> int:
    """Write the summary of ``root`` and name every shard's missing or failed runs."""
    paths = write_summary(root=root, log=lambda line: print(line, file=sys.stderr))
    print(paths["summary_md"])
    runs, failures, _ = load_runs(root)
    incomplete = [s for s in shard_status(root, runs, failures) if s["missing"] or s["failed"]]
    for s in incomplete:
        missing = "never started" if s["runs"] is None else f"{len(s['missing'])} run(s) missing ({_ids(s['missing'])})"
        print(f"shard {s['shard']}: {missing}, {len(s['failed'])} failed ({_ids(s['failed'])}); "
              f"run that shard again to finish", file=sys.stderr)
    return Exit.PARTIAL if incomplete else Exit.OK


if __name__ == "__main__":
    sys.exit(main())
