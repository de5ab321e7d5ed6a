"""Prediction files: one CSV row per image, the format every stage writes and reads.

``val_predictions.csv`` and ``test_predictions.csv`` of a sweep run, and the floors'
``baseline_test_predictions.csv``, all have the columns ``path, label, label_index,
prob_GALAXY, prob_QSO, prob_STAR, pred_index``. ``path`` is the image's path as its
manifest names it, so files of different models join on it for paired tests.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np

from device.csvtext import CsvError, dict_rows
from device.atomic import write_text
from device.dataset import LABELS

COLUMNS = ("path", "label", "label_index", *(f"prob_{label}" for label in LABELS), "pred_index")


def images_sha256(paths) -> str:
    """SHA-256 of the sorted, newline-joined relative image paths: names an image set.

    ``bench run`` lines and floors files carry it with their per-image lists sorted by path,
    so two results on the same images pair up index by index.
    """
    return hashlib.sha256("\n".join(sorted(paths)).encode("utf-8")).hexdigest()


class PredictionsError(ValueError):
    """A predictions file that cannot be read; the message names the file."""


def write_predictions(path: str | Path, paths, labels: np.ndarray, probs: np.ndarray) -> Path:
    """Write one row per image atomically.

    Args:
        path: the CSV file to write.
        paths: each image's manifest path (strings, or records with a ``path`` attribute).
        labels: (N,) true class indices.
        probs: (N, C) class probabilities.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for item, label, p in zip(paths, labels, probs):
        name = getattr(item, "path", item)
        writer.writerow([name, LABELS[int(label)], int(label)] + [f"{v:.6g}" for v in p] + [int(np.argmax(p))])
    write_text(Path(path), buf.getvalue())
    return Path(path)


def _reader(path: Path) -> tuple[list[str], list[dict]]:
    """The header and rows of the whole predictions file, or ``PredictionsError`` naming it."""
    try:
        return dict_rows(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, CsvError) as exc:
        raise PredictionsError(f"{path}: cannot read predictions ({exc})") from None


def read_predictions(path: str | Path) -> dict[str, tuple[int, int]]:
    """``{image path: (label_index, pred_index)}`` of a predictions file.

    Raises:
        PredictionsError: missing file, missing columns or a row that is not integers.
    """
    path = Path(path)
    fieldnames, reader = _reader(path)
    missing = [c for c in ("path", "label_index", "pred_index") if c not in fieldnames]
    if missing:
        raise PredictionsError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
    out = {}
    for line, row in enumerate(reader, start=2):
        try:
            out[row["path"]] = (int(row["label_index"]), int(row["pred_index"]))
        except (TypeError, ValueError):
            raise PredictionsError(f"{path}:{line}: label_index and pred_index must be integers") from None
    return out


def read_probabilities(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, label indices (N,), probabilities (N, C))`` of a predictions file, in file order.

    Raises:
        PredictionsError: missing file, an empty file, missing columns or values that are not numbers.
    """
    path = Path(path)
    fieldnames, rows = _reader(path)
    columns = ["path", "label_index"] + [f"prob_{label}" for label in LABELS]
    if not rows or any(c not in fieldnames for c in columns):
        raise PredictionsError(f"{path}: expected a non-empty CSV with columns {','.join(columns)}")
    try:
        labels = np.array([int(r["label_index"]) for r in rows], dtype=np.int64)
        probs = np.array([[float(r[f"prob_{label}"]) for label in LABELS] for r in rows], np.float32)
    except (TypeError, ValueError):
        raise PredictionsError(f"{path}: label_index and the prob_ columns must be numbers") from None
    return [r["path"] for r in rows], labels, probs


def correct_by_path(path: str | Path) -> dict[str, bool]:
    """``{image path: prediction right}`` of a predictions file (see ``read_predictions``)."""
    return {p: label == pred for p, (label, pred) in read_predictions(path).items()}
