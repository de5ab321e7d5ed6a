"""Resident memory of the current process, from ``/proc/self/status`` (Linux).

``VmRSS`` is the resident set now and ``VmHWM`` its high-water mark since the process
started. Where ``/proc`` is missing (macOS), ``resource.getrusage`` gives the peak only, and
the current RSS is reported as that peak.
"""
from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _rusage_peak_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def rss_bytes() -> int | None:
    """Current resident set size in bytes (``None`` where it cannot be read)."""
    value = _status_kib("VmRSS")
    return value if value is not None else _rusage_peak_bytes()


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far, in bytes (``None`` if unknown)."""
    value = _status_kib("VmHWM")
    return value if value is not None else _rusage_peak_bytes()
