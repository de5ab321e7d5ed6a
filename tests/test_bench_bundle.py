"""bench bundle: pack, extract, and run `bench run` on the extracted bundle with TF blocked."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import REPO
from test_bench_run import QUICK, copy_exports, exports_dir, read_lines  # noqa: F401  (fixture)

SITECUSTOMIZE = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tf2onnx"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, _Block())
'''


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_bundle_round_trip_with_tensorflow_blocked(exports_dir, tmp_path):
    # reference paths relative to another root ("data/images/...") must be rewritten to match
    exports = copy_exports(exports_dir, tmp_path / "exports")
    ref = exports / "reference" / "tiny.csv"
    rows = _rows(ref)
    with ref.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "path": "data/" + row["path"]} for row in rows)
    data = Path(json.loads((exports / "manifest.json").read_text())["artifacts"][0]["data"])

    out = tmp_path / "pi.tar.gz"
    result = subprocess.run([sys.executable, "-m", "bench.cli", "bundle", "--exports", str(exports),
                             "--data", str(data), "--out", str(out), "--max-images", "6", "--split", "val"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob(".pi.tar.gz.*"))  # no temporary left behind
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    bundle = tmp_path / "unpacked" / "pi"
    assert (bundle / "setup_pi.sh").is_file() and (bundle / "INSTALL.md").is_file()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {a["data"] for a in manifest["artifacts"]} == {"data"}
    bundled = {row["path"] for row in _rows(bundle / "data" / "manifest.csv")}
    assert len(bundled) == 6 and all((bundle / "data" / p).is_file() for p in bundled)
    reference = {row["path"] for row in _rows(bundle / "reference" / "tiny.csv")}
    assert reference == bundled

    # run from the extracted bundle, in a fresh process tree where TensorFlow cannot import
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    results = tmp_path / "pi.jsonl"
    result = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--models", str(bundle),
                             "--out", str(results), *QUICK], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = read_lines(results)
    assert len(lines) == 3
    for line in lines:
        assert "error" not in line, line["error"]
        assert line["n_images"] == 6 and line["agreement"] is not None
    assert lines[0]["agreement"] == 1.0


def _extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / archive.name.removesuffix(".tar.gz")


def _setup_and_use(bundle: Path, venv: Path, env: dict) -> None:
    """The documented steps on the device: setup_pi.sh into a fresh venv, bench run, classify."""
    result = subprocess.run(["bash", "setup_pi.sh", str(venv)], cwd=bundle, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                            "print(u.find_spec('tensorflow') is None)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "True"  # the device venv has no TensorFlow at all
    results = bundle / "results.jsonl"
    run = subprocess.run([str(venv / "bin" / "bench"), "run", "--models", ".", "--out", str(results), *QUICK[:-2],
                          "--split", json.loads((bundle / "manifest.json").read_text())["bundle"]["split"]],
                         cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = read_lines(results)
    assert len(lines) == 3 and not [line["error"] for line in lines if "error" in line]
    labels = bundle / "labels.csv"
    classify = subprocess.run([str(venv / "bin" / "skyedge"), "classify", "--model", ".", "data", "--out",
                               str(labels)], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert classify.returncode == 0, classify.stderr[-3000:]
    rows = _rows(labels)
    assert len(rows) == len(_rows(bundle / "data" / "manifest.csv")) and all(r["class"] for r in rows)


def test_documented_bundle_installs_and_runs_in_a_fresh_venv(exports_dir, tmp_path):
    """`bench bundle --exports E --data D --out pi-bundle.tar.gz`, as docs/raspberry-pi.md writes
    it (no extra flag): the bundle carries the SkyEdge wheel, and its setup_pi.sh installs it."""
    data = Path(json.loads((exports_dir / "manifest.json").read_text())["artifacts"][0]["data"])
    out = tmp_path / "pi-bundle.tar.gz"
    result = subprocess.run([sys.executable, "-m", "bench.cli", "bundle", "--exports", str(exports_dir), "--data",
                             str(data), "--out", str(out), "--split", "val"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    bundle = _extract(out, tmp_path / "pi")
    assert len(list(bundle.glob("skyedge-*.whl"))) == 1 and not (bundle / "wheels").exists()
    assert "val split" in (bundle / "INSTALL.md").read_text()
    _setup_and_use(bundle, tmp_path / "venv", dict(os.environ))


def test_offline_bundle_installs_with_no_index(exports_dir, tmp_path):
    """--offline ships the device extra's wheels; setup_pi.sh then installs with no index
    (here for this machine's platform, so the install can run; a Pi's is aarch64)."""
    import platform

    from bench.bundle import BundleConfig, make_bundle

    data = Path(json.loads((exports_dir / "manifest.json").read_text())["artifacts"][0]["data"])
    glibc = platform.libc_ver()[1]
    config = BundleConfig(exports=exports_dir, data=data, out=tmp_path / "offline.tar.gz", split="val", offline=True,
                          pi_python=f"{sys.version_info[0]}.{sys.version_info[1]}", pi_glibc=glibc,
                          pi_machine=platform.machine())
    make_bundle(config, log=lambda _: None)
    bundle = _extract(config.out, tmp_path / "x")
    names = {p.name.split("-")[0].lower() for p in (bundle / "wheels").glob("*.whl")}
    assert {"numpy", "pillow", "onnxruntime", "ai_edge_litert"} <= names and "skyedge" not in names
    # no package index can be reached: only the bundle's wheels
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
           "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    _setup_and_use(bundle, tmp_path / "venv", env)
