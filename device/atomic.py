"""Atomic file writes: a reader never sees a half-written file.

Every output of the toolkit (images, manifests, checkpoints' sidecars, JSON records) goes
through here, so a job killed at any moment leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; appends stay single writes, rewrites unlocked
    fcntl = None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    Args:
        path: final destination.
        mode: ``"w"`` or ``"wb"`` (text or binary).
        **kwargs: passed to ``open`` (e.g. ``encoding``, ``newline``).

    Yields:
        The open temporary file. If the block raises, the temporary file is removed and
        ``path`` is untouched.

    Raises:
        OSError: the folder cannot be written; the message names it.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(f"cannot write in {folder}: {exc.strerror or exc}") from exc
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise naming(exc, path) from exc
        raise


def naming(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` as an ``OSError`` of the same kind whose file is ``path`` (the destination, not a
    temporary file or no file at all), so the one error line names what the user asked for."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (keys kept in insertion order)."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def _stat_problem(path: Path) -> str | None:
    """Why ``path`` cannot be looked at (a symbolic-link loop, a link to nothing), or None."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "a symbolic link to nothing" if path.is_symlink() else None
    except OSError as exc:  # a file on the way (ENOTDIR) is said below, in words of its own
        return exc.strerror if exc.errno == errno.ELOOP else None
    return None


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be made or written.

    Nothing is created. Raises ``ValueError`` with one line naming the option and the path.
    """
    path = Path(path)
    for step in (path, *path.parents):
        problem = _stat_problem(step)
        if problem:
            where = "" if step == path else f" ({step})"
            raise ValueError(f"{option} {path}{where}: {problem}; expected a folder (new or existing)")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: is a file; expected a folder (new or existing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, so the folder cannot be made")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {parent} is not writable")
    return path


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (its hidden ``.NAME.lock`` beside it) for the block.

    Every append to and rewrite of a JSON-lines file takes it, so a rewrite (read, change,
    replace) never drops a line another process appended meanwhile.
    """
    path = Path(path)
    if fcntl is None:
        yield
        return
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(path: str | os.PathLike) -> int | None:
    """Take an exclusive lock on the file ``path`` without waiting.

    Returns:
        A file descriptor holding the lock (close it to release; a process that dies
        releases it too), or ``None`` when another process holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``path`` and flush it to disk (under ``locked(path)``).

    The line is written with a single ``write`` call on a file opened in append mode, so
    concurrent writers (sweep shards on a shared folder) do not interleave lines, and a
    kill leaves at most one incomplete last line, which ``read_jsonl`` skips. When the file
    does not end with a newline (a writer killed mid-line), the record starts on a new line,
    so the fragment stays as it was and the record is not glued onto it.
    """
    line = (json.dumps(record) + "\n").encode("utf-8")
    with locked(path):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        except OSError as exc:  # a full disk: name the file
            raise naming(exc, path) from exc
        finally:
            os.close(fd)


def rewrite_jsonl(path: str | os.PathLike, update) -> int:
    """Change the records of a JSON-lines file in place, keeping every line it cannot read.

    Under ``locked(path)``: reads every line as bytes, calls ``update(records)`` with the
    parsed dicts (to change them in place; it returns how many it changed), and when that is
    non-zero replaces the file atomically. A line that is not valid UTF-8 JSON is written
    back byte for byte, in its place; no line is ever dropped.

    Returns:
        What ``update`` returned.
    """
    path = Path(path)
    with locked(path):
        if not path.exists():
            return 0
        raw = path.read_bytes().split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        parsed: list = []
        for chunk in raw:
            try:
                record = json.loads(chunk.decode("utf-8")) if chunk.strip() else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            parsed.append(record if isinstance(record, dict) else None)
        changed = update([r for r in parsed if r is not None])
        if changed:
            out = [json.dumps(r).encode("utf-8") if r is not None else chunk for r, chunk in zip(parsed, raw)]
            write_bytes(path, b"\n".join(out) + b"\n")
        return changed


def read_jsonl(path: str | os.PathLike, on_bad_line=None) -> list[dict]:
    """Read the complete JSON lines of ``path``.

    A line that is not JSON (the fragment a killed writer left) is kept in the file, never
    counted, and reported to ``on_bad_line(line_number, text)`` when given.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if on_bad_line is not None:
                on_bad_line(number, line)
    return records


NOT_JSON = "not a JSON line (a write cut short?)"


def read_jsonl_records(path: str | os.PathLike, problem=None) -> tuple[list[dict], list[tuple[int, str]]]:
    """The lines of ``path`` that are records, and the line number and reason of each other one.

    A record is a JSON object for which ``problem(record)`` returns ``None`` (it returns the
    reason otherwise: a missing field, a value out of range). Lines that are not JSON (a
    crash's fragment), JSON that is not an object (a list, a number) and refused objects are
    left in the file as they are and never counted; the caller names them in one warning
    (``skipped_warning``).

    Returns:
        ``(records, skipped)``: the records in file order, and ``[(line number, reason)]``.
    """
    records: list[dict] = []
    skipped: list[tuple[int, str]] = []
    path = Path(path)
    if not path.exists():
        return records, skipped
    numbered = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            numbered.append((number, json.loads(line)))
        except json.JSONDecodeError:
            skipped.append((number, NOT_JSON))
    for number, value in numbered:
        reason = ("not a JSON object" if not isinstance(value, dict)
                  else problem(value) if problem is not None else None)
        if reason:
            skipped.append((number, reason))
        else:
            records.append(value)
    skipped.sort()
    return records, skipped


def skipped_warning(path: str | os.PathLike, skipped: list[tuple[int, str]], limit: int = 10) -> str:
    """One warning naming the lines of ``path`` that were left as they are and not counted."""
    named = "; ".join(f"{path} line {number}: {reason}" for number, reason in skipped[:limit])
    more = f"; ... {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"warning: {len(skipped)} line(s) of {path} left as they are and not counted: {named}{more}"
