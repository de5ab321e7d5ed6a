"""Argument types shared by the ``bench`` command lines (bench.cli and bench report).

Each refuses a bad value with argparse's one-line message naming the option (exit 2).
"""
from __future__ import annotations

import argparse


def comma_separated(cast, noun: str):
    """An argparse type for ``a,b,c`` lists of ``cast`` values (at least one)."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(cast(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def at_least(low: float, cast=int):
    """An argparse type: a number ``>= low`` (``--runs 0`` or ``--warmup -1`` are refused)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= low:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a number >= {low:g}, got {text}")
        return value
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_ints = comma_separated(_positive_int, "integers >= 1")


def names(text: str) -> tuple[str, ...]:
    """``a,b`` as a tuple of stripped, non-empty names."""
    return tuple(v.strip() for v in text.split(",") if v.strip())
