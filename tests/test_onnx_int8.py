"""export.onnx --onnx-int8: each int8 form has the operators it promises, runs, and agrees with fp32.

One module fixture trains a tiny DenseNet121 (random init, BatchNorm re-estimated, 32 px,
class-coloured images) with the project's sweep and exports it to ONNX fp32 and int8 with the
project's command (default form). DenseNet121 because, at this size, it is smooth enough that
int8 agreement means something (measured: every form agrees on all 18 validation images,
while a random-init MobileNetV2 flips about a quarter of them in every form alike), and its
graph holds every op kind the forms differ on: convolutions, concatenations, pooling and
BatchNorms that cannot be folded.
"""
from __future__ import annotations

import collections
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import make_labelled_dataset

SIZE = 32
FORMS = ("qoperator", "qdq-u8", "qdq-s8")
X86 = platform.machine().lower() in ("x86_64", "amd64")


@dataclass
class Tiny:
    """The fixture's result: dataset, sweep, exports folder and its ONNX records by variant."""

    data: Path
    runs: Path
    out: Path
    records: dict[str, dict]
    forms: dict[str, Path]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    from device import exports_manifest as manifest
    from device.dataset import open_dataset
    from export.onnx import main, quantize_int8
    from train.sweep import SweepConfig, run_sweep

    root = tmp_path_factory.mktemp("onnx_int8")
    data = root / "data"
    make_labelled_dataset(data, per_class=16, val=6, size=SIZE)
    runs = root / "runs"
    run_sweep(SweepConfig(data=str(data), out=str(runs), backbones=("densenet121",), levels="0", epochs=2,
                          batch_size=16, img_size=SIZE, lr=1e-2, weights="none", bn_reestimate="on"),
              log=lambda _: None)
    out = root / "exports"
    assert main(["--runs", str(runs), "--out", str(out), "--variants", "fp32,int8", "--calib", "20"]) == 0
    records = {r["variant"]: r for r in manifest.read(out).values() if r["format"] == "onnx"}
    calibration = open_dataset(data).load_arrays("train", SIZE).images
    forms = {}
    for form in FORMS:
        forms[form] = root / f"{form}.onnx"
        quantize_int8(out / records["fp32"]["file"], forms[form], calibration[:20], "minmax", form)
    return Tiny(data=data, runs=runs, out=out, records=records, forms=forms)


def _ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _zero_point_types(path: Path, op_type: str, index: int) -> set[int]:
    """ONNX element types of input ``index`` (a zero point) of every ``op_type`` node."""
    import onnx

    graph = onnx.load(str(path)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    return {types[node.input[index]] for node in graph.node
            if node.op_type == op_type and len(node.input) > index and node.input[index] in types}


def _val_images(tiny: Tiny) -> np.ndarray:
    from device.dataset import open_dataset

    images = open_dataset(tiny.data).load_arrays("val", SIZE).images
    return images


def test_default_export_is_qoperator_and_the_record_says_so(tiny):
    from export.onnx import DEFAULT_INT8_FORM

    record = tiny.records["int8"]
    assert DEFAULT_INT8_FORM == "qoperator"
    assert "error" not in record, record.get("error")
    assert record["onnx_int8"] == "qoperator"
    assert "quantize_static QOperator per-channel U8S8, minmax calibration" in record["converter"]
    assert _ops(tiny.out / record["file"])["QLinearConv"] > 100  # DenseNet121 has 120 convolutions and a stem
    # ONNX shape inference stops at QLinearConcat (com.microsoft), so the MACs come from the
    # fp32 graph the int8 one was quantized from: the same arithmetic, the same count
    assert record["macs"] == tiny.records["fp32"]["macs"] > 0


@pytest.mark.parametrize("form", FORMS)
def test_each_form_has_the_operators_it_promises(tiny, form):
    import onnx

    ops = _ops(tiny.forms[form])
    uint8, int8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
    if form == "qoperator":
        # integer operators in the file; float Conv and Concat are gone
        assert ops["QLinearConv"] > 100 and ops["QLinearConcat"] > 0 and ops["Conv"] == 0 and ops["Concat"] == 0
        assert _zero_point_types(tiny.forms[form], "QLinearConv", 2) == {uint8}  # activations uint8
        assert _zero_point_types(tiny.forms[form], "QLinearConv", 5) == {int8}  # weights int8
    else:
        # float operators between QuantizeLinear/DequantizeLinear; no integer operator in the file
        assert ops["QLinearConv"] == 0 and ops["Conv"] > 100
        assert ops["QuantizeLinear"] > 100 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
        activations = uint8 if form == "qdq-u8" else int8
        assert _zero_point_types(tiny.forms[form], "QuantizeLinear", 2) == {activations}


@pytest.mark.parametrize("form", FORMS)
def test_each_form_runs_and_agrees_with_fp32(tiny, form):
    from device.runtime import load

    images = _val_images(tiny)
    fp32 = load(tiny.out / tiny.records["fp32"]["file"]).predict_many(images)
    int8 = load(tiny.forms[form], threads=1).predict_many(images)
    assert int8.shape == fp32.shape == (len(images), 3)
    # a constant model would make agreement vacuous
    assert float(fp32.std(axis=0).max()) > 0.05 and len(set(fp32.argmax(1).tolist())) >= 2
    assert float(np.mean(int8.argmax(1) == fp32.argmax(1))) >= 0.8
    assert float(np.abs(int8 - fp32).max()) < 0.5


@pytest.mark.skipif(not X86, reason="ONNX Runtime fuses int8-activation QDQ groups on ARM, not on x86")
def test_on_x86_onnxruntime_fuses_uint8_forms_more_than_int8_qdq(tiny, tmp_path):
    """Why the default changed: on x86, ORT leaves int8-activation QDQ groups in float."""
    import onnxruntime as ort

    left = {}
    for form, path in tiny.forms.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"{form}-optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        ops = _ops(tmp_path / f"{form}-optimized.onnx")
        left[form] = ops["DequantizeLinear"]
        if form != "qdq-s8":
            assert ops["Concat"] == 0 and ops["QLinearConcat"] > 0, (form, ops)
    assert left["qoperator"] < left["qdq-s8"] and left["qdq-u8"] < left["qdq-s8"], left


def test_cli_form_option_makes_that_form(tiny, tmp_path):
    from device import exports_manifest as manifest
    from export.onnx import main

    out = tmp_path / "exports"
    assert main(["--runs", str(tiny.runs), "--out", str(out), "--variants", "int8", "--calib", "20",
                 "--onnx-int8", "qdq-s8"]) == 0
    (record,) = manifest.read(out).values()
    assert record["onnx_int8"] == "qdq-s8" and "QDQ per-channel S8S8" in record["converter"]
    ops = _ops(out / record["file"])
    assert ops["QLinearConv"] == 0 and ops["QuantizeLinear"] > 0


def test_a_bad_form_is_a_one_line_error_before_any_conversion(tiny, tmp_path, capsys):
    from export.onnx import main, quantize_int8

    out = tmp_path / "exports"
    assert main(["--runs", str(tiny.runs), "--out", str(out), "--onnx-int8", "qlinear"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --onnx-int8 'qlinear': expected one of qoperator, qdq-u8, qdq-s8", err
    assert not out.exists()
    with pytest.raises(ValueError, match="--onnx-int8 'S8S8': expected one of"):
        quantize_int8(tiny.out / tiny.records["fp32"]["file"], tmp_path / "x.onnx",
                      np.zeros((2, SIZE, SIZE, 3), np.uint8), "minmax", "S8S8")


def test_benchmark_prints_speed_and_agreement_per_form(tiny, capsys):
    from export import onnx_int8_benchmark as bench

    rows = bench.run(tiny.out, ("qoperator", "qdq-s8"), (1,), rounds=2, calib=20, seed=0, log=lambda _: None)
    assert [(r.backbone, r.threads) for r in rows] == [("densenet121", 1)]
    assert set(rows[0].ms) == {"fp32", "qoperator", "qdq-s8"} and min(rows[0].ms.values()) > 0
    assert rows[0].agreement["qoperator"] >= 0.8
    text = bench.table(rows, ("qoperator", "qdq-s8"))
    assert text.splitlines()[0].startswith("| backbone | threads | fp32 ms | qoperator ms (x fp32)")
    assert bench.main(["--exports", str(tiny.out), "--forms", "qoperator,bad"]) == 2
    assert "error: --forms 'qoperator,bad'" in capsys.readouterr().err
