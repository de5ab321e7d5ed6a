"""Export trained runs to TFLite (fp32, fp16, dynamic, int8, qat), verified on the device code.

    python -m export.tflite --runs RUNS --out EXPORTS [--select best|all|NAME:LEVEL[:SEED],...]
        [--variants fp32,fp16,dynamic,int8,qat] [--calib N] [--calib-seed S] [--qat-epochs N] [--strict]

Every artifact takes one raw RGB image (NHWC, the trained size, pixels 0..255) and returns
the class probabilities (GALAXY, QSO, STAR); the backbone's preprocessing is in the graph.

Variants:
    fp32     float32 weights and activations (the reference conversion).
    fp16     float16 weights, float32 input/output (half the size; XNNPACK computes in fp32,
             or fp16 where the CPU has it).
    dynamic  int8 weights, float activations quantized on the fly per op.
    int8     full integer: int8 weights (per-channel) and activations, calibrated on
             training images; int8 input with scale 1 / zero point -128 (pixel p is fed as
             p - 128) and int8 output. Signed int8 because XNNPACK's fast quantized path
             (QS8) is signed and per-channel; a uint8 input would add a requantize op.
             Hard-swish stays in float (XNNPACK has no int8 kernel for it), and a model that
             agrees with its Keras model on fewer than 97% of the validation images is
             rebuilt by the int8 rescue (``export.int8_rescue``; ``--int8-rescue off``).
    qat      like int8, after a few epochs of quantization-aware training (tfmot) from the
             run's best checkpoint.

The pipeline around the converter (checks, timed steps, verification, manifest) is
``export.pipeline``, shared with ``export.onnx``; run selection is ``export.select``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from device.atomic import write_bytes
from device.options import defaults
from export.cli import run_cli
from export.config import TFLITE_VARIANTS, ExportConfig
from export.pipeline import Context
from export.select import keras_model
from train.console import hidden_output


def function_converter(model):
    """A TFLite converter of ``model``'s inference function (``training=False``).

    ``TFLiteConverter.from_keras_model`` first exports a Keras SavedModel, which traces every
    layer's call functions for serialization: 49 of its 52 s converting MobileNetV2 at 64 px
    on this project's 2-core machine (cProfile). Converting the one inference function, held
    by a ``tf.Module``, took 2.8 s against 37.9 s in one run, and gave the same outputs (max
    difference 0). A batch dimension left free becomes 1, the deployable models' own.
    """
    import tensorflow as tf

    spec = model.inputs[0]
    shape = [1 if d is None else int(d) for d in spec.shape]
    holder = tf.Module()
    holder.infer = tf.function(lambda image: model(image, training=False))
    concrete = holder.infer.get_concrete_function(tf.TensorSpec(shape, spec.dtype, name="image"))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)


def convert_tflite(ctx: Context, variant: str, path: Path) -> tuple[str, dict]:
    """Convert the source's deployable model to one TFLite variant and write it to ``path``.

    Returns:
        ``(converter name, extra record fields)``.

    Raises:
        Exception: whatever the converter or tfmot raise (recorded by the caller).
    """
    import tensorflow as tf

    extra: dict = {}
    if variant == "qat":
        from export.quantize import train_qat

        with ctx.step("build"):
            flat = keras_model(ctx.source, batch_size=None)  # a batch dimension of its own, to train on
        with ctx.step("qat training"):
            train = ctx.dataset.load_arrays("train", ctx.source.img_size)
            result = train_qat(flat, train.images, train.labels, epochs=ctx.config.qat_epochs, seed=ctx.source.seed,
                               log=ctx.log)
        keras_for_conversion = result.model
        extra = {"qat_epochs": result.epochs, "qat_train_accuracy": round(result.train_accuracy, 6),
                 "qat_float_layers": len(result.float_layers)}
    elif variant == "tta":
        keras_for_conversion = ctx.tta_model()
    else:
        keras_for_conversion = ctx.model()
    converter = function_converter(keras_for_conversion)
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant in ("int8", "qat"):
        from export.quantize import representative_dataset

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(ctx.calibration().images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        extra["calib_n"] = int(len(ctx.calibration().images))
    elif variant not in ("fp32", "tta"):
        raise ValueError(f"unknown TFLite variant {variant!r}")
    with hidden_output():  # the converter's own notes ("fully_quantize: 0, ...")
        if variant == "int8":
            data = _int8_in_two_stages(ctx, converter)
        else:
            data = converter.convert()
    write_bytes(path, data)
    if variant == "int8":
        if ctx.notes.get("int8_float_ops"):
            extra["int8_float_ops"] = ctx.notes["int8_float_ops"]
        with ctx.step("int8 layers"):
            extra.update(_int8_layers(ctx, keras_for_conversion, path))
    return f"tf.lite.TFLiteConverter {tf.__version__}", extra


def _int8_in_two_stages(ctx: Context, converter) -> bytes:
    """The plain int8 model (the converter's own, calibrated and quantized as two steps), leaving
    the pipeline a builder of other range methods and float layers for the int8 rescue."""
    from export.int8_ranges import RangeCalibration
    from export.quantize import pinned

    calibration = RangeCalibration(converter, pinned(ctx.calibration().images))

    def build(ranges: str, float_nodes, path: Path) -> dict:
        with hidden_output():
            write_bytes(path, calibration.model(ranges, float_nodes))
            return {"narrowed_tensors": calibration.narrowed(ranges), "calibrated_tensors": len(calibration.stats)}

    ctx.notes["int8_builder"] = build
    ctx.notes["int8_float_ops"] = {op: len(names) for op, names in calibration.float_ops.items()}
    return calibration.model("minmax")


def _int8_layers(ctx: Context, model, path: Path) -> dict:
    """The int8 error of every quantized op (``export.int8_layers.layer_errors``), for the record."""
    import tensorflow as tf

    from export.int8_layers import layer_errors, record_fields
    from export.quantize import representative_dataset

    images = ctx.calibration().images
    converter = function_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return record_fields(lambda names: layer_errors(converter, images, names, hide_output=hidden_output),
                         model, ctx.exports, path)


def add_arguments(p) -> None:
    """The TFLite exporter's own arguments."""
    p.add_argument("--qat-epochs", type=int, default=defaults(ExportConfig)["qat_epochs"],
                   help="quantization-aware training epochs (default %(default)s)")


def main(argv: list[str] | None = None) -> int:
    def config_extra(args):
        return {"qat_epochs": args.qat_epochs}

    return run_cli(argv, "python -m export.tflite", __doc__, "tflite", TFLITE_VARIANTS, convert_tflite, add_arguments,
                   config_extra)


if __name__ == "__main__":
    sys.exit(main())
