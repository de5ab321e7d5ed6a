"""train.summary on a fake sweep folder: CSV rows, Markdown tables, McNemar, plots, reruns."""
from __future__ import annotations

import csv
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.dataset import LABELS
from device.metrics import classification_metrics, mcnemar, wilson_interval
from train import summary
from train.summary import write_summary

N_VAL = 60
LAYERS = {"densenet121": 428, "mobilenetv2": 155}
TOTAL = {"densenet121": 7_040_579, "mobilenetv2": 2_261_827}
LEVELS = {"densenet121": (0, 10, 20), "mobilenetv2": (0, 5, 10)}
# Number of correct validation images per (backbone, level, seed): densenet121 is best at 10,
# mobilenetv2 at 5; level 0 is clearly worse, as in the study.
CORRECT = {
    ("densenet121", 0, 0): 40, ("densenet121", 0, 1): 42,
    ("densenet121", 10, 0): 57, ("densenet121", 10, 1): 56,
    ("densenet121", 20, 0): 54, ("densenet121", 20, 1): 55,
    ("mobilenetv2", 0, 0): 45, ("mobilenetv2", 0, 1): 47,
    ("mobilenetv2", 5, 0): 52, ("mobilenetv2", 5, 1): 53,
    ("mobilenetv2", 10, 0): 50, ("mobilenetv2", 10, 1): 51,
}
VAL_PATHS = [f"val/{LABELS[i % 3]}/{i:04d}.jpg" for i in range(N_VAL)]
VAL_LABELS = np.array([i % 3 for i in range(N_VAL)])


def _trainable(backbone: str, level: int) -> int:
    return 3 * (LAYERS[backbone] * 3 + 1) + level * 40_000


def make_run(root: Path, backbone: str, level: int, seed: int, correct: int, shuffle: bool = False,
             paths: list[str] | None = None) -> dict:
    """Write one run's history and predictions under root and return its record."""
    run_id = f"{backbone}-L{level:03d}-s{seed}"
    run_dir = f"runs/{backbone}/L{level:03d}-s{seed}"
    folder = root / run_dir
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    paths = list(VAL_PATHS if paths is None else paths)
    labels = VAL_LABELS[:len(paths)]
    right = np.zeros(len(paths), dtype=bool)
    right[rng.choice(len(paths), size=correct, replace=False)] = True
    preds = np.where(right, labels, (labels + 1) % 3)
    order = rng.permutation(len(paths)) if shuffle else np.arange(len(paths))
    with (folder / "val_predictions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "label_index", "prob_GALAXY", "prob_QSO", "prob_STAR", "pred_index"])
        for i in order:
            probs = np.full(3, 0.1)
            probs[preds[i]] = 0.8
            writer.writerow([paths[i], LABELS[labels[i]], labels[i], *probs, preds[i]])
    epochs = 6
    with (folder / "history.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"])
        for e in range(1, epochs + 1):
            writer.writerow([e, 1.2 / e, 0.5 + 0.07 * e, 1.0 / e + 0.1, 0.45 + 0.06 * e, 3.5])
    metrics = classification_metrics(labels, preds)
    record = {
        "run_id": run_id, "run_dir": run_dir, "backbone": backbone, "level": level, "seed": seed,
        "img_size": 96, "epochs": 10, "epochs_run": epochs, "best_epoch": 5,
        **{k: v for k, v in metrics.items() if not k.startswith("val_support_")},
        "trainable_params": _trainable(backbone, level), "total_params": TOTAL[backbone],
        "layers_total": LAYERS[backbone], "ltr": level / LAYERS[backbone],
        "ptr": _trainable(backbone, level) / TOTAL[backbone],
        "first_trainable_layer": f"layer_{LAYERS[backbone] - level}", "wall_seconds": 20.0 + level,
        "train_images_per_s": 150.0, "cache_features": level == 0, "weights": "imagenet",
    }
    return record


def write_results(root: Path, records: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "results.jsonl").open("a") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")


FAILED = {"run_id": "mobilenetv2-L010-s2", "run_dir": "runs/mobilenetv2/L010-s2", "backbone": "mobilenetv2",
          "level": 10, "seed": 2, "img_size": 96, "epochs": 10, "weights": "imagenet",
          "error": "ResourceExhaustedError: OOM when allocating tensor | shape [64,96,96,32]"}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 backbones x 3 levels x 2 seeds, mobilenetv2 predictions shuffled, one failed run."""
    root = tmp_path / "sweep"
    records = [make_run(root, b, level, seed, CORRECT[(b, level, seed)], shuffle=(b == "mobilenetv2"))
               for b in LEVELS for level in LEVELS[b] for seed in (1, 0)]
    write_results(root, records + [FAILED])
    return root


def _md_rows(text: str, heading: str) -> list[list[str]]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def test_summary_csv_rows_and_columns(sweep: Path):
    paths = write_summary(sweep, log=lambda _: None)
    with paths["summary_csv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12
    keys = [(r["backbone"], int(r["level"]), int(r["seed"])) for r in rows]
    assert keys == sorted(keys)
    columns = list(rows[0])
    assert columns[:len(summary.COLUMNS)] == list(summary.COLUMNS)
    assert "val_confusion" not in columns and "error" not in columns
    assert all(f"val_f1_{label}" in columns for label in LABELS)
    first = rows[0]
    assert first["run_id"] == "densenet121-L000-s0"
    assert float(first["val_accuracy"]) == pytest.approx(40 / N_VAL)


def test_summary_md_tables_best_level_and_intervals(sweep: Path):
    text = write_summary(sweep, log=lambda _: None)["summary_md"].read_text()
    for heading in ("## Level 0 (head only)", "## Floors (test images)", "## Accuracy per level", "### densenet121", "### mobilenetv2",
                    "## Best level per backbone", "## Seeds", "## Failures"):
        assert heading in text
    assert "not evidence of a difference" in text

    best = {row[0]: row for row in _md_rows(text, "## Best level per backbone")}
    assert best["densenet121"][1] == "10" and best["mobilenetv2"][1] == "5"
    # densenet121 at 10, seeds 0 and 1: 57 and 56 of 60 right.
    acc = np.array([57, 56]) / N_VAL
    low = np.mean([wilson_interval(57, N_VAL)[0], wilson_interval(56, N_VAL)[0]])
    high = np.mean([wilson_interval(57, N_VAL)[1], wilson_interval(56, N_VAL)[1]])
    expected = f"{100 * acc.mean():.1f} ± {100 * acc.std(ddof=1):.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
    assert best["densenet121"][4] == expected
    assert re.fullmatch(r"\d+\.\d ± \d+\.\d% \[\d+\.\d, \d+\.\d\]", best["mobilenetv2"][4])
    assert best["densenet121"][6] == "reference"

    baseline = {row[0]: row for row in _md_rows(text, "## Level 0 (head only)")}
    assert set(baseline) == {"densenet121", "mobilenetv2"}
    assert baseline["mobilenetv2"][3] == f"{_trainable('mobilenetv2', 0):,}"

    seeds = _md_rows(text, "## Seeds")
    assert len(seeds) == 6 and all(row[2] == "2" for row in seeds)
    # #21 item 1: how often each level wins, seed by seed (densenet121: 10 on both; the tie rule is stated)
    wins = {(row[0], row[1]): row[7] for row in seeds}
    assert wins[("densenet121", "10")] == "2 of 2 seeds" and wins[("densenet121", "20")] == "0 of 2 seeds"
    assert wins[("mobilenetv2", "5")] == "2 of 2 seeds"
    assert "ties go to the level with fewer trainable parameters, then to the lower level" in text
    failures = _md_rows(text, "## Failures")
    assert [row[0] for row in failures] == ["mobilenetv2-L010-s2"]
    assert "ResourceExhaustedError" in failures[0][4]


def test_single_seed_interval_format(tmp_path: Path):
    root = tmp_path / "one"
    write_results(root, [make_run(root, "mobilenetv2", 0, 0, 57)])
    text = write_summary(root, log=lambda _: None)["summary_md"].read_text()
    low, high = wilson_interval(57, N_VAL)
    assert f"| mobilenetv2 | 95.0% [{100 * low:.1f}, {100 * high:.1f}] |" in text
    assert "single seed" in text


def _correct(path: Path) -> dict[str, bool]:
    with path.open(newline="") as fh:
        return {r["path"]: r["pred_index"] == r["label_index"] for r in csv.DictReader(fh)}


def test_mcnemar_matches_joined_predictions(sweep: Path):
    text = write_summary(sweep, log=lambda _: None)["summary_md"].read_text()
    row = {r[0]: r for r in _md_rows(text, "## Best level per backbone")}["mobilenetv2"]
    mobile = _correct(sweep / "runs/mobilenetv2/L005-s0/val_predictions.csv")
    dense = _correct(sweep / "runs/densenet121/L010-s0/val_predictions.csv")
    common = sorted(mobile)
    expected = mcnemar([mobile[p] for p in common], [dense[p] for p in common])
    assert row[6] == f"{expected['p_value']:.3g} (b={expected['b']}, c={expected['c']})"
    assert row[7] == f"same images ({N_VAL})"


def test_mcnemar_on_different_images_is_not_called_same(tmp_path: Path):
    root = tmp_path / "partial"
    write_results(root, [make_run(root, "densenet121", 10, 0, 55),
                         make_run(root, "mobilenetv2", 5, 0, 40, paths=VAL_PATHS[:45])])
    text = write_summary(root, log=lambda _: None)["summary_md"].read_text()
    row = {r[0]: r for r in _md_rows(text, "## Best level per backbone")}["mobilenetv2"]
    assert "same images" not in row[7]
    assert row[7] == f"45 shared of 45 / {N_VAL} images"


def test_plots_are_valid_pngs(sweep: Path):
    paths = write_summary(sweep, log=lambda _: None)
    names = {"accuracy_vs_level", "accuracy_vs_level_densenet121", "accuracy_vs_level_mobilenetv2",
             "curves_densenet121", "curves_mobilenetv2"}
    assert names <= set(paths)
    for name in names:
        assert paths[name].parent == sweep / "plots"
        with Image.open(paths[name]) as image:
            assert image.format == "PNG"
            assert image.size == (840, 540)


def test_last_successful_line_wins(tmp_path: Path):
    root = tmp_path / "rerun"
    first = make_run(root, "mobilenetv2", 5, 0, 30)
    final = make_run(root, "mobilenetv2", 5, 0, 54)
    failed_then_ok = {**FAILED, "run_id": "mobilenetv2-L000-s0", "level": 0, "seed": 0}
    later_failure = {**FAILED, "run_id": final["run_id"], "level": 5, "seed": 0}
    write_results(root, [first, failed_then_ok, final, make_run(root, "mobilenetv2", 0, 0, 45), later_failure])
    paths = write_summary(root, log=lambda _: None)
    with paths["summary_csv"].open(newline="") as fh:
        rows = {r["run_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"mobilenetv2-L005-s0", "mobilenetv2-L000-s0"}
    assert float(rows["mobilenetv2-L005-s0"]["val_accuracy"]) == pytest.approx(54 / N_VAL)
    text = paths["summary_md"].read_text()
    assert "No run failed." in text
    assert "2 failed attempts later rerun successfully" in text


def test_best_level_tie_goes_to_fewer_trainable_params(tmp_path: Path):
    root = tmp_path / "tie"
    write_results(root, [make_run(root, "mobilenetv2", level, 0, 50) for level in (10, 5, 0)])
    text = write_summary(root, log=lambda _: None)["summary_md"].read_text()
    assert _md_rows(text, "## Best level per backbone")[0][1] == "0"


@pytest.mark.parametrize("content", [None, "", "\n\n{\"run_id\": \"trunc"])
def test_missing_or_empty_results_is_a_clear_error(tmp_path: Path, content):
    if content is not None:
        (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises(ValueError, match="results.jsonl"):
        write_summary(tmp_path, log=lambda _: None)


def test_cli_rebuilds_summary(sweep: Path, capsys):
    assert summary.main([str(sweep)]) == 0
    assert (sweep / "summary.md").is_file() and (sweep / "summary.csv").is_file()
    assert summary.main([str(sweep / "missing")]) == 2
    assert "results.jsonl" in capsys.readouterr().err


def test_summary_without_matplotlib_writes_every_table_and_says_why_no_plots(sweep: Path, tmp_path: Path):
    # #13 item 6: skyedge[train] without the report extra died in train.summary with a traceback
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "no-matplotlib"
    shutil.copytree(sweep, copy)
    shutil.rmtree(copy / "plots", ignore_errors=True)
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from train.summary import main\nsys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "matplotlib is not installed" in done.stderr
    text = (copy / "summary.md").read_text()
    assert "## Best level per backbone" in text and "## Accuracy per level" in text
    assert not (copy / "plots").exists()
