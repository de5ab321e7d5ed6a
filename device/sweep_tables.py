"""The study's tables and their text, shared by the sweep summary (``train.summary``) and the
benchmark report (``bench report``); TensorFlow-free.

From a sweep folder's records (``device.sweep_results``): accuracy cells with their Wilson
intervals, spreads over seeds, parameter counts and tuning ratios, the floors, the best level
per backbone with McNemar tests (the model under test first, ``device.metrics``), where the
figures come from, and one Markdown table writer.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from device.metrics import MCNEMAR_CONVENTION, mcnemar
from device.predictions import PredictionsError, correct_by_path
from device.sweep_results import (BASELINE, BASELINE_PREDICTIONS, CONFIG, TEST_PREDICTIONS, VAL_PREDICTIONS,
                                   LevelStats, as_float)

PREDICTIONS = VAL_PREDICTIONS


class FloorsError(ValueError):
    """A ``baseline.json`` that is there but cannot be read; the message names it."""


def read_floors(root: Path) -> dict | None:
    """The sweep's ``baseline.json`` (majority class and feature baseline on the test split);
    ``None`` when there is none (no test split).

    Raises:
        FloorsError: the file is there but unreadable, not JSON or not the floors' record
            (damaged); the message names it, so a summary never blames a missing test split.
    """
    path = Path(root) / BASELINE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FloorsError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except ValueError:
        raise FloorsError(f"{path}: unreadable (not JSON; damaged?); rerun the sweep to score the floors again") from None
    if not isinstance(record, dict) or "features_accuracy" not in record:
        raise FloorsError(f"{path}: unreadable (not the floors' record; damaged?); rerun the sweep to score "
                          f"the floors again")
    return record


def floor_comparison(root: Path, run: dict) -> dict | None:
    """McNemar's test of a run against the feature baseline on the test images.

    ``b`` counts test images the run got right and the baseline wrong; ``None`` when either
    predictions file is missing or they share no image.
    """
    return paired(correct(run_file(root, run, TEST_PREDICTIONS)), correct(Path(root) / BASELINE_PREDICTIONS))


def describe_weights(weights: str | None) -> str:
    """Where a sweep's starting weights came from, in words (``--weights`` as recorded)."""
    text = str(weights or "none")
    if text == "imagenet":
        return "ImageNet (Keras applications)"
    if text == "none":
        return "random initialisation (no pretrained weights)"
    return f"in-domain pretrained or user-supplied weights from `{text}`"


def paired_runs(root: Path, run_a: dict, run_b: dict) -> dict | None:
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
    return paired(correct(run_file(root, run_a, PREDICTIONS)), correct(run_file(root, run_b, PREDICTIONS)))


def paired(a: dict[str, bool] | None, b: dict[str, bool] | None) -> dict | None:
    """McNemar on the images two prediction files share, with how far they overlap."""
    if a is None or b is None:
        return None
    common = sorted(set(a) & set(b))
    if not common:
        return None
    result = mcnemar([a[p] for p in common], [b[p] for p in common])
    result.update(same_images=set(a) == set(b), n_a=len(a), n_b=len(b))
    return result


def run_file(root: Path, run: dict, name: str) -> Path | None:
    return Path(root) / str(run["run_dir"]) / name if run.get("run_dir") else None


def correct(path: Path | None) -> dict[str, bool] | None:
    """``{image path: prediction right}`` of a predictions file; None when absent or unreadable."""
    if path is None:
        return None
    try:
        return correct_by_path(path)
    except PredictionsError:
        return None


def points(value: float | None) -> str:
    """A share as percentage points without the sign: ``0.829`` -> ``82.9`` (``n/a`` when unknown)."""
    return f"{100 * value:.1f}" if value is not None and math.isfinite(value) else "n/a"


def percent(value: float | None) -> str:
    """A share as a percentage: ``0.829`` -> ``82.9%`` (``n/a`` when unknown); every report's."""
    return f"{points(value)}%" if value is not None and math.isfinite(value) else "n/a"


def accuracy_cell(stats: LevelStats) -> str:
    ci = f"[{points(stats.ci_low)}, {points(stats.ci_high)}]"
    if stats.n_seeds > 1:
        return f"{points(stats.acc_mean)} ± {points(stats.acc_std)}% {ci}"
    return f"{points(stats.acc_mean)}% {ci}"


def test_cell(stats: LevelStats) -> str:
    if not math.isfinite(stats.test_mean):
        return "n/a"
    ci = f"[{points(stats.test_ci_low)}, {points(stats.test_ci_high)}]"
    if stats.n_seeds > 1 and math.isfinite(stats.test_std):
        return f"{points(stats.test_mean)} ± {points(stats.test_std)}% {ci}"
    return f"{points(stats.test_mean)}% {ci}"


def floor_cell(floors: dict, name: str) -> str:
    return (f"{points(as_float(floors.get(name + '_accuracy')))}% [{points(as_float(floors.get(name + '_accuracy_ci_low')))}, "
            f"{points(as_float(floors.get(name + '_accuracy_ci_high')))}]")


def provenance(root: Path, runs: list[dict]) -> list[str]:
    """Markdown bullets: data source, weights' origin and splits, from the first run's saved config."""
    config: dict = {}
    for run in runs:
        try:
            config = json.loads((root / str(run.get("run_dir", "")) / CONFIG).read_text(encoding="utf-8"))
            break
        except (OSError, ValueError):
            continue
    weights = sorted({str(r.get("weights")) for r in runs if r.get("weights") is not None})
    bn = sorted({str(r.get("bn", "study")) for r in runs})
    data = config.get("data") or config.get("data_resolved") or "unknown"  # as the user named it
    split = (f"{config.get('train_n', '?')} train / {config.get('val_n', '?')} validation / "
             f"{config.get('test_n', 0)} test images")
    lines = [f"- Data: `{data}` ({split}); validation chooses epochs and levels, test is only scored.",
             f"- Weights: {'; '.join(describe_weights(w) for w in weights) or 'unknown'}.",
             f"- BatchNorm while fine-tuning: {', '.join(bn)}."]
    if "none" in {w.lower() for w in weights}:
        lines.append(RANDOM_WEIGHTS_NOTE)
    return lines + [""]


# said wherever models with random frozen layers are reported (the offline demo's)
RANDOM_WEIGHTS_NOTE = (
    "- **Models with random frozen layers** (`--weights none`, as `make demo` trains offline): only their top "
    "layers learnt, so their accuracy says nothing about the backbones, and their outputs are near-uniform. Their "
    "int8 artifacts then miss the export's agreement threshold (97% of validation images answered as the Keras "
    "model answers), because any rounding flips a near-tie. The threshold is there to catch a conversion that "
    "changes what a trained model answers (a wrong graph, int8 ranges stretched by outlier images); judge it on "
    "models trained from real weights (ImageNet, or `train.pretrain` in-domain).")


def spread(mean: float, std: float, fmt: str) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if math.isfinite(std):
        return f"{mean:{fmt}} ± {std:{fmt}}"
    return f"{mean:{fmt}}"


def epochs_text(stats: LevelStats) -> str:
    # whole epochs when every seed ran the same number ("8", not "8.0")
    same = not math.isfinite(stats.epochs_std) or stats.epochs_std == 0  # one seed, or all equal
    if math.isfinite(stats.epochs_mean) and same and float(stats.epochs_mean).is_integer():
        return f"{stats.epochs_mean:.0f}"
    return spread(stats.epochs_mean, stats.epochs_std, ".1f")


def ids_text(run_ids: list[str]) -> str:
    return "none" if not run_ids else ", ".join(run_ids[:8]) + (f" and {len(run_ids) - 8} more" if len(run_ids) > 8 else "")


def params_text(value: int | None) -> str:
    return f"{value:,}" if value is not None else "n/a"


def ratio_text(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def p_value_text(value: float) -> str:
    return f"{value:.3g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(row):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(r) for r in rows), ""]


def floors_section(floors: dict | None, unreadable: str | None = None) -> list[str]:
    """The floors' table; ``unreadable`` says why ``baseline.json`` could not be read."""
    lines = ["## Floors (test images)", ""]
    if unreadable:
        return lines + [f"No floors: {unreadable}.", ""]
    if not floors:
        return lines + ["No floors: the dataset has no test split (or `baseline.json` is missing).", ""]
    lines += markdown_table(["Floor", "Test accuracy [95% CI]", "Macro-F1"],
                            [["majority class (" + str(floors.get("majority_class")) + ")",
                              floor_cell(floors, "majority"), f"{as_float(floors.get('majority_macro_f1')):.3f}"],
                             ["logistic regression on " + str(len(floors.get("features", []))) + " image features",
                              floor_cell(floors, "features"), f"{as_float(floors.get('features_macro_f1')):.3f}"]])
    return lines + [f"Both floors are trained on the training split and scored on the same {floors.get('n')} test "
                    "images as every run (`device.baseline`). A model is evidence only where it beats both.", ""]


def best_section(root: Path, best: dict[str, LevelStats], overall: LevelStats) -> list[str]:
    ref_run = overall.reference
    rows = []
    for backbone, s in best.items():
        if s is overall:
            p_cell, pair_cell = "reference", f"seed {ref_run.get('seed')}"
        else:
            test = paired_runs(root, s.reference, ref_run)
            if test is None:
                p_cell, pair_cell = "n/a", f"no shared {PREDICTIONS}"
            else:
                p_cell = f"{p_value_text(test['p_value'])} (b={test['b']}, c={test['c']})"
                pair_cell = (f"same images ({test['n']})" if test["same_images"]
                             else f"{test['n']} shared of {test['n_a']} / {test['n_b']} images")
        floor_test = floor_comparison(root, s.reference)
        floor_cell = ("n/a" if floor_test is None else
                      f"{p_value_text(floor_test['p_value'])} (b={floor_test['b']}, c={floor_test['c']})")
        rows.append([backbone, str(s.level), ratio_text(s.ltr), ratio_text(s.ptr), accuracy_cell(s),
                     spread(s.f1_mean, s.f1_std, ".3f"), p_cell, pair_cell, test_cell(s), floor_cell])
    lines = markdown_table(["Backbone", "Best level", "LTR", "PTR", "Val accuracy [95% CI]", "Macro-F1",
                    f"McNemar p vs {overall.backbone} (val)", "Paired on", "Test accuracy [95% CI]",
                    "McNemar p vs features (test)"], rows)
    lines += ["Best level: the highest mean validation accuracy over seeds; ties go to the level with fewer "
              "trainable parameters, then to the lower level (so the cheaper model wins when validation cannot "
              "tell them apart). With a few hundred validation images, levels one or two images apart are "
              "ties in all but name: the Seeds section shows how often each level wins per seed.", "",
              f"Best backbone overall: {overall.backbone} at level {overall.level}. McNemar: exact two-sided "
              f"test on the discordant images between the lowest-seed run of each best level and that of "
              f"{overall.backbone} (seed {ref_run.get('seed')}), joined on `path`. {MCNEMAR_CONVENTION} The best level is chosen on "
              f"validation accuracy; the test column is measured once, after every choice.", ""]
    return lines


def reading_notes(best: dict[str, LevelStats], overall: LevelStats | None) -> list[str]:
    lines = ["- Differences between accuracies whose 95% intervals overlap are not evidence of a "
             "difference; a paired McNemar test on the same images is the test to read.", ]
    if overall is None:
        return lines + [""]
    others = [s for s in best.values() if s is not overall]
    overlapping = [s.backbone for s in others if s.ci_high >= overall.ci_low]
    separate = [s.backbone for s in others if s.ci_high < overall.ci_low]
    lines.append(f"- Best-level intervals overlapping that of {overall.backbone} "
                 f"[{points(overall.ci_low)}, {points(overall.ci_high)}]: "
                 f"{', '.join(overlapping) if overlapping else 'none'}.")
    if separate:
        lines.append(f"- Best-level intervals entirely below it: {', '.join(separate)}.")
    return lines + [""]


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def level_wins(stats: list[LevelStats]) -> dict[int, int]:
    """For each seed, the level of this backbone with the best validation accuracy on that
    seed alone (ties as ``best_level``: fewer trainable parameters, then the lower level);
    ``{level: seeds it wins}``."""
    by_seed: dict[int, list[tuple]] = {}
    for s in stats:
        for run in s.runs:
            acc = as_float(run.get("val_accuracy"))
            if acc == acc:  # not nan
                params = s.trainable_params if s.trainable_params is not None else math.inf
                by_seed.setdefault(int(run.get("seed", 0)), []).append((-acc, params, s.level))
    wins: dict[int, int] = {}
    for candidates in by_seed.values():
        level = min(candidates)[2]
        wins[level] = wins.get(level, 0) + 1
    return wins
