"""Argument types shared by every SkyEdge command line, TensorFlow-free.

One finite-number check for every numeric option: ``number`` (and its short forms
``at_least``, ``seconds``, ``fraction``, ``seed``) refuses text, ``nan``, ``inf`` and values
out of range with argparse's one line naming the option and what is expected (exit 2), so no
command reaches ``time.sleep(inf)``, ``subprocess.run(timeout=1e30)`` or a run that fails
every job later.

Every command declares its settings one way: a frozen dataclass (``SweepConfig``,
``RunConfig``, ...) that checks its values in ``__post_init__``, and a parser that reads its
option defaults from it with ``defaults`` (so a default is written once).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields

# a duration option's ceiling: a week is longer than any job, and far below what
# time.sleep and subprocess timeouts overflow on
SECONDS_MAX = 7 * 24 * 3600.0
SEED_MAX = 2 ** 32 - 1  # numpy's and Keras's seed range


def defaults(config_class) -> dict:
    """Each field's default of a settings dataclass, by name: the one source of its command's
    option defaults (fields without a default, the required options, are left out)."""
    return {f.name: f.default for f in fields(config_class) if f.default is not MISSING}


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_text(low)}")
    if high is not None:
        parts.append(f"<= {_text(high)}")
    return " and ".join(parts)


def check_number(value, option: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> None:
    """Raise ``ValueError`` naming ``option`` unless ``value`` is a finite number in range.

    The check the argparse types below make, for callers that receive values from Python
    (configs built without the command line).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and not (integer and int(value) != value)
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        noun = "an integer" if integer else "a finite number"
        bounds = _range_text(low, high, low_open)
        raise ValueError(f"{option} {value!r}: expected {noun}{' ' + bounds if bounds else ''}")


def number(low: float | None = None, high: float | None = None, cast=float, low_open: bool = False):
    """An argparse type: a finite ``cast`` value in ``[low, high]`` (``(low, high]`` with
    ``low_open``); ``nan``, ``inf``, text and values out of range are refused in one line."""
    noun = "an integer" if cast is int else "a finite number"
    bounds = _range_text(low, high, low_open)
    expected = f"expected {noun}{' ' + bounds if bounds else ''}"

    def parse(text: str):
        try:
            value = cast(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        try:
            check_number(value, "", low, high, low_open, integer=cast is int)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text}") from None
        return value

    parse.__name__ = cast.__name__
    return parse


def at_least(low: float, cast=int, high: float | None = None):
    """An argparse type: a finite number ``>= low`` (``--runs 0``, ``--warmup -1``, ``inf`` refused)."""
    return number(low, high, cast)


def seconds(low: float = 0.0, low_open: bool = False):
    """An argparse type: a duration in seconds, finite, at most ``SECONDS_MAX`` (a week)."""
    return number(low, SECONDS_MAX, float, low_open)


def fraction(low_open: bool = False, high: float = 1.0):
    """An argparse type: a number in ``[0, 1]`` (``(0, 1]`` with ``low_open``)."""
    return number(0.0, high, float, low_open)


seed = number(0, SEED_MAX, int)  # an argparse type: a seed, 0 .. 2**32 - 1


def comma_separated(cast, noun: str):
    """An argparse type for ``a,b,c`` lists of ``cast`` values (at least one); a ``cast`` that
    raises ``ValueError`` or ``argparse.ArgumentTypeError`` refuses the whole list."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(cast(v) for v in text.split(",") if v.strip())
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


positive_ints = comma_separated(number(1, None, int), "integers >= 1")
positive_numbers = comma_separated(number(0, None, float, low_open=True), "finite numbers > 0")
seeds = comma_separated(seed, f"integer seeds from 0 to {SEED_MAX}")


def names(text: str) -> tuple[str, ...]:
    """``a,b`` as a tuple of stripped, non-empty names."""
    return tuple(v.strip() for v in text.split(",") if v.strip())
