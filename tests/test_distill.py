"""train.distill: a tiny student taught by a tiny exported teacher, end to end, and its loss."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from test_bench_run import exports_dir  # noqa: F401  (fixture)


def test_soft_target_loss_is_hintons():
    import tensorflow as tf

    from train.distill import soft_target_loss

    hard = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    student = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], np.float32)
    y_true = tf.constant(np.concatenate([hard, teacher], 1))
    ce = -np.sum(hard * np.log(student), 1)
    assert np.allclose(soft_target_loss(4.0, 1.0)(y_true, tf.constant(student)).numpy(), ce, atol=1e-6)

    def soften(p, t):
        z = np.log(p) / t
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    t = 3.0
    soft = -np.sum(soften(teacher, t) * np.log(soften(student, t)), 1) * t * t
    got = soft_target_loss(t, 0.25)(y_true, tf.constant(student)).numpy()
    assert np.allclose(got, 0.25 * ce + 0.75 * soft, atol=1e-5)


def test_bad_settings_exit_2_before_tensorflow(exports_dir, tmp_path):  # noqa: F811
    base = [sys.executable, "-m", "train.distill", "--data", str(tmp_path), "--teacher", str(exports_dir),
            "--student", "mobilenetv2", "--level", "3", "--out", str(tmp_path / "o")]
    for extra, expected in ((["--alpha", "1.5"], "--alpha"), (["--temperature", "inf"], "--temperature"),
                            (["--seeds", "-1"], "--seeds"), (["--teacher-artifacts", "nope"], "nope"),
                            (["--student", "mobilenetv9"], "mobilenetv9")):
        t0 = time.perf_counter()
        done = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and expected in done.stderr and "Traceback" not in done.stderr
        assert time.perf_counter() - t0 < 20  # refused before TensorFlow is imported


def test_student_learns_from_the_teacher_and_exports_like_a_run(exports_dir, tmp_path):  # noqa: F811
    from device.sweep_results import load_runs
    from export.select import select_runs
    from train.distill import DistillConfig, distill

    data = json.loads((exports_dir / "manifest.json").read_text())["artifacts"][0]["data"]
    out = tmp_path / "distill"
    config = DistillConfig(data=data, teacher=str(exports_dir), student="mobilenetv2", out=str(out), level=5,
                           weights="none", seeds=(0, 1), epochs=2, batch_size=8, img_size=32)
    lines: list[str] = []
    distill(config, log=lines.append)
    runs, failures, _ = load_runs(out)
    assert not failures and sorted(r["seed"] for r in runs) == [0, 1]
    run = runs[0]
    # the tiny manifest records no validation accuracy: the tie goes to the first id
    assert run["distilled"] and run["teacher_artifacts"] == ["tiny-l0-s0-fp32-onnx"]
    assert 0 <= run["val_accuracy"] <= 1 and run["temperature"] == 4.0 and run["alpha"] == 0.1
    assert any("teacher tiny-l0-s0-fp32-onnx: probabilities on" in line for line in lines)
    cache = list(out.glob("teacher-*.npz"))
    assert len(cache) == 1
    probs = np.load(cache[0])["probs"]
    assert probs.shape[1] == 3 and np.allclose(probs.sum(1), 1, atol=1e-5)

    # rerun: nothing retrained, the teacher's probabilities read back, not recomputed
    stamp = cache[0].stat().st_mtime_ns
    again: list[str] = []
    distill(config, log=again.append)
    assert cache[0].stat().st_mtime_ns == stamp and any("already distilled" in line for line in again)
    assert len(load_runs(out)[0]) == 2

    # export reads the folder as it reads a sweep's
    sources = select_runs(out, "all")
    assert {s.run_id for s in sources} == {"mobilenetv2-L005-s0", "mobilenetv2-L005-s1"}
    assert all(s.checkpoint.is_file() and s.img_size == 32 for s in sources)


def test_level_best_reads_the_students_best_level_from_the_sweep(tmp_path):
    # study.sh distils each mobile student at the level its sweep chose on validation images
    from test_summary import CORRECT, make_run, write_results
    from train.distill import DistillError, student_level

    write_results(tmp_path, [make_run(tmp_path, *key, correct) for key, correct in CORRECT.items()])
    # mobilenetv2: levels 0, 5, 10 get 46, 52.5 and 50.5 of the same images right on average
    assert student_level("best", str(tmp_path), "mobilenetv2") == 5
    assert student_level("7", None, "mobilenetv2") == 7
    with pytest.raises(DistillError, match="--sweep"):
        student_level("best", None, "mobilenetv2")
    with pytest.raises(DistillError, match="no finished run of mobilenetv3small"):
        student_level("best", str(tmp_path), "mobilenetv3small")
    with pytest.raises(DistillError, match="expected an integer or best"):
        student_level("deep", None, "mobilenetv2")
