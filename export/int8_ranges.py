"""Full-int8 TFLite models built in two stages, so that the ranges and the float layers are ours.

The TFLite converter's int8 recipe is calibration (run the float model on the calibration
images and keep every tensor's smallest and largest value over all of them) followed by
quantization (each tensor's int8 scale and zero point from that min/max). A single image whose
activations are far larger than the others' sets the range of a tensor for every image, and
the typical values of that tensor then span only a few of the 255 steps.

Here the two stages are separate:

1. ``calibrate``: the converter's calibration only (``_experimental_calibrate_only``, what
   LiteRT's quantization debugger does), giving the float model with each tensor's min/max.
2. ``image_extremes``: the same float model run on each calibration image alone, keeping every
   calibrated tensor's min and max per image.
3. ``robust_ranges``: the range of each tensor from those per-image extremes, by a method:
   ``minmax`` (the converter's: the extremes over all images), ``outliers`` (an image whose
   extreme lies beyond Tukey's far-out fence of the per-image extremes, ``Q3 + 3 IQR`` above or
   ``Q1 - 3 IQR`` below, does not count for that tensor; one bad image out of 200 is removed,
   which a pooled percentile over all values cannot do) or ``average`` (the mean of the
   per-image extremes, ONNX Runtime's moving-average idea: clips each image's own extremes a
   little, never lets one image set the range).
4. ``quantize``: the converter's quantizer (``mlir_quantize``) on the calibrated model with
   those ranges written in, int8 input and output, and optionally some ops kept in float
   (``denylisted_nodes``, by output tensor name: the names of ``export.int8_layers``'s table).

With ``minmax`` and no float ops the result is the converter's own int8 model (tested). By
default the ops of ``FLOAT_OPS`` stay in float in every model (hard-swish: see there).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

RANGE_METHODS = ("minmax", "outliers", "average")
# ops kept in float in every int8 model: XNNPACK has no int8 kernel for them, so LiteRT runs
# TFLite's reference int8 kernel instead. Measured with `perf record` on this project's x86 CPU
# (docs/export.md): MobileNetV3Small 64 px spent 58% of its int8 time in
# reference_ops::HardSwish<int8>, and with its 19 hard-swish ops in float (XNNPACK's fp32
# kernel between a dequantize and a quantize) it ran 3.3x faster, 2x faster than fp32.
FLOAT_OPS = ("HARD_SWISH",)
TUKEY_FAR_OUT = 3.0  # Tukey's "far out" fence, in interquartile ranges beyond the quartiles


def calibrate(converter) -> bytes:
    """The float TFLite model with calibration statistics (min/max per tensor).

    Args:
        converter: a TFLite converter set up for full-int8 quantization (optimizations and
            representative dataset; its own input/output types are not used here).
    """
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    try:
        return converter.convert()
    finally:
        converter._experimental_calibrate_only = False  # pylint: disable=protected-access


def calibrated_tensors(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """Index -> (min, max) of every tensor of the main subgraph that carries calibration statistics."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    found = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        q = tensor.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1 and len(q.max) == 1:
            found[index] = (float(q.min[0]), float(q.max[0]))
    return found


def image_extremes(calibrated: bytes, images: np.ndarray, tensors: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's min and max of each calibrated tensor, running the float model on it alone.

    Args:
        calibrated: the model from ``calibrate``.
        images: the calibration images, as the representative dataset feeds them (float32 NHWC).
        tensors: tensor indices (``calibrated_tensors``'s keys).

    Returns:
        ``(mins, maxs)``, each of shape (images, tensors), in the order of ``tensors``.
    """
    from ai_edge_litert.interpreter import Interpreter

    indices = list(tensors)
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    feed = interpreter.get_input_details()[0]["index"]
    mins = np.empty((len(images), len(indices)), np.float64)
    maxs = np.empty_like(mins)
    for i, image in enumerate(images):
        interpreter.set_tensor(feed, np.asarray(image, np.float32)[None])
        interpreter.invoke()
        for j, t in enumerate(indices):
            values = interpreter.get_tensor(t)
            mins[i, j], maxs[i, j] = float(np.min(values)), float(np.max(values))
    return mins, maxs


def _tukey_extreme(values: np.ndarray, upper: bool) -> float:
    """The largest (``upper``) or smallest per-image extreme inside Tukey's far-out fence."""
    q1, q3 = np.percentile(values, (25, 75))
    spread = q3 - q1
    if upper:
        kept = values[values <= q3 + TUKEY_FAR_OUT * spread]
        return float(kept.max()) if len(kept) else float(values.max())
    kept = values[values >= q1 - TUKEY_FAR_OUT * spread]
    return float(kept.min()) if len(kept) else float(values.min())


def robust_ranges(mins: np.ndarray, maxs: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor (low, high) from per-image extremes (shape (images, tensors)) by ``method``.

    The range always holds zero (int8 represents 0 exactly, as the quantizer requires).

    Raises:
        ValueError: an unknown method.
    """
    if method == "minmax":
        low, high = mins.min(0), maxs.max(0)
    elif method == "average":
        low, high = mins.mean(0), maxs.mean(0)
    elif method == "outliers":
        low = np.array([_tukey_extreme(mins[:, j], upper=False) for j in range(mins.shape[1])])
        high = np.array([_tukey_extreme(maxs[:, j], upper=True) for j in range(maxs.shape[1])])
    else:
        raise ValueError(f"range method {method!r}: expected one of {', '.join(RANGE_METHODS)}")
    return np.minimum(low, 0.0), np.maximum(high, 0.0)


def narrowed_count(mins: np.ndarray, maxs: np.ndarray, method: str) -> int:
    """How many tensors (columns of per-image extremes) ``method`` gives a range narrower than
    min/max's (by more than 0.1%)."""
    low, high = robust_ranges(mins, maxs, method)
    wide_low, wide_high = robust_ranges(mins, maxs, "minmax")
    return int(np.sum((high - low) < 0.999 * (wide_high - wide_low)))


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """``calibrated`` with the min/max of the tensors in ``ranges`` replaced."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        tensors[index].quantization.min = [float(low)]
        tensors[index].quantization.max = [float(high)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(calibrated: bytes, float_nodes: Iterable[str] = ()) -> bytes:
    """The full-int8 model (int8 input and output) of a calibrated model, ops whose output tensor
    is named in ``float_nodes`` kept in float; as the converter's own int8 step makes it."""
    import tensorflow as tf
    from tensorflow.lite.python import convert
    from tensorflow.lite.python import lite

    denylisted = list(float_nodes)
    data = convert.mlir_quantize(calibrated, disable_per_channel=False, input_data_type=tf.int8,
                                 output_data_type=tf.int8, denylisted_nodes=denylisted or None)
    try:  # the converter's last step: identical read-only buffers stored once
        return bytes(lite._deduplicate_readonly_buffers(data))  # pylint: disable=protected-access
    except Exception:  # noqa: BLE001 - an older or newer TensorFlow without it: the model is still right
        return bytes(data)


def op_outputs(model: bytes, op_names: Iterable[str]) -> dict[str, list[str]]:
    """Per op name (``HARD_SWISH``...), the output tensor names of those ops in ``model``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    wanted = set(op_names)
    found: dict[str, list[str]] = {}
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] in wanted:
            found.setdefault(op["op_name"], []).extend(names[t] for t in op["outputs"])
    return found


class RangeCalibration:
    """One model's calibration, computed once, quantized with any range method and float ops."""

    def __init__(self, converter, images: np.ndarray, float_ops: Iterable[str] = FLOAT_OPS):
        """``converter`` as for ``calibrate``; ``images`` the calibration images as fed (float32);
        ``float_ops`` op names kept in float in every model made here (see ``FLOAT_OPS``)."""
        self.calibrated = calibrate(converter)
        self.images = images
        self.stats = calibrated_tensors(self.calibrated)
        self.float_ops = op_outputs(self.calibrated, float_ops)
        self._extremes: tuple[list[int], np.ndarray, np.ndarray] | None = None

    def _per_image(self):
        if self._extremes is None:
            from ai_edge_litert.interpreter import Interpreter

            inputs = {d["index"] for d in Interpreter(model_content=self.calibrated).get_input_details()}
            # the model's inputs keep their calibrated range (pinned to 0..255: scale 1, zero point -128)
            indices = [t for t in self.stats if t not in inputs]
            mins, maxs = image_extremes(self.calibrated, self.images, indices)
            self._extremes = (indices, mins, maxs)
        return self._extremes

    def model(self, method: str = "minmax", float_nodes: Iterable[str] = ()) -> bytes:
        """The int8 model with ``method``'s ranges and ``float_nodes`` (and the float ops) in float."""
        nodes = list(dict.fromkeys([*float_nodes, *(n for names in self.float_ops.values() for n in names)]))
        if method == "minmax":
            return quantize(self.calibrated, nodes)
        indices, mins, maxs = self._per_image()
        low, high = robust_ranges(mins, maxs, method)
        ranges = {t: (lo, hi) for t, lo, hi in zip(indices, low, high)}
        return quantize(with_ranges(self.calibrated, ranges), nodes)

    def narrowed(self, method: str) -> int:
        """How many tensors ``method`` gives a narrower range than min/max does."""
        if method == "minmax":
            return 0
        _, mins, maxs = self._per_image()
        return narrowed_count(mins, maxs, method)
