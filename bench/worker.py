"""One benchmark job in its own process: ``python -m bench.worker [JOB.json | -]``.

The job is a JSON object (from the file named on the command line, or stdin); the result is
one JSON object printed on the worker's original stdout. Anything the runtimes print goes to
stderr, so the result line stays parseable. Running each job in a fresh process keeps
memory high-water marks and thread pools from leaking between models.

The job is a ``WorkerJob`` (its fields are the JSON keys); ``bench run`` fills every field
from its ``RunConfig``, so the defaults live there only.

Order of work: imports and the runtime's import; hash check; decode the split at the
manifest's input size; ``idle_rss_bytes``; load (``load_ms``); first inference; one
untimed pass over every image for accuracy and agreement; warmup; the timed loop.
"""
from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from bench import fingerprint, memory
from bench.latency import STRICT_MIN_QUERIES, STRICT_MIN_SECONDS, latency_stats
from device.checksum import sha256_file
from device.predictions import images_sha256, read_predictions

class JobError(RuntimeError):
    """A job that cannot be measured as asked; the message says why."""


@dataclass(frozen=True)
class WorkerJob:
    """One model x runtime x threads x mode, as ``bench run`` sends it (JSON on stdin).

    Attributes:
        artifact: the manifest record of the model.
        model_path: the model file.
        runtime: ``litert``, ``onnxruntime`` or ``tensorflow``.
        threads: runtime threads (None: the runtime's default).
        mode: ``kernel`` (the model call) or ``e2e`` (decode + preprocess + call).
        data, split: the images scored for accuracy.
        reference: the Keras model's predictions CSV, or None (no agreement).
        warmup, runs, min_secs: untimed calls, then at least ``runs`` timed calls and ``min_secs``.
        max_secs: the timed loop stops there even short of ``runs`` (None: no bound).
        delegate: TFLite's ``xnnpack`` (the default delegate) or ``none``; None for ONNX.
        shuffle, seed: cycle the images in a seeded random order.
        max_timed_inputs: prepared inputs the kernel loop cycles through.
    """

    artifact: dict
    model_path: str
    runtime: str
    threads: int | None
    mode: str
    data: str
    split: str
    reference: str | None
    warmup: int
    runs: int
    min_secs: float
    shuffle: bool
    seed: int
    max_timed_inputs: int
    max_secs: float | None
    delegate: str | None

    @classmethod
    def from_dict(cls, data: dict) -> "WorkerJob":
        """Refuses a job with unknown or missing keys (a ``bench`` and a worker of different versions)."""
        if not isinstance(data, dict):
            raise JobError(f"expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or missing:
            raise JobError(f"job keys: unknown {unknown}, missing {missing}")
        return cls(**data)


def kernel_of(model) -> tuple:
    """``(set_input, call)`` of a loaded model: the leanest way to run it.

    ``set_input(prepared)`` hands an input to the runtime (not timed); ``call()`` runs the
    model on it and is the only thing the kernel loop times: ``Interpreter.invoke`` on
    LiteRT, ``InferenceSession.run`` with a prebuilt feed on ONNX Runtime.
    """
    interpreter = getattr(model, "interpreter", None)
    if interpreter is not None:
        index = interpreter.get_input_details()[0]["index"]
        return functools.partial(interpreter.set_tensor, index), interpreter.invoke
    session = getattr(model, "session", None)
    if session is not None:
        name = session.get_inputs()[0].name
        feed: dict = {}
        return functools.partial(feed.__setitem__, name), functools.partial(
            session.run, [session.get_outputs()[0].name], feed)
    holder: list = [None]
    return functools.partial(holder.__setitem__, 0), lambda: model.invoke(holder[0])


def time_kernel(set_input, call, inputs, runs: int, min_secs: float = 0.0, order=None,
                max_secs: float | None = None) -> np.ndarray:
    """The timed loop: ``call()`` at least ``runs`` times and for at least ``min_secs``, but
    never past ``max_secs`` (then fewer runs; what was measured is kept).

    Only ``call()`` sits between the two ``perf_counter_ns`` reads; the input is handed
    over before the first read, the timings array is preallocated (doubled when a long
    ``min_secs`` needs more), and the garbage collector is paused.

    Args:
        set_input, call: from ``kernel_of``.
        inputs: prepared inputs to cycle over.
        runs: minimum number of timed calls.
        min_secs: minimum measured time.
        order: indices into ``inputs`` to cycle through (default: in order).
        max_secs: stop once this much time has been measured (None: no bound).

    Returns:
        int64 nanosecond timings, one per call.
    """
    order = list(range(len(inputs))) if order is None else list(order)
    n_order = len(order)
    single = n_order == 1
    if single:
        set_input(inputs[order[0]])
    capacity = max(int(runs), 16)
    times = np.empty(capacity, dtype=np.int64)
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(min_secs * 1e9)
    stop = start + int(max_secs * 1e9) if max_secs is not None else float("inf")
    gc_enabled = gc.isenabled()
    gc.disable()
    i = 0
    try:
        while i < runs or clock() < deadline:
            if i == capacity:
                times = np.concatenate([times, np.empty(capacity, dtype=np.int64)])
                capacity *= 2
            if not single:
                set_input(inputs[order[i % n_order]])
            t0 = clock()
            call()
            t1 = clock()
            times[i] = t1 - t0
            i += 1
            if t1 >= stop:
                break
    finally:
        if gc_enabled:
            gc.enable()
    return times[:i]


def _note_cut(done: int, runs: int, max_secs: float | None, out: dict) -> None:
    out["stopped_at_max_secs"] = bool(max_secs is not None and done < runs)
    if out["stopped_at_max_secs"]:
        out["notes"].append(f"timed loop stopped at --max-secs {max_secs:g} after {done} of {runs} runs")


def _import_runtime(runtime: str) -> None:
    """Import the runtime's library so ``idle_rss_bytes`` counts it and not the model."""
    from device.runtime import RUNTIME_MODULES

    for module, _package in RUNTIME_MODULES.get(runtime, ()):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue


def _e2e_loop(model, files: list[Path], size: tuple[int, int], runs: int, min_secs: float,
              max_secs: float | None = None) -> dict:
    """Decode + resize + prepare + invoke + probabilities per image, each phase timed (bounds
    as ``time_kernel``)."""
    from device.images import read_rgb, resize

    clock = time.perf_counter_ns
    phases = {name: [] for name in ("decode", "resize", "inference", "total")}
    start = clock()
    deadline = start + int(min_secs * 1e9)
    stop = start + int(max_secs * 1e9) if max_secs is not None else float("inf")
    i = 0
    while i < runs or clock() < deadline:
        path = files[i % len(files)]
        t0 = clock()
        image = read_rgb(path)
        t1 = clock()
        image = resize(image, size)
        t2 = clock()
        model.probabilities(model.invoke(model.prepare(image)))
        t3 = clock()
        phases["decode"].append(t1 - t0)
        phases["resize"].append(t2 - t1)
        phases["inference"].append(t3 - t2)
        phases["total"].append(t3 - t0)
        i += 1
        if t3 >= stop:
            break
    return {name: np.asarray(values, dtype=np.int64) for name, values in phases.items()}


def run_job(job: WorkerJob | dict) -> dict:
    """Measure one model x runtime x threads x mode.

    Args:
        job: a ``WorkerJob``, or its JSON object.

    Returns:
        The measured fields of the record (latency, memory, accuracy, agreement, runtime
        package, temperatures, notes); ``error`` when the job could not be measured, with
        whatever was measured before the failure.
    """
    out: dict = {"notes": []}
    try:
        _run(job if isinstance(job, WorkerJob) else WorkerJob.from_dict(job), out)
    except Exception as exc:  # every failure becomes the record's error, never a lost line
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _run(job: WorkerJob, out: dict) -> None:
    """One job, in order: checks, the split, the model, accuracy, the timed loop, the state after."""
    from device.runtime import load

    artifact, runtime, mode, threads = job.artifact, job.runtime, job.mode, job.threads
    if mode not in ("kernel", "e2e"):
        raise JobError(f"unknown mode {mode!r}; expected kernel or e2e")
    out.update(fingerprint.dynamic_state())
    out["temp_c_before"] = fingerprint.temperature_c()
    _import_runtime(runtime)
    model_path = _checked_model(job, out)
    shape = artifact.get("input_shape") or [1, artifact.get("img_size"), artifact.get("img_size"), 3]
    size = (int(shape[1]), int(shape[2]))
    dataset, images, y_true, records = _split_images(job, size, out["notes"])

    gc.collect()
    out["idle_rss_bytes"] = memory.rss_bytes()
    t0 = time.perf_counter_ns()
    model = load(model_path, runtime, threads, job.delegate or "xnnpack")
    out["load_ms"] = (time.perf_counter_ns() - t0) / 1e6
    out["runtime_package"], out["runtime_version"] = model.package, model.version
    out["runtime_settings"] = model.settings
    if tuple(model.input_shape[1:]) != (size[0], size[1], 3):
        raise JobError(f"model input {tuple(model.input_shape)} does not match the data prepared at "
                       f"{size[0]}x{size[1]}x3 from the manifest's input_shape")
    if artifact.get("input_dtype") and np.dtype(artifact["input_dtype"]) != model.input_dtype:
        out["notes"].append(f"manifest input_dtype {artifact['input_dtype']} but the model takes {model.input_dtype}")
    prepared0 = model.prepare(images[0])
    t0 = time.perf_counter_ns()
    model.invoke(prepared0)
    out["first_inference_ms"] = (time.perf_counter_ns() - t0) / 1e6

    _score(job, model, images, y_true, records, out)
    times, wall = _timed_loop(job, model, dataset, images, records, size, out)
    out["runs"] = int(times.size)
    out["seconds_measured"] = wall  # wall time of the timed loop, as MLPerf's minimum duration
    out.update(latency_stats(times / 1e6, seed=int(job.seed)))
    out["strict_valid"] = out["runs"] >= STRICT_MIN_QUERIES and out["seconds_measured"] >= STRICT_MIN_SECONDS
    out["peak_rss_bytes"] = memory.peak_rss_bytes()
    if out["peak_rss_bytes"] is not None and out["idle_rss_bytes"] is not None:
        out["rss_increase_bytes"] = out["peak_rss_bytes"] - out["idle_rss_bytes"]
    out["temp_c_after"] = fingerprint.temperature_c()
    out["throttled"] = fingerprint.throttled()
    flags = fingerprint.describe_throttled(out["throttled"])
    if flags:
        out["notes"].append("throttling flags: " + ", ".join(flags))


def _checked_model(job: WorkerJob, out: dict) -> Path:
    """The job's model file, refused when missing or not the file the manifest names by sha256."""
    model_path = Path(job.model_path)
    if not model_path.is_file():
        raise JobError(f"{model_path}: model file missing")
    expected = job.artifact.get("sha256")
    actual = sha256_file(model_path)
    out["model_sha256"] = actual
    if not expected:
        out["notes"].append("manifest has no sha256; file not verified")
    elif actual != expected:
        raise JobError(f"{model_path.name}: sha256 {actual[:12]}... does not match the manifest's {expected[:12]}...")
    return model_path


def _split_images(job: WorkerJob, size: tuple[int, int], notes: list[str]):
    """``(dataset, images, labels, records)`` of the job's split at the model's input size."""
    from device.dataset import open_dataset

    dataset = open_dataset(job.data)
    notes.extend(dataset.notes)
    images, y_true, records, skipped = dataset.load_arrays(job.split, size)
    if skipped:
        notes.append(f"{len(skipped)} unreadable image(s) skipped, first: {skipped[0][1]}")
    if not len(records):
        hint = (" (a dataset indexed before test splits existed has none: index it again with "
                "`python -m train.data index`, or pass --split val)" if job.split == "test" else "")
        raise JobError(f"{job.data}: no readable images in split {job.split!r}{hint}")
    return dataset, images, y_true, records


def _score(job: WorkerJob, model, images, y_true, records, out: dict) -> None:
    """Accuracy on every image once (outside the timed loop), and agreement with the reference."""
    from device.dataset import LABELS
    from device.metrics import classification_metrics

    labels = tuple(job.artifact.get("labels") or LABELS)
    probs = np.stack([model.probabilities(model.invoke(model.prepare(img))) for img in images])
    if probs.shape[1] != len(labels):
        raise JobError(f"model gives {probs.shape[1]} outputs for {len(labels)} labels {list(labels)}")
    y_pred = probs.argmax(axis=1)
    metrics = classification_metrics(y_true, y_pred, prefix="", labels=labels)
    out.update({"n_images": len(records), "accuracy": metrics["accuracy"],
                "accuracy_ci_low": metrics["accuracy_ci_low"], "accuracy_ci_high": metrics["accuracy_ci_high"],
                "macro_f1": metrics["macro_f1"]})
    out.update({f"recall_{label}": metrics[f"recall_{label}"] for label in labels})
    paths = [r.path for r in records]
    by_path = sorted(range(len(paths)), key=paths.__getitem__)
    out["images_sha256"] = images_sha256(paths)
    out["pred_indices"] = [int(y_pred[i]) for i in by_path]
    out["label_indices"] = [int(y_true[i]) for i in by_path]
    # the raw probabilities (same order), for the report's calibration error before and after
    # the artifact's temperature, its reliability diagram and its accuracy-coverage curve
    out["probabilities"] = [[round(float(v), 6) for v in probs[i]] for i in by_path]
    temperature = job.artifact.get("temperature")
    out["temperature"] = float(temperature) if isinstance(temperature, (int, float)) and temperature > 0 else None
    prior = job.artifact.get("train_prior")
    out["train_prior"] = [float(v) for v in prior] if isinstance(prior, list) and len(prior) == len(labels) else None
    out["agreement"] = None
    if job.reference and Path(job.reference).is_file():
        reference = {p: pred for p, (_label, pred) in read_predictions(job.reference).items()}
        matched = [(int(y_pred[i]), reference[p]) for i, p in enumerate(paths) if p in reference]
        if matched:
            out["agreement"] = float(np.mean([a == b for a, b in matched]))
        if len(matched) < len(paths):
            out["notes"].append(f"agreement over {len(matched)} of {len(paths)} images found in the reference CSV")
    else:
        out["notes"].append("no reference predictions; agreement not computed")


def _timed_loop(job: WorkerJob, model, dataset, images, records, size, out: dict):
    """Warm-up, then the timed loop of the job's mode; ``(times in ns, wall seconds)``."""
    runs, min_secs, warmup = int(job.runs), float(job.min_secs), int(job.warmup)
    if job.mode == "kernel":
        pool = min(len(images), int(job.max_timed_inputs))
        inputs = [model.prepare(img) for img in images[:pool]]
        order = list(range(pool))
        if job.shuffle:
            order = [int(i) for i in np.random.default_rng(job.seed).permutation(pool)]
        set_input, call = kernel_of(model)
        time_kernel(set_input, call, inputs, warmup, 0.0, order)
        started = time.perf_counter()
        times = time_kernel(set_input, call, inputs, runs, min_secs, order, job.max_secs)
        _note_cut(times.size, runs, job.max_secs, out)
        return times, time.perf_counter() - started
    files = [dataset.resolve(r) for r in records]
    if job.shuffle:
        files = [files[i] for i in np.random.default_rng(job.seed).permutation(len(files))]
    _e2e_loop(model, files, size, warmup, 0.0)
    started = time.perf_counter()
    phases = _e2e_loop(model, files, size, runs, min_secs, job.max_secs)
    wall = time.perf_counter() - started
    _note_cut(phases["total"].size, runs, job.max_secs, out)
    for name, values in phases.items():
        out[f"e2e_{name}_ms_p50"] = float(np.median(values)) / 1e6
    return phases["total"], wall


def answer_one_job(argv: list[str] | None, handle: Callable[[dict], dict], on_error: Callable[[Exception], dict],
                   errors: tuple[type[Exception], ...] = (OSError, ValueError)) -> int:
    """The body of a one-job process (this worker, ``bench.peak``): read a JSON job from the
    file ``argv[0]`` or stdin, ``handle`` it while whatever a runtime prints on stdout goes to
    stderr, and print the answer (``on_error``'s for an exception of ``errors``) as one JSON
    line on the original stdout."""
    argv = sys.argv[1:] if argv is None else argv
    result_fd = os.dup(1)
    os.dup2(2, 1)  # runtime chatter on stdout goes to stderr
    sys.stdout = sys.stderr
    try:
        text = Path(argv[0]).read_text() if argv and argv[0] != "-" else sys.stdin.read()
        result = handle(json.loads(text))
    except errors as exc:
        result = on_error(exc)
    with os.fdopen(result_fd, "w") as fh:
        fh.write(json.dumps(result) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Read a job, run it, print the result as one JSON line on the original stdout."""
    return answer_one_job(argv, run_job, lambda exc: {"error": f"bad job: {exc}", "notes": []})


if __name__ == "__main__":
    sys.exit(main())
