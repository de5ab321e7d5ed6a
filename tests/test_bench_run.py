"""bench run end to end: tiny real models (LiteRT fp32 + full int8, ONNX fp32), real
worker subprocesses, error lines for bad inputs, resume, a crashed worker, the overhead check.

Model creation uses TensorFlow here (tests only); the bench code never imports it.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_labelled_dataset, write_tiny_manifest
from device.checksum import sha256_file

SIZE = 32
LABELS = ("GALAXY", "QSO", "STAR")
# the generated exports' dataset has train and val only (their reference is the val split)
QUICK = ["--warmup", "2", "--runs", "20", "--min-secs", "0", "--split", "val"]


def _onnx_model(path: Path) -> None:
    """Mean colour -> linear -> softmax, written with onnx.helper (opset 13)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.eye(3, dtype=np.float32) * 60.0 - 20.0)
    nodes = [helper.make_node("Div", ["x", "k255"], ["scaled"]),
             helper.make_node("ReduceMean", ["scaled"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["mean", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.array(255.0, np.float32), "k255"),
                     numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def build_exports(root: Path) -> Path:
    """An exports folder: tflite fp32, tflite int8 (int8 input), onnx fp32, manifest.json,
    reference CSV, and the dataset in ``root/data`` (named by an absolute ``data`` field)."""
    import tensorflow as tf
    import tf_keras as keras

    from device.dataset import open_dataset

    data = root / "data"
    make_labelled_dataset(data)
    exports = root / "exports"
    exports.mkdir()
    dataset = open_dataset(data)
    train_x, train_y, _, _ = dataset.load_arrays("train", SIZE)
    val_x, val_y, val_records, _ = dataset.load_arrays("val", SIZE)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((SIZE, SIZE, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    x = np.concatenate([train_x, val_x]).astype(np.float32)
    model.fit(x, np.concatenate([train_y, val_y]), epochs=20, verbose=0)
    probs = model.predict(val_x.astype(np.float32), verbose=0)

    (exports / "reference").mkdir()
    ref = exports / "reference" / "tiny.csv"
    with ref.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "label_index", "prob_GALAXY", "prob_QSO", "prob_STAR", "pred_index"])
        for record, p in zip(val_records, probs):
            writer.writerow([record.path, record.label, record.label_index, *[f"{v:.6f}" for v in p], int(p.argmax())])

    (exports / "models").mkdir()
    fp32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    (exports / "models" / "tiny-fp32.tflite").write_bytes(fp32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([train_x[i:i + 1].astype(np.float32)] for i in range(len(train_x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (exports / "models" / "tiny-int8.tflite").write_bytes(converter.convert())
    _onnx_model(exports / "models" / "tiny-fp32.onnx")

    write_tiny_manifest(exports, "tiny", data, len(val_records), SIZE)
    return exports


@pytest.fixture(scope="session")
def exports_dir(tmp_path_factory) -> Path:
    """Built once per session (the builder runs in a subprocess so TF stays out of pytest)."""
    root = tmp_path_factory.getbasetemp() / "bench-exports"
    if not (root / "exports" / "manifest.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        code = ("import sys; sys.path.insert(0, 'tests'); from pathlib import Path; "
                "import test_bench_run as t; t.build_exports(Path(sys.argv[1]))")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "exports"


def copy_exports(exports: Path, dest: Path) -> Path:
    shutil.copytree(exports, dest)
    return dest


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _with_bad_artifacts(exports: Path, dest: Path) -> Path:
    """A copy of the exports plus a truncated model, a hash mismatch and a size mismatch."""
    copy_exports(exports, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    good = manifest["artifacts"][0]
    truncated = dest / "models" / "truncated.tflite"
    truncated.write_bytes((dest / good["file"]).read_bytes()[:200])
    manifest["artifacts"] += [
        {**good, "artifact_id": "corrupt", "file": "models/truncated.tflite", "sha256": sha256_file(truncated)},
        {**good, "artifact_id": "hash-mismatch", "sha256": "0" * 64},
        {**good, "artifact_id": "wrong-size", "input_shape": [1, 48, 48, 3], "img_size": 48},
        {**good, "artifact_id": "export-failed", "error": "converter crashed"},
    ]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_run_complete_lines_errors_and_resume(exports_dir, tmp_path):
    exports = _with_bad_artifacts(exports_dir, tmp_path / "exports")
    out = tmp_path / "results.jsonl"
    result = bench("run", "--models", str(exports), "--out", str(out), "--device-name", "ci", *QUICK)
    assert result.returncode == 3, result.stderr  # finished, with failed jobs
    assert "3 of 6 job(s) failed" in result.stderr
    assert "skipped export-failed" in result.stdout and "ETA" in result.stdout
    lines = {line["artifact_id"]: line for line in read_lines(out)}
    assert set(lines) == {"tiny-l0-s0-fp32-tflite", "tiny-l0-s0-int8-tflite", "tiny-l0-s0-fp32-onnx",
                          "corrupt", "hash-mismatch", "wrong-size"}
    keys = list(lines["tiny-l0-s0-fp32-tflite"])
    for aid in ("tiny-l0-s0-fp32-tflite", "tiny-l0-s0-int8-tflite", "tiny-l0-s0-fp32-onnx"):
        line = lines[aid]
        assert "error" not in line, line.get("error")
        assert [k for k in keys if k != "error"] == [k for k in line if k != "error"]  # same keys, same order
        for key in ("latency_ms_p5", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99",
                    "latency_ms_p50_ci_low",
                    "latency_ms_p90_ci_high", "load_ms", "first_inference_ms", "peak_rss_bytes",
                    "idle_rss_bytes", "rss_increase_bytes", "accuracy", "macro_f1", "recall_QSO",
                    "agreement", "runtime_version", "cpu_model", "ram_bytes", "model_sha256"):
            assert line[key] is not None, (aid, key)
        assert line["latency_ms_p50_ci_low"] <= line["latency_ms_p50"] <= line["latency_ms_p50_ci_high"]
        assert line["latency_ms_min"] <= line["latency_ms_p50"] <= line["latency_ms_max"]
        assert line["runs"] >= 20 and line["n_images"] == 12 and len(line["pred_indices"]) == 12
        assert line["device_name"] == "ci" and line["strict"] is False and line["strict_valid"] is False
        assert line["peak_rss_bytes"] >= line["idle_rss_bytes"] > 0
        assert 0.0 <= line["accuracy"] <= 1.0 and 0.0 <= line["agreement"] <= 1.0
        assert set(line) >= {"governor", "cpu_freq_mhz", "temp_c_before", "temp_c_after", "throttled"}
    fp32, int8 = lines["tiny-l0-s0-fp32-tflite"], lines["tiny-l0-s0-int8-tflite"]
    assert (fp32["runtime"], fp32["runtime_package"]) == ("litert", "ai-edge-litert")
    assert lines["tiny-l0-s0-fp32-onnx"]["runtime"] == "onnxruntime"
    assert fp32["agreement"] == 1.0  # the float TFLite model reproduces the Keras predictions
    assert fp32["images_sha256"] == int8["images_sha256"]
    assert "loadable" in lines["corrupt"]["error"]
    assert "does not match the manifest" in lines["hash-mismatch"]["error"]
    assert "does not match the data" in lines["wrong-size"]["error"]
    assert lines["corrupt"]["device_name"] == "ci" and lines["corrupt"]["latency_ms_p50"] is None

    # resume: the kernel jobs are skipped, only the new e2e job of one model runs
    result = bench("run", "--models", str(exports), "--out", str(out), "--device-name", "ci", "--resume",
                   "--mode", "kernel,e2e", "--select", "tiny-l0-s0-fp32-t*", *QUICK)
    assert result.returncode == 0, result.stderr
    assert "resume: 1 job(s) already" in result.stdout
    new = read_lines(out)[6:]
    assert [(line["artifact_id"], line["mode"]) for line in new] == [("tiny-l0-s0-fp32-tflite", "e2e")]
    for key in ("e2e_decode_ms_p50", "e2e_resize_ms_p50", "e2e_inference_ms_p50", "e2e_total_ms_p50"):
        assert new[0][key] > 0
    assert new[0]["e2e_total_ms_p50"] >= new[0]["e2e_decode_ms_p50"]


def test_crashed_worker_is_recorded(exports_dir, tmp_path):
    from bench.jobs import RunConfig, run_benchmarks

    killer = tmp_path / "killer.sh"
    killer.write_text("#!/bin/sh\nkill -KILL $$\n")
    killer.chmod(0o755)
    failer = tmp_path / "failer.sh"
    failer.write_text("#!/bin/sh\necho 'worker broke' >&2\nexit 3\n")
    failer.chmod(0o755)
    out = tmp_path / "crash.jsonl"
    out.write_text(json.dumps({"artifact_id": "earlier", "note": "kept"}) + "\n")
    for script in (killer, failer):
        config = RunConfig(models=exports_dir, out=out, runtimes=("litert",), select="*fp32-tflite",
                           worker_command=(str(script),), device_name="ci")
        summary = run_benchmarks(config)
        assert summary == {"out": str(out), "planned": 1, "written": 1, "errors": 1, "skipped_resume": 0}
    lines = read_lines(out)
    assert lines[0] == {"artifact_id": "earlier", "note": "kept"}
    assert "killed by SIGKILL" in lines[1]["error"] and lines[1]["worker_signal"] == "SIGKILL"
    assert "status 3" in lines[2]["error"] and "worker broke" in lines[2]["error"]
    assert lines[1]["artifact_id"] == "tiny-l0-s0-fp32-tflite" and lines[1]["device_name"] == "ci"


def test_missing_manifest_or_no_match_exit_2(exports_dir, tmp_path):
    result = bench("run", "--models", str(tmp_path), "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "manifest.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = bench("run", "--models", str(exports_dir), "--out", str(tmp_path / "x.jsonl"), "--select", "nope*")
    assert result.returncode == 2 and "no artifact matches" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_overhead_ratio(exports_dir):
    from bench.overhead import measure_overhead

    for name in ("tiny-fp32.tflite", "tiny-fp32.onnx"):
        result = measure_overhead(exports_dir / "models" / name, threads=1, runs=1000, rounds=5)
        print(f"{name}: worker {result['worker_median_ms']:.4f} ms, bare {result['bare_median_ms']:.4f} ms, "
              f"ratio {result['ratio']:.3f}")
        # the 1.03 target is checked by `bench overhead` on a quiet machine (a benchmark, not a
        # unit test): here only that both loops ran and gave a finite ratio
        assert result["worker_median_ms"] > 0 and result["bare_median_ms"] > 0 and result["ratio"] > 0


def test_latency_stats_and_bootstrap():
    from bench.latency import bootstrap_ci, latency_stats

    x = np.random.default_rng(1).gamma(4.0, 1.0, 2000)
    stats = latency_stats(x)
    assert stats["latency_ms_p50"] == pytest.approx(np.median(x))
    assert stats["latency_ms_p50_ci_low"] < stats["latency_ms_p50"] < stats["latency_ms_p50_ci_high"]
    assert stats["latency_ms_p90_ci_low"] < stats["latency_ms_p90"] < stats["latency_ms_p90_ci_high"]
    # the percentiles the anchors report (#12 item 1), in order, from the same samples
    assert [stats[f"latency_ms_p{q}"] for q in (5, 50, 90, 95, 99)] == pytest.approx(np.percentile(x, [5, 50, 90, 95, 99]))
    assert stats["latency_ms_p5"] < stats["latency_ms_p50"] < stats["latency_ms_p95"] < stats["latency_ms_p99"]
    assert bootstrap_ci(x, 50) == bootstrap_ci(x, 50)  # seeded
    assert latency_stats([])["latency_ms_p50"] is None


def test_many_timings_get_the_order_statistic_interval_which_agrees_with_the_bootstrap():
    # a 3 us model timed for 10 s gives a million timings, whose bootstrap took minutes: past
    # ORDER_STATISTIC_N the interval comes from the ranks, and agrees with the bootstrap's
    from bench.latency import ORDER_STATISTIC_N, bootstrap_ci, latency_stats, order_statistic_ci

    x = np.random.default_rng(0).lognormal(0.0, 0.3, ORDER_STATISTIC_N + 10_000)
    for q in (50, 90):
        boot, ranks = bootstrap_ci(x, q), order_statistic_ci(x, q)
        width = boot[1] - boot[0]
        assert ranks[0] < np.percentile(x, q) < ranks[1]
        assert abs(ranks[0] - boot[0]) < 0.25 * width and abs(ranks[1] - boot[1]) < 0.25 * width, (q, boot, ranks)
    many = np.random.default_rng(1).lognormal(0.0, 0.3, 1_000_000)
    stats = latency_stats(many)
    assert (stats["latency_ms_p50_ci_low"], stats["latency_ms_p50_ci_high"]) == order_statistic_ci(many, 50)


def test_int8_slower_notes_on_both_lines(tmp_path):
    from bench.jobs import annotate_int8

    out = tmp_path / "r.jsonl"
    base = {"device_name": "pi", "backbone": "b", "level": 1, "seed": 0, "format": "onnx",
            "runtime": "onnxruntime", "threads": 1, "mode": "kernel", "notes": []}
    lines = [{**base, "artifact_id": "f", "variant": "fp32", "latency_ms_p50": 1.0},
             {**base, "artifact_id": "q", "variant": "int8", "latency_ms_p50": 2.0},
             {**base, "artifact_id": "q4", "variant": "int8", "threads": 4, "latency_ms_p50": 2.0},
             # a tie within noise is not "slower": 1% over, or intervals that overlap
             {**base, "artifact_id": "f2", "variant": "fp32", "threads": 2, "latency_ms_p50": 1.0,
              "latency_ms_p50_ci_low": 0.9, "latency_ms_p50_ci_high": 1.2},
             {**base, "artifact_id": "d2", "variant": "dynamic", "threads": 2, "latency_ms_p50": 1.1,
              "latency_ms_p50_ci_low": 1.05, "latency_ms_p50_ci_high": 1.15},
             {**base, "artifact_id": "f3", "variant": "fp32", "threads": 3, "latency_ms_p50": 1.0},
             {**base, "artifact_id": "q3", "variant": "int8", "threads": 3, "latency_ms_p50": 1.01}]
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert annotate_int8(out) == 2
    assert annotate_int8(out) == 0  # idempotent
    got = read_lines(out)
    assert "QDQ" in got[0]["notes"][0] and "QDQ" in got[1]["notes"][0]
    assert all(line["notes"] == [] for line in got[2:])


def test_cooldown_waits_for_temperature():
    from bench.fingerprint import cooldown, describe_throttled

    temps = iter([70.0, 65.0, 50.0])
    slept = []
    note = cooldown(55.0, read_temp=lambda: next(temps), sleep=slept.append, poll_s=1.0)
    assert slept == [1.0, 1.0] and "50.0 C" in note
    note = cooldown(55.0, timeout_s=2, read_temp=lambda: 80.0, sleep=lambda s: None, poll_s=1.0)
    assert "timed out" in note
    assert cooldown(55.0, read_temp=lambda: None).startswith("cooldown: no thermal sensor")
    assert describe_throttled("0x50005") == ["under-voltage now", "throttled now",
                                             "under-voltage has occurred", "throttling has occurred"]


def test_floors_on_the_same_images_pair_with_every_model(exports_dir, tmp_path):
    data = json.loads((exports_dir / "manifest.json").read_text())["artifacts"][0]["data"]
    floors = tmp_path / "floors.json"
    done = bench("floors", "--data", data, "--split", "val", "--out", str(floors))
    assert done.returncode == 0, done.stderr
    record = json.loads(floors.read_text())
    assert record["split"] == "val" and record["n"] == len(record["label_indices"]) == len(record["features_pred_indices"])
    out = tmp_path / "r.jsonl"
    assert bench("run", "--models", str(exports_dir), "--out", str(out), "--mode", "kernel", *QUICK).returncode == 0
    lines = read_lines(out)
    assert {line["images_sha256"] for line in lines} == {record["images_sha256"]}
    other = tmp_path / "train-floors.json"  # scored on other images: never paired
    assert bench("floors", "--data", data, "--split", "train", "--out", str(other)).returncode == 0

    done = bench("report", "--results", str(out), "--floors", str(floors), str(other), "--out", str(tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## Against the floors on the same images", 1)[1].split("\n## ", 1)[0]
    rows = [row for row in section.splitlines() if row.startswith("| ") and "McNemar" not in row and "---" not in row]
    assert len(rows) == 3  # one per artifact, each paired with the val floors
    from device.metrics import mcnemar
    truth = np.asarray(record["label_indices"])
    line = max(lines, key=lambda l: l["accuracy"])
    expected = mcnemar(np.asarray(line["pred_indices"]) == truth, np.asarray(record["features_pred_indices"]) == truth)
    assert f"{expected['b']} / {expected['c']}" in section
    # #21 item 7: the verdict's reasons say how many models beat the feature floor
    beat = sum(q["beats_features"] for q in json.loads((tmp_path / "rep" / "verdict.json").read_text())["against_floors"])
    assert (f"{beat} of 3 models beat it" if beat else "no model beats it") in md

    # the same, machine-readable: verdict.json and devices.csv (#12 item 6)
    verdict = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    assert verdict["format_version"] == 1 and set(verdict["devices"]) == {lines[0]["device_name"]}
    device = verdict["devices"][lines[0]["device_name"]]
    assert device["verdict"] in ("supported", "contradicted", "inconclusive") and device["reasons"]
    assert len(device["points"]) == 3 and len(verdict["against_floors"]) == 3
    best = next(q for q in verdict["against_floors"] if q["artifact_id"] == line["artifact_id"])
    assert (best["b"], best["c"]) == (expected["b"], expected["c"])
    with open(tmp_path / "rep" / "devices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(lines) and {r["artifact_id"] for r in rows} == {l["artifact_id"] for l in lines}
    assert all(float(r["latency_ms_p50"]) > 0 and r["error"] == "" for r in rows)

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = bench("report", "--results", str(out), "--floors", str(bad), "--out", str(tmp_path / "rep2"))
    assert done.returncode == 2 and "expected a file written by `bench floors`" in done.stderr


def test_delegate_ab_and_runtime_settings_on_every_line(exports_dir, tmp_path):
    # #12 item 2: "int8 slower because XNNPACK does not take it" was a guess; ORT's options were not recorded
    out = tmp_path / "ab.jsonl"
    for delegate in ("xnnpack", "none"):
        done = bench("run", "--models", str(exports_dir), "--out", str(out), "--delegate", delegate, "--resume",
                     *QUICK)
        assert done.returncode == 0, done.stderr
    lines = read_lines(out)
    tflite = [ln for ln in lines if ln["runtime"] == "litert"]
    onnx = [ln for ln in lines if ln["runtime"] == "onnxruntime"]
    assert {ln["delegate"] for ln in tflite} == {"xnnpack", "none"}  # --resume keeps the two apart
    assert len(onnx) == len({ln["artifact_id"] for ln in onnx})  # ONNX ignores the delegate: measured once
    for ln in tflite:
        resolver = "AUTO" if ln["delegate"] == "xnnpack" else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
        assert ln["runtime_settings"]["op_resolver"] == resolver and ln["runtime_settings"]["delegate"] == ln["delegate"]
    by_model = {}
    for ln in tflite:
        by_model.setdefault(ln["artifact_id"], []).append(ln["pred_indices"])
    assert all(a == b for a, b in by_model.values())  # same answers with and without XNNPACK
    for ln in onnx:
        settings = ln["runtime_settings"]
        assert ln["delegate"] is None and settings["providers"] == ["CPUExecutionProvider"]
        assert settings["graph_optimization_level"] == "ORT_ENABLE_ALL" and settings["inter_op_num_threads"] == 1
