"""device/ and bench/ must import on a Raspberry Pi with no TensorFlow at all."""
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKER = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import importlib
for mod in MODULES:
    importlib.import_module(mod)
leaked = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras")]
assert not leaked, leaked
print("ok", len(MODULES))
"""


def _modules(package: str) -> list[str]:
    names = [package]
    for info in pkgutil.iter_modules([str(REPO / package)]):
        if info.name != "__main__":
            names.append(f"{package}.{info.name}")
    return names


def test_device_and_bench_import_with_tensorflow_blocked():
    modules = _modules("device") + _modules("bench")
    code = f"MODULES = {modules!r}\n" + BLOCKER
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
