"""The house rules a reader relies on, checked on the source (#13)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("train", "export", "bench", "device")


def _modules(folders=PACKAGES + ("tests",)):
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                found += [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_")]
    assert not found, found


def test_device_and_bench_never_import_train_or_export_at_any_depth():
    # device/ and bench/ run on a Pi with a runtime, numpy and Pillow only: no import of train,
    # export or TensorFlow, at module level or inside a function (#23 item 3)
    found = []
    for path, tree in _modules(("device", "bench")):
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in ("train", "export", "tensorflow", "tf_keras")]
    assert not found, found


def test_no_function_over_80_lines():
    # a long function is split where a name would explain a part (#13 item 4)
    long = []
    for path, tree in _modules(PACKAGES):
        long += [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                 for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.end_lineno - node.lineno + 1 > 80]
    assert not long, long


def test_device_extra_installs_a_runtime_that_has_wheels_on_each_pi_os():
    # #12 item 12: no onnxruntime or ai-edge-litert wheel exists for 32-bit ARM, so the extra failed there
    import tomllib

    from packaging.requirements import Requirement

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["device"]

    def installed(machine: str) -> dict[str, str]:
        env = {"platform_machine": machine, "extra": "device"}
        reqs = [Requirement(r) for r in extra]
        return {r.name: str(r.specifier) for r in reqs if r.marker is None or r.marker.evaluate(env)}

    pi64, pi32 = installed("aarch64"), installed("armv7l")
    assert {"ai-edge-litert", "onnxruntime", "numpy", "pillow"} <= set(pi64) and "tflite-runtime" not in pi64
    assert set(pi32) == {"tflite-runtime", "numpy", "pillow"} and "<2" in pi32["numpy"]


def test_each_run_folder_name_is_spelled_in_one_module():
    # device/sweep_results.py owns the sweep folder's layout (#23 item 1)
    names = ("best.h5", "best.json", "config.json", "metrics.json", "history.csv", "val_predictions.csv",
             "test_predictions.csv", "results.jsonl", "baseline.json", "baseline_test_predictions.csv", "sweep-shard")
    found = []
    for path, tree in _modules(PACKAGES):
        if path == REPO / "device" / "sweep_results.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_docstring(tree, node):
                # a path literal is the name itself (or starts the shard record's f-string); messages may name it
                found += [f"{path.relative_to(REPO)}:{node.lineno} {n!r}" for n in names
                          if node.value == n or (n == "sweep-shard" and node.value.startswith(n))]
    assert not found, found


def _is_docstring(tree: ast.AST, node: ast.Constant) -> bool:
    for parent in ast.walk(tree):
        body = getattr(parent, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and body[0].value is node:
            return True
    return False
