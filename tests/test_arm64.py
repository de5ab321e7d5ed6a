"""The arm64 check by emulation (device/arm64_check.sh) on tiny exported models, plus the
prediction comparer it uses.

``build_tiny_exports`` makes the models (TensorFlow, host only): a small conv net at 40 px
exported as TFLite fp32, TFLite full int8 (per-channel weights, int8 input and output) and
ONNX fp32 (the same weights written with onnx.helper), with a labelled JPEG dataset and the
Keras reference predictions. The script calls it when it is given no exports folder.

The end-to-end test is slow (an arm64 Debian root, wheels, Python under qemu) and runs only
with SKYEDGE_ARM64=1 or when qemu-aarch64-static and mmdebstrap are installed.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_labelled_dataset, write_tiny_manifest

SIZE = 40
LABELS = ("GALAXY", "QSO", "STAR")
SCRIPT = REPO / "device" / "arm64_check.sh"


def _onnx_from_keras(model, path: Path) -> None:
    """The Keras conv net as an ONNX graph (opset 13) with the same weights: NHWC input,
    transposed once to NCHW for ONNX's Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"][0]
    inits = [numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale")]
    nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["nchw", "scale"], ["h0"])]
    for i, conv in enumerate(convs):
        kernel, bias = conv.get_weights()
        inits += [numpy_helper.from_array(kernel.transpose(3, 2, 0, 1).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(bias.astype(np.float32), f"b{i}")]
        stride = int(conv.strides[0])
        nodes += [helper.make_node("Conv", [f"h{i}", f"w{i}", f"b{i}"], [f"c{i}"], strides=[stride, stride],
                                   pads=[0, 0, 0, 0], kernel_shape=list(kernel.shape[:2])),
                  helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"])]
    last = f"h{len(convs)}"
    weights, bias = dense.get_weights()
    inits += [numpy_helper.from_array(weights.astype(np.float32), "wd"),
              numpy_helper.from_array(bias.astype(np.float32), "bd")]
    nodes += [helper.make_node("GlobalAveragePool", [last], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "wd", "bd"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIZE, SIZE, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])], initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    path.write_bytes(onnx_model.SerializeToString())


def build_tiny_exports(root: Path) -> Path:
    """Make ``root/data`` and ``root/exports`` (manifest, three models, reference CSV).

    Args:
        root: an empty folder.

    Returns:
        The exports folder.

    Raises:
        AssertionError: the ONNX graph does not reproduce the Keras model.
    """
    import tensorflow as tf
    import tf_keras as keras

    from device.dataset import open_dataset

    root = Path(root)
    data = root / "data"
    make_labelled_dataset(data, per_class=12, val=6, size=48)
    exports = root / "exports"
    (exports / "models").mkdir(parents=True)
    (exports / "reference").mkdir()
    dataset = open_dataset(data)
    train_x, train_y, _, _ = dataset.load_arrays("train", SIZE)
    val_x, val_y, val_records, _ = dataset.load_arrays("val", SIZE)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((SIZE, SIZE, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(train_x.astype(np.float32), train_y, epochs=30, verbose=0)
    probs = model.predict(val_x.astype(np.float32), verbose=0)
    ref = exports / "reference" / "tiny_conv.csv"
    with ref.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "label_index", *(f"prob_{label}" for label in LABELS), "pred_index"])
        for record, p in zip(val_records, probs):
            writer.writerow([record.path, record.label, record.label_index, *[f"{v:.6f}" for v in p], int(p.argmax())])

    (exports / "models" / "tiny_conv-fp32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # per-channel conv and dense weights
    converter.representative_dataset = lambda: ([train_x[i:i + 1].astype(np.float32)] for i in range(len(train_x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (exports / "models" / "tiny_conv-int8.tflite").write_bytes(converter.convert())
    onnx_path = exports / "models" / "tiny_conv-fp32.onnx"
    _onnx_from_keras(model, onnx_path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_probs = np.concatenate([session.run(None, {"x": x[None].astype(np.float32)})[0] for x in val_x])
    assert np.max(np.abs(onnx_probs - probs)) < 1e-5, np.max(np.abs(onnx_probs - probs))

    write_tiny_manifest(exports, "tiny_conv", data, len(val_records), SIZE)
    return exports


def _probs(arch: str, artifacts: dict) -> dict:
    return {"arch": arch, "python": "3.11", "runtimes": {}, "artifacts": artifacts}


def test_compare_rules():
    from device.compare_predictions import compare, format_table

    paths = ["a.jpg", "b.jpg"]
    base = {"paths": paths, "pixels_sha256": "p"}
    x86 = _probs("x86_64", {
        "f": {**base, "variant": "fp32", "format": "tflite", "probs": [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]},
        "q": {**base, "variant": "int8", "format": "tflite", "probs": [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]}})
    arm = _probs("aarch64", {
        "f": {**base, "variant": "fp32", "format": "tflite", "probs": [[0.70005, 0.19995, 0.1], [0.1, 0.1, 0.8]]},
        "q": {**base, "variant": "int8", "format": "tflite", "probs": [[0.55, 0.35, 0.1], [0.2, 0.2, 0.6]]}})
    rows, ok = compare(x86, arm)
    assert ok and rows[0]["max_abs_diff"] == pytest.approx(5e-5) and rows[1]["max_abs_diff"] == pytest.approx(0.05)
    rows, ok = compare(x86, arm, atol=1e-5)
    assert not ok and "probabilities differ" in rows[0]["why"]
    arm["artifacts"]["q"]["probs"][1] = [0.2, 0.7, 0.1]
    rows, ok = compare(x86, arm, lines_a=[{"artifact_id": "f", "pred_indices": [0, 2]}],
                       lines_b=[{"artifact_id": "f", "pred_indices": [0, 1]}])
    assert not ok and rows[1]["class_changes"] == 1 and "bench run predictions differ" in rows[0]["why"]
    assert "FAIL (1 image(s) change class)" in format_table(rows, "x86_64", "aarch64")


def _tools_present() -> bool:
    return bool(shutil.which("qemu-aarch64-static") and shutil.which("mmdebstrap"))


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("SKYEDGE_ARM64") == "1" or _tools_present()),
                    reason="needs qemu-aarch64-static and mmdebstrap (or SKYEDGE_ARM64=1)")
def test_arm64_check_script(tmp_path):
    """The docs' Pi steps in an arm64 chroot (bundle --offline, setup_pi.sh, bench run, skyedge
    classify): tiny models predict the same on x86 and on emulated arm64; emulated lines are marked."""
    pytest.importorskip("tensorflow")
    out = tmp_path / "work"
    env = {**os.environ, "SKYEDGE_ARM64_WORK": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS: predictions agree" in result.stdout
    lines = [json.loads(line) for line in (out / "arm64.jsonl").read_text().splitlines() if line.strip()]
    assert len(lines) == 3 and all("error" not in line for line in lines)
    assert all(line["arch"] == "aarch64" and line["emulated"] is True for line in lines)
    assert all(any(n.startswith("emulated: qemu-aarch64") for n in line["notes"]) for line in lines)
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["ok"] and len(comparison["rows"]) == 3
    assert "from the bundle's" in result.stdout and "(no package index)" in result.stdout  # setup_pi.sh, offline
    with (out / "labels.csv").open(newline="") as arm, (out / "host-labels.csv").open(newline="") as host:
        arm_rows, host_rows = list(csv.DictReader(arm)), list(csv.DictReader(host))
    assert len(arm_rows) == len(host_rows) == 18
    assert [r["class"] for r in arm_rows] == [r["class"] for r in host_rows]
