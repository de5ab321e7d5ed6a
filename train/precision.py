"""Numeric precision of training: float32, or Keras's mixed policies (float16 on GPUs with
tensor cores, bfloat16 on GPUs and on CPUs with bfloat16 instructions).

Under a mixed policy layers compute in 16 bits and keep float32 weights; the study's head
(``train.model``) and the loss stay float32. A bfloat16 request on a CPU without bfloat16
instructions is answered with a warning and float32: TensorFlow would emulate it, slower
than float32.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# CPU flags (Linux /proc/cpuinfo) that give oneDNN native bfloat16 arithmetic
BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISION_HELP = ("float32, mixed_float16 (GPUs with tensor cores) or mixed_bfloat16 (GPUs, and CPUs with "
                  "AVX512-BF16 or AMX; python -m train.speed_benchmark measures which backbones gain)")


def cpu_bfloat16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU's bfloat16 instruction flags (empty where it has none or cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [flag for flag in BFLOAT16_FLAGS if flag in flags]


def effective_precision(requested: str, log: Callable[[str], None] = print) -> str:
    """The policy to train under: ``requested``, except bfloat16 on a CPU-only machine whose
    CPU lacks bfloat16 instructions, which says so and keeps float32."""
    if requested != "mixed_bfloat16":
        return requested
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or cpu_bfloat16_flags():
        return requested
    log("warning: --precision mixed_bfloat16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX) and no "
        "GPU is visible; training in float32 instead")
    return "float32"


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``name`` inside the block (models must be built there)."""
    import tf_keras as keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
