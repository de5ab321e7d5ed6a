"""The one check every command's config makes of an option that takes one of a few values.

Each command raises its own error class with the message, so that its entry point turns it
into the one-line error naming the option (exit 2).
"""
from __future__ import annotations

from typing import Sequence


def first_bad_choice(*options: tuple[str, object, Sequence]) -> str | None:
    """The message for the first ``(option, value, choices)`` whose value is not a choice.

    >>> first_bad_choice(("--split", "val", ("train", "val")), ("--mode", "fast", ("kernel", "e2e")))
    "--mode 'fast': expected one of kernel, e2e"
    """
    for option, value, choices in options:
        if value not in choices:
            return f"{option} {value!r}: expected one of {', '.join(map(str, choices))}"
    return None
