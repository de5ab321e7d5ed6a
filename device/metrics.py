"""Classification statistics in numpy: accuracy with a Wilson interval, per-class
precision/recall/F1, confusion matrix, and McNemar's paired test.

Shared by training (metrics.json), export verification and the on-device benchmark, so a
figure means the same thing at every stage.
"""
from __future__ import annotations

import math

import numpy as np

from device.dataset import LABELS

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Returns ``(nan, nan)`` for ``n == 0``.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(LABELS)) -> np.ndarray:
    """Counts ``[true, predicted]`` as an int64 (C, C) array."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(y_true, y_pred, prefix: str = "val_", labels=LABELS) -> dict:
    """Flat metrics record for predictions against labels.

    Args:
        y_true: true class indices (N,).
        y_pred: predicted class indices (N,).
        prefix: key prefix naming the phase (``val_``).
        labels: class names, in index order.

    Returns:
        ``{prefix}n``, ``accuracy`` with ``accuracy_ci_low``/``_high`` (Wilson 95%),
        ``macro_f1``, per-class ``precision_<LABEL>``, ``recall_<LABEL>``, ``f1_<LABEL>``,
        ``support_<LABEL>`` and ``confusion`` (rows true, columns predicted). A class with
        no predictions has precision 0 (as scikit-learn's ``zero_division=0``).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    cm = confusion_matrix(y_true, y_pred, len(labels))
    n = int(cm.sum())
    correct = int(np.trace(cm))
    low, high = wilson_interval(correct, n)
    out = {f"{prefix}n": n, f"{prefix}accuracy": correct / n if n else float("nan"),
           f"{prefix}accuracy_ci_low": low, f"{prefix}accuracy_ci_high": high}
    f1s = []
    for c, label in enumerate(labels):
        tp = int(cm[c, c])
        predicted = int(cm[:, c].sum())
        support = int(cm[c, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update({f"{prefix}precision_{label}": precision, f"{prefix}recall_{label}": recall,
                    f"{prefix}f1_{label}": f1, f"{prefix}support_{label}": support})
        if support:
            f1s.append(f1)
    out[f"{prefix}macro_f1"] = float(np.mean(f1s)) if f1s else float("nan")
    out[f"{prefix}confusion"] = cm.tolist()
    return out


def binomial_lower_tail(k: int, m: int) -> float:
    """P(X <= k) for X ~ Binomial(m, 1/2), for any ``m``.

    Exact integer arithmetic up to a few thousand trials (Python's int division rounds
    correctly however large the numbers); beyond, a log-space sum of the terms, so that no
    power of two ever overflows a float.
    """
    if k < 0:
        return 0.0
    if k >= m:
        return 1.0
    if m <= 4096:
        return sum(math.comb(m, i) for i in range(k + 1)) / (1 << m)
    log_terms = np.array([math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in range(k + 1)])
    top = log_terms.max()
    return float(math.exp(top + math.log(np.exp(log_terms - top).sum()) - m * math.log(2.0)))


# How every table and sentence of SkyEdge reads McNemar's counts: the model under test comes
# first (A: the row's model, the mobile model of the verdict), what it is compared with second.
MCNEMAR_CONVENTION = ("McNemar's b = images only the model under test (the row's, or the mobile model) got right, "
                      "c = images only the model it is compared with got right.")


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test of two classifiers on the same items.

    Uses the exact two-sided binomial test on the discordant pairs (``b`` = A right and B
    wrong, ``c`` = A wrong and B right), which is valid for small counts.

    Returns:
        ``{"b": int, "c": int, "n": int, "p_value": float, "accuracy_diff": float}``
        with ``accuracy_diff`` = accuracy(A) - accuracy(B).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired results differ in length: {a.shape} vs {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    k, m = min(b, c), b + c
    if m == 0:
        p = 1.0
    else:
        p = min(1.0, 2.0 * binomial_lower_tail(k, m))
    n = int(a.size)
    return {"b": b, "c": c, "n": n, "p_value": p,
            "accuracy_diff": (float(a.mean()) - float(b_.mean())) if n else float("nan")}
