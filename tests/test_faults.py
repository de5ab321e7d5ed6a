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
