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
