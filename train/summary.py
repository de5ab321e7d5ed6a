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
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from device.atomic import write_bytes, write_text
from device.command import Exit, run_command
from device.dataset import LABELS
from device.sweep_results import (HISTORY, SHARD_RECORDS, VAL_PREDICTIONS, LevelStats, aggregate, as_int, best_level,
                                   HistoryError, load_runs, overall_best, read_history)
from device.sweep_tables import (FloorsError, accuracy_cell, best_section, epochs_text, floors_section, ids_text,
                                 level_wins, markdown_table, params_text, percent, points, provenance, ratio_text,
                                 read_floors, reading_notes, short, spread,
                                 test_cell)

PREDICTIONS = VAL_PREDICTIONS
PLOTS = "plots"

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


def _seeds_section(levels: dict[str, list[LevelStats]]) -> list[str]:
    """Per level: the spread over seeds, and on how many seeds it is its backbone's best."""
    lines = ["## Seeds", ""]
    seeded = [s for stats in levels.values() for s in stats if s.n_seeds > 1]
    if not seeded:
        return lines + ["Every level ran with a single seed; no spread over seeds can be given.", ""]
    wins = {backbone: level_wins(stats) for backbone, stats in levels.items()}
    lines += markdown_table(["Backbone", "Level k", "Seeds", "Mean", "Std", "Min", "Max", "Best level on"],
                            [[s.backbone, str(s.level), str(s.n_seeds), percent(s.acc_mean),
                              f"{points(s.acc_std)} pts", percent(s.acc_min), percent(s.acc_max),
                              f"{wins[s.backbone].get(s.level, 0)} of {s.n_seeds} seeds"] for s in seeded])
    return lines + ["Validation accuracy over seeds per level; the last column counts the seeds on which the level "
                    "is its backbone's best (each seed's runs compared alone, ties as for the best level). A level "
                    "that wins on one seed of three is not a finding.", ""]


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

    try:
        lines += floors_section(read_floors(root))
    except FloorsError as exc:
        lines += floors_section(None, unreadable=str(exc))

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
                          accuracy_cell(s), spread(s.f1_mean, s.f1_std, ".3f"), test_cell(s),
                          epochs_text(s), spread(s.wall_mean, s.wall_std, ".0f"),
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

    lines += _seeds_section(levels)

    lines += ["## Failures", ""]
    if failures:
        lines += markdown_table(["Run", "Backbone", "Level k", "Seed", "Error"],
                        [[str(f.get("run_id", "")), str(f.get("backbone", "")), str(f.get("level", "")),
                          str(f.get("seed", "")), short(str(f.get("error", "")))] for f in failures])
    else:
        lines += ["No run failed.", ""]

    shards = [s for s in shard_status(root, runs, failures) if int(s["shard"].split("/")[1]) > 1]
    if shards:
        lines += ["## Shards", ""]
        lines += markdown_table(["Shard", "Runs planned", "Missing (no line yet)", "Failed"],
                        [[s["shard"], "?" if s["runs"] is None else str(s["runs"]), ids_text(s["missing"]), ids_text(s["failed"])]
                         for s in shards])

    lines += ["## Reading these numbers", ""]
    lines += reading_notes(best, overall)
    return "\n".join(lines).rstrip() + "\n"


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
        try:
            rows = read_history(root / str(run.get("run_dir", "")) / HISTORY)
        except HistoryError as exc:
            log(f"warning: {exc}; curves of {backbone} skipped")
            continue
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
        missing = "never started" if s["runs"] is None else f"{len(s['missing'])} run(s) missing ({ids_text(s['missing'])})"
        print(f"shard {s['shard']}: {missing}, {len(s['failed'])} failed ({ids_text(s['failed'])}); "
              f"run that shard again to finish", file=sys.stderr)
    return Exit.PARTIAL if incomplete else Exit.OK


if __name__ == "__main__":
    sys.exit(main())
