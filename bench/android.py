"""Phones: run TFLite's official ``benchmark_model`` over ``adb`` and parse what it prints.

The user supplies ``adb`` and the ``benchmark_model`` binary for the phone's ABI (from the
TensorFlow Lite / LiteRT releases). For each ``.tflite`` artifact and thread count the
driver pushes the model to ``/data/local/tmp/skyedge``, runs

    [taskset MASK] benchmark_model --graph=... --num_threads=N --use_xnnpack=true|--use_gpu=true|...
                    --num_runs=R --warmup_runs=W --min_secs=S --report_peak_memory_footprint=true

through ``adb shell`` and turns its log into the keys ``bench run`` writes
(``load_ms``, ``first_inference_ms``, ``latency_ms_mean/min/max/std`` and, when the tool
prints them, ``latency_ms_p50`` and ``p5``/``p95``, ``peak_rss_bytes``...), with the phone's
fingerprint from ``getprop``. ONNX artifacts are left out (no ``benchmark_model`` for them).
Accuracy is not measured here; ``bench run`` measures it on a Linux device.
"""
from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.jobs import RunConfig
from device.checksum import sha256_file
from device.options import defaults

_RUN_DEFAULTS = defaults(RunConfig)

REMOTE_DIR = "/data/local/tmp/skyedge"
DELEGATE_FLAGS = {"xnnpack": ["--use_xnnpack=true"], "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"],
                  "none": ["--use_xnnpack=false"]}

_TIMINGS = re.compile(r"Inference timings in us:\s*Init:\s*([\d.]+),\s*First inference:\s*([\d.]+),"
                      r"\s*Warmup \(avg\):\s*([\d.eE+-]+),\s*Inference \(avg\):\s*([\d.eE+-]+)")
_MEMORY = re.compile(r"Memory footprint delta from the start of the tool \(MB\):\s*init=([\d.]+)\s+overall=([\d.]+)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring:\s*([\d.]+)")
_COUNT = re.compile(r"\bcount=\d+(?:\s+\w+=[-\d.eE+]+)+")
_SIZE = re.compile(r"The input model file size \(MB\):\s*([\d.]+)")
_ERROR = re.compile(r"^(?:ERROR|E\b|.*\bFailed\b|.*\bfailed\b).*$", re.MULTILINE)
MB = 1024 * 1024


class AndroidError(RuntimeError):
    """adb or benchmark_model failed; the message has the command and its output's tail."""


def parse_benchmark_output(text: str) -> dict:
    """Turn ``benchmark_model``'s log into record fields.

    Reads the ``Inference timings in us`` summary (``load_ms`` from Init,
    ``first_inference_ms``, ``warmup_ms_mean``, ``latency_ms_mean``), the last
    ``count=... min=... max=... avg=... std=...`` line (the measured runs, after the warmup
    one: ``runs``, ``latency_ms_min/max/mean/std``, and ``latency_ms_p50``/``p5``/``p95`` when
    it has ``median``/``p5``/``p95``), the memory footprint deltas and peak.

    Raises:
        AndroidError: the log has no inference timings (the run failed); the message
            quotes the first error line.
    """
    out: dict = {}
    timings = _TIMINGS.search(text)
    if not timings:
        errors = [line.strip() for line in _ERROR.findall(text) if line.strip()]
        tail = errors[0] if errors else (text.strip().splitlines() or ["no output"])[-1]
        raise AndroidError(f"benchmark_model gave no inference timings: {tail[:300]}")
    init, first, warmup, avg = (float(v) for v in timings.groups())
    out.update({"load_ms": init / 1000.0, "first_inference_ms": first / 1000.0,
                "warmup_ms_mean": warmup / 1000.0, "latency_ms_mean": avg / 1000.0})
    counts = _COUNT.findall(text)
    if counts:
        stats = dict(pair.split("=", 1) for pair in counts[-1].split())
        out["runs"] = int(stats["count"])
        names = {"min": "latency_ms_min", "max": "latency_ms_max", "avg": "latency_ms_mean",
                 "std": "latency_ms_std", "median": "latency_ms_p50", "p5": "latency_ms_p5",
                 "p95": "latency_ms_p95"}
        for key, name in names.items():
            if key in stats:
                out[name] = float(stats[key]) / 1000.0
        if out.get("latency_ms_mean") is not None:
            out["seconds_measured"] = out["latency_ms_mean"] * out["runs"] / 1000.0
    memory = _MEMORY.search(text)
    if memory:
        out["memory_init_delta_bytes"] = int(float(memory.group(1)) * MB)
        out["rss_increase_bytes"] = int(float(memory.group(2)) * MB)
    peak = _PEAK.search(text)
    if peak:
        out["peak_rss_bytes"] = int(float(peak.group(1)) * MB)
    size = _SIZE.search(text)
    if size:
        out["model_size_reported_mb"] = float(size.group(1))
    return out


def parse_getprop(text: str) -> dict[str, str]:
    """``{key: value}`` from ``adb shell getprop`` output (``[key]: [value]`` lines)."""
    return dict(re.findall(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$", text, re.MULTILINE))


@dataclass(frozen=True)
class AndroidConfig:
    """A phone run: adb, the benchmark binary, threads, delegate, runs.

    ``runs``, ``warmup`` and ``min_secs`` default to ``bench run``'s (``RunConfig``), so a
    phone line and a Pi line are measured alike; ``affinity`` is a ``taskset`` CPU mask in
    hex (``f0``: the four big cores of a typical 4+4 phone), None to let the scheduler choose.
    """

    models: Path
    adb: str
    benchmark_binary: str
    threads: tuple[int, ...] = (1,)
    delegate: str = "xnnpack"
    runs: int = _RUN_DEFAULTS["runs"]
    warmup: int = _RUN_DEFAULTS["warmup"]
    min_secs: float = _RUN_DEFAULTS["min_secs"]
    affinity: str | None = None
    serial: str | None = None
    select: str | None = None
    device_name: str | None = None
    timeout_s: float = 900.0

    def __post_init__(self):
        if self.delegate not in DELEGATE_FLAGS:
            raise ValueError(f"unknown delegate {self.delegate!r}; expected one of {', '.join(DELEGATE_FLAGS)}")
        if self.affinity is not None and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", self.affinity):
            raise ValueError(f"--affinity {self.affinity!r}: expected a taskset CPU mask in hex, such as f0")

    def benchmark_flags(self, graph: str, threads: int) -> list[str]:
        """``benchmark_model``'s flags for one model and thread count."""
        return [f"--graph={graph}", f"--num_threads={threads}", *DELEGATE_FLAGS[self.delegate],
                f"--num_runs={self.runs}", f"--warmup_runs={self.warmup}", f"--min_secs={self.min_secs:g}",
                "--report_peak_memory_footprint=true"]

    def command(self, binary: str, graph: str, threads: int) -> list[str]:
        """The shell command on the phone (under ``taskset`` when an affinity is given)."""
        pin = ["taskset", self.affinity] if self.affinity else []
        return [*pin, binary, *self.benchmark_flags(graph, threads)]


class Adb:
    """Runs ``adb [-s SERIAL] ...`` and returns its stdout."""

    def __init__(self, adb: str, serial: str | None = None, timeout_s: float = 900.0):
        self.base = [adb] + (["-s", serial] if serial else [])
        self.timeout_s = timeout_s

    def __call__(self, *args: str, check: bool = True) -> str:
        command = self.base + list(args)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AndroidError(f"{shlex.join(command)}: {exc}") from exc
        if check and proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
            raise AndroidError(f"{shlex.join(command)} exited {proc.returncode}: {tail[0][:300]}")
        return proc.stdout + proc.stderr

    def shell(self, command: str, check: bool = True) -> str:
        return self("shell", command, check=check)


def phone_fingerprint(adb: Adb, device_name: str | None = None) -> dict:
    """The record's device fields, read with ``getprop``, ``/proc/meminfo`` and ``uname``."""
    props = parse_getprop(adb.shell("getprop"))
    meminfo = adb.shell("cat /proc/meminfo", check=False)
    ram = re.search(r"MemTotal:\s*(\d+)\s*kB", meminfo)
    cores = adb.shell("cat /sys/devices/system/cpu/possible", check=False).strip()
    span = re.fullmatch(r"(\d+)-(\d+)", cores)
    governor = adb.shell("cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", check=False).strip()
    model = props.get("ro.product.model")
    soc = " ".join(v for v in (props.get("ro.soc.manufacturer"), props.get("ro.soc.model")) if v)
    release, sdk = props.get("ro.build.version.release"), props.get("ro.build.version.sdk")
    return {
        "device_name": device_name or model, "hostname": props.get("ro.product.device") or props.get("ro.serialno"),
        "cpu_model": soc or props.get("ro.board.platform") or props.get("ro.hardware"),
        "arch": props.get("ro.product.cpu.abi"), "cores": int(span.group(2)) + 1 if span else None,
        "ram_bytes": int(ram.group(1)) * 1024 if ram else None,
        "os": f"Android {release} (SDK {sdk})" if release else None,
        "kernel": adb.shell("uname -r", check=False).strip() or None, "python": None,
        "governor": governor if re.fullmatch(r"[\w-]+", governor or "") else None,
        "cpu_freq_mhz": None, "temp_c_before": None, "temp_c_after": None, "throttled": None,
        "phone_manufacturer": props.get("ro.product.manufacturer"),
    }


def run_android(config: AndroidConfig, artifacts: list[dict], progress=None):
    """Benchmark each ``.tflite`` artifact x threads on the phone; yields one record each.

    Args:
        config: the run.
        artifacts: records of the exports manifest.
        progress: called with one human-readable line per job.

    Yields:
        Flat records with the keys of ``bench run`` (and ``error`` for a failed job).

    Raises:
        AndroidError: the phone cannot be reached or the benchmark binary not installed.
    """
    say = progress or (lambda _line: None)
    adb = Adb(config.adb, config.serial, config.timeout_s)
    device = phone_fingerprint(adb, config.device_name)
    adb.shell(f"mkdir -p {REMOTE_DIR}")
    binary = config.benchmark_binary
    if Path(binary).is_file():
        remote_binary = f"{REMOTE_DIR}/benchmark_model"
        adb("push", str(binary), remote_binary)
        adb.shell(f"chmod +x {remote_binary}")
    else:
        remote_binary = binary
    selected = [a for a in artifacts if not config.select
                or fnmatch.fnmatch(str(a.get("artifact_id")), config.select)
                or fnmatch.fnmatch(Path(str(a.get("file", ""))).name, config.select)]
    jobs = []
    for artifact in selected:
        if artifact.get("error"):
            say(f"skipped {artifact.get('artifact_id')}: export failed ({artifact['error']})")
        elif str(artifact.get("format", "")).lower() != "tflite":
            say(f"skipped {artifact.get('artifact_id')}: benchmark_model runs .tflite only")
        else:
            jobs.extend((artifact, threads) for threads in config.threads)
    pushed: dict[tuple, str | Exception] = {}
    try:
        for number, (artifact, threads) in enumerate(jobs, start=1):
            record = {**device, **_artifact_fields(artifact, config, threads)}
            local = Path(config.models) / str(artifact.get("file", ""))
            try:
                key = (str(local), artifact.get("sha256"))  # same file, other manifest hash: check again
                if key not in pushed:
                    pushed[key] = _push(adb, local, artifact)
                if isinstance(pushed[key], Exception):
                    raise pushed[key]
                record["model_sha256"] = artifact.get("sha256")
                record["size_bytes"] = local.stat().st_size
                command = config.command(remote_binary, pushed[key], threads)
                record["benchmark_command"] = shlex.join(command)
                output = adb.shell(shlex.join(command), check=False)
                record.update(parse_benchmark_output(output))
            except (AndroidError, OSError, ValueError) as exc:
                record["error"] = str(exc)
            record["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            what = f"[{number}/{len(jobs)}] {artifact.get('artifact_id')} {config.delegate} threads={threads}"
            say(f"{what}: ERROR {record['error']}" if "error" in record
                else f"{what}: mean {record['latency_ms_mean']:.3f} ms")
            yield record
    finally:
        adb.shell(f"rm -rf {REMOTE_DIR}", check=False)


def _push(adb: Adb, local: Path, artifact: dict) -> str | Exception:
    """Verify the file against the manifest and push it; the remote path or the error."""
    if not local.is_file():
        return AndroidError(f"{local}: model file missing")
    if artifact.get("sha256") and sha256_file(local) != artifact["sha256"]:
        return AndroidError(f"{local.name}: sha256 does not match the manifest")
    remote = f"{REMOTE_DIR}/{local.name}"
    try:
        adb("push", str(local), remote)
    except AndroidError as exc:
        return exc
    return remote


def _artifact_fields(artifact: dict, config: AndroidConfig, threads: int) -> dict:
    return {"runtime": "litert", "runtime_package": "benchmark_model", "runtime_version": None,
            "delegate": config.delegate, "threads": threads, "mode": "kernel",
            "artifact_id": artifact.get("artifact_id"), "backbone": artifact.get("backbone"),
            "level": artifact.get("level"), "seed": artifact.get("seed"), "variant": artifact.get("variant"),
            "format": artifact.get("format"), "model_file": artifact.get("file"), "strict": False,
            "strict_valid": False, "notes": ["phone: timings from benchmark_model; accuracy not measured"]}
