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


def test_every_command_reads_its_option_defaults_from_its_config_dataclass():
    # #23 item 4: one idiom: a frozen config dataclass checked in __post_init__, whose field
    # defaults are the parser's; a default written twice would drift apart
    import dataclasses

    from bench.android import AndroidConfig
    from bench.bundle import BundleConfig
    from bench.cli import build_parser as bench_parser
    from bench.jobs import RunConfig
    from device.options import defaults
    from export import onnx, tflite
    from export.onnx import ONNX_VARIANTS
    from export.cli import build_parser as export_parser
    from export.config import TFLITE_VARIANTS, ExportConfig
    from train.distill import DistillConfig, build_parser as distill_parser
    from train.pretrain import PretrainConfig, build_parser as pretrain_parser
    from train.sweep import SweepConfig, build_parser as sweep_parser

    renamed = {"runtime": "runtimes", "thread": "threads", "mode": "modes", "job_timeout": "job_timeout_s",
               "cooldown_timeout": "cooldown_timeout_s", "cooldown_temp": "cooldown_temp_c"}
    cases = [
        (SweepConfig, sweep_parser(), ["--data", "D", "--out", "O"]),
        (PretrainConfig, pretrain_parser(), ["--data", "D", "--backbone", "mobilenetv2", "--out", "O"]),
        (DistillConfig, distill_parser(), ["--data", "D", "--teacher", "T", "--student", "mobilenetv2", "--out", "O",
                                           "--level", "0"]),
        (ExportConfig, export_parser("t", "", TFLITE_VARIANTS, tflite.add_arguments), ["--runs", "R", "--out", "O"]),
        (ExportConfig, export_parser("o", "", ONNX_VARIANTS, onnx.add_arguments), ["--runs", "R", "--out", "O"]),
        (RunConfig, bench_parser(), ["run", "--models", "M", "--out", "O"]),
        (BundleConfig, bench_parser(), ["bundle", "--exports", "E", "--data", "D", "--out", "O"]),
        (AndroidConfig, bench_parser(), ["android", "--models", "M", "--adb", "a", "--benchmark-binary", "b",
                                         "--out", "O"]),
    ]
    # the one rule on top: an exporter makes the default variants its format has
    allowed = {"t": TFLITE_VARIANTS, "o": ONNX_VARIANTS}
    compared = {}
    for config_class, parser, required in cases:
        assert dataclasses.is_dataclass(config_class) and config_class.__dataclass_params__.frozen, config_class
        assert hasattr(config_class, "__post_init__"), f"{config_class.__name__} checks nothing when built"
        parsed = vars(parser.parse_args(required))
        d = defaults(config_class)
        same = {renamed.get(k, k): v for k, v in parsed.items() if renamed.get(k, k) in d}
        for name, value in same.items():
            expected = d[name]
            if name == "variants":
                expected = tuple(v for v in expected if v in allowed[parser.prog])
            if isinstance(expected, tuple) and isinstance(value, str):  # comma-separated options
                value = tuple(type(expected[0])(v) for v in value.split(",")) if expected else ()
            assert value == expected, f"{config_class.__name__}.{name}: parser {value!r}, dataclass {expected!r}"
        compared[config_class.__name__] = len(same)
    assert all(n >= 2 for n in compared.values()), compared
