"""``bench run``: plan jobs from an exports manifest, run each in a worker subprocess,
append one flat JSON line per job, resume, and flag int8 models slower than fp32.

One job is one artifact x runtime x threads x mode. Each runs in ``python -m bench.worker``
so memory high-water marks and runtime thread pools start fresh; a worker that
crashes (a signal, a non-zero exit, a timeout) still gives a line, with ``error``.
Each kernel-mode line also gets the artifact's MACs, its GMAC/s and its fraction of the CPU's
fp32 peak (``bench.peak``).
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from bench import fingerprint
from bench.latency import STRICT_MIN_QUERIES, STRICT_MIN_SECONDS
from bench.peak import Efficiency
from bench.worker import WorkerJob
from device.atomic import append_jsonl, read_jsonl_records, rewrite_jsonl, skipped_warning
from device.choices import first_bad_choice
from device.exports_manifest import MANIFEST
from device.options import SECONDS_MAX, SEED_MAX, check_number
from device.progress import Progress
from device.runtime import DELEGATES, RUNTIME_MODULES, RUNTIMES, RUNTIMES_OF_SUFFIX
from device.dataset import LABELS, SPLITS

# runtimes able to run each format (tensorflow, TensorFlow's TFLite interpreter, only when named)
RUNTIMES_OF_FORMAT = {suffix.lstrip("."): able for suffix, able in RUNTIMES_OF_SUFFIX.items()}
MODES = ("kernel", "e2e")
INT8_VARIANTS = ("int8", "qat", "dynamic")
INT8_NOTE = "slower than fp32"
# a quantized line counts as slower only by a clear margin, beyond both p50 intervals
SLOWER_MARGIN = 1.05

# every line has these keys, in this order (None where not measured); extra keys follow
LINE_FIELDS = (
    "device_name", "hostname", "cpu_model", "arch", "cores", "ram_bytes", "os", "kernel", "python",
    "governor", "cpu_freq_mhz", "temp_c_before", "temp_c_after", "throttled",
    "runtime", "runtime_package", "runtime_version", "runtime_settings", "threads", "mode", "delegate",
    "artifact_id", "backbone", "level", "seed", "variant", "format", "model_file", "model_sha256", "size_bytes",
    "load_ms", "first_inference_ms",
    "latency_ms_p5", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "latency_ms_mean",
    "latency_ms_std",
    "latency_ms_min", "latency_ms_max",
    "latency_ms_p50_ci_low", "latency_ms_p50_ci_high", "latency_ms_p90_ci_low", "latency_ms_p90_ci_high",
    "macs", "gmacs_per_s", "peak_gmacs_per_s", "peak_source", "fraction_of_peak",  # bench.peak
    "runs", "seconds_measured", "peak_rss_bytes", "idle_rss_bytes", "rss_increase_bytes",
    "data", "split", "n_images", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1",
)
LINE_FIELDS_TAIL = ("agreement", "images_sha256", "pred_indices", "label_indices", "probabilities", "temperature", "train_prior",
                    "strict", "strict_valid", "stopped_at_max_secs", "timestamp", "notes")


class BenchError(RuntimeError):
    """A benchmark that cannot start (no manifest, nothing matches); the CLI exits 2."""


@dataclass(frozen=True)
class RunConfig:
    """Everything ``bench run`` needs; built by the CLI, passed to ``run_benchmarks``.

    ``data`` overrides each artifact's dataset; ``runtimes``, ``threads`` and ``modes``
    span the job grid; ``select`` is a glob on artifact id or model file name;
    ``worker_command`` replaces ``python -m bench.worker -`` (tests).
    """

    models: Path
    out: Path
    data: Path | None = None
    split: str = "test"
    runtimes: tuple[str, ...] = ("litert", "onnxruntime")
    threads: tuple[int, ...] = (1,)
    modes: tuple[str, ...] = ("kernel",)
    warmup: int = 20
    runs: int = 200
    min_secs: float = 5.0
    strict: bool = False
    shuffle: bool = False
    seed: int = 0
    cooldown_temp_c: float | None = None
    cooldown_secs: float | None = None
    cooldown_timeout_s: float = 600.0
    device_name: str | None = None
    resume: bool = False
    select: str | None = None
    job_timeout_s: float = 3600.0
    max_secs: float | None = None
    delegate: str = "xnnpack"
    max_timed_inputs: int = 64
    worker_command: tuple[str, ...] | None = None

    def __post_init__(self):
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; expected {', '.join(MODES)}")
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad:
            raise ValueError(f"unknown runtime(s) {bad}; expected {', '.join(RUNTIMES)}")
        if any(t < 1 for t in self.threads):
            raise ValueError(f"threads must be >= 1, got {list(self.threads)}")
        if self.runs < 1 or self.warmup < 0 or not self.min_secs >= 0:
            raise ValueError(f"runs must be >= 1, warmup and min_secs >= 0; got runs={self.runs}, "
                             f"warmup={self.warmup}, min_secs={self.min_secs}")
        for option, value, low, high in (("--min-secs", self.min_secs, 0, SECONDS_MAX),
                                         ("--job-timeout", self.job_timeout_s, 1, SECONDS_MAX),
                                         ("--cooldown-timeout", self.cooldown_timeout_s, 0, SECONDS_MAX),
                                         ("--cooldown-secs", self.cooldown_secs, 0, SECONDS_MAX),
                                         ("--cooldown-temp", self.cooldown_temp_c, 0, 150),
                                         ("--seed", self.seed, 0, SEED_MAX)):
            if value is not None:
                check_number(value, option, low, high, integer=option == "--seed")
        if self.cooldown_temp_c is not None and self.cooldown_secs is not None:
            raise ValueError("give --cooldown-temp or --cooldown-secs, not both")
        if self.max_secs is not None and not 0 < self.max_secs <= SECONDS_MAX:
            raise ValueError(f"--max-secs {self.max_secs}: expected a positive number of seconds")
        if self.max_secs is not None and self.max_secs < self.min_secs:
            raise ValueError(f"--max-secs {self.max_secs:g} is below --min-secs {self.min_secs:g}; "
                             f"expected max >= min")
        problem = first_bad_choice(("--delegate", self.delegate, DELEGATES), ("--split", self.split, SPLITS))
        if problem:
            raise ValueError(problem)
        if self.data is not None and not (Path(self.data) / "manifest.csv").is_file():
            raise ValueError(f"--data {self.data}: no manifest.csv there; expected a dataset folder "
                             f"(`python -m train.data index` makes one)")


@dataclass
class Job:
    """One artifact x runtime x threads x mode, with the parent's notes."""

    artifact: dict
    runtime: str
    threads: int
    mode: str
    delegate: str | None = None  # TFLite: xnnpack or none; ONNX: None
    notes: list[str] = field(default_factory=list)

    def key(self, device_name: str) -> tuple:
        return job_key({"artifact_id": self.artifact.get("artifact_id"), "runtime": self.runtime,
                        "threads": self.threads, "mode": self.mode, "device_name": device_name,
                        "delegate": self.delegate})


def job_key(line: dict) -> tuple:
    """What makes two lines the same job (``--resume``)."""
    delegate = line.get("delegate")
    if delegate is None and line.get("runtime") in ("litert", "tensorflow"):
        delegate = "xnnpack"  # TFLite lines from before --delegate ran with the default delegate
    return (line.get("artifact_id"), line.get("runtime"), line.get("threads"), line.get("mode"), line.get("device_name"),
            delegate)


def line_problem(line: dict) -> str | None:
    """Why a JSON object is not a ``bench run`` line (``None`` when it is one).

    A line names its artifact (``artifact_id``) and carries either an ``error`` or a measured
    ``latency_ms_p50``; every latency and the accuracy it holds are finite and not negative
    (the accuracy at most 1). Lines that are not are kept in their file, named in a warning
    and never counted, in ``bench run --resume`` and in ``bench report``.
    """
    if not isinstance(line.get("artifact_id"), str) or not line["artifact_id"]:
        return "no artifact_id"
    if line.get("error"):
        return None
    if line.get("latency_ms_p50") is None:
        return "neither an error nor latency_ms_p50"
    for key, value in line.items():
        if value is None or not (key.startswith(("latency_ms_", "e2e_")) or key == "accuracy"):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
                or (key == "accuracy" and value > 1):
            return f"{key} {value!r} is not a measured {'fraction' if key == 'accuracy' else 'time'}"
    return None


def load_manifest(exports: str | os.PathLike) -> list[dict]:
    """The artifact records of ``EXPORTS/manifest.json`` (``device.exports_manifest``).

    Raises:
        BenchError: missing, unreadable, of another format version, or without an
            ``artifacts`` list (the message names the file).
    """
    from device import exports_manifest

    try:
        return exports_manifest.read_artifacts(exports)
    except (OSError, ValueError) as exc:
        raise BenchError(str(exc)) from None


def plan_jobs(config: RunConfig, artifacts: list[dict]) -> tuple[list[Job], list[str]]:
    """Jobs for the artifacts that match the config, and notes on the ones left out.

    Artifacts with an ``error`` are left out with a note; a format whose runtime was not
    asked for is left out silently; ``select`` matches artifact id or file name.
    """
    jobs, notes = [], []
    seen: set = set()
    for artifact in artifacts:
        aid = artifact.get("artifact_id") or artifact.get("file")
        if aid in seen:  # a hand-edited manifest listing one artifact twice: measured and counted once
            notes.append(f"{aid}: listed more than once in the manifest; measured once")
            continue
        seen.add(aid)
        if config.select and not (fnmatch.fnmatch(str(aid), config.select)
                                  or fnmatch.fnmatch(Path(str(artifact.get("file", ""))).name, config.select)):
            continue
        if artifact.get("error"):
            notes.append(f"skipped {aid}: export failed ({artifact['error']})")
            continue
        fmt = str(artifact.get("format") or Path(str(artifact.get("file", ""))).suffix.lstrip(".")).lower()
        able = RUNTIMES_OF_FORMAT.get(fmt)
        if able is None:
            notes.append(f"skipped {aid}: unknown format {fmt!r}")
            continue
        for runtime in (r for r in config.runtimes if r in able):
            for threads in config.threads:
                for mode in config.modes:
                    jobs.append(Job(artifact=artifact, runtime=runtime, threads=threads, mode=mode,
                                    delegate=None if runtime == "onnxruntime" else config.delegate))
    return jobs, notes


def runtime_package_info(runtime: str) -> tuple[str | None, str | None]:
    """(package, version) that would run ``runtime``, from installed metadata (no import)."""
    for _module, package in RUNTIME_MODULES.get(runtime, ()):
        try:
            return package, metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def complete_line(record: dict, labels=LABELS) -> dict:
    """``record`` with every line field present (None where absent), in the fixed order."""
    keys = list(LINE_FIELDS) + [f"recall_{label}" for label in labels] + list(LINE_FIELDS_TAIL)
    line = {key: record.get(key) for key in keys}
    line["notes"] = list(record.get("notes") or [])
    line.update({k: v for k, v in record.items() if k not in line})
    if "error" in line and not line["error"]:
        del line["error"]
    return line


def _resolve_data(config: RunConfig, artifact: dict) -> Path | None:
    if config.data is not None:
        return Path(config.data)
    exports = Path(config.models)
    declared = artifact.get("data")
    if declared:
        path = Path(declared) if Path(declared).is_absolute() else exports / declared
        if path.is_dir():
            return path
    fallback = exports / "data"
    return fallback if fallback.is_dir() else None


def _check_data(config: RunConfig, jobs: list[Job]) -> None:
    """Refuse, before anything is measured, jobs whose dataset is nowhere (``BenchError``)."""
    for job in jobs:
        if _resolve_data(config, job.artifact) is None:
            raise BenchError(f"{Path(config.models) / MANIFEST}: the dataset of "
                             f"{job.artifact.get('artifact_id')}, {job.artifact.get('data')!r}, does not exist here "
                             f"and {Path(config.models) / 'data'} is missing; expected a dataset folder (pass --data)")


def run_worker(job: dict, command: list[str], timeout_s: float) -> dict:
    """Run one job in a subprocess and return its result (an ``error`` if it died)."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, input=json.dumps(job), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout_s:g} s", "notes": []}
    except OSError as exc:
        return {"error": f"cannot start worker {command[0]}: {exc.strerror or exc}", "notes": []}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    stderr_tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return {"error": f"worker killed by {name} after {time.perf_counter() - started:.1f} s"
                         + (f" ({stderr_tail})" if stderr_tail else ""),
                "worker_signal": name, "notes": []}
    if not isinstance(result, dict):
        return {"error": f"worker exited with status {proc.returncode} and no result"
                         + (f": {stderr_tail}" if stderr_tail else ""), "notes": []}
    if proc.returncode != 0:
        result.setdefault("notes", []).append(f"worker exit status {proc.returncode}")
    return result


def run_benchmarks(config: RunConfig, progress=None) -> dict:
    """Run every planned job and append its line to ``config.out``.

    Args:
        config: the run.
        progress: called with one human-readable line per job (and per skipped artifact).

    Returns:
        ``{"out", "planned", "written", "errors", "skipped_resume"}``.

    Raises:
        BenchError: no manifest, or no artifact matches.
    """
    say = progress or (lambda _line: None)
    artifacts = load_manifest(config.models)
    jobs, notes = plan_jobs(config, artifacts)
    for note in notes:
        say(note)
    if not jobs:
        raise BenchError(f"{config.models}: no artifact matches (select={config.select!r}, "
                         f"runtimes={','.join(config.runtimes)}; {len(artifacts)} in the manifest)")
    _check_data(config, jobs)
    static = fingerprint.static_fingerprint(config.device_name)
    device_name = static["device_name"]
    skipped = 0
    if config.resume:
        lines, skipped_lines = read_jsonl_records(config.out, line_problem)
        if skipped_lines:
            say(skipped_warning(config.out, skipped_lines))
        done = {job_key(line) for line in lines}
        kept = [job for job in jobs if job.key(device_name) not in done]
        skipped = len(jobs) - len(kept)
        jobs = kept
        if skipped:
            say(f"resume: {skipped} job(s) already in {config.out}")
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    runs = max(config.runs, STRICT_MIN_QUERIES) if config.strict else config.runs
    min_secs = max(config.min_secs, STRICT_MIN_SECONDS) if config.strict else config.min_secs
    command = list(config.worker_command or (sys.executable, "-m", "bench.worker", "-"))
    efficiency = Efficiency(config.models)  # MACs per artifact, the peak once per runtime x threads
    written = errors = 0
    progress = Progress(len(jobs), "jobs", say)
    for job in jobs:
        artifact = job.artifact
        note = fingerprint.cooldown(config.cooldown_temp_c, config.cooldown_secs, config.cooldown_timeout_s)
        if note:
            job.notes.append(note)
        job_started = time.perf_counter()
        line = _measure(config, job, static, command, runs, min_secs)
        line.update(efficiency.fields(artifact, job.runtime, job.threads, job.delegate, line))
        line["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        line = complete_line(line, tuple(artifact.get("labels") or LABELS))
        if "error" not in line and line.get("latency_ms_p50") is None:  # never a line with neither
            line["error"] = "the worker returned no latency"
        append_jsonl(config.out, line)
        written += 1
        errors += "error" in line
        what = f"{line['artifact_id']} {job.runtime} threads={job.threads} {job.mode}"
        seconds = f"{time.perf_counter() - job_started:.1f}s"
        if "error" in line:
            progress.done(what, f"ERROR {line['error']}, {seconds}")
        else:
            agreement = line["agreement"] if line["agreement"] is None else round(line["agreement"], 3)
            progress.done(what, f"p50 {line['latency_ms_p50']:.3f} ms, accuracy {line['accuracy']:.3f}, "
                                f"agreement {agreement}, {seconds}")
    flagged = annotate_int8(config.out)
    if flagged:
        say(f"{flagged} line(s) noted: a quantized variant clearly slower than its fp32")
    return {"out": str(config.out), "planned": len(jobs) + skipped, "written": written, "errors": errors,
            "skipped_resume": skipped}


def _measure(config: RunConfig, job: Job, static: dict, command: list[str], runs: int, min_secs: float) -> dict:
    """The line of one job: parent fields, then the worker's result."""
    artifact = job.artifact
    exports = Path(config.models)
    model_path = exports / str(artifact.get("file", ""))
    package, version = runtime_package_info(job.runtime)
    line = {**static, "runtime": job.runtime, "runtime_package": package, "runtime_version": version,
            "threads": job.threads, "mode": job.mode, "delegate": job.delegate,
            "artifact_id": artifact.get("artifact_id"), "backbone": artifact.get("backbone"),
            "level": artifact.get("level"), "seed": artifact.get("seed"), "variant": artifact.get("variant"),
            "format": artifact.get("format"), "model_file": artifact.get("file"),
            "size_bytes": model_path.stat().st_size if model_path.is_file() else artifact.get("size_bytes"),
            "strict": config.strict, "notes": list(job.notes)}
    data = _resolve_data(config, artifact)
    if data is None:
        line["error"] = (f"no dataset: {artifact.get('data')!r} does not exist here and {exports / 'data'} "
                         "is missing; pass --data")
        return line
    reference = artifact.get("reference_predictions")
    payload = asdict(WorkerJob(
        artifact=artifact, model_path=str(model_path), runtime=job.runtime, threads=job.threads, mode=job.mode,
        data=str(data), split=config.split, reference=str(exports / reference) if reference else None,
        warmup=config.warmup, runs=runs, min_secs=min_secs, shuffle=config.shuffle, seed=config.seed,
        max_timed_inputs=config.max_timed_inputs, max_secs=config.max_secs, delegate=job.delegate))
    line.update({"data": str(data), "split": config.split})  # what the accuracy is measured on
    result = run_worker(payload, command, config.job_timeout_s)
    notes = line["notes"] + list(result.pop("notes", []) or [])
    line.update({k: v for k, v in result.items() if v is not None or k not in line})
    line["notes"] = notes
    return line


def _int8_cause(runtime: str, variant: str) -> str:
    if runtime == "onnxruntime":
        return ("ONNX QDQ ops left unfused: on x86, ONNX Runtime fuses only uint8-activation groups into "
                "integer kernels, so an int8-activation model (--onnx-int8 qdq-s8) runs dequantize, float op, "
                "quantize (export with qoperator there); or no fast int8 kernels (VNNI / dot-product) on this CPU")
    if variant == "dynamic":
        return ("dynamic-range ops quantize activations at run time and XNNPACK does not take them, "
                "so they run on the slower builtin hybrid kernels")
    return ("XNNPACK not applied to the quantized graph (ops left on the builtin int8 kernels), no fast int8 "
            "kernels on this CPU (no dot-product instructions) or per-tensor requantization overhead")


def annotate_int8(out: str | os.PathLike) -> int:
    """Note, on both lines, where a quantized variant is slower than the fp32 of the same model.

    Pairs lines without error on the same device, backbone, level, seed, format, runtime,
    threads and mode by ``latency_ms_p50`` (kernel mode) or ``e2e_inference_ms_p50`` (e2e).
    Slower means at least ``SLOWER_MARGIN`` times the fp32 p50 and, where both lines have
    bootstrap intervals of p50, the quantized interval entirely above the fp32 one: a tie
    within noise is not noted. Rewrites ``out`` atomically, under its lock and keeping every
    line it cannot parse, only when a note is added (idempotent).

    Returns:
        The number of lines that got a note.
    """
    def update(lines: list[dict]) -> int:
        def group(line):
            return tuple(line.get(k) for k in ("device_name", "backbone", "level", "seed", "format",
                                               "runtime", "threads", "mode"))

        def speed(line):  # kernel: the timed invoke; e2e: the model's share of the pipeline
            return line.get("e2e_inference_ms_p50" if line.get("mode") == "e2e" else "latency_ms_p50")

        fp32 = {group(line): line for line in lines
                if line.get("variant") == "fp32" and not line.get("error") and speed(line)}
        changed = 0
        for line in lines:
            variant = str(line.get("variant") or "")
            if line.get("error") or not (variant in INT8_VARIANTS or variant.startswith("int8")):
                continue
            base = fp32.get(group(line))
            if base is None or not speed(line) or speed(line) < SLOWER_MARGIN * speed(base):
                continue
            low, high = line.get("latency_ms_p50_ci_low"), base.get("latency_ms_p50_ci_high")
            if line.get("mode") != "e2e" and low is not None and high is not None and low <= high:
                continue
            cause = _int8_cause(str(line.get("runtime")), variant)
            ratio = speed(line) / speed(base)
            mine = f"{variant} {INT8_NOTE} {base['artifact_id']} ({ratio:.2f}x p50): likely {cause}"
            theirs = f"{variant} variant {line['artifact_id']} is {ratio:.2f}x slower than this fp32 (p50): likely {cause}"
            for target, note in ((line, mine), (base, theirs)):
                notes = target.setdefault("notes", [])
                if note not in notes:
                    notes.append(note)
                    changed += 1
        return changed

    return rewrite_jsonl(out, update)
