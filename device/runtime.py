"""Inference runtimes for exported models, with no TensorFlow needed.

Every exported artifact follows one contract (see ``export``): one RGB image in, NHWC at the
trained size, raw pixel values 0..255 (float32 for float models; an integer input whose
quantization parameters say how pixels map for full-integer models); the backbone's
preprocessing is inside the graph; class probabilities out, in label order.

TFLite models run on LiteRT (``ai-edge-litert``, with its default XNNPACK delegate), falling
back to ``tflite-runtime``. TensorFlow's own TFLite interpreter runs them only when a caller
names the runtime ``tensorflow``: nothing on the device side imports TensorFlow unasked. ONNX
models run on ONNX Runtime's CPU provider.
"""
from __future__ import annotations

import abc
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RUNTIMES = ("litert", "onnxruntime", "tensorflow")
# runtimes that can run each model format; the first is the one used unless another is named
RUNTIMES_OF_SUFFIX = {".tflite": ("litert", "tensorflow"), ".onnx": ("onnxruntime",)}


class RuntimeUnavailable(RuntimeError):
    """No installed runtime can run this kind of model; the message says what to install."""


class ModelLoadError(RuntimeError):
    """The file is not a model the runtime can load (truncated, corrupt, wrong format)."""


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``; scale 0 = none."""

    scale: float = 0.0
    zero_point: int = 0


# what each runtime name imports, in order of preference: (module, package). The one table
# for loading models here, and for bench's package records and worker imports.
DELEGATES = ("xnnpack", "none")  # TFLite: the default XNNPACK delegate, or built-in kernels only
RUNTIME_MODULES = {
    "litert": (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime")),
    "tensorflow": (("tensorflow.lite.python.interpreter", "tensorflow"),),
    "onnxruntime": (("onnxruntime", "onnxruntime"),),
}


def _litert_interpreter(runtime: str = "litert"):
    """(interpreter module, package name, version) of the first TFLite interpreter of ``runtime``.

    ``litert`` tries ai-edge-litert, then tflite-runtime; TensorFlow is only ever imported
    for ``runtime="tensorflow"``.
    """
    for module, package in RUNTIME_MODULES[runtime]:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        top = importlib.import_module(module.split(".")[0])
        return mod, package, getattr(top, "__version__", "unknown")
    if runtime == "tensorflow":
        raise RuntimeUnavailable("runtime tensorflow: TensorFlow is not installed; use runtime litert "
                                 "(pip install 'skyedge[device]')")
    raise RuntimeUnavailable("no TFLite interpreter installed: pip install 'skyedge[device]' (ai-edge-litert); "
                             "TensorFlow's interpreter runs only when named (runtime tensorflow)")


def quantize_input(images: np.ndarray, dtype: np.dtype, quant: Quantization) -> np.ndarray:
    """Raw pixels (0..255) to a model input of ``dtype`` using its quantization parameters."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.asarray(images, dtype=dtype)
    info = np.iinfo(dtype)
    x = np.asarray(images, dtype=np.float32)
    q = np.rint(x / quant.scale + quant.zero_point) if quant.scale else np.rint(x)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, quant: Quantization) -> np.ndarray:
    """Integer model output to real values (float32); float outputs pass through."""
    if values.dtype.kind == "f":
        return values.astype(np.float32, copy=False)
    scale = quant.scale or 1.0
    return (values.astype(np.float32) - quant.zero_point) * np.float32(scale)


class LoadedModel(abc.ABC):
    """A model loaded in a runtime, fed one image at a time.

    Attributes:
        runtime: ``litert`` or ``onnxruntime``.
        package, version: the package that runs it (``ai-edge-litert`` 2.3.0, ...).
        input_shape: (1, H, W, 3).
        input_dtype: numpy dtype of the input tensor.
        input_quant: input quantization (scale 0 for float inputs).
        threads: threads asked for (``None``: the runtime's default).
        settings: the runtime options the model runs with, recorded on every bench line.
    """

    runtime: str
    package: str
    version: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    input_quant: Quantization
    output_quant: Quantization
    threads: int | None
    settings: dict

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One raw RGB image (H, W, 3) or (1, H, W, 3) to the model's input tensor."""
        x = np.asarray(image)
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError(f"image shape {x.shape[1:]} does not match the model input {tuple(self.input_shape[1:])}")
        return np.ascontiguousarray(quantize_input(x, self.input_dtype, self.input_quant))

    @abc.abstractmethod
    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        """Run the model on a prepared input; returns the raw output tensor."""

    def probabilities(self, raw_output: np.ndarray) -> np.ndarray:
        """Raw output to class probabilities (float32, shape (C,))."""
        return dequantize(np.asarray(raw_output), self.output_quant).reshape(-1)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities for one raw RGB image."""
        return self.probabilities(self.invoke(self.prepare(image)))

    def predict_many(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for raw RGB images (N, H, W, 3), one at a time."""
        return np.stack([self.predict(img) for img in images]) if len(images) else np.zeros((0, 0), np.float32)


class LiteRTModel(LoadedModel):
    """A ``.tflite`` model on LiteRT (or tflite-runtime), or on TensorFlow's interpreter when named."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, runtime: str = "litert",
                 delegate: str = "xnnpack"):
        if delegate not in DELEGATES:
            raise ValueError(f"delegate {delegate!r}: expected one of {', '.join(DELEGATES)}")
        self.runtime = runtime
        module, self.package, self.version = _litert_interpreter(runtime)
        self.threads = threads
        # xnnpack: the interpreter's default delegate (XNNPACK on CPU); none: its built-in kernels only
        resolver = module.OpResolverType.AUTO if delegate == "xnnpack" else \
            module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.settings = {"delegate": delegate, "num_threads": threads, "op_resolver": resolver.name}
        try:
            self.interpreter = module.Interpreter(model_path=str(path), num_threads=threads,
                                                  experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self._in, self._out = inp["index"], out["index"]
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_quant = Quantization(*inp.get("quantization", (0.0, 0)))
        self.output_quant = Quantization(*out.get("quantization", (0.0, 0)))

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in, prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)


class OnnxModel(LoadedModel):
    """An ``.onnx`` model on ONNX Runtime (CPU provider, all graph optimisations)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable("onnxruntime is not installed: pip install 'skyedge[device]'") from exc
        self.package, self.version, self.threads = "onnxruntime", ort.__version__, threads
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        self.settings = {"providers": self.session.get_providers(),
                         "graph_optimization_level": options.graph_optimization_level.name,
                         "execution_mode": options.execution_mode.name,
                         "intra_op_num_threads": options.intra_op_num_threads,  # 0: ORT's default (one per core)
                         "inter_op_num_threads": options.inter_op_num_threads}
        inp = self.session.get_inputs()[0]
        self._in_name = inp.name
        self._out_name = self.session.get_outputs()[0].name
        self.input_shape = tuple(1 if not isinstance(d, int) else d for d in inp.shape)
        types = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                 "tensor(float16)": np.float16}
        self.input_dtype = np.dtype(types.get(inp.type, np.float32))
        self.input_quant = Quantization()
        self.output_quant = Quantization()

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run([self._out_name], {self._in_name: prepared})[0]


def runtime_for(path: str | os.PathLike) -> str:
    """The default runtime of a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIMES_OF_SUFFIX:
        raise ValueError(f"{path}: unknown model format {suffix!r}; expected .tflite or .onnx")
    return RUNTIMES_OF_SUFFIX[suffix][0]


def load(path: str | os.PathLike, runtime: str | None = None, threads: int | None = None,
         delegate: str = "xnnpack") -> LoadedModel:
    """Load a model file in ``runtime`` (default: from the file suffix).

    ``delegate`` (TFLite only): ``xnnpack``, the interpreter's default delegate, or ``none``,
    its built-in kernels without it, for an A/B of what XNNPACK takes.

    Raises:
        ValueError: unknown suffix, or a runtime that cannot run that format.
        RuntimeUnavailable: the runtime is not installed.
        ModelLoadError: the file is missing, truncated or not a model.
    """
    runtime = runtime or runtime_for(path)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    able = RUNTIMES_OF_SUFFIX[Path(path).suffix.lower()]
    if runtime not in able:
        raise ValueError(f"{path}: a {Path(path).suffix} model cannot run on {runtime}; it needs {' or '.join(able)}")
    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such model file")
    return OnnxModel(path, threads) if runtime == "onnxruntime" else LiteRTModel(path, threads, runtime, delegate)
