"""How every SkyEdge command ends: one set of exit codes and one runner, TensorFlow-free.

Every command's ``main`` parses its arguments, builds its config and hands the work to
``run_command``, which turns the known endings into the codes of ``Exit`` (the README's
exit-code table is tested against it):

- the work's own return value (``Exit.OK``, ``Exit.PARTIAL`` when it finished with some
  items failed, ``Exit.DIFFERS`` when a check it ran failed);
- one ``error:`` line and ``Exit.BAD_INPUT`` for the exception types the command names as
  bad input, and for any ``OSError`` (a missing path, a read-only folder, a full disk), also
  one wrapped in another exception on its way (``os_error_in``): the line names the path and
  the system's reason, never a traceback;
- ``Exit.INTERRUPTED`` on Ctrl-C and ``Exit.TERMINATED`` on SIGTERM (what Slurm's
  ``scancel`` and a job's time limit send): both unwind the same way, so whatever cleanup a
  Ctrl-C runs also runs for SIGTERM, and the message says what was kept.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import os
import signal
import sys
import tempfile
import threading
from typing import Callable


class Exit(enum.IntEnum):
    """Exit codes shared by every command (the README's table lists them per command)."""

    OK = 0
    DIFFERS = 1       # the work ran and a check it makes failed (--strict, compare_predictions)
    BAD_INPUT = 2     # bad input or option, or the system refused a read or write: one error line
    PARTIAL = 3       # finished, but some items failed (each named, their records carry the error)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): what is finished is kept
    TERMINATED = 143   # SIGTERM (128 + SIGTERM): as Ctrl-C


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM, so it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise Terminated()


def error_message(exc: BaseException) -> str:
    """The one line an exception becomes: a KeyError's own text, an OSError's path and reason."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc) or type(exc).__name__


# what the system says when it refuses a write, as TensorFlow's own file errors word it
_OS_REASONS = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EISDIR,
                                                   errno.ENOTDIR, errno.ELOOP, errno.EDQUOT, errno.EFBIG))


def os_error_in(exc: BaseException) -> BaseException | None:
    """The operating-system error behind ``exc``, or ``None``.

    Looks along the exception's causes and contexts (an ``OSError`` raised in a worker thread
    or process and wrapped in another type on the way) for an ``OSError``, or an exception
    raised by TensorFlow's file layer whose message carries the system's reason (a full disk,
    a read-only folder), which TensorFlow does not raise as ``OSError``.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        if type(exc).__module__.startswith("tensorflow") and any(r in str(exc) for r in _OS_REASONS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def run_command(work: Callable[[], int | None], errors: tuple[type[BaseException], ...] = (),
                interrupted: str = "finished work is kept; rerun the same command to resume") -> int:
    """Run a command's work and turn its known endings into ``Exit`` codes.

    Args:
        work: a callable with no arguments returning the exit status (``None`` is 0).
        errors: exception types that mean bad input: one ``error:`` line, ``Exit.BAD_INPUT``.
            ``OSError`` is always handled so.
        interrupted: what the Ctrl-C / SIGTERM message says after ``interrupted:``.

    Returns:
        The exit status (an ``int``; ``Exit`` members compare equal to their codes).
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        return int(work() or 0)
    except Terminated:
        print(f"\nterminated (SIGTERM): {interrupted}", file=sys.stderr)
        return Exit.TERMINATED
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return Exit.INTERRUPTED
    except (*errors, OSError) as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return Exit.BAD_INPUT
    except Exception as exc:  # an OSError wrapped on its way here (a thread, a process, TensorFlow)
        cause = os_error_in(exc)
        if cause is None:
            raise
        text = error_message(cause).strip().splitlines() or [type(cause).__name__]
        print(f"error: {text[0]}", file=sys.stderr)
        return Exit.BAD_INPUT
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def native_output_hidden(hide: bool = True):
    """Hide what native code prints on stdout and stderr inside the block (LiteRT's "Created
    TensorFlow Lite XNNPACK delegate" note, converters' notes); shown after all if the block
    fails. ``hide=False`` leaves everything as it is printed."""
    if not hide:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        _terminals.append(saved[0])
        try:
            yield
        except BaseException:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", errors="replace"))
            raise
        finally:
            _terminals.remove(saved[0])
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


_terminals: list[int] = []  # the real stdout of each native_output_hidden block now open, innermost last


def console_line(text: str) -> None:
    """``print`` a line to the real stdout, even from inside ``native_output_hidden`` (where
    stdout goes to a scratch file): a heartbeat during a hidden conversion is still seen."""
    sys.stdout.flush()
    if _terminals:
        try:
            os.write(_terminals[-1], (text + "\n").encode())
            return
        except OSError:  # the block closed it a moment ago
            pass
    print(text, flush=True)
