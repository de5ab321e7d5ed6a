"""The verdict on the study's claim, per device, computed from ``bench run`` lines: one point
per model, the Pareto fronts, McNemar's paired test and the latency budgets, by ``DECISION_RULE``.

Used by ``bench report``; no TensorFlow, no matplotlib.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from device.metrics import mcnemar, wilson_interval
from device.sweep_tables import percent

DEFAULT_BUDGETS_MS = None  # derived per device from its measured p50 range (derive_budgets)
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_IMAGES = 30
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
# A note or a name that says the run was emulated; `bench run --device-name ...-qemu` and the
# arm64 check's "emulated: qemu-aarch64 ..." note both match.
EMULATED = re.compile(r"qemu|emulat", re.IGNORECASE)

DECISION_RULE = """\
Per device, each exported model is one point: its fastest measured configuration (runtime,
threads) in kernel mode (e2e lines only where a device has no kernel line), with its accuracy
on the images its bench run scored (the test split unless told otherwise) and its p50 latency. Lines with an error are left out; lines run
under emulation keep their accuracy but their latency is not used.

- **S** (significant mobile deficit): the most accurate non-mobile model is more accurate than
  the most accurate mobile model, and McNemar's exact test on the same images (equal
  `images_sha256` and labels) gives p < alpha.
- **F** (mobile on the front): a mobile model is on the Pareto front of accuracy (higher is
  better) against p50 latency (lower is better).
- **W** (mobile wins a budget): under at least one latency budget, the most accurate model with
  p50 <= budget is a mobile model.

The claim is **supported** when S and not F and not W (mobile models are significantly less
accurate and never the best choice at any speed); **contradicted** when not S and (F or W)
(mobile models are a best choice at some speed and lose no significant accuracy);
**inconclusive** otherwise: S with F or W (less accurate but still the best choice under some
budget), neither S nor F nor W, only one family present, no paired predictions on the same
images, fewer than the minimum number of images, or no latency that is not emulated.
The accuracy-against-size front is reported but not part of the rule, since size is the same
on every device."""


@dataclass(frozen=True)
class Point:
    """One model on one device: the line that stands for an artifact in the verdict."""

    artifact_id: str
    backbone: str
    variant: str
    format: str
    mobile: bool | None
    accuracy: float
    ci_low: float
    ci_high: float
    p50_ms: float | None
    size_bytes: float | None
    line: dict

    @property
    def family(self) -> str:
        """``mobile``, ``non-mobile`` or ``unknown family`` (a backbone the registry does not know)."""
        return {True: "mobile", False: "non-mobile", None: "unknown family"}[self.mobile]

    @property
    def label(self) -> str:
        """How the report names the model: backbone, variant and format."""
        return f"{self.backbone} {self.variant} {self.format}"


@dataclass
class DeviceVerdict:
    """The verdict on one device and everything it was computed from.

    Attributes:
        device: the device name.
        verdict: ``supported``, ``contradicted`` or ``inconclusive``.
        reasons: sentences, computed from the numbers, that lead to the verdict.
        points: one per artifact (accuracy and size from every valid line).
        latency_points: the points whose latency may be used (not emulated).
        latency_front, size_front: the Pareto-optimal points, fastest or smallest first.
        best_mobile, best_other: the most accurate mobile and non-mobile points.
        test: ``device.metrics.mcnemar`` of best_mobile (A, the model the claim is about)
            against best_other (B), or None: b = only the mobile model right, c = only the other.
        budgets: ``(budget_ms, best point or None)`` per budget.
        mode: the mode the points were taken from.
        emulated: lines whose latency was left out because they ran under emulation.
    """

    device: str
    verdict: str = INCONCLUSIVE
    reasons: list[str] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    latency_points: list[Point] = field(default_factory=list)
    latency_front: list[Point] = field(default_factory=list)
    size_front: list[Point] = field(default_factory=list)
    best_mobile: Point | None = None
    best_other: Point | None = None
    test: dict | None = None
    budgets: list[tuple[float, Point | None]] = field(default_factory=list)
    mode: str | None = None
    emulated: int = 0


# --- reading ------------------------------------------------------------------------------

def is_mobile(backbone: str | None) -> bool | None:
    """The registry's ``mobile`` flag of a backbone; None when the registry does not know it."""
    from device.backbones import get

    try:
        return bool(get(str(backbone)).mobile)
    except KeyError:
        return None


def is_emulated(line: dict) -> bool:
    """Whether a result line ran under emulation: an ``emulated`` field, or qemu/emulation
    named in its notes, device name or CPU model."""
    if line.get("emulated"):
        return True
    texts = [str(n) for n in line.get("notes") or []]
    texts += [str(line.get(k) or "") for k in ("device_name", "cpu_model")]
    return any(EMULATED.search(text) for text in texts)


def num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def line_ci(line: dict) -> tuple[float, float]:
    low, high = num(line.get("accuracy_ci_low")), num(line.get("accuracy_ci_high"))
    if low is not None and high is not None:
        return low, high
    n = int(line.get("n_images") or len(line.get("label_indices") or []))
    return wilson_interval(round(float(line["accuracy"]) * n), n)


def device_points(lines: list[dict]) -> tuple[list[Point], list[Point], str | None, int]:
    """The points of one device.

    Args:
        lines: the device's lines without error.

    Returns:
        ``(points, latency_points, mode, emulated)``: one point per artifact from the lines
        of ``mode`` (kernel where there is any kernel line, else e2e), the fastest line of
        each; the same from the lines not emulated; and the number of emulated lines.
    """
    usable = [line for line in lines if num(line.get("accuracy")) is not None]
    modes = {line.get("mode") for line in usable}
    mode = "kernel" if "kernel" in modes else (sorted(m for m in modes if m)[:1] or [None])[0]
    chosen = [line for line in usable if line.get("mode") == mode]
    emulated = sum(is_emulated(line) for line in lines)
    return _fastest_per_artifact(chosen), _fastest_per_artifact([ln for ln in chosen if not is_emulated(ln)]), mode, emulated


def _fastest_per_artifact(lines: list[dict]) -> list[Point]:
    best: dict[str, dict] = {}
    for line in lines:
        aid = str(line.get("artifact_id"))
        p50 = num(line.get("latency_ms_p50"))
        held = best.get(aid)
        if held is None or (p50 is not None and (num(held.get("latency_ms_p50")) or math.inf) > p50):
            best[aid] = line
    points = []
    for aid, line in best.items():
        low, high = line_ci(line)
        points.append(Point(artifact_id=aid, backbone=str(line.get("backbone")), variant=str(line.get("variant")),
                            format=str(line.get("format")), mobile=is_mobile(line.get("backbone")),
                            accuracy=float(line["accuracy"]), ci_low=low, ci_high=high,
                            p50_ms=num(line.get("latency_ms_p50")), size_bytes=num(line.get("size_bytes")),
                            line=line))
    return sorted(points, key=lambda p: p.artifact_id)


# --- analysis -----------------------------------------------------------------------------

def pareto_front(points: list[Point], cost: Callable[[Point], float | None]) -> list[Point]:
    """Points no other point beats: none is at least as accurate at no more cost, and
    strictly better in one of the two.

    Args:
        points: candidates; those whose ``cost`` is None are left out.
        cost: the quantity to keep low (p50 latency, size).

    Returns:
        The front, cheapest first (accuracy then rises strictly along it).
    """
    ranked = sorted((p for p in points if cost(p) is not None), key=lambda p: (cost(p), -p.accuracy))
    front: list[Point] = []
    for point in ranked:
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front


def most_accurate(points: list[Point]) -> Point | None:
    """The most accurate point; ties go to the faster, then the smaller model."""
    if not points:
        return None
    return min(points, key=lambda p: (-p.accuracy, p.p50_ms if p.p50_ms is not None else math.inf,
                                      p.size_bytes if p.size_bytes is not None else math.inf, p.artifact_id))


def paired_test(a: Point, b: Point) -> tuple[dict | None, str | None]:
    """McNemar's exact test of two points on the same images.

    Args:
        a: the first model (``b`` of the result counts images only it got right).
        b: the second model.

    Returns:
        ``(result, None)`` with ``device.metrics.mcnemar``'s dict, or ``(None, why)`` when
        the two lines do not hold predictions on the same images.
    """
    la, lb = a.line, b.line
    for point in (a, b):
        if not point.line.get("pred_indices") or not point.line.get("label_indices"):
            return None, f"{point.artifact_id} has no per-image predictions (pred_indices, label_indices)"
    if not la.get("images_sha256") or la.get("images_sha256") != lb.get("images_sha256"):
        return None, (f"{a.artifact_id} and {b.artifact_id} were not run on the same images "
                      f"(images_sha256 {str(la.get('images_sha256'))[:12]} vs {str(lb.get('images_sha256'))[:12]})")
    if list(la["label_indices"]) != list(lb["label_indices"]) or len(la["pred_indices"]) != len(la["label_indices"]) \
            or len(lb["pred_indices"]) != len(lb["label_indices"]):
        return None, f"{a.artifact_id} and {b.artifact_id} list their images' labels differently"
    labels = np.asarray(la["label_indices"])
    return mcnemar(np.asarray(la["pred_indices"]) == labels, np.asarray(lb["pred_indices"]) == labels), None



def acc_ci(p: Point) -> str:
    return f"{percent(p.accuracy)} [{percent(p.ci_low)}, {percent(p.ci_high)}]"


def ms_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _accuracy_condition(v: DeviceVerdict, alpha: float, min_images: int, blockers: list[str]) -> bool | None:
    """S: is the best mobile model significantly less accurate than the best other (None: untested)?"""
    significant = None
    if v.best_mobile and v.best_other:
        v.test, why = paired_test(v.best_mobile, v.best_other)
        if v.test is None:
            blockers.append(f"No paired test: {why}.")
        else:
            t = v.test
            deficit = -t["accuracy_diff"]  # the mobile model's shortfall
            significant = deficit > 0 and t["p_value"] < alpha
            v.reasons.append(
                f"Most accurate non-mobile model {v.best_other.label} ({acc_ci(v.best_other)}) against most accurate "
                f"mobile model {v.best_mobile.label} ({acc_ci(v.best_mobile)}), Wilson 95% intervals: the mobile "
                f"model is {abs(100 * deficit):.1f} points {'behind' if deficit >= 0 else 'ahead'}; McNemar exact p = {t['p_value']:.3g} on {t['n']} images "
                f"(b = {t['b']}, c = {t['c']}): "
                + ("significant" if significant else "not significant") + f" at alpha = {alpha:g}"
                + ("" if deficit > 0 or t["p_value"] >= alpha else " (and not a mobile deficit)") + ".")
            if t["n"] < min_images:
                blockers.append(f"Only {t['n']} paired images, fewer than the minimum of {min_images}.")
    return significant


def derive_budgets(points: list[Point], count: int = 4) -> tuple[float, ...]:
    """``count`` p50 budgets from the fastest to the slowest point, evenly spaced on a log scale
    and rounded up to two significant figures (fewer when they coincide)."""
    p50 = [p.p50_ms for p in points if p.p50_ms]
    if not p50:
        return ()
    lo, hi = min(p50), max(p50)
    values = [lo * (hi / lo) ** (i / (count - 1)) for i in range(count)] if hi > lo else [lo]
    # rounded up, so the fastest model fits the smallest budget and the slowest the largest
    step = [10.0 ** (math.floor(math.log10(v)) - 1) for v in values]
    return tuple(dict.fromkeys(float(f"{math.ceil(round(v / e, 9)) * e:.2g}") for v, e in zip(values, step)))


def _speed_conditions(v: DeviceVerdict, budgets_ms, blockers: list[str]) -> tuple[bool | None, bool | None]:
    """F and W: is a mobile model on the latency front, and the best choice under some budget?"""
    on_front = win = None
    if v.emulated:
        v.reasons.append(f"{v.emulated} line(s) ran under emulation (qemu); their latency is not meaningful and "
                         "is left out of the latency front and the budgets.")
    if not v.latency_points:
        if v.points:
            blockers.append("No latency measured outside emulation, so the latency front and the budgets "
                            "cannot be evaluated.")
    else:
        front_mobile = [p for p in v.latency_front if p.mobile is True]
        on_front = bool(front_mobile)
        v.reasons.append("Pareto front of accuracy against p50 latency: "
                         + ", ".join(f"{p.label} ({p.family}, {ms_text(p.p50_ms)} ms, {percent(p.accuracy)})"
                                     for p in v.latency_front)
                         + (f"; mobile models on it: {', '.join(p.label for p in front_mobile)}." if front_mobile
                            else "; no mobile model on it."))
        wins = []
        for budget in budgets_ms or derive_budgets(v.latency_points):
            within = [p for p in v.latency_points if p.p50_ms is not None and p.p50_ms <= budget]
            best = most_accurate(within)
            v.budgets.append((budget, best))
            if best is not None and best.mobile is True:
                wins.append(f"{budget:g} ms ({best.label})")
        win = bool(wins)
        v.reasons.append(("Budgets where the most accurate model within the budget is mobile: " + ", ".join(wins) + ".")
                         if wins else "No latency budget has a mobile model as its most accurate choice.")
    return on_front, win


def decide(device: str, lines: list[dict], budgets_ms=DEFAULT_BUDGETS_MS, alpha: float = DEFAULT_ALPHA,
           min_images: int = DEFAULT_MIN_IMAGES) -> DeviceVerdict:
    """The verdict of one device on the claim, by ``DECISION_RULE``.

    Args:
        device: the device name.
        lines: its result lines without error.
        budgets_ms: p50 latency budgets (ms).
        alpha: significance level of McNemar's test.
        min_images: fewest paired images for a verdict other than inconclusive.

    Returns:
        The ``DeviceVerdict`` with its reasons.
    """
    v = DeviceVerdict(device=device)
    v.points, v.latency_points, v.mode, v.emulated = device_points(lines)
    v.size_front = pareto_front(v.points, lambda p: p.size_bytes)
    v.latency_front = pareto_front(v.latency_points, lambda p: p.p50_ms)
    mobile = [p for p in v.points if p.mobile is True]
    other = [p for p in v.points if p.mobile is False]
    unknown = sorted({p.backbone for p in v.points if p.mobile is None})
    v.best_mobile, v.best_other = most_accurate(mobile), most_accurate(other)
    blockers: list[str] = []
    if unknown:
        v.reasons.append(f"Backbones not in the registry, so of no family and left out of the comparison: "
                         f"{', '.join(unknown)}.")
    if not v.points:
        blockers.append("No line with an accuracy on this device.")
    elif not mobile or not other:
        if mobile or other:
            present = f"Only {'mobile' if mobile else 'non-mobile'} backbones were measured here"
        else:
            present = "No backbone of a known family (mobile or not) was measured here"
        blockers.append(f"{present} ({len(v.points)} model(s)), so mobile and non-mobile models cannot be compared.")

    significant = _accuracy_condition(v, alpha, min_images, blockers)
    for point in (v.best_mobile, v.best_other):
        if point is not None and point.line.get("export_warning"):
            v.reasons.append(f"{point.label} was flagged at export: {point.line['export_warning']}; its accuracy "
                             f"here is measured on the device, but it does not behave like its Keras model.")
    on_front, win = _speed_conditions(v, budgets_ms, blockers)

    if blockers or significant is None or on_front is None:
        v.verdict = INCONCLUSIVE
        v.reasons += blockers
    elif significant and not on_front and not win:
        v.verdict = SUPPORTED
        v.reasons.append("S and not F and not W: mobile models are significantly less accurate and are never "
                         "the best choice at any measured speed.")
    elif not significant and (on_front or win):
        v.verdict = CONTRADICTED
        v.reasons.append("Not S, and F or W: a mobile model is a best choice at some speed and the accuracy "
                         "difference is not significant.")
    else:
        v.verdict = INCONCLUSIVE
        v.reasons.append("S with F or W: mobile models are significantly less accurate but still the best choice "
                         "under some budget." if significant else
                         "Neither S nor F nor W: no significant difference, but no mobile model is a best "
                         "choice at any speed.")
    return v


RECOMMENDATION_RULE = ("the fastest model (p50) on this device whose accuracy on the scored images is not "
                       "significantly below the most accurate one's (McNemar, alpha), among the models whose export "
                       "agreed with their Keras model (no export warning)")


def recommend(v: DeviceVerdict, alpha: float = DEFAULT_ALPHA) -> tuple[Point | None, str]:
    """The model to deploy on a device, by ``RECOMMENDATION_RULE``, and why (one sentence).

    It is chosen on the scored images, so its accuracy there is that of a choice, not a fresh
    estimate; the rule prefers speed only where accuracy gives no reason not to.
    """
    candidates = [p for p in (v.latency_points or v.points) if p.p50_ms is not None and not p.line.get("export_warning")]
    best = most_accurate(candidates)
    if best is None:
        return None, "no model with a latency and without an export warning"
    for point in sorted(candidates, key=lambda p: (p.p50_ms, -p.accuracy, p.artifact_id)):
        if point is best:
            return best, f"{best.label} is the most accurate ({percent(best.accuracy)}) and no faster model is as accurate"
        test, _why = paired_test(point, best)
        if test is not None and test["p_value"] >= alpha:
            return point, (f"{point.label} ({percent(point.accuracy)}, p50 {ms_text(point.p50_ms)}) is the fastest model "
                           f"not significantly less accurate than {best.label} ({percent(best.accuracy)}; McNemar "
                           f"p = {test['p_value']:.2g})")
    return best, f"{best.label} is the most accurate ({percent(best.accuracy)})"
