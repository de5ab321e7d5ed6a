"""The docs/hpc job array on a real one-node Slurm cluster (tests/slurm/start.sh).

Marked ``slurm``: run by ``make test-all`` and by .ci/run where the daemons can start (root,
Debian's slurmctld, slurmd, slurm-client and munge installed); skipped with the reason
elsewhere. The array's three tasks train three backbones into one folder; task 1 is cancelled
mid-run with ``scancel`` and submitted again alone; the summary job waits for both
(``--dependency=afterany``). The merged results must equal a single-process sweep's.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_image
from device.atomic import read_jsonl
from device.dataset import index_tree, stratified_split, write_manifest

pytestmark = pytest.mark.slurm

SWEEP = ["--weights", "none", "--img-size", "32", "--levels", "0,7", "--epochs", "6", "--batch-size", "8",
         "--backbones", "mobilenetv2,mobilenetv3small,densenet121"]
# the scripts ask for a GPU node's resources; this one-node cluster has nproc CPUs and no memory accounting
LOCAL = ["--cpus-per-task=1", "--mem=0", "--time=30:00"]


def _log(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text.rstrip() + "\n")
    print(text)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel") if not shutil.which(t)]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd "
                    "slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    # one fixed folder, so a cluster left running by an interrupted run is found and stopped by start.sh
    state = Path(tempfile.gettempdir()) / "skyedge-slurm-test"
    env = {**os.environ, "SKYEDGE_SLURM_DIR": str(state)}
    started = subprocess.run([str(REPO / "tests" / "slurm" / "start.sh")], env=env, capture_output=True, text=True,
                             timeout=120)
    if started.returncode != 0:
        reason = started.stderr.strip().splitlines()[-1] if started.stderr.strip() else f"exit {started.returncode}"
        pytest.skip(f"the Slurm daemons did not start: {reason}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run([str(REPO / "tests" / "slurm" / "stop.sh")], env=env, timeout=60)


def _sbatch(env: dict, *args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _queued(env: dict, *job_ids: str) -> bool:
    listed = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], env=env, capture_output=True,
                            text=True, timeout=60)
    return bool(listed.stdout.strip())


def _wait(env: dict, job_ids: list[str], timeout: float) -> None:
    deadline = time.time() + timeout
    while _queued(env, *job_ids):
        assert time.time() < deadline, f"Slurm jobs {job_ids} still queued after {timeout:.0f}s"
        time.sleep(1)


def _probs(path: Path) -> np.ndarray:
    with open(path) as fh:
        return np.array([[float(r[f"prob_{l}"]) for l in ("GALAXY", "QSO", "STAR")] for r in csv.DictReader(fh)])


def test_job_array_with_a_cancelled_task_equals_one_process(cluster, tmp_path):
    env = {**cluster, "SKYEDGE_PYTHON": sys.executable}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    data = tmp_path / "data"
    for index, (label, count) in enumerate((("GALAXY", 16), ("QSO", 10), ("STAR", 14))):
        for i in range(count):
            make_image(data / label / f"{i:03d}.png", seed=50 * index + i, size=40, label_index=index)
    write_manifest(data, stratified_split(index_tree(data)[0], seed=0))
    out, logs, record = tmp_path / "array", tmp_path / "logs", tmp_path / "slurm-run.txt"
    logs.mkdir()
    args = ["--data", str(data), *SWEEP, "--out", str(out)]
    t0 = time.time()

    submit = ["--array=0-2", *LOCAL, f"--output={logs}/sweep-%A_%a.out", "docs/hpc/sweep.sbatch", *args]
    array = _sbatch(env, *submit)
    _log(record, f"$ sbatch {' '.join(submit)}\n{array}")

    # cancel task 1 once an epoch of one of its runs is written
    deadline = time.time() + 600
    victim = None
    while time.time() < deadline and victim is None:
        shard = out / "sweep-shard1of3.json"
        if shard.is_file():
            backbone = json.loads(shard.read_text())["runs"][0].split("-L")[0]
            for history in (out / "runs" / backbone).glob("*/history.csv"):
                if len(history.read_text().splitlines()) >= 2:
                    victim = backbone
        time.sleep(0.2)
    assert victim, "task 1 wrote no epoch within 600 s"
    subprocess.run(["scancel", f"{array}_1"], env=env, check=True, timeout=60)
    _log(record, f"$ scancel {array}_1    # {victim} had an epoch written, {time.time() - t0:.0f}s after submission")
    _wait(env, [array], 900)
    finished = [line["run_id"] for line in read_jsonl(out / "results.jsonl") if "error" not in line]
    assert len([r for r in finished if r.startswith(victim)]) < 2, "task 1 finished before it was cancelled"

    again = ["--array=1", "--export=ALL,SKYEDGE_SHARDS=3", *LOCAL, f"--output={logs}/sweep-%A_%a.out",
             "docs/hpc/sweep.sbatch", *args]
    rerun = _sbatch(env, *again)
    _log(record, f"$ sbatch {' '.join(again)}\n{rerun}")
    summary = [f"--dependency=afterany:{array}:{rerun}", *LOCAL, f"--output={logs}/summary-%j.out",
               "docs/hpc/summary.sbatch", str(out)]
    final = _sbatch(env, *summary)
    _log(record, f"$ sbatch {' '.join(summary)}\n{final}")
    _wait(env, [rerun, final], 900)
    _log(record, f"all jobs ended {time.time() - t0:.0f}s after the first submission")
    for log in sorted(logs.iterdir()):
        _log(record, f"--- {log.name}\n{log.read_text()}")

    single = tmp_path / "single"
    done = subprocess.run([sys.executable, "-m", "train.sweep", *args[:-1], str(single)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    lines = [line for line in read_jsonl(out / "results.jsonl") if "error" not in line]
    ids = sorted(line["run_id"] for line in lines)
    assert ids == sorted(line["run_id"] for line in read_jsonl(single / "results.jsonl")) and len(ids) == len(set(ids)) == 6
    assert (out / "summary.md").is_file() and "## Shards" in (out / "summary.md").read_text()
    summary_log = next(logs.glob("summary-*.out")).read_text()
    assert "run that shard again" not in summary_log, summary_log
    resumed = [line for line in lines if line["run_id"].startswith(victim) and line.get("resumed_from_epoch")]
    _log(record, f"runs of {victim} resumed from a saved epoch: {[r['run_id'] for r in resumed]}")
    others = {line["run_id"]: line for line in read_jsonl(single / "results.jsonl")}
    for line in lines:
        assert line["val_accuracy"] == others[line["run_id"]]["val_accuracy"], line["run_id"]
        np.testing.assert_allclose(_probs(out / line["run_dir"] / "val_predictions.csv"),
                                   _probs(single / line["run_dir"] / "val_predictions.csv"), atol=1e-6)
