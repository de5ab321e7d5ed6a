"""Probabilities that mean something: temperature scaling, class priors, calibration error.

TensorFlow-free (numpy only), shared by export (fitting), ``skyedge classify`` (applying) and
``bench report`` (measuring).

- **Temperature scaling** (Guo et al. 2017): one scalar ``T`` per model, fitted on the
  validation split by minimising the negative log-likelihood of ``softmax(log p / T)``.
  Every artifact outputs probabilities (the softmax is in the graph), so ``log p`` stands
  for the logits up to a constant, which the softmax ignores. ``T > 1`` softens an
  over-confident model; the predicted class never changes.
- **Class prior**: a classifier trained on a balanced set answers as if each class were
  equally common. Bayes' rule moves its probabilities to another mix:
  ``p'(c) ∝ p(c) · π'(c) / π(c)`` (π the training mix, π' the target one). ``SURVEY_MIX`` is
  the study's sample: 44% galaxies, 6.2% quasars, 49.8% stars.
- **Expected calibration error** (15 equal-width confidence bins), the reliability
  diagram's bins, and the accuracy-coverage curve of abstaining below a confidence.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from device.dataset import LABELS

SURVEY_MIX = (0.44, 0.062, 0.498)  # the study's sample (GALAXY, QSO, STAR)
PRIORS = ("balanced", "survey")
ECE_BINS = 15
PROB_FLOOR = 1e-6  # int8 outputs can be exactly 0: log(0) would make every temperature infinite
T_RANGE = (0.05, 20.0)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape (N, classes), got {p.shape}")
    return np.log(np.clip(p, PROB_FLOOR, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (float64); ``T = 1`` gives the rows renormalised."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature {temperature!r}: expected a finite number > 0")
    z = _log_probs(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels after temperature scaling."""
    p = apply_temperature(probs, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(p)), np.asarray(labels, int)], 1e-300, None))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` (golden-section search on log T).

    The NLL of temperature scaling is convex in 1/T, so a one-dimensional search over
    ``T_RANGE`` finds its minimum; the result is rounded to 4 significant digits so that it
    reads the same in the manifest, the model file and the report.

    Raises:
        ValueError: no rows, or probabilities and labels of different lengths.
    """
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0 or len(labels) != len(probs):
        raise ValueError(f"fit_temperature: {len(probs)} probability rows for {len(labels)} labels")
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = negative_log_likelihood(probs, labels, math.exp(a)), negative_log_likelihood(probs, labels, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = negative_log_likelihood(probs, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = negative_log_likelihood(probs, labels, math.exp(b))
    return float(f"{math.exp((lo + hi) / 2):.4g}")


def parse_prior(text: str | Sequence[float] | None, labels: Sequence[str] = LABELS) -> tuple[float, ...] | None:
    """``balanced``, ``survey`` or ``a,b,c`` (fractions in label order, normalised) as a prior.

    ``None`` or an empty string is ``None`` (no change).

    Raises:
        ValueError: an unknown name, the wrong count, or a value that is not a finite number > 0.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str):
        name = text.strip().lower()
        if name == "balanced":
            return tuple(1.0 / len(labels) for _ in labels)
        if name == "survey":
            if tuple(labels) != LABELS:
                raise ValueError(f"--prior survey is the mix of {', '.join(LABELS)}; this model's labels are "
                                 f"{', '.join(labels)}: give the fractions instead")
            return SURVEY_MIX
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"--prior {text!r}: expected balanced, survey or {len(labels)} comma-separated "
                             f"fractions ({','.join(labels)}), such as {','.join(map(str, SURVEY_MIX))}") from None
    else:
        values = [float(v) for v in text]
    if len(values) != len(labels) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"--prior {text!r}: expected {len(labels)} finite fractions > 0 ({','.join(labels)})")
    total = sum(values)
    return tuple(v / total for v in values)


def adjust_prior(probs: np.ndarray, train_prior: Sequence[float], target_prior: Sequence[float] | None) -> np.ndarray:
    """Probabilities moved from the training mix to ``target_prior`` by Bayes' rule.

    ``None`` returns the rows as they are (float64, renormalised).
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    if target_prior is not None:
        train = np.asarray(train_prior, dtype=np.float64)
        target = np.asarray(target_prior, dtype=np.float64)
        if train.shape != (p.shape[1],) or target.shape != (p.shape[1],) or np.any(train <= 0):
            raise ValueError(f"priors {list(train_prior)} -> {list(target_prior)} do not fit {p.shape[1]} classes")
        p = p * (target / train)
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


class ReliabilityBin(NamedTuple):
    """One confidence bin: its range, how many predictions fell in it, their mean confidence
    and accuracy (``nan`` when empty)."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Equal-width bins of the top-class confidence: the reliability diagram's points."""
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == np.asarray(labels, dtype=int)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # a confidence of exactly 1.0 belongs to the last bin
    index = np.minimum(np.searchsorted(edges, confidence, side="right") - 1, bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n,
                                  float(confidence[inside].mean()) if n else math.nan,
                                  float(correct[inside].mean()) if n else math.nan))
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    rows = reliability_bins(probs, labels, bins)
    n = sum(r.count for r in rows)
    if n == 0:
        return math.nan
    return float(sum(r.count * abs(r.accuracy - r.confidence) for r in rows if r.count) / n)


def accuracy_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Abstaining below a confidence threshold: ``(coverage, accuracy, threshold)`` arrays.

    Row k keeps the k+1 most confident predictions: the share of images kept, their
    accuracy, and the confidence of the last one kept.
    """
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(labels, dtype=int)).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    kept = np.arange(1, len(order) + 1)
    return kept / len(order), np.cumsum(correct[order]) / kept, confidence[order]


def mix_metrics(probs: np.ndarray, labels: np.ndarray, train_prior: Sequence[float],
                mix: Sequence[float] = SURVEY_MIX) -> dict:
    """Accuracy, purity and completeness of a classifier deployed on another class mix.

    The scored images (balanced, say) are reweighted so that class ``c`` weighs ``mix[c]`` in
    all (each image by ``mix[c] / share of c among the images``), and the model answers with
    its probabilities moved to ``mix`` by Bayes' rule (``adjust_prior``), as ``skyedge classify
    --prior`` does. Completeness is a class's recall; purity its precision under the mix.

    Returns:
        ``{"accuracy", "purity": {class index: value}, "completeness": {...}, "mix"}``
        (``nan`` for a class never predicted or absent).
    """
    labels = np.asarray(labels, dtype=int)
    k = len(mix)
    pred = adjust_prior(probs, train_prior, mix).argmax(axis=1)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    weight = np.divide(np.asarray(mix, np.float64), counts, out=np.zeros(k), where=counts > 0)[labels]
    confusion = np.zeros((k, k))
    np.add.at(confusion, (labels, pred), weight)
    total = confusion.sum()
    diag = np.diag(confusion)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    purity = {c: float(diag[c] / predicted[c]) if predicted[c] > 0 else math.nan for c in range(k)}
    completeness = {c: float(diag[c] / actual[c]) if actual[c] > 0 else math.nan for c in range(k)}
    return {"accuracy": float(diag.sum() / total) if total > 0 else math.nan, "purity": purity,
            "completeness": completeness, "mix": [float(m) for m in mix]}
