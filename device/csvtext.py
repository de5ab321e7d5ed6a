"""Reading CSV text with one-line errors, TensorFlow-free.

Python's ``csv`` module refuses a field longer than ``csv.field_size_limit()`` (131,072
characters) and a NUL byte with a bare ``_csv.Error`` that names neither the file nor the
line. Every CSV SkyEdge reads (manifests, ``labels.csv``, catalogues, predictions,
``history.csv``) goes through here, so such a file is refused with one line naming the file,
the line and what was expected.
"""
from __future__ import annotations

import csv
import io
from typing import Iterator


class CsvError(ValueError):
    """A CSV file that cannot be parsed; the message names the file and the line."""


def _refusal(name: str, line: int, exc: csv.Error) -> CsvError:
    reason = str(exc)
    if "field larger than field limit" in reason:
        reason = f"a field longer than {csv.field_size_limit():,} characters"
    return CsvError(f"{name} line {line}: cannot parse ({reason}); expected a CSV file of short text fields")


def rows(text: str, name: str, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
    """``(line number, values)`` of each record of ``text``; ``name`` is the file in messages,
    ``first_line`` the file's line number of ``text``'s first line (when lines were skipped).

    Raises:
        CsvError: a record the csv module refuses (a huge field, a NUL byte).
    """
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _refusal(name, reader.line_num + first_line - 1, exc) from None
        yield reader.line_num + first_line - 1, values


def dict_rows(text: str, name: str) -> tuple[list[str], list[dict]]:
    """The header and the rows (as dicts, like ``csv.DictReader``) of ``text``.

    Raises:
        CsvError: a record the csv module refuses; the message names ``name`` and the line.
    """
    reader = csv.DictReader(io.StringIO(text))
    out = []
    while True:
        try:
            out.append(next(reader))
        except StopIteration:
            break
        except csv.Error as exc:
            raise _refusal(name, reader.reader.line_num, exc) from None
    return list(reader.fieldnames or []), out
