"""export: deployable graph, TFLite and ONNX variants, verification, manifest, bad input.

A tiny trained sweep (generated class-coloured images, 32 px, head trained 2 epochs after
BatchNorm re-estimation) is shared by the module; every quantization check first asserts
that the exported model's outputs vary with the input, else the checks would be vacuous.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.backbones import BACKBONES, get
from device.dataset import write_manifest, index_tree, stratified_split
from device.preprocess import MODES, preprocess
from export import manifest
from export.graph import preprocess_affine
from export.quantize import CalibrationError, check_calibration_size, pinned
from export.tflite import ExportConfig, ExportError, export_runs, select_runs

from conftest import REPO, make_image
from test_tf_free import BLOCKER

MANIFEST_KEYS = {"artifact_id", "backbone", "level", "seed", "variant", "format", "file", "sha256", "size_bytes",
                 "input_shape", "input_dtype", "input_scale", "input_zero_point", "img_size", "preprocess", "labels",
                 "source_run", "runs_root", "checkpoint_sha256", "reference_predictions", "data", "val_n",
                 "keras_val_accuracy", "val_accuracy", "accuracy_delta", "agreement", "max_abs_diff", "converter",
                 "versions", "seconds"}


def _dataset(root: Path, per_class: int = 16, size: int = 40) -> Path:
    for index, label in enumerate(("GALAXY", "QSO", "STAR")):
        for i in range(per_class):
            make_image(root / "img" / label / f"{label.lower()}-{i:03d}.png", seed=1000 * index + i,
                       size=size, label_index=index)
    records, _ = index_tree(root / "img", base=root)
    write_manifest(root, stratified_split(records, seed=0, val=0.3))
    return root


def _sweep(data: Path, out: Path, backbones: str, img_size: int, epochs: int) -> Path:
    from train.sweep import SweepConfig, run_sweep

    run_sweep(SweepConfig(data=str(data), out=str(out), backbones=tuple(backbones.split(",")), levels="0",
                          epochs=epochs, batch_size=16, img_size=img_size, lr=1e-2, weights="none"),
              log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    return _sweep(_dataset(root / "data"), root / "runs", "mobilenetv2", 32, 2)


def _log(lines):
    return lambda line: lines.append(line)


def _assert_varies(probs: np.ndarray) -> None:
    # a near-constant model would make every agreement check meaningless
    assert float(probs.std(axis=0).max()) > 1e-3, f"model outputs do not vary with the input: {probs[:3]}"


@pytest.mark.parametrize("mode", MODES)
def test_preprocess_affine_equals_numpy_preprocess(mode):
    x = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3)).astype(np.float32)
    affine = preprocess_affine(mode)
    got = x if affine is None else x @ affine[0] + affine[1]
    np.testing.assert_allclose(got, preprocess(x, mode), rtol=1e-5, atol=1e-4)


def test_deployable_graph_equals_model_on_preprocessed_pixels():
    from export.graph import deployable, nested_models
    from train.model import build

    for name in ("resnet50", "densenet121", "efficientnetb0"):  # caffe, torch, none
        backbone = get(name)
        model = build(backbone, 32, None).model
        flat = deployable(model, backbone, 32)
        assert nested_models(flat) == []
        x = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
        np.testing.assert_allclose(flat(x).numpy(), model(preprocess(x, backbone.preprocess)).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_pinned_calibration_covers_the_pixel_range_without_touching_the_input():
    images = np.full((3, 8, 8, 3), 50, np.uint8)
    x = pinned(images)
    assert x.min() == 0 and x.max() == 255 and images.max() == 50
    assert np.all(x[1:] == 50)


def test_bad_input_is_refused_before_any_conversion(runs, tmp_path):
    with pytest.raises(ExportError, match="no such folder"):
        select_runs(tmp_path / "missing")
    with pytest.raises(ExportError, match="names no finished run"):
        select_runs(runs, "mobilenetv2:7")
    with pytest.raises(ExportError, match="expected best"):
        select_runs(runs, "mobilenetv2")
    with pytest.raises(CalibrationError, match="at least 1"):
        check_calibration_size(0, 10)
    with pytest.raises(CalibrationError, match="only 10"):
        check_calibration_size(11, 10)
    broken = tmp_path / "broken"
    shutil.copytree(runs, broken)
    (broken / "runs/mobilenetv2/L000-s0/best.h5").unlink()
    with pytest.raises(ExportError, match="no checkpoint"):
        select_runs(broken)
    result = subprocess.run([sys.executable, "-m", "export.tflite", "--runs", str(runs), "--out", str(tmp_path / "x"),
                             "--variants", "int8", "--calib", "100000"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --calib 100000")
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_best_selection_picks_seed0_best_level(runs):
    sources = select_runs(runs, "best")
    assert [(s.backbone.name, s.level, s.seed) for s in sources] == [("mobilenetv2", 0, 0)]
    assert len(sources[0].checkpoint_sha256) == 64


def test_tflite_variants_export_verify_and_skip_unchanged(runs, tmp_path):
    out = tmp_path / "exports"
    lines: list[str] = []
    config = ExportConfig(runs=str(runs), out=str(out), variants=("fp32", "fp16", "dynamic", "int8", "qat"),
                          calib=20, qat_epochs=1)
    from export.tflite import convert_tflite

    records = export_runs(config, "tflite", config.variants, convert_tflite, log=_log(lines))
    assert [r["variant"] for r in records] == ["fp32", "fp16", "dynamic", "int8", "qat"]
    for r in records:
        assert "error" not in r, r.get("error")
        assert MANIFEST_KEYS <= set(r), MANIFEST_KEYS - set(r)
        assert r["input_shape"] == [1, 32, 32, 3]
        assert (out / r["file"]).is_file() and manifest.sha256_file(out / r["file"]) == r["sha256"]
        assert json.loads((out / (r["file"] + ".json")).read_text())["artifact_id"] == r["artifact_id"]
    by = {r["variant"]: r for r in records}
    assert by["fp32"]["agreement"] == 1.0 and by["fp32"]["max_abs_diff"] < 1e-3
    assert by["fp16"]["agreement"] >= 0.995
    for variant in ("int8", "qat"):
        assert by[variant]["input_dtype"] == "int8"
        assert (by[variant]["input_scale"], by[variant]["input_zero_point"]) == (1.0, -128)
    assert by["fp32"]["input_dtype"] == "float32"
    assert by["int8"]["agreement"] >= 0.8
    assert by["int8"]["size_bytes"] < 0.45 * by["fp32"]["size_bytes"]
    assert (out / by["fp32"]["reference_predictions"]).is_file()
    assert len(lines) == 5 and all("agreement" in line for line in lines)

    from device.runtime import load

    from PIL import Image

    val = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32)))
                    for p in sorted((runs.parent / "data" / "img").rglob("*.png"))[:12]])
    for variant in ("fp32", "int8"):
        _assert_varies(load(out / by[variant]["file"]).predict_many(val))

    lines.clear()
    again = export_runs(config, "tflite", ("fp32", "int8"), convert_tflite, log=_log(lines))
    assert all("unchanged, skipped" in line for line in lines)
    assert [r["sha256"] for r in again] == [by["fp32"]["sha256"], by["int8"]["sha256"]]
    data = json.loads((out / "manifest.json").read_text())
    assert data["format_version"] == 1 and len(data["artifacts"]) == 5


def test_onnx_variants_and_tf_free_loading(runs, tmp_path):
    from export.onnx import convert_onnx

    out = tmp_path / "exports"
    config = ExportConfig(runs=str(runs), out=str(out), variants=("fp32", "int8"), calib=20)
    records = export_runs(config, "onnx", config.variants, convert_onnx, log=lambda _: None)
    by = {r["variant"]: r for r in records}
    assert all("error" not in r for r in records), [r.get("error") for r in records]
    assert by["fp32"]["agreement"] == 1.0 and by["fp32"]["max_abs_diff"] < 1e-3
    assert by["int8"]["agreement"] >= 0.8
    assert by["int8"]["size_bytes"] < 0.5 * by["fp32"]["size_bytes"]
    from export.tflite import convert_tflite

    export_runs(ExportConfig(runs=str(runs), out=str(out), variants=("int8",), calib=20), "tflite", ("int8",),
                convert_tflite, log=lambda _: None)
    files = [str(out / r["file"]) for r in json.loads((out / "manifest.json").read_text())["artifacts"]]
    assert len(files) == 3
    code = BLOCKER.replace("import importlib\nfor mod in MODULES:\n    importlib.import_module(mod)\n", "") + f"""
import numpy as np
from device.runtime import load
x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
for f in {files!r}:
    p = load(f).predict_many(x)
    assert p.shape == (4, 3) and np.allclose(p.sum(1), 1, atol=0.02), (f, p)
leaked = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tf2onnx")]
assert not leaked, leaked
print("tf-free ok")
"""
    result = subprocess.run([sys.executable, "-c", "MODULES = []\n" + code], cwd=REPO, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tf-free ok" in result.stdout


def test_a_crashing_variant_is_recorded_and_others_still_export(runs, tmp_path):
    from export.tflite import convert_tflite

    def convert(ctx, variant, path):
        if variant == "fp16":
            raise RuntimeError("converter exploded\nsecond line")
        return convert_tflite(ctx, variant, path)

    out = tmp_path / "exports"
    config = ExportConfig(runs=str(runs), out=str(out), variants=("fp16", "fp32"))
    records = export_runs(config, "tflite", config.variants, convert, log=lambda _: None)
    by = {r["variant"]: r for r in records}
    assert by["fp16"]["error"] == "RuntimeError: converter exploded"
    assert "error" not in by["fp32"] and (out / by["fp32"]["file"]).is_file()
    saved = {r["artifact_id"]: r for r in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert "error" in saved["mobilenetv2-L000-s0-fp16-tflite"]


def _merge_many(args):
    folder, prefix = args
    for i in range(15):
        manifest.merge(folder, [{"artifact_id": f"{prefix}-{i}", "backbone": prefix, "level": i}])


def test_concurrent_manifest_merges_lose_nothing(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_merge_many, [(str(tmp_path), "a"), (str(tmp_path), "b")])
    assert len(manifest.read(tmp_path)) == 30


@pytest.mark.slow
def test_every_backbone_exports_fp32_and_int8(tmp_path):
    from export.onnx import convert_onnx
    from export.tflite import convert_tflite

    names = ",".join(b.name for b in BACKBONES)
    runs = _sweep(_dataset(tmp_path / "data", per_class=12, size=72), tmp_path / "runs", names, 72, 1)
    out = tmp_path / "exports"
    config = ExportConfig(runs=str(runs), out=str(out), select="all", variants=("fp32", "int8"), calib=16)
    records = export_runs(config, "tflite", config.variants, convert_tflite, log=print)
    records += export_runs(config, "onnx", config.variants, convert_onnx, log=print)
    failed = {r["artifact_id"]: r["error"] for r in records if "error" in r}
    assert not failed, failed
    assert {r["backbone"] for r in records} == {b.name for b in BACKBONES}
    for r in records:
        assert r["agreement"] >= (0.995 if r["variant"] == "fp32" else 0.7), r
