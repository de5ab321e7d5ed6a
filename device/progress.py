"""The one progress line of every long step: fetch, synth, sweep, pretraining, export, bench.

Each finished item (an image, a run, an epoch, an artifact, a benchmark job) is counted; a
line says how far the step is, what the item gave, the rate and the time left:

    [3/12] mobilenetv2-L010-s0: val acc 82.0%, 41.2 s; 4.4 runs/min, elapsed 2m15s, ETA 6m45s

``started`` says what begins before a slow item (an int8 conversion, a pretraining run), and
``StepTimer`` times the steps inside one item with a heartbeat line while a step runs long, so
no long silence goes unexplained. Lines go to ``log`` (``print`` by default); nothing here
imports TensorFlow.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts the items of one step and writes its progress lines.

    Args:
        total: items planned.
        unit: the item's name in the rate (``runs`` gives "4.4 runs/min").
        log: where lines go.
        every_s: for ``update``: a line when this many seconds have passed since the last one
            (the last item always gets one); ``done`` writes a line for every item.
        every_share: for ``update``: a line as well whenever this share of ``total`` (0.05: each
            5%) has finished since the last one.
        label: put before the count (``fetch`` gives "fetch: 30/600 ...").
        already: items finished before this process started (a resumed step): counted as done,
            but not in the rate.
        clock: the time source (seconds).
    """

    def __init__(self, total: int, unit: str = "items", log: Callable[[str], object] = print,
                 every_s: float = 0.0, every_share: float = 0.0, label: str = "", already: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.unit, self.log, self.every_s, self.label = max(0, int(total)), unit, log, every_s, label
        self.every_items = max(1, int(every_share * self.total)) if every_share > 0 else None
        self.clock = clock
        self.count = self.already = self.last_count = already
        self.start = self.last_line = clock()

    def started(self, what: str) -> None:
        """Say what item ``count + 1`` is before it starts."""
        self.log(f"{self._prefix(self.count + 1)}{what} ...")

    def done(self, what: str, detail: str = "", count: int = 1) -> None:
        """Count ``count`` finished items and write one line: ``what: detail; rate, elapsed, ETA``."""
        self.count += count
        self.last_line = self.clock()
        self.log(f"{self._prefix(self.count)}{what}{': ' + detail if detail else ''}; {self.timing()}")

    def advance(self, count: int = 1) -> str:
        """Count ``count`` finished items and return ``timing()``, for a caller that writes its own line."""
        self.count += count
        return self.timing()

    def update(self, count: int, detail: str = "") -> None:
        """Set the count of finished items; write a line when all are done, ``every_s`` has passed
        or ``every_share`` more have finished."""
        self.count = count
        now = self.clock()
        share_due = self.every_items is not None and count - self.last_count >= self.every_items
        if count < self.total and now - self.last_line < self.every_s and not share_due:
            return
        self.last_line, self.last_count = now, count
        self.log(f"{self._prefix(count)}{detail + '; ' if detail else ''}{self.timing()}")

    def timing(self) -> str:
        """``rate, elapsed, ETA`` of the items counted so far."""
        elapsed = self.clock() - self.start
        left, here = self.total - self.count, self.count - self.already
        eta = elapsed / here * left if here > 0 else math.nan
        return f"{self._rate(here, elapsed)}, elapsed {duration(elapsed)}, ETA {duration(eta) if left > 0 else '0s'}"

    def _rate(self, here: int, elapsed: float) -> str:
        if here <= 0 or elapsed <= 0:
            return f"? {self.unit}/s"
        per_s = here / elapsed
        if per_s >= 1:
            return f"{per_s:.1f} {self.unit}/s"
        if per_s * 60 >= 1:
            return f"{60 * per_s:.1f} {self.unit}/min"
        return f"{3600 * per_s:.1f} {self.unit}/h"

    def _prefix(self, number: int) -> str:
        share = f" ({100 * number // self.total}%)" if self.label and self.total else ""
        return f"{self.label + ': ' if self.label else '['}{number}/{self.total}{share}{' ' if self.label else '] '}"


class StepTimer:
    """Times the named steps of one item; while a step runs, a heartbeat line every ``every_s``:

        ... mobilenetv2-L010-s0-int8-tflite: convert for 40s so far (1m05s on this artifact)

    Steps may nest (``convert`` calls ``build``): each second counts for the innermost step
    only, so ``seconds`` adds up to the item's time spent in steps. The heartbeat runs on a
    thread, so it also speaks during a long call into C++ that releases the GIL now and then
    (TensorFlow's converter does, every few seconds).

    Args:
        item: the name the heartbeat lines give.
        noun: what the item is, in the heartbeat lines.
        log: where lines go.
        every_s: seconds between heartbeat lines of one step (0: none).
        clock: the time source (seconds).
    """

    def __init__(self, item: str, log: Callable[[str], object] = print, every_s: float = 20.0,
                 clock: Callable[[], float] = time.monotonic, noun: str = "item"):
        self.item, self.log, self.every_s, self.clock, self.noun = item, log, every_s, clock, noun
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, when its uncredited time began], innermost last
        self._start = clock()
        self._lock = threading.Lock()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time ``name`` (added to earlier steps of that name) while the block runs."""
        with self._lock:
            now = self.clock()
            if self._stack:  # the outer step pauses
                self._credit(self._stack[-1][0], now - self._stack[-1][1])
            entry = [name, now]
            self._stack.append(entry)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(entry, now, stop), daemon=True) if self.every_s > 0 else None
        if beat:
            beat.start()
        try:
            yield
        finally:
            stop.set()
            if beat:
                beat.join()
            with self._lock:
                now = self.clock()
                self._stack.pop()
                self._credit(name, now - entry[1])
                if self._stack:
                    self._stack[-1][1] = now  # the outer step resumes

    def total(self) -> float:
        """Seconds since the timer was made."""
        return self.clock() - self._start

    def _credit(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def _beat(self, entry: list, started: float, stop: threading.Event) -> None:
        while not stop.wait(self.every_s):
            with self._lock:
                innermost = self._stack and self._stack[-1] is entry  # a nested step speaks for itself
                now = self.clock()
            if innermost:
                self.log(f"  ... {self.item}: {entry[0]} for {duration(now - started)} so far "
                         f"({duration(now - self._start)} on this {self.noun})")
