"""The list of sky objects a fetch downloads: read, validated, sampled and saved.

Objects come from a user catalogue (CSV with ``ra,dec,class``, or the SDSS17 Kaggle table's
``alpha,delta,class``) or from a SkyServer SQL answer (``#Table1`` then CSV). Either way each
row is checked (numeric coordinates in range, a known class) and every problem is reported
as one line naming ``file:line`` and what was expected.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from device.calibration import SURVEY_MIX
from device.csvtext import CsvError, rows as csv_rows
from device.dataset import LABELS, DatasetError, normalize_label

OBJECT_COLUMNS = ("objid", "class", "ra", "dec", "specobjid", "z")
# Tried in this order; the Kaggle table spells them obj_ID and spec_obj_ID.
ID_COLUMNS = ("objid", "obj_id", "specobjid", "spec_obj_id")
RA_COLUMNS = ("ra", "alpha")
DEC_COLUMNS = ("dec", "delta")
Z_COLUMNS = ("z", "redshift")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class SkyObject:
    """One object to fetch: its id (the file name), class and position in degrees."""

    objid: str
    label: str
    ra: float
    dec: float
    specobjid: str = ""
    z: str = ""

    @property
    def relpath(self) -> str:
        """Where its cutout lives inside the output folder (``CLASS/objid.jpg``)."""
        return f"{self.label}/{self.objid}.jpg"


# the study's class mix (GALAXY, QSO, STAR), the default of every data command (one definition, in device)
STUDY_MIX = SURVEY_MIX


def class_counts(n: int, mix) -> dict[str, int]:
    """Split ``n`` over GALAXY, QSO, STAR by ``mix`` with largest-remainder rounding.

    Args:
        n: total number of objects.
        mix: three non-negative weights in ``LABELS`` order (normalised to sum 1).

    Returns:
        ``{label: count}`` summing exactly to ``n``.

    Raises:
        ValueError: ``mix`` is not three non-negative weights with a positive sum.
    """
    weights = np.asarray(mix, dtype=np.float64)
    if weights.shape != (len(LABELS),) or np.any(weights < 0) or not np.isfinite(weights).all() \
            or weights.sum() <= 0:
        raise ValueError(f"mix {tuple(mix)}: expected {len(LABELS)} non-negative weights "
                         f"({', '.join(LABELS)}) with a positive sum")
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    # Ties in the remainders go to the earlier class so the result never depends on float noise order.
    order = sorted(range(len(LABELS)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return {label: int(c) for label, c in zip(LABELS, counts)}


def normalize_id(value: str) -> str | None:
    """A file-name-safe id for ``value``, or None when it has none.

    Integers written as floats (``1.237660961327743e+18`` in the Kaggle table) become their
    integer digits, so the same object gets the same file name whichever way it was written.
    """
    text = value.strip()
    if _NUMBER.fullmatch(text):
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite() and number == number.to_integral_value():
            text = str(int(number))
    return text if _SAFE_ID.fullmatch(text) else None


def position_id(ra: float, dec: float) -> str:
    """A stable id from a position (micro-degree precision, about 4 milliarcseconds)."""
    return f"ra{ra:.6f}_dec{dec:+.6f}"


def _table(text: str, name: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header (lower-case) and ``(line, row)`` pairs of a CSV that may start with ``#`` lines."""
    lines = text.splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and (lines[skipped].startswith("#") or not lines[skipped].strip()):
        skipped += 1
    try:
        records = list(csv_rows("".join(lines[skipped:]), name, first_line=skipped + 1))
    except CsvError as exc:
        raise DatasetError(str(exc)) from None
    if not records:
        raise DatasetError(f"{name}: no header line; expected a CSV with columns ra,dec,class")
    columns = [c.strip().lower() for c in records[0][1]]
    rows = [(line, dict(zip(columns, values))) for line, values in records[1:] if any(v.strip() for v in values)]
    return columns, rows


def _pick(columns: list[str], choices: tuple[str, ...]) -> str | None:
    return next((c for c in choices if c in columns), None)


def _coordinate(row: dict, column: str, where: str, low: float, high: float, closed: bool) -> float:
    value = (row.get(column) or "").strip()
    expected = f"degrees in [{low:g}, {high:g}{']' if closed else ')'}"
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {column} {value!r} is not a number; expected {expected}") from None
    inside = low <= number <= high if closed else low <= number < high
    if not math.isfinite(number) or not inside:
        raise DatasetError(f"{where}: {column} {value!r} is out of range; expected {expected}")
    return number


def _parse(text: str, name: str) -> tuple[list[str], list[tuple[int, dict, SkyObject]]]:
    """Validate every row; objects get a position id, replaced by the caller's id choice."""
    columns, rows = _table(text, name)
    ra_col, dec_col = _pick(columns, RA_COLUMNS), _pick(columns, DEC_COLUMNS)
    missing = [want for want, got in (("ra (or alpha)", ra_col), ("dec (or delta)", dec_col),
                                      ("class", "class" if "class" in columns else None)) if got is None]
    if missing:
        raise DatasetError(f"{name}:1: missing column(s) {', '.join(missing)}; expected ra,dec,class "
                           f"or alpha,delta,class (optional objid), got {','.join(columns)}")
    spec_col, z_col = _pick(columns, ("specobjid", "spec_obj_id")), _pick(columns, Z_COLUMNS)
    parsed = []
    for line, row in rows:
        where = f"{name}:{line}"
        ra = _coordinate(row, ra_col, where, 0.0, 360.0, closed=False)
        dec = _coordinate(row, dec_col, where, -90.0, 90.0, closed=True)
        label = normalize_label(row.get("class") or "", where)
        spec = (normalize_id(row.get(spec_col) or "") or "") if spec_col else ""
        z = (row.get(z_col) or "").strip() if z_col else ""
        parsed.append((line, row, SkyObject(position_id(ra, dec), label, ra, dec, spec, z)))
    return columns, parsed


def parse_catalog(text: str, name: str) -> list[SkyObject]:
    """Objects of a catalogue's text (see ``read_catalog``); ``name`` is used in messages."""
    columns, parsed = _parse(text, name)
    for column in (c for c in ID_COLUMNS if c in columns):
        ids = [normalize_id(row.get(column) or "") for _, row, _ in parsed]
        if all(ids) and len(set(ids)) == len(ids):
            return [SkyObject(i, o.label, o.ra, o.dec, o.specobjid, o.z) for i, (_, _, o) in zip(ids, parsed)]
    first_line: dict[str, int] = {}
    for line, _, obj in parsed:
        if obj.objid in first_line:
            raise DatasetError(f"{name}:{line}: same position as line {first_line[obj.objid]} "
                               f"(ra {obj.ra!r}, dec {obj.dec!r}); expected each object once")
        first_line[obj.objid] = line
    return [obj for _, _, obj in parsed]


def read_catalog(path: str | os.PathLike) -> list[SkyObject]:
    """Read a user catalogue CSV.

    Columns ``ra,dec,class`` or ``alpha,delta,class`` (any case; other columns ignored;
    leading ``#`` lines skipped). The id is the first of ``objid``, ``obj_id``,
    ``specobjid``, ``spec_obj_id`` whose values are all present, file-name safe and unique
    (the Kaggle table's float-formatted ``obj_ID`` can collide); otherwise one derived from
    the position.

    Args:
        path: the CSV file.

    Returns:
        The objects in file order.

    Raises:
        DatasetError: unreadable file, missing columns, non-numeric or out-of-range
            coordinates, a class other than GALAXY/QSO/STAR, or two rows at one position;
            the message names ``file:line`` and what was expected.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read catalogue ({exc.strerror or exc})") from exc
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 CSV file; expected columns ra,dec,class") from None
    return parse_catalog(text, str(path))


def parse_sql_answer(text: str, name: str) -> tuple[list[SkyObject], int]:
    """Objects of a SkyServer SqlSearch CSV answer (``#Table1``, header, rows).

    Args:
        text: the answer.
        name: where it came from, for messages (the URL).

    Returns:
        ``(objects, duplicates)``: objects keyed by photometric ``objid``, keeping the first
        of several spectra of one object, and how many such repeats were dropped.

    Raises:
        DatasetError: no ``objid`` column, or a bad row.
    """
    columns, parsed = _parse(text, name)
    if "objid" not in columns:
        raise DatasetError(f"{name}: no objid column in the answer; got {','.join(columns)}")
    objects, seen = [], set()
    for line, row, obj in parsed:
        objid = normalize_id(row.get("objid") or "")
        if objid is None:
            raise DatasetError(f"{name}:{line}: objid {row.get('objid')!r} is not an integer id")
        if objid in seen:
            continue
        seen.add(objid)
        objects.append(SkyObject(objid, obj.label, obj.ra, obj.dec, obj.specobjid, obj.z))
    return objects, len(parsed) - len(objects)


def sample(objects: list[SkyObject], n: int, mix, seed: int, name: str) -> list[SkyObject]:
    """A deterministic stratified sample: ``class_counts(n, mix)`` objects per class.

    Args:
        objects: the candidates, in a fixed order (file order).
        n: how many to take in all.
        mix: class weights in ``LABELS`` order.
        seed: seed of the choice; the same seed and input give the same sample.
        name: the source, for messages.

    Returns:
        The chosen objects, grouped by class, each group in input order.

    Raises:
        DatasetError: a class has fewer objects than its share.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for label, k in class_counts(n, mix).items():
        group = [o for o in objects if o.label == label]
        if len(group) < k:
            raise DatasetError(f"{name}: {len(group)} {label} rows but {k} needed for n={n} with mix "
                               f"{','.join(f'{m:g}' for m in mix)}; lower n or change the mix")
        chosen.extend(group[i] for i in sorted(rng.choice(len(group), size=k, replace=False)))
    return chosen


def format_objects(objects: list[SkyObject]) -> str:
    """CSV text of ``objects`` (columns ``OBJECT_COLUMNS``), readable by ``read_catalog``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(OBJECT_COLUMNS)
    for o in objects:
        writer.writerow([o.objid, o.label, repr(o.ra), repr(o.dec), o.specobjid, o.z])
    return buf.getvalue()


def sql_for_class(label: str, k: int) -> str:
    """The SkyServer SQL selecting ``k`` clean spectra of class ``label`` with their photo objid."""
    if label not in LABELS:
        raise ValueError(f"unknown class {label!r}; expected one of {', '.join(LABELS)}")
    return (f"SELECT TOP {int(k)} s.specobjid, s.class, s.z, s.ra, s.dec, p.objid "
            f"FROM SpecObj s JOIN PhotoObj p ON s.bestobjid = p.objid "
            f"WHERE s.class = '{label}' AND s.zWarning = 0")
