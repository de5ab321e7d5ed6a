"""Efficiency against the hardware: each bench line's achieved GMAC/s and its fraction of the
CPU's peak for the line's arithmetic: fp32 for float models, int8 for integer ones.

Units: one MAC is one multiply-accumulate (one fused multiply-add, two FLOP). A core's fp32
peak in GMAC/s is ``GHz x fp32 FMA lanes it completes per cycle``; the peak of a line is the
sum over the cores its threads can use (the fastest first, at most one thread per core).

Where the peak comes from, in order:

1. **table**: an Arm core named by ``CPU part`` in ``/proc/cpuinfo`` (``CORES``), at the
   core's ``cpuinfo_max_freq`` from cpufreq, else the board's default clock when
   ``/proc/cpuinfo``'s ``Model`` names a Raspberry Pi (``BOARD_GHZ``);
2. **measured**: for any other CPU, a dense fp32 matmul (``MATMUL`` = M x K x N) in the
   line's own runtime, made here without TensorFlow (a TFLite ``FULLY_CONNECTED`` flatbuffer
   written with ``flatbuffers``; an ONNX ``MatMul`` written with ``onnx.helper``), timed
   for a second after a warm-up; the peak is its best call. Measured once per
   runtime x threads x delegate in each ``bench run``, in its own process
   (``python -m bench.peak -``) like the jobs. It is what this runtime's own GEMM reaches,
   not the silicon's limit, so it is a fair yardstick for that runtime's convolutions.

Each line divides by the peak of its own arithmetic (``arithmetic``): full-integer and
dynamic-range artifacts (``int8``, ``qat``, ``dynamic``) by the int8 peak, the others by the
fp32 one. The int8 table gives each core's int8 MACs per cycle (``INT8_MACS``); the int8
measurement is a dense int8 matmul in the same runtime (a quantized ``FULLY_CONNECTED`` for
LiteRT; ``QLinearMatMul`` with uint8 activations and int8 weights, ONNX Runtime's fast U8S8
form on x86, for ONNX Runtime). Each line's ``peak_source`` says which, with its figures.
TensorFlow-free; the runtimes are imported only to measure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Arm cores by CPU part (implementer 0x41): name and fp32 FMA lanes completed per cycle per core
# (128-bit NEON FMLA = 4 lanes). A55, A72: one 128-bit FMLA per cycle (the A72's two 64-bit
# pipes together: 8 FLOP/cycle measured with vfpbench on a 2.0 GHz A72, 15.9 GFLOPS single
# thread; XNNPACK's own Raspberry Pi 4 MobileNet v1/v2 times, 75 ms and 44 ms on 4 threads,
# are 32% and 28% of the resulting 24 GMAC/s). A76, A77, A78, A710: two 128-bit FMA pipes
# (8 lanes). X1, X2: four 128-bit FMA pipes (16 lanes). From Arm's published core descriptions.
CORES = {
    0xd05: ("Cortex-A55", 4),
    0xd08: ("Cortex-A72", 4),
    0xd0b: ("Cortex-A76", 8),
    0xd0d: ("Cortex-A77", 8),
    0xd41: ("Cortex-A78", 8),
    0xd44: ("Cortex-X1", 16),
    0xd47: ("Cortex-A710", 8),
    0xd48: ("Cortex-X2", 16),
}
# int8 MACs per cycle per core. Cores with the dot-product instructions (Armv8.2 SDOT/UDOT: a
# 128-bit SDOT is 16 int8 multiply-accumulates): A55 one per cycle (16), A76, A77, A78, A710
# two (32), X1, X2 four (64). The Cortex-A72 (Raspberry Pi 4) has none: its int8 kernels widen
# to 16 bits and multiply-accumulate 8 lanes per 128-bit instruction, one per cycle (8).
INT8_MACS = {0xd05: 16, 0xd08: 8, 0xd0b: 32, 0xd0d: 32, 0xd41: 32, 0xd44: 64, 0xd47: 32, 0xd48: 64}
ARITHMETICS = ("fp32", "int8")
# variants whose heavy ops run on integers (weights int8; dynamic quantizes activations on the fly)
INT8_VARIANTS = ("int8", "qat", "dynamic")
ARM = 0x41
# default Arm clock of Raspberry Pi boards (GHz), used when cpufreq gives none; longest prefix wins
BOARD_GHZ = {"Raspberry Pi 4": 1.5, "Raspberry Pi 400": 1.8, "Raspberry Pi Compute Module 4": 1.5,
             "Raspberry Pi 5": 2.4, "Raspberry Pi 500": 2.4, "Raspberry Pi Compute Module 5": 2.4}
MATMUL = (512, 512, 512)  # M, K, N of the measured matmul: 134M MACs per call
MEASURE_SECS = 1.0
PEAK_TIMEOUT_S = 120.0


def arithmetic(artifact: dict) -> str:
    """``int8`` for an artifact whose convolutions run on integers, else ``fp32``."""
    return "int8" if str(artifact.get("variant")) in INT8_VARIANTS else "fp32"


@dataclass(frozen=True)
class Peak:
    """A CPU's peak for some threads and one arithmetic: GMAC/s, and where the figure comes from."""

    gmacs_per_s: float | None
    source: str


def parse_cpuinfo(text: str) -> tuple[list[dict], str | None]:
    """``/proc/cpuinfo`` as one dict per ``processor`` block, and the board ``Model`` (if any)."""
    blocks, current, model = [], None, None
    for raw in text.splitlines():
        key, _, value = (part.strip() for part in raw.partition(":"))
        if key == "processor":
            current = {"processor": value}
            blocks.append(current)
        elif key == "Model":
            model = value
        elif current is not None and key:
            current[key] = value
    return blocks, model


def _int(text: str | None) -> int | None:
    try:
        return int(str(text), 0)
    except ValueError:
        return None


def cpufreq_max_ghz(cpu: int, root: str = "/sys/devices/system/cpu") -> float | None:
    """The highest clock cpufreq allows for logical CPU ``cpu`` (GHz), or None."""
    try:
        return int(Path(root, f"cpu{cpu}", "cpufreq", "cpuinfo_max_freq").read_text().strip()) / 1e6
    except (OSError, ValueError):
        return None


def _board_ghz(model: str | None) -> float | None:
    names = [name for name in BOARD_GHZ if model and model.startswith(name)]
    return BOARD_GHZ[max(names, key=len)] if names else None


def table_peak(cpuinfo: str, threads: int, freq_ghz: dict[int, float] | None = None,
               kind: str = "fp32") -> Peak | None:
    """The peak from the core table, or None when a core or its clock is not known.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``.
        threads: the runtime threads (each on its own core, fastest cores first).
        freq_ghz: each logical CPU's maximum clock (cpufreq); missing ones take the board default.
        kind: ``fp32`` (FMA lanes per cycle) or ``int8`` (int8 MACs per cycle, ``INT8_MACS``).
    """
    blocks, model = parse_cpuinfo(cpuinfo)
    board = _board_ghz(model)
    cores = []
    for i, block in enumerate(blocks):
        part, implementer = _int(block.get("CPU part")), _int(block.get("CPU implementer"))
        if implementer != ARM or part not in CORES:
            return None
        cpu = _int(block.get("processor"))
        ghz = (freq_ghz or {}).get(cpu if cpu is not None else i)
        origin = "cpufreq max" if ghz else "board default"
        ghz = ghz or board
        if not ghz:
            return None
        name, lanes = CORES[part]
        if kind == "int8":
            lanes = INT8_MACS[part]
        cores.append((lanes * ghz, name, lanes, ghz, origin))
    if not cores:
        return None
    used = sorted(cores, reverse=True)[:max(1, int(threads))]
    unit = "int8 MACs/cycle" if kind == "int8" else "fp32 FMA lanes/cycle"
    kinds = sorted({f"{name}: {lanes} {unit} @ {ghz:g} GHz ({origin})"
                    for _, name, lanes, ghz, origin in used})
    where = f"{model} " if model else ""
    return Peak(round(sum(c[0] for c in used), 3),
                f"table: {where}({len(used)} core(s) for {threads} thread(s); {'; '.join(kinds)})")


def local_table_peak(threads: int, kind: str = "fp32") -> Peak | None:
    """``table_peak`` of this machine (None off Linux, or for a CPU the table lacks)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    cpus = [_int(b.get("processor")) for b in parse_cpuinfo(text)[0]]
    freqs = {c: f for c in cpus if c is not None and (f := cpufreq_max_ghz(c))}
    return table_peak(text, threads, freqs, kind)


# --- the measured peak: a dense fp32 matmul in the line's runtime ----------------------------

def _end_vector(builder, n: int) -> int:
    try:
        return builder.EndVector()
    except TypeError:  # flatbuffers < 2 takes the length
        return builder.EndVector(n)


def _vector(builder, values: list, prepend: str, size: int = 4) -> int:
    """A flatbuffer vector of ``values``, each written by ``builder.<prepend>`` in ``size`` bytes."""
    builder.StartVector(size, len(values), size)
    for v in reversed(values):
        getattr(builder, prepend)(v)
    return _end_vector(builder, len(values))


def _int_vector(builder, values: list[int]) -> int:
    return _vector(builder, values, "PrependInt32")


def _offset_vector(builder, offsets: list[int]) -> int:
    return _vector(builder, offsets, "PrependUOffsetTRelative")


def _table(builder, fields: list[tuple[str, int, int]]) -> int:
    """A table from ``(kind, slot, value)``: kind ``o`` offset, ``i`` int32, ``u`` uint32, ``b`` int8/uint8."""
    builder.StartObject(max(slot for _, slot, _ in fields) + 1 if fields else 0)
    for kind, slot, value in fields:
        {"o": builder.PrependUOffsetTRelativeSlot, "i": builder.PrependInt32Slot,
         "u": builder.PrependUint32Slot, "b": builder.PrependInt8Slot}[kind](slot, value, 0)
    return builder.EndObject()


def _fully_connected_model(b, tensors: list[int], buffers: list[int], op_inputs: list[int], version: int) -> bytes:
    """The model around one ``FULLY_CONNECTED`` op: ``tensors[0]`` in, the last tensor out."""
    out = len(tensors) - 1
    options = _table(b, [])  # FullyConnectedOptions: defaults (no activation, 2-D output)
    op = _table(b, [("u", 0, 0), ("o", 1, _int_vector(b, op_inputs)), ("o", 2, _int_vector(b, [out])),
                    ("b", 3, 8), ("o", 4, options)])
    subgraph = _table(b, [("o", 0, _offset_vector(b, tensors)), ("o", 1, _int_vector(b, [0])),
                          ("o", 2, _int_vector(b, [out])), ("o", 3, _offset_vector(b, [op]))])
    code = _table(b, [("b", 0, 9), ("i", 2, version), ("i", 3, 9)])  # FULLY_CONNECTED
    model = _table(b, [("u", 0, 3), ("o", 1, _offset_vector(b, [code])), ("o", 2, _offset_vector(b, [subgraph])),
                       ("o", 4, _offset_vector(b, buffers))])
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


def fully_connected_tflite(m: int, k: int, n: int, weights=None) -> bytes:
    """A TFLite model of one ``FULLY_CONNECTED``: input [m, k] float32, constant ``weights``
    [n, k] (default: small seeded random values), output ``x @ weights.T`` [m, n]; ``m * k * n``
    MACs per call. Written with ``flatbuffers`` (TFLite schema version 3)."""
    import flatbuffers
    import numpy as np

    if weights is None:
        weights = np.random.default_rng(0).standard_normal((n, k)) * 0.05
    weights = np.asarray(weights, dtype="<f4").reshape(n, k).tobytes()
    b = flatbuffers.Builder(len(weights) + 4096)
    data = b.CreateByteVector(weights)
    buffers = [_table(b, []), _table(b, [("o", 0, data)]), _table(b, [])]
    names = [b.CreateString(s) for s in ("x", "w", "y")]
    shapes = [_int_vector(b, s) for s in ([m, k], [n, k], [m, n])]
    tensors = [_table(b, [("o", 0, shapes[i]), ("b", 1, 0), ("u", 2, i), ("o", 3, names[i])]) for i in range(3)]
    return _fully_connected_model(b, tensors, buffers, op_inputs=[0, 1, -1], version=1)  # no bias


def fully_connected_int8_tflite(m: int, k: int, n: int, seed: int = 0) -> bytes:
    """A TFLite model of one quantized ``FULLY_CONNECTED``: int8 input [m, k], constant int8
    weights [n, k] (per-tensor, zero point 0, as XNNPACK's QS8 kernels take them), an int32 bias,
    int8 output [m, n]; ``m * k * n`` int8 MACs per call."""
    import flatbuffers
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = rng.integers(-127, 128, (n, k), dtype=np.int8).tobytes()
    bias = np.zeros(n, dtype="<i4").tobytes()
    scale_x, scale_w, scale_y = 1 / 128, 0.05 / 127, 0.1
    b = flatbuffers.Builder(len(weights) + len(bias) + 4096)
    w_data, b_data = b.CreateByteVector(weights), b.CreateByteVector(bias)
    buffers = [_table(b, []), _table(b, []), _table(b, [("o", 0, w_data)]), _table(b, [("o", 0, b_data)]), _table(b, [])]
    names = [b.CreateString(t) for t in ("x", "w", "b", "y")]
    shapes = [_int_vector(b, s) for s in ([m, k], [n, k], [n], [m, n])]
    types = [9, 9, 2, 9]  # INT8, INT8, INT32, INT8
    scales = [scale_x, scale_w, scale_x * scale_w, scale_y]
    quant = [_table(b, [("o", 2, _vector(b, [sc], "PrependFloat32")), ("o", 3, _vector(b, [0], "PrependInt64", 8))])
             for sc in scales]
    tensors = [_table(b, [("o", 0, shapes[i]), ("b", 1, types[i]), ("u", 2, i + 1), ("o", 3, names[i]),
                          ("o", 4, quant[i])]) for i in range(4)]
    return _fully_connected_model(b, tensors, buffers, op_inputs=[0, 1, 2], version=4)  # version 4: int8


def qlinear_matmul_onnx(m: int, k: int, n: int, seed: int = 0) -> bytes:
    """An ONNX model of one ``QLinearMatMul``: uint8 input [m, k] by constant int8 [k, n] (U8S8,
    the form ONNX Runtime's x86 kernels are fastest in), uint8 output (needs ``onnx``)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).integers(-127, 128, (k, n), dtype=np.int8)
    consts = [numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
              numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
              numpy_helper.from_array(weights, "w"),
              numpy_helper.from_array(np.array(0.05 / 127, np.float32), "w_scale"),
              numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
              numpy_helper.from_array(np.array(0.1, np.float32), "y_scale"),
              numpy_helper.from_array(np.array(128, np.uint8), "y_zero")]
    node = helper.make_node("QLinearMatMul", ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero"],
                            ["y"])
    graph = helper.make_graph([node], "qlinear_matmul", [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [m, n])], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def matmul_onnx(m: int, k: int, n: int, seed: int = 0) -> bytes:
    """An ONNX model of one ``MatMul``: input [m, k] float32 by constant [k, n] (needs ``onnx``)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.random.default_rng(seed).standard_normal((k, n)) * 0.05).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _best_call_s(call, seconds: float) -> tuple[float, int]:
    """The fastest of the calls of ``call()`` made for ``seconds`` after three warm-up calls."""
    for _ in range(3):
        call()
    best, count, end = float("inf"), 0, time.perf_counter() + seconds
    while count < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        count += 1
    return best, count


def _onnx_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def measure_peak(runtime: str, threads: int, delegate: str | None = "xnnpack",
                 seconds: float = MEASURE_SECS, shape: tuple[int, int, int] = MATMUL, kind: str = "fp32") -> Peak:
    """The best GMAC/s of a dense matmul (``kind``: fp32 or int8) in ``runtime`` with ``threads`` threads.

    ONNX Runtime needs ``onnx`` to build its model; without it the matmul runs on LiteRT and
    the source says so.
    """
    import numpy as np

    from device.runtime import load

    m, k, n = shape
    suffix, why = ".tflite", ""
    if runtime == "onnxruntime" and _onnx_importable():
        suffix = ".onnx"
    elif runtime == "onnxruntime":
        runtime, why = "litert", " (onnx, needed to build an ONNX Runtime matmul, is not installed)"
    builders = {(".onnx", "fp32"): matmul_onnx, (".tflite", "fp32"): fully_connected_tflite,
                (".onnx", "int8"): qlinear_matmul_onnx, (".tflite", "int8"): fully_connected_int8_tflite}
    rng = np.random.default_rng(1)
    inputs = {"fp32": rng.standard_normal((m, k)).astype(np.float32),
              "int8": rng.integers(0, 256, (m, k), dtype=np.uint8) if suffix == ".onnx"
              else rng.integers(-128, 128, (m, k), dtype=np.int8)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"matmul{suffix}"
        path.write_bytes(builders[(suffix, kind)](m, k, n))
        model = load(path, runtime, threads, delegate or "xnnpack")
        x = inputs[kind]
        best, count = _best_call_s(lambda: model.invoke(x), seconds)
    op = {".onnx": "QLinearMatMul" if kind == "int8" else "MatMul", ".tflite": "FULLY_CONNECTED"}[suffix]
    engine = f"{runtime}{f' ({delegate})' if runtime != 'onnxruntime' and delegate else ''} {model.version}"
    return Peak(round(m * k * n / best / 1e9, 3),
                f"measured: dense {kind} matmul ({op} {m}x{k}x{n}) on {engine}{why}, {threads} thread(s), "
                f"best of {count} calls in {seconds:g} s")


def measure_in_subprocess(runtime: str, threads: int, delegate: str | None, kind: str = "fp32") -> Peak:
    """``measure_peak`` in a fresh ``python -m bench.peak -`` (its own thread pools, like a job)."""
    job = json.dumps({"runtime": runtime, "threads": threads, "delegate": delegate, "kind": kind})
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.peak", "-"], input=job, capture_output=True,
                              text=True, timeout=PEAK_TIMEOUT_S)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError) as exc:
        return Peak(None, f"unavailable: the peak measurement failed ({type(exc).__name__})")
    if "error" in result:
        return Peak(None, f"unavailable: the peak measurement failed ({result['error'][:200]})")
    return Peak(result["peak_gmacs_per_s"], result["peak_source"])


def efficiency(macs: int | None, p50_ms: float | None, peak: Peak | None) -> dict:
    """``gmacs_per_s``, ``peak_gmacs_per_s``, ``peak_source`` and ``fraction_of_peak`` of a line."""
    out = {"gmacs_per_s": None, "peak_gmacs_per_s": None, "peak_source": None, "fraction_of_peak": None}
    if not macs or not p50_ms or p50_ms <= 0:
        return out
    out["gmacs_per_s"] = macs / (p50_ms / 1e3) / 1e9
    if peak is not None:
        out["peak_gmacs_per_s"], out["peak_source"] = peak.gmacs_per_s, peak.source
        if peak.gmacs_per_s:
            out["fraction_of_peak"] = out["gmacs_per_s"] / peak.gmacs_per_s
    return out


class Efficiency:
    """What ``bench run`` adds to each line: the artifact's MACs (from the manifest, else
    counted from the file) and, for kernel-mode lines, GMAC/s against the peak, which is
    looked up or measured once per runtime x threads x delegate and kept for the run.
    ``peak_of(runtime, threads, delegate) -> Peak`` replaces that lookup (tests)."""

    def __init__(self, exports: str | os.PathLike, peak_of=None):
        self.exports = Path(exports)
        self.peak_of = peak_of or self.lookup_or_measure
        self.peaks: dict[tuple, Peak] = {}
        self.macs_cache: dict[str, tuple[int | None, str | None]] = {}

    @staticmethod
    def lookup_or_measure(runtime: str, threads: int, delegate: str | None, kind: str = "fp32") -> Peak:
        """The table's peak of this CPU for ``kind`` arithmetic, else a measured one."""
        return local_table_peak(threads, kind) or measure_in_subprocess(runtime, threads, delegate, kind)

    def macs(self, artifact: dict) -> tuple[int | None, str | None]:
        """``(macs, note)``: the manifest's count, else one counted from the file (note on failure)."""
        from device.exports_manifest import artifact_macs

        key = str(artifact.get("artifact_id") or artifact.get("file"))
        if key not in self.macs_cache:
            self.macs_cache[key] = artifact_macs(self.exports, artifact)
        return self.macs_cache[key]

    def fields(self, artifact: dict, runtime: str, threads: int, delegate: str | None, line: dict) -> dict:
        """The efficiency fields of ``line`` (None where not measured), with a note when the
        artifact's MACs cannot be known."""
        macs, note = self.macs(artifact)
        out = {"macs": macs, **efficiency(None, None, None)}
        if note:
            out["notes"] = list(line.get("notes") or []) + [note]
        if line.get("error") or line.get("mode") != "kernel" or not macs or not line.get("latency_ms_p50"):
            return out
        kind = arithmetic(artifact)
        key = (runtime, threads, delegate) + ((kind,) if kind != "fp32" else ())
        if key not in self.peaks:
            self.peaks[key] = self.peak_of(*key)
        return {**out, **efficiency(macs, line["latency_ms_p50"], self.peaks[key])}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peak [JOB.json | -]``: measure one peak, print it as one JSON line."""
    from bench.worker import answer_one_job

    def measure(job: dict) -> dict:
        peak = measure_peak(job["runtime"], int(job["threads"]), job.get("delegate"), kind=job.get("kind", "fp32"))
        return {"peak_gmacs_per_s": peak.gmacs_per_s, "peak_source": peak.source}

    # every failure is the answer's error, never a lost line
    return answer_one_job(argv, measure, lambda exc: {"error": f"{type(exc).__name__}: {exc}"}, (Exception,))


if __name__ == "__main__":
    sys.exit(main())
