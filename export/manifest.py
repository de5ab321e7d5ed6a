"""``EXPORTS/manifest.json``: one flat record per exported artifact, shared by both exporters.

``{"format_version": 1, "artifacts": [record, ...]}``, records merged by ``artifact_id``.
``python -m export.tflite`` and ``python -m export.onnx`` may run at the same time on one
``EXPORTS`` folder: every read-modify-write holds an exclusive ``fcntl.flock`` on
``EXPORTS/.manifest.lock`` and the file is replaced atomically, so neither loses the
other's records. Each artifact also gets a JSON sidecar (``<file>.json``) with its record.

An artifact is skipped on a rerun when its record has no error, its file still has the
recorded sha256, and its ``source_key`` (checkpoint hash plus the export settings) is
unchanged.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from device.atomic import write_json
from device.checksum import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"


def source_key(checkpoint_sha256: str, settings: dict) -> str:
    """A short hash of what an artifact is made from: checkpoint plus export settings."""
    text = json.dumps({"checkpoint": checkpoint_sha256, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(exports: str | os.PathLike) -> Iterator[Path]:
    """Hold the exports folder's manifest lock (exclusive, blocking) for a read-modify-write."""
    exports = Path(exports)
    exports.mkdir(parents=True, exist_ok=True)
    with open(exports / LOCK, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield exports / MANIFEST
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read(exports: str | os.PathLike) -> dict[str, dict]:
    """The manifest's records by ``artifact_id`` (empty when there is no manifest yet).

    Raises:
        ValueError: the manifest exists but is not a format-1 manifest (names the file).
    """
    path = Path(exports) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); move it away to start a new manifest") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: expected format_version {FORMAT_VERSION}")
    return {r["artifact_id"]: r for r in data.get("artifacts", []) if "artifact_id" in r}


def merge(exports: str | os.PathLike, records: list[dict]) -> Path:
    """Merge ``records`` into the manifest by ``artifact_id`` under the lock; atomic write.

    Returns:
        The manifest path.
    """
    with locked(exports) as path:
        current = read(exports)
        for record in records:
            current[record["artifact_id"]] = record
        ordered = sorted(current.values(), key=lambda r: (r.get("backbone", ""), r.get("level", 0),
                                                          r.get("seed", 0), r.get("format", ""),
                                                          r.get("variant", "")))
        write_json(path, {"format_version": FORMAT_VERSION, "artifacts": ordered})
    return path


def write_sidecar(exports: str | os.PathLike, record: dict) -> Path | None:
    """Write ``<file>.json`` beside the artifact with its record (``None`` if no file)."""
    if not record.get("file"):
        return None
    path = Path(exports) / (record["file"] + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def is_current(exports: str | os.PathLike, record: dict | None, key: str) -> bool:
    """True when ``record`` is a finished artifact made from ``key`` whose file is intact."""
    if not record or "error" in record or record.get("source_key") != key or not record.get("file"):
        return False
    path = Path(exports) / record["file"]
    return path.is_file() and sha256_file(path) == record.get("sha256")
