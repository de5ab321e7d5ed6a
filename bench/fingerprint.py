"""Who ran a benchmark: device fingerprint, CPU governor and frequency, temperature,
Raspberry Pi throttling flags, and the cool-down wait between jobs.

Everything is read from ``/proc``, ``/sys`` and ``vcgencmd`` where they exist; a value that
cannot be read is ``None`` rather than a guess.
"""
from __future__ import annotations

import glob
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

# bits of `vcgencmd get_throttled` (Raspberry Pi firmware documentation)
THROTTLE_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_model() -> str | None:
    """The CPU (or board) model from ``/proc/cpuinfo``, else what ``platform`` knows, else None."""
    text = _read("/proc/cpuinfo") or ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    # Raspberry Pi kernels put the board in "Model"; x86 has "model name"; older ARM "Hardware"
    for key in ("model", "model name", "hardware", "processor"):
        value = fields.get(key)
        if value and not value.isdigit():
            return value
    return platform.processor() or None


def _ram_bytes() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _os_name() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def static_fingerprint(device_name: str | None = None) -> dict:
    """Fields that do not change during a run.

    Args:
        device_name: a name for the device (default: the host name).

    Returns:
        ``device_name``, ``hostname``, ``cpu_model``, ``arch``, ``cores``, ``ram_bytes``,
        ``os``, ``kernel``, ``python``.
    """
    hostname = socket.gethostname()
    return {"device_name": device_name or hostname, "hostname": hostname, "cpu_model": cpu_model(),
            "arch": platform.machine(), "cores": os.cpu_count(), "ram_bytes": _ram_bytes(),
            "os": _os_name(), "kernel": platform.release(), "python": platform.python_version()}


def governor() -> str | None:
    """CPU frequency governor of cpu0 (``performance``, ``ondemand``...), or ``None``."""
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def cpu_freq_mhz() -> float | None:
    """Current frequency of cpu0 in MHz, or ``None``."""
    value = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    return int(value) / 1000.0 if value and value.isdigit() else None


def temperature_c() -> float | None:
    """Highest temperature over ``/sys/class/thermal/thermal_zone*/temp`` in C, or ``None``."""
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        value = _read(path)
        if value and value.lstrip("-").isdigit():
            temps.append(int(value) / 1000.0)
    return max(temps) if temps else None


def throttled() -> str | None:
    """``vcgencmd get_throttled`` as reported (``"0x0"``), or ``None`` without vcgencmd."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    _, _, value = out.strip().partition("=")
    return value or None


def describe_throttled(value: str | None) -> list[str]:
    """Names of the flags set in a ``get_throttled`` value (empty for ``0x0`` or ``None``)."""
    if not value:
        return []
    try:
        bits = int(value, 16)
    except ValueError:
        return [f"unreadable throttled value {value!r}"]
    return [name for bit, name in THROTTLE_BITS.items() if bits & (1 << bit)]


def dynamic_state() -> dict:
    """``governor``, ``cpu_freq_mhz`` and ``throttled`` now."""
    return {"governor": governor(), "cpu_freq_mhz": cpu_freq_mhz(), "throttled": throttled()}


def cooldown(max_temp_c: float | None = None, seconds: float | None = None, timeout_s: float = 600.0,
             poll_s: float = 2.0, sleep=time.sleep, read_temp=temperature_c) -> str | None:
    """Wait before a job: until the device is below ``max_temp_c``, or a fixed ``seconds``.

    Args:
        max_temp_c: wait until the hottest thermal zone reads below this (C).
        seconds: sleep this long instead (used when ``max_temp_c`` is ``None``).
        timeout_s: give up waiting for the temperature after this long.
        poll_s: interval between temperature reads.
        sleep, read_temp: injectable for tests.

    Returns:
        A note for the record (what was waited, a timeout, no sensor), or ``None`` when
        nothing was asked.
    """
    if max_temp_c is None:
        if seconds:
            sleep(seconds)
            return f"cooldown: slept {seconds:g} s"
        return None
    temp = read_temp()
    if temp is None:
        return "cooldown: no thermal sensor readable; did not wait"
    waited = 0.0
    while temp >= max_temp_c:
        if waited >= timeout_s:
            return f"cooldown: timed out after {waited:.0f} s at {temp:.1f} C (target < {max_temp_c:g} C)"
        sleep(poll_s)
        waited += poll_s
        temp = read_temp() or temp
    return f"cooldown: waited {waited:.0f} s to {temp:.1f} C (target < {max_temp_c:g} C)" if waited else None
