"""Faults that once gave a traceback, a silent wrong result or lost data (issue #10).

Each test reproduces one fault with real files and real components and checks that it now
ends in a clear error or a recorded failure, with nothing already written lost.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from test_bench_run import QUICK, copy_exports, exports_dir, read_lines  # noqa: F401  (fixture)

# Imports of these top-level packages fail in the child; BLOCKED_SEEN lists every attempt.
BLOCKER = r"""
import importlib.abc, sys
BLOCKED_SEEN = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            BLOCKED_SEEN.append(name)
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""
TF_PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx")


def run_blocked(block: tuple[str, ...], body: str) -> subprocess.CompletedProcess:
    code = f"BLOCK = {block!r}\n" + BLOCKER + body
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})


# 18. device/runtime.py fell back to TensorFlow's interpreter at run time.

def test_tflite_runs_on_litert_with_tensorflow_blocked(exports_dir):
    model = exports_dir / "models" / "tiny-fp32.tflite"
    result = run_blocked(TF_PACKAGES, f"""
import numpy as np
from device.runtime import load
m = load({str(model)!r})
p = m.predict(np.full(m.input_shape[1:], 128, np.uint8))
assert abs(float(p.sum()) - 1) < 1e-4, p
assert not [k for k in sys.modules if k.split(".")[0] == "tensorflow"]
print(m.runtime, m.package, BLOCKED_SEEN)
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[:2] == ["litert", "ai-edge-litert"]
    assert "tensorflow" not in result.stdout  # TensorFlow was never even asked for


def test_no_litert_names_the_fix_and_never_imports_tensorflow(exports_dir):
    model = exports_dir / "models" / "tiny-fp32.tflite"
    result = run_blocked(("ai_edge_litert", "tflite_runtime"), f"""
from device.runtime import load, RuntimeUnavailable
try:
    load({str(model)!r})
except RuntimeUnavailable as exc:
    print("unavailable:", exc)
assert not [k for k in sys.modules if k.split(".")[0] == "tensorflow"], "TensorFlow imported unasked"
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unavailable:" in result.stdout
    assert "skyedge[device]" in result.stdout and "runtime tensorflow" in result.stdout


def test_tensorflow_runtime_only_when_named(exports_dir, tmp_path):
    model = exports_dir / "models" / "tiny-fp32.tflite"
    body = f"""
import numpy as np
from device.runtime import load
img = np.random.default_rng(0).integers(0, 256, (1,) + load({str(model)!r}).input_shape[1:], dtype=np.uint8)
a = load({str(model)!r}).predict(img[0])
b = load({str(model)!r}, "tensorflow")
assert b.runtime == "tensorflow" and b.package == "tensorflow", (b.runtime, b.package)
assert np.allclose(a, b.predict(img[0]), atol=1e-5)
print("ok")
"""
    result = run_blocked((), body)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]

    # bench run --runtime tensorflow runs the TFLite artifacts (and only them) on TensorFlow
    exports = copy_exports(exports_dir, tmp_path / "exports")
    out = tmp_path / "tf.jsonl"
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--models", str(exports), "--out", str(out),
                           "--runtime", "tensorflow", "--select", "*fp32*", "--mode", "kernel", *QUICK],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = read_lines(out)
    assert lines and {line["runtime"] for line in lines} == {"tensorflow"}
    assert {line["runtime_package"] for line in lines} == {"tensorflow"}
    assert all(line["format"] == "tflite" and not line.get("error") and line["latency_ms_p50"] for line in lines)


# 3. bench run's int8 notes rewrite dropped lines it could not parse, and raced with appends.

def _pair_lines() -> list[dict]:
    base = {"device_name": "pi", "backbone": "b", "level": 1, "seed": 0, "format": "onnx",
            "runtime": "onnxruntime", "threads": 1, "mode": "kernel", "notes": []}
    return [{**base, "artifact_id": "f", "variant": "fp32", "latency_ms_p50": 1.0},
            {**base, "artifact_id": "q", "variant": "int8", "latency_ms_p50": 2.0}]


def test_int8_notes_keep_every_line_they_cannot_read(tmp_path):
    from bench.jobs import annotate_int8

    out = tmp_path / "r.jsonl"
    fp32, int8 = (json.dumps(line).encode() for line in _pair_lines())
    fragment, latin1 = b'{"device_name": "pi", "artifact_id": "cut sh', b'{"device_name": "caf\xe9"}'
    out.write_bytes(b"\n".join([fp32, fragment, int8, latin1]) + b"\n")
    assert annotate_int8(out) == 2
    raw = out.read_bytes().split(b"\n")
    assert len(raw) == 5 and raw[-1] == b""  # 4 lines, none lost
    assert raw[1] == fragment and raw[3] == latin1  # kept byte for byte, in place
    assert "slower" in " ".join(json.loads(raw[0])["notes"]) and json.loads(raw[2])["notes"]


def test_rewrite_never_loses_a_concurrent_append(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in _pair_lines()))
    appender = subprocess.Popen([sys.executable, "-c", f"""
from device.atomic import append_jsonl
for i in range(300):
    append_jsonl({str(out)!r}, {{"artifact_id": f"a{{i}}", "variant": "extra"}})
"""], cwd=REPO)
    from device.atomic import rewrite_jsonl

    def touch(records):  # a rewrite that always changes something, as often as possible
        records[0]["notes"] = records[0].get("notes", []) + ["x"]
        return 1

    rewrites = 0
    while appender.poll() is None:
        rewrite_jsonl(out, touch)
        rewrites += 1
    assert appender.returncode == 0 and rewrites > 1
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["artifact_id"] for r in got if r.get("variant") == "extra") == sorted(f"a{i}" for i in range(300))


# 14. a results file with non-UTF-8 bytes or a cut line: the report names the file and goes on.

def test_report_reads_non_utf8_and_cut_lines_and_names_them(tmp_path):
    results = tmp_path / "r.jsonl"
    good = {"device_name": "pi\xe9", "artifact_id": "a", "backbone": "mobilenetv2", "variant": "fp32",
            "latency_ms_p50": 1.0, "accuracy": 0.5}
    results.write_bytes(json.dumps(good).encode() + b"\n" + b'{"device_name": "pi\xff\xfe"}\n{"cut')
    done = subprocess.run([sys.executable, "-m", "bench.cli", "report", "--results", str(results),
                           "--out", str(tmp_path / "report")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{results} line 3: not a JSON line" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "report" / "report.md").is_file()


# 8, 15, 13. bench run: counts checked up front, failed jobs give exit 3, Ctrl-C stops cleanly.

def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("option,value", [("--runs", "0"), ("--warmup", "-1"), ("--min-secs", "nan"),
                                          ("--threads", "0"), ("--job-timeout", "0")])
def test_bench_run_refuses_bad_counts_before_writing(exports_dir, tmp_path, option, value):
    out = tmp_path / "r.jsonl"
    done = bench("run", "--models", str(exports_dir), "--out", str(out), option, value)
    assert done.returncode == 2, done.stderr
    assert option in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_max_secs_cuts_a_long_job_and_keeps_what_was_measured(exports_dir, tmp_path):
    # #12 item 1: a slow job was killed at --job-timeout and lost everything
    out = tmp_path / "r.jsonl"
    done = bench("run", "--models", str(exports_dir), "--out", str(out), "--runtime", "litert", "--select", "*fp32*",
                 "--split", "val",
                 "--warmup", "1", "--runs", "100000000", "--min-secs", "0", "--max-secs", "0.5")
    assert done.returncode == 0, done.stderr
    line = read_lines(out)[0]
    assert line["stopped_at_max_secs"] is True and 0 < line["runs"] < 100000000
    assert 0.5 <= line["seconds_measured"] < 5 and line["latency_ms_p95"] is not None
    assert any("stopped at --max-secs 0.5" in n for n in line["notes"])
    refused = bench("run", "--models", str(exports_dir), "--out", str(tmp_path / "x.jsonl"), "--min-secs", "2",
                    "--max-secs", "1")
    assert refused.returncode == 2 and "--max-secs 1 is below --min-secs 2" in refused.stderr


def test_bench_run_exit_3_when_a_job_fails(exports_dir, tmp_path):
    exports = copy_exports(exports_dir, tmp_path / "exports")
    damaged = exports / "models" / "tiny-int8.tflite"
    damaged.write_bytes(damaged.read_bytes()[:100])
    out = tmp_path / "r.jsonl"
    done = bench("run", "--models", str(exports), "--out", str(out), "--runtime", "litert", *QUICK)
    assert done.returncode == 3, done.stderr
    assert "1 of 2 job(s) failed" in done.stderr
    lines = read_lines(out)
    assert [bool(line.get("error")) for line in lines] == [False, True]
    assert all(line.get("error") or line["latency_ms_p50"] for line in lines)


def test_bench_run_ctrl_c_keeps_lines_and_says_how_to_resume(exports_dir, tmp_path):
    import signal
    import time

    out = tmp_path / "r.jsonl"
    # #22: once the run finished before the signal landed (exit 0). Each job now measures for at
    # least 10 s, and the signal goes as soon as the first line is there, so two jobs (20 s or
    # more) are still to run however slowly this process is scheduled; a first line that never
    # comes fails here instead of signalling a finished run.
    # the command's output goes to files, not pipes: an unread pipe that fills would stall it;
    # and it gets Ctrl-C as a terminal gives it: a suite started in the background by a shell
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt (exit 0 here)
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--models", str(exports_dir), "--out",
                                 str(out), "--warmup", "1", "--runs", "5", "--min-secs", "10", "--split", "val"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out.exists() and out.read_text().count("\n") >= 1) and time.time() < deadline:
        assert proc.poll() is None, err_path.read_text()[-2000:]
        time.sleep(0.1)
    assert out.exists() and out.read_text().count("\n") == 1, "the first job did not finish in 300 s"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    stderr = err_path.read_text()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    kept = read_lines(out)
    assert 1 <= len(kept) < 3 and all(line["latency_ms_p50"] for line in kept)
    done = bench("run", "--models", str(exports_dir), "--out", str(out), "--resume", *QUICK)
    assert done.returncode == 0, done.stderr
    assert len(read_lines(out)) == 3


# 7. bench bundle: no damaged model, no empty image, no negative count.

def test_bundle_checks_what_goes_in(exports_dir, tmp_path):
    import shutil
    import tarfile

    exports = copy_exports(exports_dir, tmp_path / "exports")
    data = tmp_path / "data"
    shutil.copytree(json.loads((exports / "manifest.json").read_text())["artifacts"][0]["data"], data)
    rows = (data / "manifest.csv").read_text().splitlines()
    header = rows[0].split(",")
    empty = [r.split(",")[header.index("path")] for r in rows[1:] if r.split(",")[header.index("split")] == "val"][0]
    (data / empty).write_bytes(b"")
    model = exports / "models" / "tiny-fp32.onnx"
    model.write_bytes(model.read_bytes() + b"changed")

    done = bench("bundle", "--exports", str(exports), "--data", str(data), "--out", str(tmp_path / "b.tar.gz"),
                 "--max-images", "-3", "--split", "val")
    assert done.returncode == 2 and "--max-images" in done.stderr and not (tmp_path / "b.tar.gz").exists()

    done = bench("bundle", "--exports", str(exports), "--data", str(data), "--out", str(tmp_path / "b.tar.gz"),
                 "--split", "val")
    assert done.returncode == 0, done.stderr
    assert f"left out image {empty}: empty file" in done.stdout
    assert "does not match the sha256" in done.stdout
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        names = tar.getnames()
    assert not any(n.endswith("tiny-fp32.onnx") for n in names)
    assert not any(n.endswith(empty) for n in names)
    assert any(n.endswith("tiny-fp32.tflite") for n in names)


# 10. A PNG whose header claims 20,000 x 20,000 pixels stopped `train.data stats` and the sweep.

def bomb_png(path: Path, side: int = 20000) -> Path:
    """A 60-byte PNG whose header claims side x side pixels (PIL refuses it as a bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_skipped_with_a_warning(class_tree):
    from device.dataset import open_dataset

    bomb = bomb_png(class_tree / "STAR" / "star-bomb.png")
    done = subprocess.run([sys.executable, "-m", "train.data", "stats", str(class_tree)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                            "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    assert "unreadable: 1" in done.stdout and "star-bomb.png" in done.stdout and "too many pixels" in done.stdout

    dataset = open_dataset(class_tree)
    seen = []
    images, labels, kept, skipped = (None, None, [], [])
    for split in ("train", "val", "test"):
        images, labels, records, bad = dataset.load_arrays(split, 32, on_skip=lambda p, why: seen.append(p))
        kept += records
        skipped += bad
    assert [Path(p).name for p, _ in skipped] == ["star-bomb.png"] and seen == [str(bomb)]
    assert len(kept) == 24  # every other image still loads


# 4. The same image listed in train and in val (or test): leakage with no warning.

def test_images_listed_twice_keep_only_the_protected_copy(tmp_path):
    from device.dataset import Record, open_dataset, write_manifest
    from conftest import make_image

    records = []
    for i, label in enumerate(("GALAXY", "QSO", "STAR") * 4):
        path = f"img/{label}-{i}.jpg"
        make_image(tmp_path / path, seed=i, label_index=i % 3)
        records.append(Record(path=path, label=label, split=("train", "val", "test")[i // 4 % 3], objid=str(1000 + i)))
    write_manifest(tmp_path, records + [
        Record(path="img/GALAXY-0.jpg", label="GALAXY", split="val", objid="1000"),       # same path: train + val
        Record(path="./img/QSO-1.jpg", label="QSO", split="test", objid="1001"),          # same path, spelt apart
        Record(path="img/STAR-8-copy.jpg", label="STAR", split="train", objid="1008"),    # same objid as a test row
    ])
    make_image(tmp_path / "img/STAR-8-copy.jpg", seed=8, label_index=2)
    dataset = open_dataset(tmp_path)
    by_split = {s: {r.path for r in dataset.split(s)} for s in ("train", "val", "test")}
    assert "img/GALAXY-0.jpg" in by_split["val"] and "img/GALAXY-0.jpg" not in by_split["train"]
    assert not any(p.endswith("QSO-1.jpg") for p in by_split["train"])
    objids = [r.objid for r in dataset.records]
    assert len(objids) == len(set(objids)) == 12
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert any("same path" in n for n in dataset.notes) and any("same objid" in n for n in dataset.notes)

    done = subprocess.run([sys.executable, "-m", "train.data", "stats", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "repeat an image already listed" in done.stdout, done.stderr


# 1. A failed fetch into an existing dataset folder rewrote its manifest.csv from 60 rows to 0.

def test_failed_fetch_never_shrinks_a_manifest(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from skyserver import SkyServer, position_key
    from device.dataset import read_manifest
    from train.fetch import FetchConfig, fetch

    fast = dict(rate=1000.0, workers=4, timeout=0.3, retries=1, backoff=0.01, size=64)
    out = tmp_path / "out"
    catalog = tmp_path / "other.csv"
    catalog.write_text("objid,ra,dec,class\n901,1.5,2.5,galaxy\n902,3.5,4.5,qso\n903,5.5,6.5,star\n")
    with SkyServer(missing={position_key(1.5, 2.5), position_key(3.5, 4.5), position_key(5.5, 6.5)}) as server:
        fetch(FetchConfig(out=out, base_url=server.base_url, n=12, **fast), log=lambda _: None)
        before = {(r.path, r.split) for r in read_manifest(out).records}
        assert len(before) == 12
        lines = []
        summary = fetch(FetchConfig(out=out, base_url=server.base_url, catalog=catalog, **fast), log=lines.append)
    assert summary.failed == 3
    after = {(r.path, r.split) for r in read_manifest(out).records}
    assert after == before  # every row kept, each in its split
    assert any("never shrinks a manifest" in line for line in lines)


def test_predictions_format_round_trips_through_its_one_owner(tmp_path):
    # #13 item 1: every stage reads predictions through device.predictions
    from device.predictions import PredictionsError, read_predictions, read_probabilities, write_predictions

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    path = write_predictions(tmp_path / "p.csv", ["a.jpg", "b.jpg"], np.array([0, 1]), probs)
    paths, labels, got = read_probabilities(path)
    assert paths == ["a.jpg", "b.jpg"] and labels.tolist() == [0, 1] and np.allclose(got, probs, atol=1e-6)
    assert read_predictions(path) == {"a.jpg": (0, 0), "b.jpg": (1, 2)}
    (tmp_path / "bad.csv").write_text("path,label\na.jpg,GALAXY\n")
    with pytest.raises(PredictionsError, match="bad.csv: expected a non-empty CSV with columns"):
        read_probabilities(tmp_path / "bad.csv")


def test_exports_manifest_round_trips_through_its_one_owner(tmp_path):
    # #13 item 1: export wrote the manifest, bench read it without checking its version, bundle wrote one by hand
    from bench.jobs import BenchError, load_manifest
    from device import exports_manifest

    records = [{"artifact_id": "a-fp32", "file": "models/a.tflite", "format": "tflite"},
               {"artifact_id": "a-int8", "file": "models/a-int8.tflite", "format": "tflite"}]
    path = exports_manifest.write(tmp_path / "e", records, bundle={"images": 3})
    assert exports_manifest.read_artifacts(tmp_path / "e") == records == load_manifest(tmp_path / "e")
    assert set(exports_manifest.read(tmp_path / "e")) == {"a-fp32", "a-int8"}
    assert json.loads(path.read_text())["bundle"] == {"images": 3}
    exports_manifest.merge(tmp_path / "e", [{"artifact_id": "a-fp32", "file": "models/a.tflite", "format": "tflite",
                                             "sha256": "x"}])
    assert exports_manifest.read(tmp_path / "e")["a-fp32"]["sha256"] == "x"
    path.write_text(json.dumps({"format_version": 2, "artifacts": records}))
    with pytest.raises(ValueError, match="format_version 2, expected 1"):
        exports_manifest.read_artifacts(tmp_path / "e")
    with pytest.raises(BenchError, match=r"manifest.json: format_version 2, expected 1"):
        load_manifest(tmp_path / "e")
    with pytest.raises(BenchError, match="no such file"):
        load_manifest(tmp_path / "missing")


def test_sweep_results_round_trip_through_their_one_owner(tmp_path):
    # #13 item 1: load_runs, aggregate and best_level lived in train.summary among CSV, Markdown and plots
    from device import sweep_results as sr

    def record(level, seed, acc, **extra):
        return {"run_id": f"m-L{level:03d}-s{seed}", "backbone": "m", "level": level, "seed": seed,
                "val_accuracy": acc, "val_n": 100, "trainable_params": 10 * (level + 1), **extra}

    sr.append_run(tmp_path, record(0, 0, 0.5, error="out of memory"))
    for level, seed, acc in ((0, 0, 0.6), (3, 0, 0.7), (3, 1, 0.8), (5, 0, 0.75)):
        sr.append_run(tmp_path, record(level, seed, acc))
    raw = sr.read_records(tmp_path)
    assert len(raw) == 5 and {r["results_version"] for r in raw} == {sr.RESULTS_VERSION}
    ok, failed, superseded = sr.load_runs(tmp_path)
    assert [r["run_id"] for r in ok] == ["m-L000-s0", "m-L003-s0", "m-L003-s1", "m-L005-s0"]
    assert failed == [] and superseded == 1 and sr.succeeded_ids(tmp_path) == {r["run_id"] for r in ok}
    levels = sr.aggregate(ok)["m"]
    best = sr.best_level(levels)
    assert best.level == 3 and best.n_seeds == 2 and abs(best.acc_mean - 0.75) < 1e-12
    assert sr.best_level([levels[2], levels[1]]).level == 3  # 0.75 each: fewer trainable parameters win

    rows = [{"epoch": 1, "loss": 0.9, "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": 0.55, "seconds": 3.0}]
    sr.write_history(tmp_path / "history.csv", rows)
    assert sr.read_history(tmp_path / "history.csv") == rows and sr.read_history(tmp_path / "none.csv") == []

    # a line written before results_version existed is read as version 1; another version is refused
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / sr.RESULTS).write_text(json.dumps(record(0, 0, 0.6)) + "\n")
    assert sr.load_runs(tmp_path / "old")[0][0]["val_accuracy"] == 0.6
    sr.append_run(tmp_path, {**record(7, 0, 0.9), "results_version": 2})
    with pytest.raises(sr.ResultsError, match=r"results.jsonl: record 6 has results_version 2; this SkyEdge reads version 1"):
        sr.load_runs(tmp_path)
    with pytest.raises(sr.ResultsError, match="no such file"):
        sr.load_runs(tmp_path / "missing")


def test_a_worker_job_is_a_typed_record_refused_when_its_keys_differ():
    # #13 item 3: the job crossing into the bench worker was a dict whose keys only a docstring named
    from dataclasses import asdict

    from bench.worker import WorkerJob, run_job

    job = WorkerJob(artifact={"artifact_id": "x"}, model_path="/nowhere/m.tflite", runtime="litert", threads=1,
                    mode="kernel", data="/nowhere", split="test", reference=None, warmup=1, runs=1, min_secs=0.0,
                    shuffle=False, seed=0, max_timed_inputs=4, max_secs=None, delegate="xnnpack")
    assert WorkerJob.from_dict(json.loads(json.dumps(asdict(job)))) == job
    result = run_job({**asdict(job), "warmups": 3})
    assert "unknown ['warmups']" in result["error"]
    missing = asdict(job)
    del missing["runs"]
    assert "missing ['runs']" in run_job(missing)["error"]
