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

DEFAULT_MARGIN = 0.01  # one accuracy point: the equivalence margin of the verdict
BOOTSTRAP_DRAWS = 4000

DECISION_RULE = """\
Per device, each exported model is one point: its fastest measured configuration (runtime,
threads) in kernel mode (e2e lines only where a device has no kernel line), with its accuracy
on the images its bench run scored (the test split unless told otherwise) and its p50 latency.
Lines with an error are left out; lines run under emulation keep their accuracy but their
latency is not used. A model is a backbone at a level, variant and format: where several seeds
of it were measured, its accuracy is their mean.

The answer is an estimate: the gap between the most accurate mobile model and the most accurate
non-mobile model (mobile minus non-mobile, in accuracy points, on the same images), with a 95%
interval from a paired bootstrap over the images (and over the seeds, where a model has several),
and two one-sided tests against the margin m (`--margin`, default 1 point):

- **contradicted**: the mobile model is non-inferior within the margin (or better): the test of
  "mobile worse by m or more" rejects it, p < alpha;
- **supported**: the mobile model is worse by more than the margin, significantly: the test of
  "mobile worse by less than m" rejects it, p < alpha;
- **inconclusive** otherwise (the gap's interval is given), or when only one family was measured,
  the two were not scored on the same images, or fewer images than the minimum were paired.

McNemar's exact test of the two models, the Pareto fronts of accuracy against p50 latency and
size, and the most accurate model under each latency budget are reported beside it: they say
where a mobile model is the better choice at a given speed, which the accuracy gap alone does not."""


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
        gap: ``gap_estimate`` of the best mobile against the best non-mobile model, or None.
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
    gap: dict | None = None


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


def model_key(p: Point) -> tuple:
    """What makes a model apart from its seed: backbone, level, variant and format."""
    return (p.backbone, p.line.get("level"), p.variant, p.format)


def best_model(points: list[Point]) -> list[Point]:
    """The seeds of the model with the highest mean accuracy (ties: the faster, then the id)."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(model_key(p), []).append(p)
    if not groups:
        return []
    return min(groups.values(), key=lambda g: (-float(np.mean([p.accuracy for p in g])),
                                               min((p.p50_ms for p in g if p.p50_ms is not None), default=math.inf),
                                               g[0].artifact_id))


def _correctness(points: list[Point]) -> tuple[np.ndarray | None, str | None]:
    """(seeds x images) correctness of a model's lines, or why they cannot be paired."""
    rows = []
    for p in points:
        pred, truth = p.line.get("pred_indices"), p.line.get("label_indices")
        if not pred or not truth or len(pred) != len(truth):
            return None, f"{p.artifact_id} has no per-image predictions (pred_indices, label_indices)"
        rows.append(np.asarray(pred) == np.asarray(truth))
    return np.asarray(rows, dtype=bool), None


def gap_estimate(mobile: list[Point], other: list[Point], margin: float = DEFAULT_MARGIN,
                 draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[dict | None, str | None]:
    """The accuracy gap, mobile minus non-mobile, with a paired bootstrap over images and seeds.

    Each draw resamples the images (the same ones for both models, since they are paired) and,
    for a model with several seeds, its seeds; the gap is the difference of the mean accuracies.

    Returns:
        ``(estimate, None)``: ``gap``, ``ci_low`` and ``ci_high`` (95% percentile interval),
        ``margin``, ``p_noninferiority`` (share of draws at or below ``-margin``: the one-sided
        test of "mobile worse by the margin or more"), ``p_inferiority`` (share at or above
        ``-margin``: the test of "mobile worse by less than the margin"), ``p_equivalence``
        (two one-sided tests against +-margin: the larger share beyond either bound),
        ``n_images``, ``n_seeds`` (the fewer of the two models'), ``draws``; or
        ``(None, why)`` when the lines are not on the same images.
    """
    sha = {p.line.get("images_sha256") for p in mobile + other}
    truth = {tuple(p.line.get("label_indices") or ()) for p in mobile + other}
    if len(sha) != 1 or None in sha or len(truth) != 1:
        return None, "the two models' lines were not run on the same images (images_sha256 or labels differ)"
    a, why = _correctness(mobile)
    b, why_b = _correctness(other)
    if a is None or b is None:
        return None, why or why_b
    n = a.shape[1]
    rng = np.random.default_rng(seed)
    boots = []
    for start in range(0, draws, 250):
        k = min(250, draws - start)
        idx = rng.integers(0, n, (k, n))
        means = []
        for m in (a, b):
            seeds = m[rng.integers(0, m.shape[0], (k, m.shape[0]))]              # (k, s, n)
            picked = np.take_along_axis(seeds, np.repeat(idx[:, None, :], m.shape[0], axis=1), axis=2)
            means.append(picked.mean(axis=(1, 2)))
        boots.append(means[0] - means[1])
    boots = np.concatenate(boots)
    share = lambda mask: float((np.count_nonzero(mask) + 1) / (len(boots) + 1))  # noqa: E731
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"gap": float(a.mean() - b.mean()), "ci_low": float(low), "ci_high": float(high), "margin": margin,
            "p_noninferiority": share(boots <= -margin), "p_inferiority": share(boots >= -margin),
            "p_equivalence": max(share(boots <= -margin), share(boots >= margin)), "n_images": int(n),
            "n_seeds": int(min(a.shape[0], b.shape[0])), "n_seeds_mobile": int(a.shape[0]),
            "n_seeds_other": int(b.shape[0]), "draws": int(len(boots)),
            "mobile": mobile[0].label, "other": other[0].label}, None


def _gap_words(g: dict, alpha: float) -> tuple[str, str]:
    """The verdict and its sentence from the gap estimate, by ``DECISION_RULE``."""
    pts = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    seeds = f", {g['n_seeds']} seed(s) each" if g["n_seeds"] > 1 else ""
    head = (f"Gap, most accurate mobile model ({g['mobile']}) minus most accurate non-mobile model ({g['other']}): "
            f"{pts(g['gap'])} points, 95% interval [{pts(g['ci_low'])}, {pts(g['ci_high'])}] (paired bootstrap, "
            f"{g['n_images']} images{seeds}); margin {100 * g['margin']:g} point(s).")
    if g["p_noninferiority"] < alpha:
        return CONTRADICTED, (f"{head} The mobile model is non-inferior within the margin: p = "
                              f"{g['p_noninferiority']:.3g} for \"worse by the margin or more\" (equivalence, two "
                              f"one-sided tests: p = {g['p_equivalence']:.3g}).")
    if g["p_inferiority"] < alpha:
        return SUPPORTED, (f"{head} The mobile model is worse by more than the margin: p = {g['p_inferiority']:.3g} "
                           f"for \"worse by less than the margin\".")
    return INCONCLUSIVE, (f"{head} Inconclusive: the gap lies between {pts(g['ci_low'])} and {pts(g['ci_high'])} "
                          f"points; neither non-inferiority (p = {g['p_noninferiority']:.3g}) nor a deficit beyond the "
                          f"margin (p = {g['p_inferiority']:.3g}) is shown at alpha = {alpha:g}.")


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
           min_images: int = DEFAULT_MIN_IMAGES, margin: float = DEFAULT_MARGIN) -> DeviceVerdict:
    """The verdict of one device on the claim, by ``DECISION_RULE``.

    Args:
        device: the device name.
        lines: its result lines without error.
        budgets_ms: p50 latency budgets (ms).
        alpha: significance level of the tests.
        min_images: fewest paired images for a verdict other than inconclusive.
        margin: the equivalence margin of the accuracy gap (a share: 0.01 is one point).

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
    mobile_model, other_model = best_model(mobile), best_model(other)
    v.best_mobile, v.best_other = most_accurate(mobile_model), most_accurate(other_model)
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

    _accuracy_condition(v, alpha, min_images, blockers)
    for point in (v.best_mobile, v.best_other):
        if point is not None and point.line.get("export_warning"):
            v.reasons.append(f"{point.label} was flagged at export: {point.line['export_warning']}; its accuracy "
                             f"here is measured on the device, but it does not behave like its Keras model.")
    speed_notes: list[str] = []
    _speed_conditions(v, budgets_ms, speed_notes)
    v.reasons += speed_notes  # the speed facts inform the reader; the verdict is the accuracy gap's
    if mobile_model and other_model and not blockers:
        v.gap, why = gap_estimate(mobile_model, other_model, margin)
        if v.gap is None:
            blockers.append(f"No gap estimate: {why}.")
    if blockers or v.gap is None:
        v.verdict = INCONCLUSIVE
        v.reasons += blockers
    else:
        v.verdict, sentence = _gap_words(v.gap, alpha)
        v.reasons.append(sentence)
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
            return best, (f"the most accurate ({percent(best.accuracy)}, p50 {ms_text(best.p50_ms)} ms), and no faster "
                          f"model is as accurate")
        test, _why = paired_test(point, best)
        if test is not None and test["p_value"] >= alpha:
            return point, (f"{percent(point.accuracy)}, p50 {ms_text(point.p50_ms)} ms: the fastest model not "
                           f"significantly less accurate than the most accurate, {best.label} ({percent(best.accuracy)}, "
                           f"p50 {ms_text(best.p50_ms)} ms; McNemar p = {test['p_value']:.2g})")
    return best, f"the most accurate ({percent(best.accuracy)})"
