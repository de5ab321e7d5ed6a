"""Where a full-int8 TFLite model loses precision, layer by layer.

LiteRT's quantization debugger (``tf.lite.experimental.QuantizationDebugger``) quantizes the
model as the int8 export does, with a numeric check after every quantized op, runs it on
a few calibration images and reports, per op output, the error between the float result
and the dequantized int8 one. The figure compared across layers is the root mean squared
error over the tensor's quantization step (``rmse/scale``): rounding alone gives
``1/sqrt(12) = 0.29`` steps, so a layer far above that carries error from the layers before
it or clips values outside its calibrated range. A range stretched by outliers shows in a
second figure, the spread of the float values in steps (``std_in_steps``; ``spread``: a
standard deviation from the 1st-99th percentile range, so the outliers themselves do not
count): a tensor whose typical values span only a few of the 255 steps keeps little of its
signal. Rows are ranked by the error relative to that spread (``relative_rmse``), which
catches both.

Each row is mapped back to the Keras layers it was fused from (the converter names a fused
op after every TensorFlow op in it, and those carry the Keras layer names).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable

import numpy as np

from device.exports_manifest import NO_SPREAD

ROUNDING_ONLY = 1 / math.sqrt(12)  # rmse/scale of a tensor whose only error is rounding
DEBUG_IMAGES = 32  # calibration images the debugger runs (training images: validation stays untouched)
WORST_KEPT = 5  # rows written into the manifest record
COLUMNS = ("rank", "layer", "keras_layers", "op", "relative_rmse", "rmse_over_scale", "std_in_steps", "mean_error",
           "max_abs_error", "scale", "num_elements", "tensor")


def spread(values) -> float:
    """A standard deviation that a few outliers cannot inflate: the 1st-99th percentile range
    over 4.65 (the same for normally distributed values, where that range is 4.65 sigma);
    the plain standard deviation where that range is empty."""
    values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) \
        if isinstance(values, (list, tuple)) else np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan")
    low, high = np.percentile(values, (1, 99))
    # a tensor of mostly one value (a ReLU output that is zero almost everywhere) has no
    # percentile range: its plain standard deviation is then the spread
    return float(high - low) / 4.65 if high > low else float(np.std(values))




def _relative(error: float, spread_: float) -> float:
    """``error / spread_``; 0 for an exact constant tensor, ``NO_SPREAD`` for an inexact one
    (finite, so the manifest stays strict JSON)."""
    if spread_ > 0:
        return round(error / spread_, 5)
    return 0.0 if error == 0 else NO_SPREAD


def _std_in_steps(float_values, quantized_values, scale, zero_point) -> float:
    """The float output's spread in quantization steps (the debugger's callback)."""
    return spread(float_values) / scale if scale > 0 else float("nan")


def keras_layers(tensor_name: str, layer_names: set[str]) -> list[str]:
    """The Keras layers a TFLite tensor was made from, in the converter's order (the fused op's
    last TensorFlow op first), each named once."""
    found: list[str] = []
    for part in tensor_name.split(";"):
        for component in part.split("/"):
            if component in layer_names and component not in found:
                found.append(component)
    return found


def layer_errors(converter: object, images: np.ndarray, layer_names: set[str],
                 hide_output: Callable = None) -> list[dict]:
    """Per quantized op output: its Keras layers and int8 error on ``images``, worst first.

    Args:
        converter: a TFLite converter set up for full-int8 quantization (optimizations and
            representative dataset); its input and output types are left float here.
        images: raw pixels (N, H, W, 3), the model's input; the first ``DEBUG_IMAGES`` are run.
        layer_names: every layer name of the Keras model (nested models' layers included).
        hide_output: a context manager factory that silences the converter's native output.
    """
    import contextlib

    import tensorflow as tf

    def debug_dataset():
        for image in images[:DEBUG_IMAGES]:
            yield [image[None].astype(np.float32)]

    with (hide_output or contextlib.nullcontext)():
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_direct_compare_metrics={"std_in_steps": _std_in_steps})
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_dataset,
                                                             debug_options=options)
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        if not scale > 0:
            continue
        found = keras_layers(row["tensor_name"], layer_names)
        rmse_steps, std_steps = math.sqrt(float(row["mean_squared_error"])) / scale, float(row["std_in_steps"])
        rows.append({"layer": found[-1] if found else row["tensor_name"].split(";")[0],
                     "keras_layers": found, "op": row["op_name"],
                     "relative_rmse": _relative(rmse_steps, std_steps),
                     "rmse_over_scale": round(rmse_steps, 4), "std_in_steps": round(std_steps, 3),
                     "mean_error": float(row["mean_error"]), "max_abs_error": float(row["max_abs_error"]),
                     "scale": scale, "num_elements": int(float(row["num_elements"])), "tensor": row["tensor_name"]})
    rows.sort(key=lambda r: -r["relative_rmse"])
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]


def write_csv(path: Path, rows: list[dict]) -> None:
    """Every row, worst first, as CSV (``keras_layers`` joined with ``+``)."""
    from device.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "keras_layers": "+".join(row["keras_layers"])})
    write_text(path, out.getvalue())


def record_fields(measure: Callable[[set[str]], list[dict]], model, exports: Path, artifact: Path) -> dict:
    """Run ``measure`` (``layer_errors`` or ``onnx_layer_errors``, given the Keras model's layer
    names) for ``artifact``: the full table in ``int8-layers/<artifact file>.csv`` under
    ``exports``, the worst rows for the record. A failure is recorded, never fatal to the
    artifact (an op the debugging tools cannot instrument leaves the model itself fine)."""
    names = {layer.name for layer in model.submodules if hasattr(layer, "name")}
    try:
        rows = measure(names)
    except Exception as exc:
        return {"int8_layers_error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
    rel = f"int8-layers/{artifact.name}.csv"
    write_csv(exports / rel, rows)
    return {"int8_layers_file": rel, "int8_worst_layers": worst(rows)}


def worst(rows: list[dict], n: int = WORST_KEPT) -> list[dict]:
    """The ``n`` worst rows, in the manifest's short form."""
    return [{"layer": r["layer"], "op": r["op"], "relative_rmse": r["relative_rmse"],
             "rmse_over_scale": r["rmse_over_scale"], "std_in_steps": r["std_in_steps"],
             "mean_error": round(r["mean_error"], 6)} for r in rows[:n]]


def summary(worst_rows: list[dict], n: int = 3) -> str:
    """``"block_16_project (CONV_2D): error 31% of its signal, 0.35 steps, std 1.1 steps; ..."``."""
    return "; ".join(f"{r['layer']} ({r['op']}): error {100 * r['relative_rmse']:.0f}% of its signal, "
                     f"{r['rmse_over_scale']:.2f} steps, std {r['std_in_steps']:.1f} steps" for r in worst_rows[:n])


def onnx_layer_errors(prepared: Path, qdq: Path, images: np.ndarray, layer_names: set[str], workdir: Path) -> list[dict]:
    """Per quantized activation of an ONNX model: its Keras layers and int8 error, worst first.

    ONNX Runtime's QDQ debugging recipe (``onnxruntime.quantization.qdq_loss_debug``): every
    intermediate tensor of the float graph ``prepared`` and of its QDQ quantization ``qdq``
    (same calibration, so the same ranges as the exported form) is made an output, both run
    on the first ``DEBUG_IMAGES`` of ``images``, and each dequantized tensor is compared with
    the float one. The figures are those of ``layer_errors``.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    from export.onnx import calibration_reader

    debug = images[:DEBUG_IMAGES]
    activations = {}
    for name, model in (("float", prepared), ("qdq", qdq)):
        augmented = workdir / f"{name}-augmented.onnx"
        modify_model_output_intermediate_tensors(str(model), str(augmented))
        activations[name] = collect_activations(str(augmented), calibration_reader(augmented, debug))
    graph = onnx.load(str(qdq)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = {n.input[0]: float(np.asarray(inits[n.input[1]]).ravel()[0]) for n in graph.node
              if n.op_type == "QuantizeLinear" and n.input[1] in inits}
    producers = {out: n.op_type for n in onnx.load(str(prepared)).graph.node for out in n.output}
    rows = []
    for tensor, match in create_activation_matching(activations["qdq"], activations["float"]).items():
        if not match.get("float") or tensor not in scales or not scales[tensor] > 0:
            continue
        exact = np.concatenate([np.asarray(a, np.float64).ravel() for a in match["float"]])
        rounded = np.concatenate([np.asarray(a, np.float64).ravel() for a in match["post_qdq"]])
        error, scale = rounded - exact, scales[tensor]
        rmse, std = float(np.sqrt(np.mean(error ** 2))), spread(exact)
        found = keras_layers(tensor, layer_names)
        rows.append({"layer": found[-1] if found else tensor, "keras_layers": found, "op": producers.get(tensor, "?"),
                     "relative_rmse": _relative(rmse, std),
                     "rmse_over_scale": round(rmse / scale, 4), "std_in_steps": round(std / scale, 3),
                     "mean_error": float(error.mean()), "max_abs_error": float(np.abs(error).max()), "scale": scale,
                     "num_elements": int(exact.size // len(debug)), "tensor": tensor})
    rows.sort(key=lambda r: -r["relative_rmse"])
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]
