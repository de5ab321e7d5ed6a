"""Export trained runs to ONNX (fp32, int8), verified on ONNX Runtime with the device code.

    python -m export.onnx --runs RUNS --out EXPORTS [--select ...] [--variants fp32,int8]
        [--opset N] [--calib N] [--calib-seed S] [--calib-method minmax|average|percentile]
        [--onnx-int8 qoperator|qdq-u8|qdq-s8] [--strict]

Variants:
    fp32  tf2onnx conversion of the deployable graph (raw pixels in, probabilities out).
    int8  onnxruntime static quantization of the fp32 model: per-channel int8 weights,
          8-bit activations calibrated on training images, in the form ``--onnx-int8`` names
          (below). The input stays float32 raw pixels and is quantized by the graph's first
          QuantizeLinear. Dynamic quantization (weights only, activations quantized per call)
          is slow for CNNs on ONNX Runtime, so it is not offered.

int8 forms (--onnx-int8; measured in docs/export.md, "ONNX int8 speed on x86"):
    qoperator  QOperator file (QLinearConv, QLinearAdd, ...), uint8 activations, int8
               weights (U8S8). The default: the fastest form on x86 (uint8 activations are
               what ONNX Runtime's x86 integer kernels take).
    qdq-u8     QDQ file (QuantizeLinear/DequantizeLinear around float ops), U8S8: fused by
               ONNX Runtime into the same integer kernels on x86.
    qdq-s8     QDQ file, int8 activations and weights (S8S8; the only form before): ONNX
               Runtime's documented default and the choice for ARM, where it fuses int8 QDQ
               groups into integer kernels; on x86 it leaves many of them in float (here
               1.1x fp32's time on MobileNetV2, 2.8x on EfficientNetB2).
    QOperator with int8 activations is not offered: ONNX Runtime documents it as slow on
    x86-64 (measured 3.4-4.8x slower than fp32 at 1 thread here).

Calibration methods (--calib-method) set each activation's int8 range:
    minmax      the extremes over all calibration images (default; what TFLite's converter
                does, so the two int8 formats compare like for like).
    average     the mean over images of each image's extremes. One unusual image (a bright,
                saturated object) cannot widen every range; values beyond clip.
    percentile  onnxruntime's histogram percentile (99.999%) of all calibration values.

Shares run selection, verification and the manifest with ``export.tflite``.
"""
from __future__ import annotations

import itertools
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device import exports_manifest as manifest
from device.atomic import write_bytes
from export.cli import run_cli
from export.config import ExportConfig, ExportError
from export.pipeline import Context

ONNX_VARIANTS = ("fp32", "int8", "tta")
DEFAULT_OPSET = ExportConfig.opset
CALIB_METHODS = ("minmax", "average", "percentile")


@dataclass(frozen=True)
class Int8Form:
    """How an int8 ONNX model is written: file format and activation type (weights are int8)."""

    name: str
    quant_format: str  # onnxruntime ``QuantFormat`` member: QOperator or QDQ
    activations: str  # onnxruntime ``QuantType`` member of activations: QUInt8 or QInt8

    @property
    def label(self) -> str:
        """E.g. ``QOperator per-channel U8S8`` (the manifest's converter text)."""
        return f"{self.quant_format} per-channel {'U8' if self.activations == 'QUInt8' else 'S8'}S8"


INT8_FORMS = {form.name: form for form in (Int8Form("qoperator", "QOperator", "QUInt8"),
                                           Int8Form("qdq-u8", "QDQ", "QUInt8"),
                                           Int8Form("qdq-s8", "QDQ", "QInt8"))}
DEFAULT_INT8_FORM = ExportConfig.onnx_int8


def int8_form(name: str) -> Int8Form:
    """The ``INT8_FORMS`` entry called ``name``.

    Raises:
        ValueError: an unknown name (one line naming the choices).
    """
    if name not in INT8_FORMS:
        raise ValueError(f"--onnx-int8 {name!r}: expected one of {', '.join(INT8_FORMS)}")
    return INT8_FORMS[name]


def to_onnx_bytes(ctx: Context, opset: int) -> bytes:
    """tf2onnx conversion of the source's deployable model (input ``image``, batch 1).

    The result is kept in ``ctx.notes`` so that the int8 variant quantizes the very graph
    the fp32 variant wrote, without converting a second time.
    """
    key = ("onnx_fp32_bytes", opset)
    if key not in ctx.notes:
        ctx.notes[key] = _convert(ctx, opset)
    return ctx.notes[key]


def _convert(ctx: Context, opset: int, model=None) -> bytes:
    import tensorflow as tf
    import tf2onnx

    model = model if model is not None else ctx.model()
    size = ctx.source.img_size
    spec = (tf.TensorSpec((1, size, size, 3), tf.float32, name="image"),)
    # from_keras, not from_function over ``model(x)``: the latter left the non-trainable
    # weights of a Normalization layer (EfficientNet's) as extra graph inputs instead of
    # constants, so ONNX Runtime asked for them at every call
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    return proto.SerializeToString()


class _CalibrationReader:
    """onnxruntime ``CalibrationDataReader`` over raw training images, one per step."""

    def __init__(self, input_name: str, images: np.ndarray):
        self.input_name = input_name
        self.images = images.astype(np.float32)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.images):
            return None
        image = self.images[self.position][None]
        self.position += 1
        return {self.input_name: image}

    def rewind(self):
        self.position = 0


def quantize_int8(fp32_path: Path, out_path: Path, images: np.ndarray, method: str = "minmax",
                  form: str = DEFAULT_INT8_FORM) -> bool:
    """Static int8 quantization (per-channel int8 weights) calibrated on ``images``.

    Args:
        method: one of ``CALIB_METHODS`` (see the module doc).
        form: one of ``INT8_FORMS`` (see the module doc).

    Returns:
        Whether ONNX Runtime's pre-processing (shape inference, BatchNorm folding) ran.
    """
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {', '.join(CALIB_METHODS)}")
    int8_form(form)  # an unknown form is refused before any work
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_out = Path(tmp) / out_path.name
        source, preprocessed = prepare(fp32_path, Path(tmp) / "prepared.onnx")
        quantize_prepared(source, tmp_out, images, method, form)
        write_bytes(out_path, tmp_out.read_bytes())
    return preprocessed


def calibration_reader(model_path: Path, images: np.ndarray):
    """An onnxruntime ``CalibrationDataReader`` feeding ``images`` one by one to the model's input."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    return type("Reader", (_CalibrationReader, CalibrationDataReader), {})(input_name, images)


def prepare(fp32_path: Path, out: Path) -> tuple[Path, bool]:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation, which
    folds standalone BatchNorms, DenseNet's pre-activation ones, into neighbours) into ``out``.

    Returns:
        ``(the graph to quantize, whether pre-processing ran)``: ``fp32_path`` itself when it
        failed (an optional step).
    """
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # shapes are static (batch 1, fixed size): symbolic shape inference, which needs
        # sympy (not installed by the export extra), has nothing to add, and without
        # skipping it the whole step failed and BatchNorms stayed unfolded
        quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
        return out, True
    except Exception:
        return fp32_path, False


def quantize_prepared(source: Path, out: Path, images: np.ndarray, method: str, form: str,
                      ranges: dict[str, tuple[float, float]] | None = None, exclude: list[str] | None = None) -> None:
    """``quantize_static`` of a prepared graph: per-channel int8 weights, activations and file
    format as ``form`` names, calibrated on ``images`` by ``method``; ``ranges`` overrides the
    calibrated (min, max) of the tensors it names, and the nodes named in ``exclude`` stay float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    chosen = int8_form(form)
    calibrate_method = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
    # onnxruntime's "moving average" over one-image batches, all collected in one pass, is the
    # plain mean of the per-image minima and maxima
    extra_options = {"CalibMovingAverage": True} if method == "average" else {}
    if ranges:
        extra_options["TensorQuantOverrides"] = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                                 for name, (lo, hi) in ranges.items()}
    # onnxruntime warns through the root logger once per 1-D weight (BatchNorm vectors:
    # "Axis 1 is out-of-range ... with rank 1", then quantized per tensor, as intended),
    # hundreds of lines for a DenseNet; errors still show
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(source), str(out), calibration_reader(source, images),
                        quant_format=QuantFormat[chosen.quant_format], per_channel=True,
                        activation_type=QuantType[chosen.activations], weight_type=QuantType.QInt8,
                        calibrate_method=calibrate_method, extra_options=extra_options,
                        nodes_to_exclude=list(exclude or []))
    finally:
        root.setLevel(level)


class OnnxRangeCalibration:
    """The int8 rescue's builder for ONNX (``export.int8_rescue``): the prepared float graph kept
    in memory, its per-image tensor extremes computed once, and a quantization with any range
    method of ``export.int8_ranges`` and nodes kept in float."""

    def __init__(self, prepared: bytes, images: np.ndarray, method: str, form: str):
        self.prepared, self.images, self.method, self.form = prepared, images, method, form
        self._extremes: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def _per_image(self, workdir: Path):
        if self._extremes is None:
            import onnx
            import onnxruntime
            from onnxruntime.quantization import qdq_loss_debug

            source, augmented = workdir / "prepared.onnx", workdir / "augmented.onnx"
            source.write_bytes(self.prepared)
            qdq_loss_debug.modify_model_output_intermediate_tensors(str(source), str(augmented))
            session = onnxruntime.InferenceSession(str(augmented), providers=["CPUExecutionProvider"])
            # each saved copy is named after its tensor plus a postfix (a reshaped copy)
            postfix = qdq_loss_debug._TENSOR_SAVE_POSTFIX  # pylint: disable=protected-access
            names = [o.name.removesuffix(postfix) for o in session.get_outputs()]
            feed = session.get_inputs()[0].name
            runs = (session.run(None, {feed: np.asarray(image, np.float32)[None]}) for image in self.images)
            first = next(runs)
            # the graph's input (pinned to 0..255) and output (probabilities) keep their calibrated
            # ranges, and so do the inputs of Relu and Clip: ONNX Runtime fuses the activation into
            # the op before it and quantizes with the activation's range; an override of the
            # pre-activation tensor then broke QOperator models (agreement 69% -> 34% in the test's
            # model, 97.5% with the activation's range alone)
            graph = onnx.load_from_string(self.prepared).graph
            ends = ({i.name for i in session.get_inputs()} | {graph.output[0].name}
                    | {n.input[0] for n in graph.node if n.op_type in ("Relu", "Clip")})
            keep = [i for i, value in enumerate(first)
                    if value.dtype == np.float32 and value.size > 0 and names[i] not in ends]
            mins = np.empty((len(self.images), len(keep)))
            maxs = np.empty_like(mins)
            for row, values in enumerate(itertools.chain([first], runs)):
                for col, i in enumerate(keep):
                    mins[row, col], maxs[row, col] = float(np.min(values[i])), float(np.max(values[i]))
            self._extremes = ([names[i] for i in keep], mins, maxs)
        return self._extremes

    def build(self, ranges: str, float_tensors, out: Path) -> dict:
        """Write the int8 model with ``ranges`` (``export.int8_ranges.RANGE_METHODS``) and the
        nodes producing ``float_tensors`` in float to ``out``; notes for the record."""
        import onnx

        from export.int8_ranges import narrowed_count, robust_ranges

        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            work = Path(tmp)
            source = work / "prepared.onnx"
            source.write_bytes(self.prepared)
            overrides, notes = None, {}
            if ranges != "minmax":
                names, mins, maxs = self._per_image(work)
                low, high = robust_ranges(mins, maxs, ranges)
                overrides = {n: (lo, hi) for n, lo, hi in zip(names, low, high)}
                notes = {"narrowed_tensors": narrowed_count(mins, maxs, ranges), "calibrated_tensors": len(names)}
            wanted = set(float_tensors)
            exclude = [n.name for n in onnx.load(str(source)).graph.node if wanted & set(n.output)]
            quantize_prepared(source, work / "int8.onnx", self.images, self.method, self.form, overrides, exclude)
            write_bytes(out, (work / "int8.onnx").read_bytes())
        return notes


def convert_onnx(ctx: Context, variant: str, path: Path) -> tuple[str, dict]:
    """Write one ONNX variant of the source to ``path`` (the int8 variant in the form
    ``ctx.config.onnx_int8`` names, one of ``INT8_FORMS``).

    Returns:
        ``(converter name, extra record fields)``.

    Raises:
        Exception: whatever tf2onnx or onnxruntime raise (recorded by the caller).
    """
    import onnxruntime
    import tf2onnx

    opset, int8 = ctx.config.opset, ctx.config.onnx_int8
    if variant == "fp32":
        write_bytes(path, to_onnx_bytes(ctx, opset))
        return f"tf2onnx {tf2onnx.__version__} (opset {opset})", {"opset": opset}
    if variant == "tta":
        write_bytes(path, _convert(ctx, opset, ctx.tta_model()))
        return f"tf2onnx {tf2onnx.__version__} (opset {opset}), 8-view mean in the graph", {"opset": opset}
    if variant == "int8":
        images = ctx.calibration().images
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            fp32.write_bytes(to_onnx_bytes(ctx, opset))
            prepared, preprocessed = prepare(fp32, Path(tmp) / "prepared.onnx")
            builder = OnnxRangeCalibration(prepared.read_bytes(), images, ctx.config.calib_method, int8)
            builder.build("minmax", (), path)
            ctx.notes["int8_builder"] = builder.build  # the int8 rescue's (export.int8_rescue)
            # the quantized graph does the fp32 graph's arithmetic; counted there, since ONNX shape
            # inference stops at QOperator's com.microsoft ops (QLinearAdd, QLinearConcat, ...)
            macs = manifest.macs_fields(fp32)
            with ctx.step("int8 layers"):
                macs.update(_int8_layers(ctx, prepared, images, Path(tmp), path))
        return (f"tf2onnx {tf2onnx.__version__} (opset {opset}) + onnxruntime {onnxruntime.__version__} "
                f"quantize_static {int8_form(int8).label}, {ctx.config.calib_method} calibration",
                {"opset": opset, "calib_n": int(len(images)), "onnx_preprocessed": preprocessed, "onnx_int8": int8,
                 **macs})
    raise ValueError(f"unknown ONNX variant {variant!r}")


def _int8_layers(ctx: Context, prepared: Path, images: np.ndarray, tmp: Path, path: Path) -> dict:
    """The int8 error of every quantized activation (``export.int8_layers.onnx_layer_errors``),
    measured on a QDQ quantization with the export's calibration and activation type, for the
    record."""
    from export.int8_layers import onnx_layer_errors, record_fields

    def measure(names: set[str]) -> list[dict]:
        qdq = tmp / "debug-qdq.onnx"
        signed = int8_form(ctx.config.onnx_int8).activations == "QInt8"
        quantize_prepared(prepared, qdq, images, ctx.config.calib_method, "qdq-s8" if signed else "qdq-u8")
        return onnx_layer_errors(prepared, qdq, images, names, tmp)

    return record_fields(measure, ctx.model(), ctx.exports, path)


def add_arguments(p) -> None:
    """The ONNX exporter's own arguments."""
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default=ExportConfig.calib_method,
                   help="how int8 activation ranges are set from the calibration images (default %(default)s)")
    p.add_argument("--onnx-int8", default=DEFAULT_INT8_FORM, metavar="|".join(INT8_FORMS),
                   help=f"form of the int8 variant (default {DEFAULT_INT8_FORM}; see above)")


def main(argv: list[str] | None = None) -> int:
    def config_extra(args):
        try:
            form = int8_form(args.onnx_int8).name
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        return {"opset": args.opset, "calib_method": args.calib_method, "onnx_int8": form}

    return run_cli(argv, "python -m export.onnx", __doc__, "onnx", ONNX_VARIANTS, convert_onnx, add_arguments,
                   config_extra)


if __name__ == "__main__":
    sys.exit(main())
