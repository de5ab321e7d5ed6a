"""Datasets: a folder with ``manifest.csv`` plus images, the one format every stage reads.

``manifest.csv`` has the columns ``path,label,split`` and optionally ``objid,ra,dec,source``.
``path`` is relative to the manifest's folder (or absolute). Labels are the SDSS
spectroscopic classes; sorted alphabetically they give the class indices GALAXY=0, QSO=1,
STAR=2. ``split`` is ``train``, ``val`` or ``test``, written once by ``stratified_split`` so
training, export calibration and the device all see the same split.

Two other layouts can be indexed into a manifest: a class-folder tree (``GALAXY/*.jpg``,
``QSO/*.jpg``, ``STAR/*.jpg``) and the ``labels.csv`` layout of the shared SDSS DR16 set
(``path,label,subset,objid,...``).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from device.atomic import write_text
from device.csvtext import CsvError, dict_rows
from device.images import ImageError, load_image

LABELS = ("GALAXY", "QSO", "STAR")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
COLUMNS = ("path", "label", "split", "objid", "ra", "dec", "source")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# 600 real SDSS DR16 cutouts shipped with the package (provenance in its README.md)
SAMPLE_DIR = Path(__file__).resolve().parent / "sdss-sample"
# The default split: 70% trains (the study's share), 15% chooses (epochs, levels,
# calibration), 15% is the test split that no choice reads.
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file and the problem."""


@dataclass(frozen=True)
class Record:
    """One labelled image of a manifest."""

    path: str
    label: str
    split: str = ""
    objid: str = ""
    ra: str = ""
    dec: str = ""
    source: str = ""

    @property
    def label_index(self) -> int:
        return LABELS.index(self.label)


def normalize_label(value: str, where: str) -> str:
    """Return the canonical upper-case label, or raise naming ``where`` and the valid ones."""
    label = value.strip().upper()
    if label not in LABELS:
        raise DatasetError(f"{where}: unknown label {value!r}; expected one of {', '.join(LABELS)}")
    return label


class Arrays(NamedTuple):
    """One split decoded: what ``Dataset.load_arrays`` returns."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,), indices into LABELS
    records: list  # the Record of each image, in order
    skipped: list  # (path, reason) of each image that could not be decoded


@dataclass
class Dataset:
    """Records of one dataset folder, with paths resolved against ``root``."""

    root: Path
    records: list[Record]
    origin: str = MANIFEST
    notes: list[str] = field(default_factory=list)

    def resolve(self, record: Record) -> Path:
        path = Path(record.path)
        return path if path.is_absolute() else self.root / path

    def split(self, name: str) -> list[Record]:
        """Records of one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: count}} including empty cells, split '' for unassigned records."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            out.setdefault(r.split, {label: 0 for label in LABELS})[r.label] += 1
        return out

    def load_arrays(self, split: str, size: int | tuple[int, int], on_skip=None) -> "Arrays":
        """Decode and resize the images of a split.

        Args:
            split: ``train``, ``val`` or ``test``.
            size: square side in pixels, or ``(height, width)``.
            on_skip: optional callable ``(path, reason)`` for each unreadable image.

        Returns:
            ``Arrays(images uint8 (N, H, W, 3), labels int64 (N,), records, skipped)``, where
            ``skipped`` lists ``(path, reason)`` of images that could not be decoded.
        """
        height, width = (size, size) if isinstance(size, int) else size
        records = self.split(split)
        images = np.empty((len(records), height, width, 3), dtype=np.uint8)
        kept, skipped = [], []
        for record in records:
            path = self.resolve(record)
            try:
                images[len(kept)] = load_image(path, size)
            except ImageError as exc:
                skipped.append((str(path), str(exc)))
                if on_skip is not None:
                    on_skip(str(path), str(exc))
                continue
            kept.append(record)
        labels = np.array([r.label_index for r in kept], dtype=np.int64)
        return Arrays(images[: len(kept)], labels, kept, skipped)

    def load_splits(self, size: int, names: tuple[str, ...] = SPLITS):
        """``load_arrays`` of each split in ``names``.

        Returns:
            ``({name: (images, labels, records)}, skipped)``, ``skipped`` gathered over all.
        """
        loaded, skipped_all = {}, []
        for name in names:
            images, labels, records, skipped = self.load_arrays(name, size)
            loaded[name] = (images, labels, records)
            skipped_all += skipped
        return loaded, skipped_all


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 CSV file") from exc
    try:
        return dict_rows(text, str(path))
    except CsvError as exc:
        raise DatasetError(str(exc)) from None


def read_manifest(root: str | os.PathLike, check_files: bool = True) -> Dataset:
    """Read ``root/manifest.csv``.

    Raises:
        DatasetError: no manifest, missing columns, an unknown label or split, or (with
            ``check_files``) a row naming a file that does not exist.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{root}: no {MANIFEST}; expected a dataset folder (run `python -m train.data index {root}`)")
    columns, rows = _read_csv(path)
    missing = [c for c in ("path", "label", "split") if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; expected at least path,label,split")
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        split = (row.get("split") or "").strip()
        if split and split not in SPLITS:
            raise DatasetError(f"{where}: unknown split {split!r}; expected one of {', '.join(SPLITS)} or empty")
        record = Record(
            path=(row.get("path") or "").strip(),
            label=normalize_label(row.get("label") or "", where),
            split=split,
            **{c: (row.get(c) or "").strip() for c in ("objid", "ra", "dec", "source")},
        )
        if not record.path:
            raise DatasetError(f"{where}: empty path")
        records.append(record)
    records, notes = drop_leaks(records, where=str(path))
    dataset = Dataset(root=root, records=records, notes=notes)
    if check_files:
        for line, record in enumerate(records, start=2):
            if not dataset.resolve(record).is_file():
                raise DatasetError(f"{path}:{line}: names missing file {record.path}")
    return dataset


# when one image is listed twice, the copy in the most protected split stays
_PROTECTION = {"test": 3, "val": 2, "train": 1, "": 0}


def drop_leaks(records: list[Record], where: str = "manifest") -> tuple[list[Record], list[str]]:
    """Records with no image listed twice, and a note for each kind of repeat dropped.

    An image listed twice (the same path, or the same ``objid`` from a catalogue) would leak
    between splits: trained on and then scored. The copy in the most protected split stays
    (test, then val, then train); the others are dropped. Class-folder records, whose
    ``objid`` is only the file name, are matched by path alone.
    """
    best: dict[tuple[str, str], Record] = {}
    for record in records:
        keys = [("path", os.path.normpath(record.path))]
        if record.objid and record.source != "folder":
            keys.append(("objid", record.objid))
        for key in keys:
            held = best.get(key)
            if held is None or _PROTECTION[record.split] > _PROTECTION[held.split]:
                best[key] = record
    kept, dropped = [], {"path": [], "objid": []}
    for record in records:
        keys = [("path", os.path.normpath(record.path))]
        if record.objid and record.source != "folder":
            keys.append(("objid", record.objid))
        loser = next((kind for kind, value in keys if best[(kind, value)] is not record), None)
        if loser is None:
            kept.append(record)
        else:
            dropped[loser].append(record)
    notes = []
    for kind, records_dropped in dropped.items():
        if records_dropped:
            splits = sorted({r.split or "(none)" for r in records_dropped})
            examples = ", ".join(r.path for r in records_dropped[:3])
            notes.append(f"{where}: {len(records_dropped)} row(s) repeat an image already listed "
                         f"(same {kind}); dropped the copies in {'/'.join(splits)}, kept the one in the most "
                         f"protected split (test > val > train), e.g. {examples}")
    return kept, notes


def write_manifest(root: str | os.PathLike, records: list[Record]) -> Path:
    """Write ``root/manifest.csv`` atomically (sorted by path) and return its path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in sorted(records, key=lambda r: r.path):
        writer.writerow([getattr(r, c) for c in COLUMNS])
    path = Path(root) / MANIFEST
    write_text(path, buf.getvalue())
    return path


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def index_tree(source: str | os.PathLike, base: str | os.PathLike | None = None,
               subset: str = "dev") -> tuple[list[Record], str]:
    """Build records for an image tree that has no manifest.

    Args:
        source: a folder with ``labels.csv`` (the shared SDSS layout) or class folders.
        base: folder the record paths are written relative to (default ``source``).
        subset: for ``labels.csv``, which ``subset`` to take (``dev``; ``all`` for every row).

    Returns:
        ``(records, layout)`` with ``layout`` ``"labels.csv"`` or ``"class-folders"``;
        records have no split yet.

    Raises:
        DatasetError: no recognised layout, an empty or unknown class folder, bad rows.
    """
    source = Path(source)
    base = Path(base) if base is not None else source
    if not source.is_dir():
        raise DatasetError(f"{source}: not a folder; expected a dataset folder of images")
    labels_csv = source / "labels.csv"
    if labels_csv.is_file():
        columns, rows = _read_csv(labels_csv)
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DatasetError(f"{labels_csv}: missing column(s) {', '.join(missing)}; expected path,label[,subset,objid]")
        records = []
        for line, row in enumerate(rows, start=2):
            if subset != "all" and "subset" in columns and row.get("subset", "").strip() != subset:
                continue
            where = f"{labels_csv}:{line}"
            records.append(Record(
                path=_rel(source / row["path"].strip(), base),
                label=normalize_label(row.get("label") or "", where),
                objid=(row.get("objid") or "").strip(),
                ra=(row.get("ra") or "").strip(),
                dec=(row.get("dec") or "").strip(),
                source=f"labels.csv:{row.get('subset', '').strip()}".rstrip(":"),
            ))
        if not records:
            raise DatasetError(f"{labels_csv}: no rows with subset {subset!r}")
        return records, "labels.csv"
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{source}: no manifest.csv, labels.csv or class folders; expected GALAXY/, QSO/, STAR/ with images")
    records = []
    for folder in folders:
        label = normalize_label(folder.name, f"{source}: class folder {folder.name}/")
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DatasetError(f"{folder}: empty class folder; expected .jpg/.jpeg/.png images")
        records.extend(Record(path=_rel(p, base), label=label, objid=p.stem, source="folder") for p in images)
    return records, "class-folders"


def stratified_split(records: list[Record], seed: int = 0, val: float = VAL_FRACTION,
                     test: float = TEST_FRACTION) -> list[Record]:
    """Assign ``split`` per class: ``val`` and ``test`` fractions, the rest ``train``.

    Deterministic for a seed and a set of paths (records are ordered by path first), and
    each class keeps its share in every split (rounded to the nearest image).
    """
    if not (0.0 <= val <= 1.0 and 0.0 <= test <= 1.0 and val + test <= 1.0):
        raise DatasetError(f"split fractions val={val} test={test}: expected 0 <= val, test and val + test <= 1 "
                           f"(--test 1 makes an evaluation-only set, such as a holdout)")
    rng = np.random.default_rng(seed)
    out = []
    for label in LABELS:
        group = sorted((r for r in records if r.label == label), key=lambda r: r.path)
        order = rng.permutation(len(group))
        n_val = int(round(len(group) * val))
        n_test = int(round(len(group) * test))
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            out.append(replace(group[i], split=split))
    return sorted(out, key=lambda r: r.path)


def open_dataset(root: str | os.PathLike, seed: int = 0, val: float = VAL_FRACTION,
                 test: float = TEST_FRACTION) -> Dataset:
    """Open a dataset folder for reading.

    A folder with ``manifest.csv`` is read as it is. A read-only image tree without one
    (such as the shared SDSS set) is indexed in memory with the default stratified split
    (``seed``, ``val``, ``test``), the same every time, and a note says so.
    """
    root = Path(root)
    if (root / MANIFEST).is_file():
        return read_manifest(root)
    records, layout = index_tree(root)
    split_records, notes = drop_leaks(stratified_split(records, seed=seed, val=val, test=test), where=str(root))
    dataset = Dataset(root=root, records=split_records, origin=layout, notes=notes)
    dataset.notes.insert(0, f"{root}: no {MANIFEST}; indexed {len(records)} images from {layout} with a "
                         f"stratified split (seed {seed}, val {val:g}, test {test:g})")
    return dataset


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """The study's class weights, ``N / (C * N_c)``, for the classes present in ``labels``."""
    counts = np.bincount(labels, minlength=len(LABELS))
    present = [c for c in range(len(LABELS)) if counts[c] > 0]
    n = float(counts.sum())
    return {c: n / (len(present) * counts[c]) for c in present}
