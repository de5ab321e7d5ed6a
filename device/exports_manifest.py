"""``EXPORTS/manifest.json``: one flat record per exported artifact. The one owner of the
format: both exporters write it, ``bench`` (run, bundle, report) reads it; TensorFlow-free.

``{"format_version": 1, "artifacts": [record, ...]}``, records merged by ``artifact_id``.
``python -m export.tflite`` and ``python -m export.onnx`` may run at the same time on one
``EXPORTS`` folder: every read-modify-write holds an exclusive lock (``device.atomic.locked``
on the manifest) and the file is replaced atomically, so neither loses the other's records. Each artifact also gets a JSON sidecar (``<file>.json``) with its record.

An artifact is skipped on a rerun when its record has no error, its file still has the
recorded sha256, and its ``source_key`` (checkpoint hash plus the export settings) is
unchanged.

``macs``: the multiply-accumulates of one call (one image), counted from the artifact's own
graph by ``device.macs`` when it is exported (``None`` with ``macs_error`` when they cannot be
counted); ``bench run`` divides it by the p50 latency. A record made before the field existed
is counted from its file where it is read (``artifact_macs``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from device.atomic import locked, write_json
from device.checksum import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# ``int8_worst_layers[].relative_rmse`` of a tensor whose float values do not vary while its
# int8 ones are off (a finite stand-in for infinity, so the manifest stays strict JSON)
NO_SPREAD = 1e6


def source_key(checkpoint_sha256: str, settings: dict) -> str:
    """A short hash of what an artifact is made from: checkpoint plus export settings."""
    text = json.dumps({"checkpoint": checkpoint_sha256, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read(exports: str | os.PathLike) -> dict[str, dict]:
    """The manifest's records by ``artifact_id`` (empty when there is no manifest yet).

    Raises:
        ValueError: the manifest exists but is not a format-1 manifest (names the file).
    """
    path = Path(exports) / MANIFEST
    if not path.is_file():
        return {}
    return {r["artifact_id"]: r for r in read_artifacts(exports) if "artifact_id" in r}


def read_artifacts(exports: str | os.PathLike) -> list[dict]:
    """The artifact records of an existing manifest, in file order.

    Raises:
        FileNotFoundError: no manifest in ``exports`` (names the file).
        ValueError: not JSON, another ``format_version``, or no ``artifacts`` list (names
            the file and what was expected).
    """
    path = Path(exports) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; expected the manifest written by the export step") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc}); move it away to start a new manifest") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}; this SkyEdge reads "
                         f"manifests of format {FORMAT_VERSION} only (export again with this version)")
    artifacts = data.get("artifacts")
    if not isinstance(artifacts, list) or not all(isinstance(a, dict) for a in artifacts):
        raise ValueError(f"{path}: expected an 'artifacts' list of records")
    return artifacts


def write(exports: str | os.PathLike, artifacts: list[dict], **fields) -> Path:
    """Write a whole manifest (atomically): ``artifacts`` plus any top-level ``fields``."""
    path = Path(exports) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format_version": FORMAT_VERSION, **fields, "artifacts": list(artifacts)})
    return path


def merge(exports: str | os.PathLike, records: list[dict]) -> Path:
    """Merge ``records`` into the manifest by ``artifact_id`` under the lock; atomic write.

    Returns:
        The manifest path.
    """
    path = Path(exports) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        current = read(exports)
        for record in records:
            current[record["artifact_id"]] = record
        ordered = sorted(current.values(), key=lambda r: (r.get("backbone", ""), r.get("level", 0),
                                                          r.get("seed", 0), r.get("format", ""),
                                                          r.get("variant", "")))
        write(exports, ordered)
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


def macs_fields(path: str | os.PathLike) -> dict:
    """``{"macs": N}`` for an artifact file, or ``{"macs": None, "macs_error": why}``."""
    from device.macs import MacCountError, count_macs

    try:
        return {"macs": count_macs(path)}
    except (MacCountError, OSError) as exc:
        return {"macs": None, "macs_error": str(exc)}


def artifact_macs(exports: str | os.PathLike, record: dict) -> tuple[int | None, str | None]:
    """``(macs, note)`` of a record: its ``macs``, else counted from its file (note when not possible)."""
    if isinstance(record.get("macs"), int):
        return record["macs"], None
    if not record.get("file"):
        return None, None
    counted = macs_fields(Path(exports) / record["file"])
    if counted["macs"] is None:
        return None, f"MACs unknown, so no GMAC/s: {counted['macs_error']}"
    return counted["macs"], None


def rescue_summary(fields: dict | None) -> str:
    """One phrase for the report and the log: what an artifact's int8 rescue (its record's
    ``int8_rescue``, written by ``export.int8_rescue``) did and what it cost."""
    if not fields:
        return ""
    if fields.get("skipped"):
        return f"not tried ({fields['skipped']})"
    kept = fields.get("kept")
    plain = 100 * fields["plain"]["agreement"]
    if kept == "plain" or not isinstance(kept, dict):
        return f"tried {len(fields.get('attempts', []))}, none better than plain ({plain:.1f}%)"
    what = f"{kept['ranges']} ranges"
    if kept["float_layers"]:
        what += f" + {len(kept['float_layers'])} float layer(s) ({', '.join(kept['float_layers'][:3])}" + \
                (", ..." if len(kept["float_layers"]) > 3 else "") + ")"
    cost = ""
    if fields.get("latency_cost"):
        cost = f", latency x{fields['latency_cost']:.2f}, size {fields['size_cost_bytes'] / 1e3:+.0f} kB"
    return f"{what}: agreement {plain:.1f}% -> {100 * kept['agreement']:.1f}%{cost}" + \
        ("" if fields.get("reached") else " (threshold still missed)")
