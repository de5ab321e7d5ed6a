"""Faults of the third fault run (issue #22): one test per cause, with real files, real
commands and real subprocesses; each failed on the code before its fix.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_image, make_labelled_dataset
from test_bench_run import QUICK, copy_exports, exports_dir, read_lines  # noqa: F401  (fixture)

HUGE = "x" * 140_000  # over csv's 131,072-character field limit


def run_module(module: str, *args: str, timeout: float = 120, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def one_error_line(stderr: str) -> str:
    """The one line of ``stderr`` that says ``error:``; fails on a traceback or on several."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    make_labelled_dataset(root, per_class=4, val=2)
    return root


# 1, 2. inf passed checks that refused nan and -1; negative seeds failed every run (exit 3).

NUMERIC_CASES = [
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--job-timeout", "inf"),
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--job-timeout", "1e30"),
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--cooldown-secs", "inf"),
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--cooldown-temp", "nan"),
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--cooldown-timeout", "inf"),
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--min-secs", "inf"),
    ("bench.cli", ["run", "--models", "M", "--out", "O"], "--max-secs", "nan"),
    ("bench.cli", ["run", "--models", "M", "--out", "O", "--shuffle"], "--seed", "-1"),
    ("bench.cli", ["overhead", "--model", "M"], "--rounds", "0"),
    ("bench.cli", ["android", "--models", "M", "--adb", "a", "--benchmark-binary", "b", "--out", "O"],
     "--min-secs", "inf"),
    ("bench.cli", ["report", "--results", "R", "--out", "O"], "--alpha", "nan"),
    ("bench.cli", ["report", "--results", "R", "--out", "O"], "--budgets", "10,inf"),
    ("bench.cli", ["report", "--results", "R", "--out", "O"], "--min-images", "abc"),
    ("train.data", ["sdss", "--out", "O"], "--timeout", "inf"),
    ("train.data", ["sdss", "--out", "O"], "--backoff", "inf"),
    ("train.data", ["sdss", "--out", "O"], "--scale", "inf"),
    ("train.data", ["sdss", "--out", "O"], "--rate", "nan"),
    ("train.data", ["sdss", "--out", "O"], "--retries", "-1"),
    ("train.data", ["synth", "--out", "O", "--n", "3"], "--val", "nan"),
    ("train.data", ["synth", "--out", "O", "--n", "3"], "--seed", "-1"),
    ("train.pretrain", ["--data", "D", "--backbone", "mobilenetv2", "--out", "O"], "--lr", "inf"),
    ("train.pretrain", ["--data", "D", "--backbone", "mobilenetv2", "--out", "O"], "--seed", "-1"),
    ("train.pretrain", ["--data", "D", "--backbone", "mobilenetv2", "--out", "O"], "--bn-momentum", "nan"),
    ("train.levels", ["--backbone", "mobilenetv2"], "--img-size", "-1"),
    ("train.sweep", ["--data", "D", "--out", "O"], "--seeds", "0,-1"),
    ("train.sweep", ["--data", "D", "--out", "O"], "--lr", "inf"),
    ("train.sweep", ["--data", "D", "--out", "O"], "--img-size", "100000"),
    ("export.tflite", ["--runs", "R", "--out", "O"], "--threads", "0"),
]


@pytest.mark.parametrize("module,args,option,value", NUMERIC_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_every_numeric_option_refuses_inf_nan_and_out_of_range_in_one_line(module, args, option, value, tmp_path,
                                                                          monkeypatch, capsys):
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    try:
        code = main([*args, option, value])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    line = one_error_line(stderr)
    assert option in line and "expected" in line, line
    assert not (tmp_path / "O").exists()


def test_shared_number_check_refuses_what_argparse_would(tmp_path):
    from bench.jobs import RunConfig
    from device.options import check_number

    for value in (float("inf"), float("nan"), -1.0, "5", True):
        with pytest.raises(ValueError, match="--x"):
            check_number(value, "--x", 0, 100)
    check_number(5, "--x", 0, 100, integer=True)
    for field, value in (("job_timeout_s", float("inf")), ("cooldown_secs", 1e30), ("seed", -1),
                         ("min_secs", float("inf"))):
        with pytest.raises(ValueError):
            RunConfig(models=tmp_path, out=tmp_path / "o.jsonl", **{field: value})


# 10. a typo waited for TensorFlow (5-22 s): arguments are checked before it is imported.

@pytest.mark.parametrize("module,args", [
    ("train.sweep", ["--data", "D", "--out", "O", "--backbones", "densnet121"]),
    ("train.pretrain", ["--data", "D", "--out", "O", "--backbone", "densnet121"]),
    ("train.levels", ["--backbone", "densnet121"]),
    ("export.tflite", ["--runs", "R", "--out", "O", "--variants", "bogus"]),
])
def test_bad_arguments_are_answered_before_tensorflow_loads(module, args, tmp_path):
    code = (f"import sys; from {module} import main; rc = main({args!r}); "
            f"assert 'tensorflow' not in sys.modules, 'TensorFlow imported'; sys.exit(rc)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert one_error_line(done.stderr)
    assert time.perf_counter() - started < 10  # TensorFlow alone takes longer than that here


# 11. train.levels printed TensorFlow's C++ start-up lines without --verbose.

def test_levels_is_quiet_without_verbose():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = run_module("train.levels", "--backbone", "mobilenetv2", "--levels", "0", "--img-size", "32",
                      timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip() == "", done.stderr[-2000:]
    assert "mobilenetv2: 155 base layers" in done.stdout


# 3. CSV fields over 131,072 characters ended in a _csv.Error traceback.

def test_huge_csv_fields_are_refused_naming_the_file_and_line(dataset, tmp_path):
    manifest = dataset / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[2] = f"{HUGE},GALAXY,train"
    manifest.write_text("\n".join(lines) + "\n")
    done = run_module("train.data", "stats", str(dataset))
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert f"{manifest} line 3" in line and "131,072 characters" in line

    from train.sweep import SweepConfig, SweepError, plan

    with pytest.raises(SweepError, match=r"manifest.csv line 3: cannot parse \(a field longer than 131,072"):
        plan(SweepConfig(data=str(dataset), out=str(tmp_path / "sweep"), weights="none"))

    catalog = tmp_path / "catalog.csv"
    catalog.write_text(f"# a comment\nra,dec,class\n10.0,1.0,STAR\n11.0,2.0,\"{HUGE}\"\n")
    done = run_module("train.data", "sdss", "--catalog", str(catalog), "--out", str(tmp_path / "f"),
                      "--base-url", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert f"{catalog} line 4: cannot parse" in one_error_line(done.stderr)

    from device.predictions import PredictionsError, read_predictions

    predictions = tmp_path / "p.csv"
    predictions.write_text(f"path,label_index,pred_index\n{HUGE},0,0\n")
    with pytest.raises(PredictionsError, match=r"p.csv line 2"):
        read_predictions(predictions)


# 7. a killed run whose history.csv is damaged could never finish.

def test_damaged_history_is_named_and_read_as_damaged(tmp_path):
    from device import sweep_results as sr

    history = tmp_path / "history.csv"
    for damage in (b"epoch,loss\n1,0.5\xff\xfe\n", b"epoch,loss,accuracy\n1," + HUGE.encode() + b"\n"):
        history.write_bytes(damage)
        with pytest.raises(sr.HistoryError, match=str(history)):
            sr.read_history(history)


@pytest.fixture(scope="module")
def tiny_sweep_data(tmp_path_factory) -> Path:
    from device.dataset import index_tree, stratified_split, write_manifest

    root = tmp_path_factory.mktemp("sweep-data")
    for index, (label, count) in enumerate((("GALAXY", 10), ("QSO", 8), ("STAR", 10))):
        for i in range(count):
            make_image(root / label / f"{i:03d}.png", seed=70 * index + i, size=36, label_index=index)
    write_manifest(root, stratified_split(index_tree(root)[0], seed=0))
    return root


def sweep_config(data: Path, out: Path, **kw):
    from train.sweep import SweepConfig

    return SweepConfig(**{**dict(data=str(data), out=str(out), backbones=("mobilenetv2",), levels="0", epochs=2,
                                 batch_size=8, img_size=32, seeds=(0,), weights="none"), **kw})


def test_killed_run_with_damaged_history_restarts_and_says_which_file(tiny_sweep_data, tmp_path):
    from device.sweep_results import load_runs
    from train.sweep import run_sweep

    out = run_sweep(sweep_config(tiny_sweep_data, tmp_path / "s"), log=lambda m: None)
    run = out / "runs" / "mobilenetv2" / "L000-s0"
    (run / "metrics.json").unlink()  # killed before the run was recorded...
    (run / "history.csv").write_bytes((run / "history.csv").read_bytes()[:40] + b"\xff\xfe\x00")  # ...mid-write
    messages: list[str] = []
    run_sweep(sweep_config(tiny_sweep_data, tmp_path / "s"), log=messages.append)
    assert any(str(run / "history.csv") in m and "restarting this run" in m for m in messages), messages
    assert (run / "metrics.json").is_file()
    ok, failed, _ = load_runs(out)
    assert [r["run_id"] for r in ok] == ["mobilenetv2-L000-s0"] and failed == []
    assert not any("error" in m for m in messages if "UnicodeDecodeError" in m)


# 9. a full --cache-dir killed the sweep with SIGBUS (exit 135) and recorded nothing.

@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped with the reason elsewhere)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_full_cache_dir_fails_the_run_with_the_reason(tiny_sweep_data, tiny_disk, tmp_path):
    out = tmp_path / "s"
    done = run_module("train.sweep", "--data", str(tiny_sweep_data), "--out", str(out), "--backbones", "mobilenetv2",
                      "--levels", "7", "--epochs", "1", "--batch-size", "8", "--img-size", "32", "--weights", "none",
                      "--cache-budget-gb", "0", "--cache-dir", str(tiny_disk), timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]  # was -7 (SIGBUS), nothing recorded
    (line,) = read_lines(out / "results.jsonl")
    assert line["run_id"] == "mobilenetv2-L007-s0" and "cannot reserve" in line["error"]
    assert "No space left on device" in line["error"] and str(tiny_disk) in line["error"]


# 4. write errors: a full disk, an output that is a folder, an --out that is a symlink loop.

def _fake_sweep(root: Path) -> Path:
    root.mkdir(parents=True)
    with open(root / "results.jsonl", "w") as fh:
        for level, acc in ((0, 0.5), (7, 0.6)):
            fh.write(json.dumps({"run_id": f"mobilenetv2-L{level:03d}-s0", "backbone": "mobilenetv2", "level": level,
                                 "seed": 0, "val_accuracy": acc, "val_n": 30,
                                 "run_dir": f"runs/mobilenetv2/L{level:03d}-s0"}) + "\n")
    return root


def test_full_disk_ends_in_one_line_naming_the_file(tmp_path):
    import resource

    sweep = _fake_sweep(tmp_path / "sweep")

    def small_files():  # writes past 2 KB fail with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    done = run_module("train.summary", str(sweep), preexec_fn=small_files)
    assert done.returncode == 2, done.stderr[-2000:]
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: {sweep}/") and "File too large" in line and ".tmp" not in line
    assert json.loads((sweep / "results.jsonl").read_text().splitlines()[0])["level"] == 0  # nothing lost


def test_outputs_that_cannot_be_written_end_in_one_line(tmp_path, dataset):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"artifact_id": "a", "device_name": "d", "latency_ms_p50": 1.0}) + "\n")
    for module, args in (("bench.cli", ["report", "--results", str(results), "--out", str(loop)]),
                         ("bench.cli", ["report", "--results", str(results), "--out", str(loop / "sub")]),
                         ("train.sweep", ["--data", str(dataset), "--out", str(loop), "--weights", "none"])):
        done = run_module(module, *args)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Too many levels of symbolic links" in one_error_line(done.stderr)
    (tmp_path / "floors.json").mkdir()
    done = run_module("bench.cli", "floors", "--data", str(dataset), "--split", "val", "--out", str(tmp_path / "floors.json"))
    assert done.returncode == 2
    assert one_error_line(done.stderr) == f"error: {tmp_path / 'floors.json'}: Is a directory"


def test_an_os_error_wrapped_on_its_way_is_one_error_line(capsys):
    import errno

    from device.command import run_command

    def work():
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out.h5")
        except OSError as exc:
            raise RuntimeError("worker failed") from exc

    assert run_command(work) == 2
    assert capsys.readouterr().err.strip() == "error: /data/out.h5: No space left on device"
    with pytest.raises(RuntimeError):  # anything else still shows as the bug it is
        run_command(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


# 8. JSON lines that are not records: kept, named in one warning, never counted.

NOT_RECORDS = [b"[1, 2]", b"5", b"{}", b'{"artifact_id": "tiny-l0-s0-fp32-tflite"}']


def test_bench_resume_skips_lines_that_are_not_records(exports_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(b"\n".join(NOT_RECORDS) + b"\n")
    done = run_module("bench.cli", "run", "--models", str(exports_dir), "--out", str(out), "--resume",
                      "--runtime", "litert", "--select", "*fp32*", *QUICK, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "4 line(s)" in warnings[0] and f"{out} line 1: not a JSON object" in warnings[0]
    assert f"{out} line 4: no artifact_id" not in warnings[0] and "line 4: neither an error" in warnings[0]
    raw = out.read_bytes().split(b"\n")
    assert raw[:4] == NOT_RECORDS  # kept byte for byte
    measured = [json.loads(line) for line in raw[4:] if line.strip()]
    assert [m["artifact_id"] for m in measured] == ["tiny-l0-s0-fp32-tflite"]  # the fake line did not count as done


def test_report_counts_no_line_that_is_not_a_measurement(tmp_path):
    results = tmp_path / "r.jsonl"
    good = {"device_name": "pi", "artifact_id": "a", "backbone": "mobilenetv2", "variant": "fp32",
            "latency_ms_p50": 1.0, "accuracy": 0.5}
    results.write_text("\n".join(json.dumps(x) for x in (
        good, [good], {}, {"artifact_id": "b"}, {**good, "artifact_id": "c", "device_name": "ghost",
                                                 "latency_ms_p50": -5.0})) + "\n")
    done = run_module("bench.cli", "report", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:") and str(results) in line]
    assert len(warnings) == 1 and "4 line(s)" in warnings[0] and "latency_ms_p50 -5.0" in warnings[0]
    devices = (tmp_path / "rep" / "devices.csv").read_text()
    assert "ghost" not in devices and "unknown device" not in devices
    verdicts = json.loads((tmp_path / "rep" / "verdict.json").read_text())
    assert "ghost" not in json.dumps(verdicts) and "unknown device" not in json.dumps(verdicts)


def test_sweep_results_count_no_phantom_run(tmp_path, capsys):
    from device.sweep_results import load_runs

    sweep = _fake_sweep(tmp_path / "sweep")
    with open(sweep / "results.jsonl", "a") as fh:
        fh.write("{}\n[1]\n" + json.dumps({"run_id": "mobilenetv2-L003-s0"}) + "\n")
    ok, failed, _ = load_runs(sweep)
    assert len(ok) == 2 and failed == []
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "3 line(s)" in err and "line 3: no run_id" in err
    done = run_module("train.summary", str(sweep))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (sweep / "summary.md").read_text()
    assert "mobilenetv2-L003-s0" not in summary and "line-3" not in summary  # no phantom failed run


# 9. a hand-edited exports manifest.

def test_artifact_listed_twice_is_measured_once(exports_dir, tmp_path):
    exports = copy_exports(exports_dir, tmp_path / "exports")
    manifest = json.loads((exports / "manifest.json").read_text())
    manifest["artifacts"].append(dict(manifest["artifacts"][0]))
    (exports / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "r.jsonl"
    done = run_module("bench.cli", "run", "--models", str(exports), "--out", str(out), "--runtime", "litert",
                      "--select", "*fp32*", *QUICK, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "listed more than once in the manifest; measured once" in done.stdout
    assert len(read_lines(out)) == 1


def test_manifest_whose_data_is_nowhere_exits_2_before_measuring(exports_dir, tmp_path):
    exports = copy_exports(exports_dir, tmp_path / "exports")
    manifest = json.loads((exports / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        artifact["data"] = str(tmp_path / "moved-away")
    (exports / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "r.jsonl"
    done = run_module("bench.cli", "run", "--models", str(exports), "--out", str(out), *QUICK)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "moved-away" in one_error_line(done.stderr)
    assert not out.exists()


# 10. a corrupt baseline.json made the summary drop the floors and blame a missing test split.

def test_corrupt_baseline_is_named_in_the_summary(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    (sweep / "baseline.json").write_text('{"majority_accuracy": 0.3, "featu')
    done = run_module("train.summary", str(sweep))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (sweep / "summary.md").read_text()
    assert f"{sweep / 'baseline.json'}: unreadable" in summary and "no test split" not in summary


# 6. shards with different settings merged silently.

def test_shard_with_other_settings_is_refused(dataset, tmp_path):
    from device import sweep_results as layout
    from train.sweep import SweepConfig

    out = tmp_path / "sweep"
    out.mkdir()
    first = {**SweepConfig(data=str(dataset), out=str(out), weights="none", lr=0.001, shard=(0, 2)).__dict__,
             "runs": []}
    layout.shard_record(out, (0, 2)).write_text(json.dumps(first))
    started = time.perf_counter()
    done = run_module("train.sweep", "--data", str(dataset), "--out", str(out), "--weights", "none", "--shard", "1/2",
                      "--lr", "0.01", "--epochs", "3")
    assert done.returncode == 2, done.stderr[-2000:]
    line = one_error_line(done.stderr)
    assert "sweep-shard0of2.json" in line and "--lr 0.001 there, 0.01 here" in line and "--epochs 10 there, 3 here" in line
    assert time.perf_counter() - started < 20 and not layout.shard_record(out, (1, 2)).exists()


# 12. bench report left an empty output folder behind when it refused its input.

def test_refused_report_leaves_no_folder(tmp_path):
    empty = tmp_path / "r.jsonl"
    empty.write_text("")
    done = run_module("bench.cli", "report", "--results", str(empty), "--out", str(tmp_path / "rep"))
    assert done.returncode == 2 and one_error_line(done.stderr)
    assert not (tmp_path / "rep").exists()


# the Slurm job-array test was skipped on a fresh machine: .ci/run installs the daemons.

def test_ci_installs_slurm_when_missing_and_ends_with_the_readme_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("apt-get", "make"):  # stand-ins that record how they were called
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> {calls}\n')
        (bin_dir / name).chmod(0o755)
    for tool in ("dirname", "id", "bash", "sh", "cat"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(["bash", str(REPO / ".ci" / "run")], env={"PATH": str(bin_dir)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    recorded = calls.read_text().splitlines()
    assert recorded[-1].startswith("make test ")  # exactly the README's test command, last
    if os.geteuid() == 0:
        assert recorded[0] == "apt-get update -q DEBIAN_FRONTEND=noninteractive"
        assert recorded[1].startswith("apt-get install -y") and recorded[1].split()[-5:-1] == [
            "slurmctld", "slurmd", "slurm-client", "munge"]
    else:
        assert len(recorded) == 1 and "skipped" in done.stderr
    readme = (REPO / "README.md").read_text()
    assert "make test    #" in readme
