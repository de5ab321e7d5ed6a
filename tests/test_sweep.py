"""The training sweep end to end on tiny real models (weights=None, 32 px)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_image
from device.atomic import read_jsonl
from device.dataset import index_tree, stratified_split, write_manifest
from train.sweep import SweepConfig, SweepError, main as sweep_main, plan, run_sweep


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for index, (label, count) in enumerate((("GALAXY", 16), ("QSO", 10), ("STAR", 14))):
        for i in range(count):
            make_image(root / label / f"{i:03d}.png", seed=50 * index + i, size=40, label_index=index)
    write_manifest(root, stratified_split(index_tree(root)[0], seed=0))
    return root


def _config(data, out, **kw) -> SweepConfig:
    base = dict(data=str(data), out=str(out), backbones=("mobilenetv2",), levels="0,7", epochs=2,
                batch_size=8, img_size=32, lr=1e-3, seeds=(0,), weights="none")
    base.update(kw)
    return SweepConfig(**base)


def _probs(run_dir: Path) -> np.ndarray:
    with open(run_dir / "val_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r[f"prob_{l}"]) for l in ("GALAXY", "QSO", "STAR")] for r in rows])


def test_cached_and_plain_training_give_the_same_predictions(tiny_data, tmp_path):
    cached = run_sweep(_config(tiny_data, tmp_path / "cached", cache_features="auto"), log=lambda m: None)
    plain = run_sweep(_config(tiny_data, tmp_path / "plain", cache_features="off"), log=lambda m: None)
    for level in ("L000-s0", "L007-s0"):
        a = _probs(cached / "runs" / "mobilenetv2" / level)
        b = _probs(plain / "runs" / "mobilenetv2" / level)
        assert a.std(axis=0).max() > 1e-3, "outputs must vary with the input"
        np.testing.assert_allclose(a, b, atol=2e-4)
        assert (a.argmax(1) == b.argmax(1)).all()
    rows = read_jsonl(cached / "results.jsonl")
    assert {r["run_id"] for r in rows} == {"mobilenetv2-L000-s0", "mobilenetv2-L007-s0"}
    assert all(r["cache_features"] for r in rows) and not any(r["cache_features"] for r in read_jsonl(plain / "results.jsonl"))


def test_sweep_outputs_and_rerun_skips(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path / "s", backbones=("mobilenetv2", "densenet121"))
    out = run_sweep(config, log=lambda m: None)
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 4 and not any("error" in r for r in rows)
    run = out / "runs" / "densenet121" / "L007-s0"
    for name in ("config.json", "history.csv", "best.h5", "val_predictions.csv", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("val_accuracy", "val_accuracy_ci_low", "val_accuracy_ci_high", "val_macro_f1", "val_f1_QSO",
                "val_confusion", "trainable_params", "total_params", "ltr", "ptr", "epochs_run", "wall_seconds",
                "train_images_per_s"):
        assert key in metrics, key
    assert metrics["val_accuracy_ci_low"] <= metrics["val_accuracy"] <= metrics["val_accuracy_ci_high"]
    for name in ("summary.csv", "summary.md", "plots/accuracy_vs_level.png"):
        assert (out / name).is_file(), name
    messages = []
    run_sweep(config, log=messages.append)
    assert any("4 already finished" in m for m in messages)
    assert len(read_jsonl(out / "results.jsonl")) == 4


def test_shards_split_the_runs_without_overlap(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path / "sh", levels="0,3,7", seeds=(0, 1))
    ids = [{r.run_id for r in plan(SweepConfig(**{**config.__dict__, "shard": (i, 3)})).runs} for i in range(3)]
    assert set.union(*ids) == {r.run_id for r in plan(config).runs}
    assert sum(len(s) for s in ids) == 6


def test_shards_hold_whole_backbones_balanced_by_planned_cost(tiny_data, tmp_path):
    # #11 item 2: runs dealt in turn made every shard repeat every backbone's frozen pass
    config = _config(tiny_data, tmp_path / "bb", backbones=("mobilenetv2", "mobilenetv3small", "densenet121"),
                     levels="0,3,7", seeds=(0, 1))
    shares = [plan(SweepConfig(**{**config.__dict__, "shard": (i, 3)}), log=lambda m: None) for i in range(3)]
    backbones = [{r.backbone.name for r in p.runs} for p in shares]
    assert all(len(b) == 1 for b in backbones) and set.union(*backbones) == set(config.backbones)
    assert sorted(r.run_id for p in shares for r in p.runs) == sorted(r.run_id for r in plan(config, log=lambda m: None).runs)
    assert all(any("% of the sweep's planned arithmetic" in n for n in p.notes) for p in shares)
    # two backbones on two shards: the costly one alone, the cheap ones together
    from train.shards import Group, assign

    class _B:
        def __init__(self, name):
            self.name = name

    class _R:
        def __init__(self, name, level):
            self.backbone, self.level, self.seed = _B(name), level, 0

    macs = {"big": [10.0] * 10, "small": [1.0] * 10, "tiny": [1.0] * 5}
    groups_ = [Group(n, (_R(n, 2),), c) for n, c in (("big", 100.0), ("small", 30.0), ("tiny", 20.0))]
    placed = assign(groups_, 2, macs, 1, True)
    assert [[g.name for g in s] for s in placed] == [["big"], ["small", "tiny"]]
    # fewer backbones than shards: the costliest is halved, its levels dealt alternately
    runs = tuple(_R("big", level) for level in (0, 2, 4, 6))
    placed = assign([Group("big", runs, 1.0)], 2, macs, 1, True)
    assert sorted(sorted(r.level for r in s[0].runs) for s in placed) == [[0, 4], [2, 6]]


def test_three_shards_at_once_equal_one_process(tiny_data, tmp_path):
    # #11 item 7: three shard processes into one folder, every feature spilled to one scratch root
    scratch = tmp_path / "scratch"
    common = ["--data", str(tiny_data), "--weights", "none", "--img-size", "32", "--levels", "0,7", "--epochs", "2",
              "--batch-size", "8", "--backbones", "mobilenetv2,mobilenetv3small,densenet121", "--cache-budget-gb", "0",
              "--cache-dir", str(scratch)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    procs = [subprocess.Popen([sys.executable, "-m", "train.sweep", *common, "--out", str(sharded), "--shard", f"{i}/3"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(3)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    done = subprocess.run([sys.executable, "-m", "train.sweep", *common, "--out", str(single)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    lines = read_jsonl(sharded / "results.jsonl")
    ids = sorted(line["run_id"] for line in lines)
    assert ids == sorted(line["run_id"] for line in read_jsonl(single / "results.jsonl")) and len(ids) == len(set(ids)) == 6
    assert all("error" not in line for line in lines)
    # one frozen pass per backbone, in the shard that holds it
    records = [json.loads((sharded / f"sweep-shard{i}of3.json").read_text()) for i in range(3)]
    assert sorted(b for r in records for b in r["frozen_passes"]) == ["densenet121", "mobilenetv2", "mobilenetv3small"]
    assert all(n == 1 for r in records for n in r["frozen_passes"].values())
    single_lines = {line["run_id"]: line for line in read_jsonl(single / "results.jsonl")}
    for line in lines:
        other = single_lines[line["run_id"]]
        for key in ("val_accuracy", "test_accuracy", "best_epoch"):  # (h5 files embed Keras layer names)
            assert line[key] == other[key], (line["run_id"], key)
        a, b = _probs(sharded / line["run_dir"]), _probs(single / line["run_dir"])
        np.testing.assert_allclose(a, b, atol=1e-6)
    # every shard spilled under the shared root and removed only its own folder
    assert scratch.is_dir() and list(scratch.iterdir()) == []


def test_killed_sweep_resumes_to_the_same_results(tiny_data, tmp_path):
    out = tmp_path / "k"
    args = ["--data", str(tiny_data), "--out", str(out), "--backbones", "mobilenetv2", "--levels", "7",
            "--epochs", "6", "--batch-size", "8", "--img-size", "32", "--weights", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "train.sweep", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "runs" / "mobilenetv2" / "L007-s0" / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "runs" / "mobilenetv2" / "L007-s0" / "metrics.json").exists()
    assert sweep_main(args) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert [r["run_id"] for r in rows] == ["mobilenetv2-L007-s0"]
    assert rows[0]["resumed_from_epoch"] >= 2 and rows[0]["epochs_run"] == 6
    reference = run_sweep(_config(tiny_data, tmp_path / "ref", levels="7", epochs=6), log=lambda m: None)
    np.testing.assert_allclose(_probs(out / "runs" / "mobilenetv2" / "L007-s0"),
                               _probs(reference / "runs" / "mobilenetv2" / "L007-s0"), atol=1e-3)
    assert json.loads((out / "runs" / "mobilenetv2" / "L007-s0" / "metrics.json").read_text())["val_accuracy"] == \
        read_jsonl(reference / "results.jsonl")[0]["val_accuracy"]


def test_corrupt_checkpoint_is_rebuilt_from_last_good_epoch(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path / "c", levels="7", epochs=3)
    out = run_sweep(config, log=lambda m: None)
    run = out / "runs" / "mobilenetv2" / "L007-s0"
    first = _probs(run)
    (run / "metrics.json").unlink()
    for data in (run / "ckpt").glob("ckpt-3.data-*"):
        data.write_bytes(b"\x00" * 64)
    messages = []
    run_sweep(config, log=messages.append)
    assert any("checkpoint of epoch 3 unreadable" in m for m in messages)
    assert any("resuming after epoch 2" in m for m in messages)
    np.testing.assert_allclose(_probs(run), first, atol=1e-3)


def test_bad_configurations_are_refused_before_training(tiny_data, tmp_path):
    cases = [
        (dict(backbones=("resnet18",)), "unknown backbone 'resnet18'"),
        (dict(levels="0,500"), "outside 0..155"),
        (dict(backbones=("xception",), img_size=32), "xception needs at least 71 px"),
        (dict(epochs=0), "expected positive"),
    ]
    for change, message in cases:
        with pytest.raises(SweepError, match=message):
            run_sweep(_config(tiny_data, tmp_path / "bad", **change), log=lambda m: None)
        assert not (tmp_path / "bad").exists()
    one_class = tmp_path / "one"
    for i in range(4):
        make_image(one_class / "STAR" / f"{i}.png", seed=i)
    with pytest.raises(SweepError, match="only STAR"):
        run_sweep(_config(one_class, tmp_path / "bad"), log=lambda m: None)


def test_changed_settings_in_same_folder_are_refused(tiny_data, tmp_path):
    run_sweep(_config(tiny_data, tmp_path / "x", levels="0", epochs=1), log=lambda m: None)
    with pytest.raises(SweepError, match="different settings.*epochs"):
        run_sweep(_config(tiny_data, tmp_path / "x", levels="0", epochs=2), log=lambda m: None)


def test_imagenet_offline_names_the_file(tiny_data, tmp_path, monkeypatch):
    from train.model import WeightsError, keras_cache_dir

    if any(keras_cache_dir().glob("mobilenet_v2_weights_*_32_no_top.h5")) or any(keras_cache_dir().glob("mobilenet_v2*")):
        pytest.skip("ImageNet weights already cached on this machine")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    try:
        run_sweep(_config(tiny_data, tmp_path / "w", weights="imagenet", img_size=96), log=lambda m: None)
    except WeightsError as exc:
        message = str(exc)
        assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
        assert "--weights PATH" in message
    else:
        pytest.skip("network available: ImageNet weights were downloaded")


def test_gpu_switches_run_on_cpu(tiny_data, tmp_path):
    """mixed_float16, XLA and the mirrored strategy are GPU features; they must still work here."""
    out = run_sweep(_config(tiny_data, tmp_path / "g", levels="7", epochs=1, precision="mixed_float16",
                            jit=True, strategy="mirrored"), log=lambda m: None)
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 1 and "error" not in rows[0], rows
    assert rows[0]["precision"] == "mixed_float16" and rows[0]["strategy"] == "mirrored"
    probs = _probs(out / "runs" / "mobilenetv2" / "L007-s0")
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
    import tf_keras as keras

    assert keras.mixed_precision.global_policy().name == "float32"


def test_cache_spills_beyond_budget_to_memory_mapped_files(tmp_path):
    from device.backbones import get
    from train.cache import FeatureStore, LevelCache, boundary_tensors
    from train.model import build

    built = build(get("densenet121"), 32, None)
    x = np.random.default_rng(0).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    # DenseNet: a cut inside a dense block is crossed by several tensors (skip connections)
    assert len(boundary_tensors(built.model, built.base, 9)) >= 2
    memory = FeatureStore(budget_bytes=1 << 30, spill_dir=tmp_path / "m")
    disk = FeatureStore(budget_bytes=0, spill_dir=tmp_path / "d")
    a, b = LevelCache(built.model, built.base, x, memory), LevelCache(built.model, built.base, x, disk)
    for level in (9, 4, 0):
        fa, fb = a.advance(level), b.advance(level)
        assert all(isinstance(f, np.memmap) for f in fb) and not any(isinstance(f, np.memmap) for f in fa)
        for u, v in zip(fa, fb):
            np.testing.assert_array_equal(u, v)
        assert len(list((tmp_path / "d").iterdir())) == len(fb)
    expected = built.model.predict_on_batch(x)
    from train.cache import top_model

    np.testing.assert_allclose(top_model(built.model, b.boundary).predict_on_batch(fb[0]), expected, atol=1e-5)
    disk.close()
    assert not (tmp_path / "d").exists()


def test_killed_run_with_damaged_best_weights_recovers_in_one_rerun(tiny_data, tmp_path):
    # fault #12: after a kill and a damaged best.h5 the rerun said "restarting this run" and then
    # failed at the first step (the optimizer's slots were bound to the deleted checkpoint)
    config = _config(tiny_data, tmp_path / "k", levels="7", epochs=3)
    out = run_sweep(config, log=lambda m: None)
    run = out / "runs" / "mobilenetv2" / "L007-s0"
    (run / "metrics.json").unlink()  # as if killed before the run was recorded
    rows = list(csv.DictReader(open(run / "history.csv")))
    rows[0]["val_accuracy"] = "1.0"  # the best epoch is 1, whose weights are now damaged
    with open(run / "history.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "best.json").write_text(json.dumps({"epoch": 1, "val_accuracy": 1.0}))
    (run / "best.h5").write_bytes(b"\x00" * 100)
    messages = []
    run_sweep(config, log=messages.append)
    assert any("restarting this run" in m for m in messages)
    assert (run / "metrics.json").is_file() and len(list(csv.DictReader(open(run / "history.csv")))) == 3


def test_finished_run_with_damaged_best_weights_is_trained_again(tiny_data, tmp_path):
    # fault #6: a finished run whose best.h5 was damaged counted as finished until export
    config = _config(tiny_data, tmp_path / "d", levels="0", epochs=1)
    out = run_sweep(config, log=lambda m: None)
    run = out / "runs" / "mobilenetv2" / "L000-s0"
    recorded = json.loads((run / "metrics.json").read_text())["checkpoint_sha256"]
    assert len(recorded) == 64
    data = bytearray((run / "best.h5").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(255 - b for b in data[len(data) // 2:len(data) // 2 + 64])
    (run / "best.h5").write_bytes(bytes(data))
    messages = []
    run_sweep(config, log=messages.append)
    assert any("differs from the sha256 recorded" in m for m in messages)
    from device.checksum import sha256_file
    assert json.loads((run / "metrics.json").read_text())["checkpoint_sha256"] == sha256_file(run / "best.h5")
    lines = [r for r in read_jsonl(out / "results.jsonl") if r["run_id"] == "mobilenetv2-L000-s0"]
    assert len(lines) == 2 and lines[-1]["checkpoint_sha256"] == sha256_file(run / "best.h5")


def test_out_that_is_a_file_is_refused_in_one_line(tiny_data, tmp_path):
    # fault #11
    (tmp_path / "taken").write_text("a file")
    result = subprocess.run([sys.executable, "-m", "train.sweep", "--data", str(tiny_data), "--out",
                             str(tmp_path / "taken"), "--weights", "none", "--img-size", "32"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --out {tmp_path / 'taken'}: is a file; expected a folder (new or existing)"
    result = subprocess.run([sys.executable, "-m", "train.sweep", "--data", str(tiny_data), "--out",
                             str(tmp_path / "taken" / "sub"), "--weights", "none", "--img-size", "32"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is a file, so the folder cannot be made" in result.stderr


def test_two_sweeps_on_one_folder_train_each_run_once(tiny_data, tmp_path):
    # fault #17: two sweeps started on one --out both trained every run (4 lines for 2 runs)
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "train.sweep", "--data", str(tiny_data), "--out", str(out), "--weights", "none",
               "--img-size", "32", "--levels", "0,3,7", "--epochs", "2", "--batch-size", "8"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = read_jsonl(out / "results.jsonl")
    assert sorted(line["run_id"] for line in lines) == ["mobilenetv2-L000-s0", "mobilenetv2-L003-s0",
                                                        "mobilenetv2-L007-s0"]
    assert all("error" not in line for line in lines)
    both = "\n".join(outputs)
    assert "left to it" in both or "finished meanwhile" in both or "already finished" in both
    # a quiet console: none of TensorFlow's start-up chatter or retracing warnings (#12 item 8)
    for chatter in ("oneDNN", "absl::InitializeLog", "cudart", "cuInit", "retracing"):
        assert chatter not in both, chatter


def test_a_seed_named_twice_is_one_run(tiny_data, tmp_path):
    the_plan = plan(_config(tiny_data, tmp_path / "s", levels="0,7", seeds=(0, 0, 1)), log=lambda m: None)
    assert sorted(r.run_id for r in the_plan.runs) == ["mobilenetv2-L000-s0", "mobilenetv2-L000-s1",
                                                       "mobilenetv2-L007-s0", "mobilenetv2-L007-s1"]


def test_shards_sharing_a_cache_root_never_remove_each_others_files(tiny_data, tmp_path):
    # #11: every shard spilled to OUT/cache and every shard's close removed the whole folder
    from train.cache import FeatureStore
    from train.sweep import spill_dir

    config = _config(tiny_data, tmp_path / "o", cache_dir=str(tmp_path / "scratch"))
    first, second = spill_dir(config, tmp_path / "o"), spill_dir(config, tmp_path / "o")
    assert first != second and first.parent == second.parent == tmp_path / "scratch"
    a, b = FeatureStore(0, first), FeatureStore(0, second)
    kept = b.allocate((4, 3), np.float32)
    kept[:] = 1.0
    a.allocate((4, 3), np.float32)
    a.close()
    assert not first.exists() and Path(kept.filename).is_file() and float(kept.sum()) == 12.0
    b.close()
    assert not second.exists()

    # a whole sweep spilling every cache array to disk leaves nothing behind
    run_sweep(_config(tiny_data, tmp_path / "o", levels="0,7", epochs=1, cache_budget_gb=0.0,
                      cache_dir=str(tmp_path / "scratch")), log=lambda m: None)
    assert list((tmp_path / "scratch").iterdir()) == []


def test_shard_auto_reads_the_job_array():
    import argparse

    from train.sweep import parse_shard

    assert parse_shard("auto", {}) == (0, 1)
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4",
                                "SLURM_ARRAY_TASK_MIN": "1"}) == (2, 4)
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (0, 2)
    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "1", "SKYEDGE_SHARDS": "3"}) == (1, 3)
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "1",
                                "SKYEDGE_SHARDS": "3"}) == (1, 3)
    with pytest.raises(argparse.ArgumentTypeError, match="SKYEDGE_SHARDS"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "1"})
    assert parse_shard("2/5") == (2, 5)


def test_shards_leave_the_summary_to_one_final_step(tiny_data, tmp_path):
    # #11 item 3: every shard rewrote summary.md when it exited, so the last writer could miss runs
    out = tmp_path / "arr"
    messages = []
    run_sweep(_config(tiny_data, out, levels="0,7", epochs=1, shard=(0, 2)), log=messages.append)
    assert not (out / "summary.md").exists()
    assert any("python -m train.summary" in m for m in messages)
    # the summary job names a shard that never ran and exits 3 (item 3: runs missing per shard)
    early = subprocess.run([sys.executable, "-m", "train.summary", str(out)], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert early.returncode == 3 and "shard 1/2: never started" in early.stderr, early.stderr
    assert "## Shards" in (out / "summary.md").read_text()
    run_sweep(_config(tiny_data, out, levels="0,7", epochs=1, shard=(1, 2)), log=messages.append)
    done = subprocess.run([sys.executable, "-m", "train.summary", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 successful runs" in (out / "summary.md").read_text()
