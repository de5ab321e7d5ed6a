"""export.int8_ranges and export.int8_rescue on small real models: the two-stage int8 model is the
converter's own, one bright calibration image is outvoted by robust ranges, and a range every
image stretches is rescued by keeping its layer in float."""
import numpy as np
import pytest


def _tinted(rng, n: int, brightness: float = 5.0) -> np.ndarray:
    """Dim images (as most of the sky is), each with its own colour: the class depends on it."""
    tint = rng.uniform(0, 1, (n, 1, 1, 3))
    return np.clip(tint * brightness + rng.normal(0, 1, (n, 16, 16, 3)), 0, 255).astype(np.uint8)


def _model(images: np.ndarray, spike: float = 0.0):
    """A small convolutional classifier; ``spike`` adds one large constant value after its first
    convolution, stretching that tensor's range for every image alike, in a channel the next
    convolution ignores (so the float model's answers do not depend on it). The head's bias
    centres its logits on ``images``, so that the answers differ between images."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale_in")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(x)
    if spike:
        bump = np.zeros((1, 16, 16, 16), np.float32)
        bump[0, 0, 0, 0] = spike
        x = keras.layers.Lambda(lambda t: t + tf.constant(bump), name="spiky")(x)
    conv_b = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_b")
    x = conv_b(x)
    if spike:
        kernel, bias = conv_b.get_weights()
        kernel[:, :, 0, :] = 0.0
        conv_b.set_weights([kernel, bias])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head = keras.layers.Dense(3, activation="softmax", name="head",
                              kernel_initializer=keras.initializers.RandomNormal(0, 50.0))
    model = keras.Model(inp, head(x))
    features = keras.Model(inp, x).predict(images.astype(np.float32), verbose=0)
    kernel, _ = head.get_weights()
    head.set_weights([kernel, -(features @ kernel).mean(0)])
    return model


def _converter(model, images, int8_io: bool = False):
    import tensorflow as tf

    from export.quantize import representative_dataset
    from export.tflite import function_converter

    converter = function_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def _reference(model, images):
    from export.verify import Reference

    probs = model.predict(images.astype(np.float32), verbose=0)
    return Reference(paths=[str(i) for i in range(len(images))], labels=probs.argmax(1), probs=probs)


@pytest.fixture(scope="module")
def bright_case():
    """Calibration images as dim as the validation ones, but one of them white."""
    rng = np.random.default_rng(0)
    calib, val = _tinted(rng, 40), _tinted(rng, 200)
    calib[5] = 255
    return calib, val


def test_two_stage_int8_is_the_converters_own_and_robust_ranges_narrow(tmp_path, bright_case):
    from device.runtime import load
    from export.int8_ranges import RangeCalibration, robust_ranges
    from export.quantize import pinned

    calib, val = bright_case
    model = _model(val)
    own = _converter(model, calib, int8_io=True).convert()
    calibration = RangeCalibration(_converter(model, calib), pinned(calib))
    for name, data in (("own", own), ("two-stage", calibration.model("minmax"))):
        (tmp_path / f"{name}.tflite").write_bytes(data)
    a, b = (load(tmp_path / f"{n}.tflite", threads=1) for n in ("own", "two-stage"))
    assert b.input_dtype == np.int8 and b.input_quant.scale == 1.0 and b.input_quant.zero_point == -128
    assert np.array_equal(a.predict_many(val), b.predict_many(val))
    # the white image sets every activation range under min/max; robust ranges leave it out
    assert calibration.narrowed("minmax") == 0
    assert calibration.narrowed("outliers") >= 2 and calibration.narrowed("average") >= 2
    mins = np.array([[0.0, -1.0], [0.0, -1.2], [0.0, -0.9], [0.0, -1.1], [0.0, -30.0]])
    maxs = np.array([[1.0, 2.0], [1.1, 2.1], [0.9, 1.9], [1.0, 2.0], [40.0, 2.2]])
    low, high = robust_ranges(mins, maxs, "outliers")
    assert list(high) == [1.1, 2.2] and list(low) == [0.0, -1.2]  # the far-out image no longer counts
    low, high = robust_ranges(mins, maxs, "minmax")
    assert list(high) == [40.0, 2.2] and list(low) == [0.0, -30.0]
    with pytest.raises(ValueError, match="range method 'median'"):
        robust_ranges(mins, maxs, "median")


def _rescue(tmp_path, model, calib, val):
    from export.int8_layers import layer_errors
    from export.int8_ranges import RangeCalibration
    from export.int8_rescue import rescue
    from export.quantize import pinned
    from export.verify import verify

    calibration = RangeCalibration(_converter(model, calib), pinned(calib))
    path = tmp_path / "m-int8.tflite"
    path.write_bytes(calibration.model("minmax"))
    reference = _reference(model, val)
    plain = verify(path, val, reference, threads=1)
    rows = layer_errors(_converter(model, calib), calib, {layer.name for layer in model.submodules})
    lines = []
    def build(ranges, nodes, out):
        out.write_bytes(calibration.model(ranges, nodes))
        return {"narrowed_tensors": calibration.narrowed(ranges)}

    result, fields = rescue(path, build,
                            lambda p: verify(p, val, reference, threads=1), plain, 0.97, rows, lines.append)
    return plain, result, fields, lines, path


def test_one_bright_calibration_image_is_rescued_by_robust_ranges(tmp_path, bright_case):
    from device.exports_manifest import rescue_summary as summary
    from export.verify import verify

    calib, val = bright_case
    model = _model(val)
    plain, result, fields, lines, path = _rescue(tmp_path, model, calib, val)
    assert min(np.bincount(_reference(model, val).labels, minlength=3)) > 20  # the model tells images apart
    assert plain.agreement < 0.97  # the white image costs the dim ones their precision
    assert fields["reached"] and fields["attempts"][0]["ranges"] == "outliers"
    assert len(fields["attempts"]) == 1  # the first step that reaches the threshold ends the ladder
    assert fields["kept"]["ranges"] == "outliers" and fields["kept"]["float_layers"] == []
    assert fields["kept"]["narrowed_tensors"] >= 2  # the builder's notes are on the record
    assert result.agreement >= 0.97 and fields["kept"]["agreement"] == round(result.agreement, 6)
    # the kept model is the artifact now, and what it cost is on the record
    assert verify(path, val, _reference(model, val), threads=1).agreement == result.agreement
    assert not path.with_name("m-int8.rescue.tflite").exists()
    assert fields["p50_ms"] > 0 and fields["plain_p50_ms"] > 0 and fields["size_bytes"] == path.stat().st_size
    assert "outliers ranges: agreement" in summary(fields) and any("int8 rescue" in line for line in lines)


def test_a_range_every_image_stretches_is_rescued_by_a_float_layer(tmp_path):
    rng = np.random.default_rng(1)
    calib, val = _tinted(rng, 40), _tinted(rng, 200)
    model = _model(val, spike=300.0)
    plain, result, fields, _, path = _rescue(tmp_path, model, calib, val)
    assert plain.agreement < 0.97
    ranges = [a for a in fields["attempts"] if not a["float_layers"]]
    assert [a["ranges"] for a in ranges] == ["outliers", "average"]  # no image is an outlier: ranges cannot help
    assert fields["reached"] and result.agreement >= 0.97
    kept = fields["kept"]["float_layers"]
    assert 1 <= len(kept) <= 4 and set(kept) & {"spiky", "conv_a", "conv_b"}, kept
    # an op left in float is dequantized around: the model still takes and gives int8
    from device.runtime import load

    loaded = load(path, threads=1)
    assert loaded.input_dtype == np.int8


def test_hard_swish_stays_in_float_in_the_int8_model(tmp_path):
    # XNNPACK has no int8 hard-swish; LiteRT's reference int8 kernel took 58% of MobileNetV3Small's
    # int8 time here (docs/export.md), so the op runs in float between a dequantize and a quantize
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from device.runtime import load
    from export.int8_ranges import RangeCalibration
    from export.quantize import pinned

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(keras.layers.Rescaling(1 / 127.5, -1)(inp))
    x = keras.layers.Multiply(name="hard_swish")([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    calib, val = _tinted(rng, 24, 120.0), _tinted(rng, 50, 120.0)

    def ops(data: bytes) -> list[str]:
        return [op["op_name"] for op in Interpreter(model_content=data)._get_ops_details()]

    assert "HARD_SWISH" in ops(_converter(model, calib, int8_io=True).convert())  # the converter fuses the pattern
    calibration = RangeCalibration(_converter(model, calib), pinned(calib))
    assert list(calibration.float_ops) == ["HARD_SWISH"] and len(calibration.float_ops["HARD_SWISH"]) == 1
    names = ops(calibration.model("minmax"))
    at = names.index("HARD_SWISH")
    assert names[at - 1] == "DEQUANTIZE" and names[at + 1] == "QUANTIZE", names
    (tmp_path / "m.tflite").write_bytes(calibration.model("outliers"))
    loaded = load(tmp_path / "m.tflite", threads=1)
    assert loaded.input_dtype == np.int8
    assert np.abs(loaded.predict_many(val) - model.predict(val.astype(np.float32), verbose=0)).max() < 0.05
    assert not RangeCalibration(_converter(model, calib), pinned(calib), float_ops=()).float_ops


def test_onnx_int8_is_rescued_the_same_way(tmp_path, bright_case):
    # the ONNX builder: per-image extremes of the prepared float graph, ONNX Runtime's
    # TensorQuantOverrides for the ranges and nodes_to_exclude for float layers
    import tensorflow as tf
    import tf2onnx

    from export.int8_layers import onnx_layer_errors
    from export.int8_rescue import rescue
    from export.onnx import OnnxRangeCalibration, prepare
    from export.verify import verify

    calib, val = bright_case
    model = _model(val)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec((1, 16, 16, 3), tf.float32)], opset=13)
    (tmp_path / "fp32.onnx").write_bytes(proto.SerializeToString())
    prepared, _ = prepare(tmp_path / "fp32.onnx", tmp_path / "prepared.onnx")
    builder = OnnxRangeCalibration(prepared.read_bytes(), pinned_images := calib.astype(np.float32), "minmax",
                                   "qoperator")
    path = tmp_path / "m-int8.onnx"
    assert builder.build("minmax", (), path) == {}
    reference = _reference(model, val)
    plain = verify(path, val, reference, threads=1)
    assert plain.agreement < 0.97
    builder.build("minmax", (), tmp_path / "qdq.onnx")
    rows = onnx_layer_errors(prepared, tmp_path / "qdq.onnx", pinned_images, {l.name for l in model.submodules},
                             tmp_path)
    result, fields = rescue(path, builder.build, lambda p: verify(p, val, reference, threads=1), plain, 0.97, rows,
                            lambda _: None)
    assert fields["reached"] and fields["kept"]["ranges"] == "outliers" and result.agreement >= 0.97
    assert fields["kept"]["narrowed_tensors"] >= 2
    assert verify(path, val, reference, threads=1).agreement == result.agreement


def test_the_report_export_table_says_what_the_rescue_did(tmp_path):
    from bench.report_tables import export_section
    from device.exports_manifest import write

    base = {"backbone": "resnet50", "level": 5, "seed": 0, "format": "tflite", "size_bytes": 24_000_000,
            "val_accuracy": 0.84, "agreement": 0.99}
    rescued = {"threshold": 0.97, "reached": True, "plain": {"agreement": 0.904, "val_accuracy": 0.81, "size_bytes": 1},
               "attempts": [{"ranges": "outliers", "float_layers": [], "agreement": 0.993}],
               "kept": {"ranges": "outliers", "float_layers": [], "agreement": 0.993}, "latency_cost": 1.01,
               "size_cost_bytes": 0}
    write(tmp_path, [{**base, "artifact_id": "a-int8", "variant": "int8", "int8_rescue": rescued},
                     {**base, "artifact_id": "b-int8", "variant": "int8",
                      "int8_rescue": {"skipped": "random frozen weights (--weights none): no range fixes that"}},
                     {**base, "artifact_id": "c-int8", "variant": "int8", "int8_rescue": {"kept": 3}},
                     {**base, "artifact_id": "d-fp32", "variant": "fp32"}])
    text = "\n".join(export_section(tmp_path))
    assert "| Worst int8 layer | Int8 rescue | Error or warning |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "-int8" in line
            or line.startswith("| d-fp32")}
    assert "outliers ranges: agreement 90.4% -> 99.3%, latency x1.01" in rows["a-int8"]
    assert "not tried (random frozen weights" in rows["b-int8"]
    assert "| unreadable |" in rows["c-int8"]  # a hand-edited record does not stop the report
