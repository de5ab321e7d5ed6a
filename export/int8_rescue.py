"""The int8 rescue: when a full-int8 artifact disagrees with its Keras model, try the fixes in order.

An int8 artifact whose top-1 agreement with the Keras model on the validation images is below
the int8 threshold (``export.verify.STRICT_AGREEMENT``, 97%) is rebuilt, trying in order and
stopping at the first that reaches it:

1. outlier-robust ranges (``export.int8_ranges``): ``outliers`` (Tukey's far-out fence on the
   per-image extremes of each tensor), then ``average`` (the mean of the per-image extremes);
2. the fewest of the worst layers of ``export.int8_layers``'s table kept in float: 1, 2, 4, 8,
   then 16 of them, with the best ranges of step 1.

Where nothing reaches the threshold, the range method with the highest agreement is kept (the
plain model on a tie; float layers only where they reach it, since they cost latency) and the
artifact keeps its warning. Everything tried goes into the record
(``int8_rescue``), with the size and the single-thread latency it cost; ``--int8-rescue off``
skips all of it. A run whose frozen layers have random weights (the demo's ``--weights none``)
or whose Keras model hardly prefers any class is not rescued: its disagreement is not the
conversion's fault, and no range fixes it.

The choice reads validation images only, as every other export choice does; test and holdout
accuracy are measured afterwards by ``bench run``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from device.exports_manifest import rescue_summary

RESCUE_CHOICES = ("on", "off")
RANGE_STEPS = ("outliers", "average")
FLOAT_COUNTS = (1, 2, 4, 8, 16)
LATENCY_RUNS = 30  # single-thread invocations timed per model for the record's latency cost


@dataclass(frozen=True)
class Attempt:
    """One candidate: its ranges, the ops kept in float (by Keras layer) and how it agreed."""

    ranges: str
    float_layers: tuple[str, ...]
    agreement: float
    val_accuracy: float
    tensors: tuple[str, ...] = ()  # the float ops' output tensors, as the builder takes them
    notes: dict | None = None  # what the builder says about the candidate (tensors narrowed...)

    def as_record(self) -> dict:
        return {"ranges": self.ranges, "float_layers": list(self.float_layers),
                "agreement": round(self.agreement, 6), "val_accuracy": round(self.val_accuracy, 6), **(self.notes or {})}


# builds the int8 model with the given range method and float op tensors (the table's
# ``tensor`` names), writes it to the path and may return notes for the record
Builder = Callable[[str, Sequence[str], Path], "dict | None"]


def candidate_path(path: Path) -> Path:
    """Where the rescue writes its candidates, beside the artifact (removed when it ends)."""
    return path.with_name(path.stem + ".rescue" + path.suffix)


def p50_ms(path: Path, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median single-thread latency of one image on the device runtime, in ms (after one warm-up)."""
    from device.runtime import load
    from train.console import hidden_output

    with hidden_output():  # LiteRT's delegate note on the first call
        model = load(path, threads=1)
        prepared = model.prepare(image)
        model.invoke(prepared)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.invoke(prepared)
        times.append(time.perf_counter() - t0)
    return round(1e3 * float(np.median(times)), 4)


def rescue(path: Path, build: Builder, check: Callable[[Path], object], plain, threshold: float,
           worst: Sequence[dict], log: Callable[[str], None]) -> tuple[object, dict]:
    """Try the rescue steps on the artifact at ``path`` (the plain int8 model, verified as ``plain``).

    Args:
        path: the artifact; candidates are written beside it and the kept one ends up here.
        build: writes a candidate (see ``Builder``).
        check: verifies a file (``export.verify.verify`` against the run's reference).
        plain: the plain model's verification (``agreement``, ``val_accuracy``).
        threshold: the agreement to reach.
        worst: the int8 layer table's rows, worst first (``layer`` and ``tensor`` used).
        log: progress lines.

    Returns:
        ``(verification of the kept model, the record's int8_rescue fields)``.
    """
    candidate = candidate_path(path)
    plain_size = path.stat().st_size
    tried: list[tuple[Attempt, object]] = []

    def attempt(ranges: str, rows: Sequence[dict]) -> bool:
        tensors = tuple(r["tensor"] for r in rows)
        notes = build(ranges, tensors, candidate)
        result = check(candidate)
        a = Attempt(ranges=ranges, float_layers=tuple(dict.fromkeys(r["layer"] for r in rows)),
                    agreement=result.agreement, val_accuracy=result.val_accuracy, tensors=tensors, notes=notes)
        tried.append((a, result))
        what = f"{ranges} ranges" + (f", {len(rows)} layer(s) in float" if rows else "")
        log(f"    int8 rescue: {what}: agreement {100 * a.agreement:.2f}%")
        return a.agreement >= threshold

    log(f"    int8 rescue: plain agreement {100 * plain.agreement:.2f}% < {100 * threshold:.1f}%; trying robust "
        f"ranges, then the worst layers in float")
    reached = any(attempt(ranges, ()) for ranges in RANGE_STEPS)
    if not reached:
        best_ranges = max([("minmax", plain.agreement)] + [(a.ranges, a.agreement) for a, _ in tried],
                          key=lambda item: item[1])[0]
        # ops traced back to the model's own layers (not the graph's output, such as its softmax)
        rows = [r for r in worst if r.get("tensor") and r.get("keras_layers")]
        for count in dict.fromkeys(min(c, len(rows)) for c in FLOAT_COUNTS if len(rows)):
            if attempt(best_ranges, rows[:count]):
                reached = True
                break
    # an attempt that reached the threshold is kept; otherwise the best that costs nothing (ranges
    # only): float layers that do not rescue the model are not worth their latency
    if reached:
        best_attempt, best_result = tried[-1]
    else:
        best_attempt, best_result = max([t for t in tried if not t[0].float_layers],
                                        key=lambda item: item[0].agreement)
    fields = {"threshold": threshold, "reached": reached,
              "plain": {"agreement": round(plain.agreement, 6), "val_accuracy": round(plain.val_accuracy, 6),
                        "size_bytes": plain_size},
              "attempts": [a.as_record() for a, _ in tried]}
    if best_attempt.agreement <= plain.agreement:
        candidate.unlink(missing_ok=True)
        fields["kept"] = "plain"
        log("    int8 rescue: nothing agreed better; the plain model is kept")
        return plain, fields
    from device.runtime import load
    from train.console import hidden_output

    if best_attempt is not tried[-1][0]:  # rebuild the best when a later attempt overwrote it
        build(best_attempt.ranges, best_attempt.tensors, candidate)
    with hidden_output():
        shape = load(path, threads=1).input_shape
    image = np.full([int(d) for d in shape[1:]], 128, np.uint8)
    plain_ms, kept_ms = p50_ms(path, image), p50_ms(candidate, image)
    candidate.replace(path)
    fields.update({"kept": best_attempt.as_record(), "plain_p50_ms": plain_ms, "p50_ms": kept_ms,
                   "size_bytes": path.stat().st_size, "size_cost_bytes": path.stat().st_size - plain_size,
                   "latency_cost": round(kept_ms / plain_ms, 3) if plain_ms > 0 else None})
    log(f"    int8 rescue: kept {rescue_summary(fields)}")
    return best_result, fields
