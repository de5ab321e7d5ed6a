"""bench.android: parse recorded benchmark_model output; drive a fake adb end to end."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from bench.android import AndroidConfig, AndroidError, parse_benchmark_output, parse_getprop, run_android

DATA = Path(__file__).parent / "data"


def test_parse_recorded_output():
    out = parse_benchmark_output((DATA / "benchmark_model_output.txt").read_text())
    assert out["load_ms"] == pytest.approx(5.685)
    assert out["first_inference_ms"] == pytest.approx(18.535)
    assert out["warmup_ms_mean"] == pytest.approx(14.4623)
    assert out["latency_ms_mean"] == pytest.approx(14.1549)
    # the measured count= line (the second), not the warmup one
    assert out["runs"] == 71
    assert out["latency_ms_min"] == pytest.approx(13.987)
    assert out["latency_ms_max"] == pytest.approx(14.921)
    assert out["latency_ms_std"] == pytest.approx(0.151)
    assert out["latency_ms_p50"] == pytest.approx(14.121)
    assert out["latency_ms_p95"] == pytest.approx(14.480)
    assert out["rss_increase_bytes"] == int(6.625 * 1024 * 1024)
    assert out["memory_init_delta_bytes"] == int(5.04688 * 1024 * 1024)
    assert out["peak_rss_bytes"] == int(9.02734 * 1024 * 1024)


def test_parse_without_percentiles_or_peak():
    text = ("INFO: count=50 first=120 curr=100 min=95 max=130 avg=101.5 std=4\n"
            "INFO: Inference timings in us: Init: 900, First inference: 120, Warmup (avg): 110, Inference (avg): 101.5\n")
    out = parse_benchmark_output(text)
    assert out["runs"] == 50 and out["latency_ms_mean"] == pytest.approx(0.1015)
    assert "latency_ms_p50" not in out and "peak_rss_bytes" not in out


def test_parse_failure_names_the_error():
    with pytest.raises(AndroidError, match="not a valid Flatbuffer"):
        parse_benchmark_output((DATA / "benchmark_model_failure.txt").read_text())


def test_parse_getprop():
    props = parse_getprop((DATA / "getprop.txt").read_text())
    assert props["ro.product.model"] == "Pixel 8 Pro" and props["ro.soc.model"] == "Tensor G3"


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """A fake adb on PATH answering from tests/data, and an exports folder for it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy(DATA / "fake_adb.sh", bindir / "adb")
    log = tmp_path / "adb.log"
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_DATA", str(DATA))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    exports = tmp_path / "exports"
    (exports / "models").mkdir(parents=True)
    artifacts = []
    for name, content in (("tiny-fp32", b"TFL3 fp32"), ("broken", b"not a model")):
        path = exports / "models" / f"{name}.tflite"
        path.write_bytes(content)
        artifacts.append({"artifact_id": name, "backbone": "tiny", "level": 0, "seed": 0, "variant": "fp32",
                          "format": "tflite", "file": f"models/{name}.tflite",
                          "sha256": hashlib.sha256(content).hexdigest()})
    artifacts.append({"artifact_id": "tiny-onnx", "format": "onnx", "file": "models/x.onnx"})
    artifacts.append({"artifact_id": "bad-hash", "format": "tflite", "file": "models/tiny-fp32.tflite",
                      "sha256": "0" * 64})
    (exports / "manifest.json").write_text(json.dumps({"format_version": 1, "artifacts": artifacts}))
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    return {"exports": exports, "log": log, "binary": binary, "artifacts": artifacts, "adb": str(bindir / "adb")}


def test_driver_command_flow(phone):
    config = AndroidConfig(models=phone["exports"], adb=phone["adb"], benchmark_binary=str(phone["binary"]),
                           threads=(1, 4), delegate="xnnpack", runs=30, warmup=3, min_secs=2.0, affinity="f0",
                           serial="emulator-5554")
    lines = []
    records = list(run_android(config, phone["artifacts"], progress=lines.append))
    assert [(r["artifact_id"], r["threads"]) for r in records] == [
        ("tiny-fp32", 1), ("tiny-fp32", 4), ("broken", 1), ("broken", 4), ("bad-hash", 1), ("bad-hash", 4)]
    good = records[0]
    assert "error" not in good
    assert good["device_name"] == "Pixel 8 Pro" and good["cpu_model"] == "Google Tensor G3"
    assert good["arch"] == "arm64-v8a" and good["cores"] == 9 and good["os"] == "Android 14 (SDK 34)"
    assert good["ram_bytes"] == 11704832 * 1024 and good["governor"] == "sched_pixel"
    assert good["latency_ms_mean"] == pytest.approx(14.1549) and good["load_ms"] == pytest.approx(5.685)
    assert "not a valid Flatbuffer" in records[2]["error"]
    assert "sha256" in records[4]["error"]
    assert any("runs .tflite only" in line for line in lines)
    calls = phone["log"].read_text().splitlines()
    assert all(call.startswith("-s emulator-5554 ") for call in calls)
    run = [c for c in calls if "tiny-fp32.tflite --num_threads=4" in c]
    # #12 item 3: the same minimum time as bench run, peak memory asked for, pinned to a CPU mask
    assert run and "--use_xnnpack=true --num_runs=30 --warmup_runs=3 --min_secs=2" in run[0]
    assert "--report_peak_memory_footprint=true" in run[0] and "taskset f0 " in run[0]
    assert good["benchmark_command"].startswith("taskset f0 /data/local/tmp/skyedge/benchmark_model")
    with pytest.raises(ValueError, match="taskset CPU mask"):
        AndroidConfig(models=phone["exports"], adb="adb", benchmark_binary="b", affinity="big")
    assert sum(c.startswith("-s emulator-5554 push") and "tiny-fp32.tflite" in c for c in calls) == 1
    assert calls[-1].endswith("rm -rf /data/local/tmp/skyedge")


def test_cli_android_writes_complete_lines(phone, tmp_path):
    out = tmp_path / "phone.jsonl"
    result = subprocess.run([sys.executable, "-m", "bench.cli", "android", "--models", str(phone["exports"]),
                             "--adb", phone["adb"], "--benchmark-binary", str(phone["binary"]),
                             "--threads", "2", "--delegate", "gpu", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=60, env=os.environ)
    assert result.returncode == 3, result.stderr  # two of the three jobs fail (a broken model, a bad hash)
    assert "2 of 3 job(s) failed" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[0]["delegate"] == "gpu" and lines[0]["latency_ms_p50"] == pytest.approx(14.121)
    assert {"accuracy", "latency_ms_p90", "temp_c_before", "pred_indices"} <= set(lines[0])
    assert "--use_gpu=true" in phone["log"].read_text()
    # runs, warm-up and minimum time default to bench run's
    from bench.jobs import RunConfig
    from device.options import defaults

    d = defaults(RunConfig)
    assert f"--num_runs={d['runs']} --warmup_runs={d['warmup']} --min_secs={d['min_secs']:g}" in phone["log"].read_text()
