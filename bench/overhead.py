"""``bench overhead``: does the worker's timed loop cost anything over a bare invoke loop?

In one process and on one loaded model, alternate rounds of the worker's kernel loop
(``bench.worker.time_kernel``, cycling over distinct inputs as ``bench run`` does) and of a
bare loop (input set once, ``interpreter.invoke()`` / ``session.run`` called repeatedly and
timed the same way), so clock and thermal drift hit both alike. The ratio of the pooled
medians says how much the benchmark's own bookkeeping adds; the target is <= 1.03.
"""
from __future__ import annotations

import gc
import os
import time

import numpy as np

from bench.latency import median_ms
from bench.worker import kernel_of, time_kernel

TARGET_RATIO = 1.03


def _bare_loop(set_input, call, prepared, runs: int) -> np.ndarray:
    """Input set once, then ``call()`` timed ``runs`` times with nothing else in the loop."""
    set_input(prepared)
    clock = time.perf_counter_ns
    times = [0] * runs
    gc.disable()
    try:
        for i in range(runs):
            t0 = clock()
            call()
            times[i] = clock() - t0
    finally:
        gc.enable()
    return np.asarray(times, dtype=np.int64)


def measure_overhead(model_path: str | os.PathLike, threads: int | None = 1, runs: int = 500, rounds: int = 7,
                     n_inputs: int = 16, seed: int = 0) -> dict:
    """Compare the worker's timed loop with a bare invoke loop on one model.

    Args:
        model_path: ``.tflite`` or ``.onnx`` file.
        threads: runtime threads.
        runs: timed calls per round, for each loop.
        rounds: interleaved rounds (worker, bare, worker, bare, ...).
        n_inputs: distinct random inputs the worker loop cycles over.
        seed: seed of those inputs.

    Returns:
        ``worker_median_ms``, ``bare_median_ms``, ``ratio`` (worker / bare),
        ``target_ratio``, ``runs``, ``rounds``, ``runtime``, ``threads``.
    """
    from device.runtime import load

    model = load(model_path, threads=threads)
    rng = np.random.default_rng(seed)
    shape = (1, *model.input_shape[1:])
    inputs = [model.prepare(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n_inputs)]
    set_input, call = kernel_of(model)
    time_kernel(set_input, call, inputs, max(20, runs // 10))  # warm both paths' caches
    worker, bare = [], []
    for _ in range(rounds):
        worker.append(time_kernel(set_input, call, inputs, runs))
        bare.append(_bare_loop(set_input, call, inputs[0], runs))
    worker_ms, bare_ms = median_ms(np.concatenate(worker)), median_ms(np.concatenate(bare))
    return {"worker_median_ms": worker_ms, "bare_median_ms": bare_ms, "ratio": worker_ms / bare_ms,
            "target_ratio": TARGET_RATIO, "runs": runs, "rounds": rounds, "runtime": model.runtime,
            "threads": threads}
