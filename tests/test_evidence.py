"""Evidence that holds: test splits no choice reads, floors beside every accuracy, BatchNorm on purpose.

Small real things: class-coloured generated images, ``weights=None`` MobileNetV2 at 32 px.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from device.atomic import read_jsonl
from device.dataset import LABELS, index_tree, read_manifest, stratified_split, write_manifest
from device.predictions import read_predictions
from device.sweep_results import aggregate, best_level, load_runs
from train.sweep import SweepConfig, run_sweep


def _tree(root: Path, per_class: int = 14, size: int = 40) -> Path:
    for index, label in enumerate(LABELS):
        for i in range(per_class):
            make_image(root / label / f"{i:03d}.png", seed=70 * index + i, size=size, label_index=index)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = _tree(tmp_path_factory.mktemp("evidence"))
    write_manifest(root, stratified_split(index_tree(root)[0], seed=0))
    return root


def _config(data: Path, out: Path, **kw) -> SweepConfig:
    base = dict(data=str(data), out=str(out), backbones=("mobilenetv2",), levels="0,7", epochs=3,
                batch_size=8, img_size=32, lr=1e-3, seeds=(0,), weights="none")
    base.update(kw)
    return SweepConfig(**base)


def test_default_split_has_a_test_share_in_every_class(data):
    counts = read_manifest(data).counts()
    assert set(counts) == {"train", "val", "test"}
    for label in LABELS:
        assert counts["test"][label] == counts["val"][label] == 2  # 15% of 14, rounded
        assert counts["train"][label] == 10


def test_runs_carry_test_metrics_and_floors(data, tmp_path):
    out = run_sweep(_config(data, tmp_path / "s"), log=lambda m: None)
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 2 and not any("error" in r for r in rows)
    test_paths = {r.path for r in read_manifest(data).split("test")}
    for row in rows:
        assert row["test_n"] == len(test_paths) and row["bn"] == "frozen"
        assert row["test_accuracy_ci_low"] <= row["test_accuracy"] <= row["test_accuracy_ci_high"]
        assert set(read_predictions(out / row["run_dir"] / "test_predictions.csv")) == test_paths
        assert not test_paths & set(read_predictions(out / row["run_dir"] / "val_predictions.csv"))
    floors = json.loads((out / "baseline.json").read_text())
    assert floors["n"] == len(test_paths) and floors["split"] == "test"
    assert floors["majority_accuracy"] == pytest.approx(1 / 3)
    assert set(read_predictions(out / "baseline_test_predictions.csv")) == test_paths
    text = (out / "summary.md").read_text()
    assert "## Floors (test images)" in text and "McNemar p vs features (test)" in text
    assert "random initialisation" in text and "6 test images" in text
    # #20 item 5: the summary says the models are random and what the agreement threshold protects against
    assert "Models with random frozen layers" in text and "catch a conversion that changes what a trained" in text


def test_no_choice_reads_the_test_labels(data, tmp_path):
    """Permute the test labels: every epoch, level and calibration choice stays the same."""
    from export.quantize import calibration_set

    shuffled = tmp_path / "shuffled"
    dataset = read_manifest(data)
    tests = [r for r in dataset.records if r.split == "test"]
    rotated = {r.path: LABELS[(r.label_index + 1) % len(LABELS)] for r in tests}
    records = [replace(r, label=rotated.get(r.path, r.label), path=str(data / r.path)) for r in dataset.records]
    shuffled.mkdir()
    write_manifest(shuffled, records)

    a = run_sweep(_config(data, tmp_path / "a", levels="0,3,7"), log=lambda m: None)
    b = run_sweep(_config(shuffled, tmp_path / "b", levels="0,3,7"), log=lambda m: None)
    runs_a, runs_b = load_runs(a)[0], load_runs(b)[0]
    for ra, rb in zip(runs_a, runs_b):
        assert (ra["run_id"], ra["best_epoch"]) == (rb["run_id"], rb["best_epoch"])
        assert ra["val_accuracy"] == pytest.approx(rb["val_accuracy"])
    assert best_level(aggregate(runs_a)["mobilenetv2"]).level == best_level(aggregate(runs_b)["mobilenetv2"]).level
    # the test score does see the labels: with every test label changed, it changes
    assert [r["test_accuracy"] for r in runs_a] != [r["test_accuracy"] for r in runs_b]
    cal_a = calibration_set(read_manifest(data), 32, 12, seed=0)
    cal_b = calibration_set(read_manifest(shuffled), 32, 12, seed=0)
    assert [Path(p).parts[-2:] for p in cal_a.paths] == [Path(p).parts[-2:] for p in cal_b.paths]
    assert not set(cal_a.paths) & {r.path for r in tests}


def test_bn_modes_freeze_or_train_batchnorm():
    import tf_keras as keras

    from device.backbones import get
    from train.levels import level_info, set_level
    from train.model import build

    built = build(get("mobilenetv2"), 32, None)
    study = level_info(built.model, built.base, 20, bn="study")
    frozen = level_info(built.model, built.base, 20, bn="frozen")
    assert frozen["trainable_params"] < study["trainable_params"]
    set_level(built.model, built.base, 20, bn="frozen")
    top = built.base.layers[-20:]
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in top)
    assert all(not l.trainable for l in top if isinstance(l, keras.layers.BatchNormalization))
    assert any(l.trainable for l in top if not isinstance(l, keras.layers.BatchNormalization) and l.weights)


def test_sweep_records_bn_study(data, tmp_path):
    out = run_sweep(_config(data, tmp_path / "st", levels="7", epochs=1, bn="study"), log=lambda m: None)
    (row,) = read_jsonl(out / "results.jsonl")
    assert row["bn"] == "study" and "error" not in row
    assert json.loads((out / row["run_dir"] / "config.json").read_text())["bn"] == "study"


def test_pretraining_from_scratch_is_not_stuck_at_chance(tmp_path):
    """MobileNetV2 (Keras BatchNorm momentum 0.999) trained from random init on a small case.

    With Keras's momentum and no re-estimate, the moving statistics still hold their start
    after ~100 steps and every validation image gets the same answer (chance); pretraining's
    defaults (momentum 0.9, statistics re-estimated before each validation) learn.
    """
    from train.pretrain import PretrainConfig, pretrain

    root = _tree(tmp_path / "p", per_class=30, size=32)
    write_manifest(root, stratified_split(index_tree(root)[0], seed=0, val=0.25, test=0.25))
    results = {}
    for name, kw in (("ours", {}), ("keras", {"bn_momentum": 0.999, "bn_refresh": False})):
        messages: list[str] = []
        weights = pretrain(PretrainConfig(str(root), "mobilenetv2", str(tmp_path / name), epochs=8, img_size=32,
                                          batch_size=8, augment="none", **kw), log=messages.append)
        results[name] = (json.loads(weights.with_suffix(".json").read_text()), messages)
    meta, messages = results["ours"]
    assert meta["bn_momentum"] == 0.9 and meta["bn_refresh"] is True
    assert meta["val_accuracy"] >= 0.5, messages  # chance is 1/3 on 24 images
    assert not any("learnt nothing" in m for m in messages)
    assert sum("epoch" in m and "/8:" in m for m in messages) == 8  # a line per epoch
    keras_meta, keras_messages = results["keras"]
    assert keras_meta["val_accuracy"] < meta["val_accuracy"]
    if keras_meta["val_accuracy"] <= keras_meta["val_majority"]:
        assert any("learnt nothing" in m for m in keras_messages)


def test_non_finite_training_is_a_failed_run_and_the_exit_code_says_so(data, tmp_path):
    from device.command import Exit
    from train.sweep import main

    # lr near float32's limit: logits overflow to inf and the outputs become NaN
    code = main(["--data", str(data), "--out", str(tmp_path / "nan"), "--levels", "7", "--epochs", "1",
                 "--img-size", "32", "--batch-size", "8", "--weights", "none", "--lr", "1e38"])
    (row,) = read_jsonl(tmp_path / "nan" / "results.jsonl")
    assert "not finite" in row.get("error", ""), row
    assert code == Exit.PARTIAL
    assert main(["--data", str(data), "--out", str(tmp_path / "x"), "--lr", "nan", "--weights", "none"]) == 2


def test_append_after_a_truncated_last_line_keeps_both(tmp_path):
    from device.atomic import append_jsonl

    path = tmp_path / "results.jsonl"
    path.write_text('{"run_id": "a"}\n{"run_id": "b", "val_acc')
    append_jsonl(path, {"run_id": "b"})
    bad: list = []
    assert [r["run_id"] for r in read_jsonl(path, on_bad_line=lambda n, t: bad.append(n))] == ["a", "b"]
    assert bad == [2] and '"val_acc' in path.read_text()


def test_mcnemar_holds_for_thousands_of_discordant_pairs():
    from device.metrics import mcnemar

    a = np.zeros(10_000, bool)
    a[:5_000] = True
    b = ~a
    b[:2_400] = True  # 2,600 pairs one way, 5,000 the other: 7,600 discordant
    result = mcnemar(a, b)
    assert result["b"] == 2_600 and result["c"] == 5_000
    assert 0.0 <= result["p_value"] < 1e-100
    assert mcnemar(np.r_[a, ~a], np.r_[~a, a])["p_value"] == 1.0


def test_embedded_sample_is_small_real_and_split(tmp_path):
    from device.dataset import SAMPLE_DIR
    from train.data import copy_sample

    size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert size <= 5 * 10 ** 6
    out = copy_sample(tmp_path / "sample")
    counts = read_manifest(out).counts()
    assert {s: sum(c.values()) for s, c in counts.items()} == {"train": 420, "val": 90, "test": 90}
    assert all(counts["test"][label] == 30 for label in LABELS)
    readme = (out / "README.md").read_text()
    assert "Provenance" in readme and "Sloan" in readme
    assert copy_sample(out) == out  # a rerun keeps identical files
    (out / "GALAXY" / sorted(p.name for p in (out / "GALAXY").iterdir())[0]).write_bytes(b"changed")
    with pytest.raises(ValueError, match="differs from the embedded sample"):
        copy_sample(out)
