"""export.int8_layers on small real models: LiteRT's quantization debugger, rows mapped back to
Keras layers, and a layer whose range one outlier stretched ranked worst."""
import csv

import numpy as np


def _spiky_model(height: float):
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    spike = np.zeros((1, 8, 8, 8), np.float32)
    spike[0, 0, 0, 0] = height  # one value far outside the others stretches the int8 range around it
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale_in")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(x)
    x = keras.layers.Lambda(lambda t: t + tf.constant(spike), name="spiky")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D(name="pool")(x))
    return keras.Model(inp, out)


def _converter(model, images):
    import tensorflow as tf

    from export.quantize import representative_dataset
    from export.tflite import function_converter

    converter = function_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def test_a_range_stretched_by_one_outlier_is_ranked_worst(tmp_path):
    from export.int8_layers import keras_layers, layer_errors, summary, worst, write_csv

    images = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3)).astype(np.uint8)
    results = {}
    for height in (0.0, 1000.0):
        model = _spiky_model(height)
        results[height] = layer_errors(_converter(model, images), images, {layer.name for layer in model.submodules})
    plain, rows = results[0.0], results[1000.0]
    by_layer = {r["layer"]: r for r in rows}
    assert {"conv_a", "spiky", "conv_b", "head"} <= set(by_layer), [r["tensor"] for r in rows]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["relative_rmse"] >= b["relative_rmse"] for a, b in zip(rows, rows[1:]))
    # without the spike every layer keeps its signal, and a layer whose only error source is
    # rounding sits near 1/sqrt(12) = 0.29 steps
    assert plain[0]["relative_rmse"] < 0.1, plain[:3]
    assert 0.15 < {r["layer"]: r for r in plain}["conv_a"]["rmse_over_scale"] < 0.45
    # with it, the tensor beside the spike keeps a fraction of one step of spread and its error
    # is as large as its signal: that layer is named first
    assert rows[0]["layer"] in ("conv_a", "spiky") and rows[0]["relative_rmse"] > 0.5, rows[:3]
    assert rows[0]["std_in_steps"] < 1.0
    kept = worst(rows, 2)
    assert [k["layer"] for k in kept] == [rows[0]["layer"], rows[1]["layer"]]
    assert summary(kept).startswith(f"{rows[0]['layer']} (")
    write_csv(tmp_path / "t" / "layers.csv", rows)
    with open(tmp_path / "t" / "layers.csv") as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == len(rows) and saved[0]["layer"] == rows[0]["layer"]
    assert keras_layers("m/a/b/Relu6;m/a/c/Conv2D", {"b", "c"}) == ["b", "c"]


def test_onnx_qdq_comparison_names_the_same_kind_of_layer(tmp_path):
    import tensorflow as tf
    import tf2onnx

    from export.int8_layers import onnx_layer_errors
    from export.onnx import prepare, quantize_prepared

    images = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3)).astype(np.uint8)
    results = {}
    for height in (0.0, 1000.0):
        model = _spiky_model(height)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)], opset=13)
        work = tmp_path / str(int(height))
        work.mkdir()
        (work / "fp32.onnx").write_bytes(proto.SerializeToString())
        prepared, _ = prepare(work / "fp32.onnx", work / "prepared.onnx")
        quantize_prepared(prepared, work / "qdq.onnx", images, "minmax", "qdq-u8")
        results[height] = onnx_layer_errors(prepared, work / "qdq.onnx", images,
                                            {layer.name for layer in model.submodules}, work)
    plain, rows = results[0.0], results[1000.0]
    assert len(rows) >= 3 and all(a["relative_rmse"] >= b["relative_rmse"] for a, b in zip(rows, rows[1:]))
    assert plain[0]["relative_rmse"] < 0.1, plain[:3]
    assert rows[0]["layer"] in ("conv_a", "spiky") and rows[0]["relative_rmse"] > 0.5, rows[:3]
