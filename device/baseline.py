"""Floors for every accuracy: the majority class and a logistic regression on six features.

A model is evidence only when it beats what a trivial rule gets on the same images. Two
floors, both numpy-only so that the sweep's summary and the device report compute them the
same way:

- **majority**: always answer the most frequent class of the training split;
- **features**: a multinomial logistic regression on six hand-made measurements of the
  central object (log flux, log peak, half-light radius, two colours, concentration; see
  ``image_stats``), trained on the training split and scored on the test split.

The measurements are made on the RGB cutout after JPEG decoding, in 8-bit pixel units.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BORDER = 8  # pixels along each edge treated as background (at 128 px)
APERTURE = 6.0  # pixels: central aperture radius, about 2.4" or 1.7 PSF FWHM at 0.4"/px
SIZE_RADIUS = 16.0  # pixels: the half-light radius is measured within this radius
STATS = ("bg_R", "bg_G", "bg_B", "noise_R", "noise_G", "noise_B", "flux", "peak", "hlr",
         "colour_RG", "colour_GB")
FEATURES = ("log_flux", "log_peak", "hlr", "colour_RG", "colour_GB", "concentration")


def _clipped_mean_std(values: np.ndarray, rounds: int = 3, k: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation after iterative k-sigma clipping.

    A median or MAD of 8-bit pixels is quantised to whole levels (nearly every image gives
    a MAD of 2.97), so clipped moments are used instead: continuous, yet blind to
    neighbours.
    """
    mean = np.empty(values.shape[1])
    out = np.empty(values.shape[1])
    for c in range(values.shape[1]):
        v = values[:, c]
        for _ in range(rounds):
            centre, spread = np.median(v), v.std()
            kept = v[np.abs(v - centre) <= k * max(spread, 0.5)]
            if len(kept) == len(v):
                break
            v = kept
        mean[c], out[c] = v.mean(), v.std()
    return mean, out


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Background, noise and central-object statistics of one RGB cutout.

    Args:
        image: (H, W, 3) uint8 array; the object is at the centre.

    Returns:
        A dict with the keys of ``STATS``, in 8-bit pixel units (flux: summed over the
        aperture and the three channels; hlr in pixels).
    """
    img = image.astype(np.float64)
    h, w, _ = img.shape
    border = BORDER * h // 128 or 1
    mask = np.zeros((h, w), dtype=bool)
    mask[:border] = mask[-border:] = True
    mask[:, :border] = mask[:, -border:] = True
    edge = img[mask]
    bg, noise = _clipped_mean_std(edge)
    sub = img - bg
    y, x = np.mgrid[0:h, 0:w]
    radius = np.hypot(x - (w - 1) / 2.0, y - (h - 1) / 2.0)
    scale = h / 128.0
    ap = radius <= APERTURE * scale
    channel_flux = sub[ap].sum(axis=0)
    flux = float(channel_flux.sum())
    lum = sub.sum(axis=2)
    centre = lum[radius <= 2.5 * scale]
    peak = float(centre.max())
    within = radius <= SIZE_RADIUS * scale
    r_in, l_in = radius[within], lum[within]
    order = np.argsort(r_in, kind="stable")
    cumulative = np.cumsum(l_in[order])
    total = cumulative[-1]
    if total > 0:
        hlr = float(r_in[order][np.searchsorted(cumulative, 0.5 * total)]) / scale
    else:
        hlr = float("nan")
    denom = max(float(np.clip(channel_flux, 0, None).sum()), 1.0)
    return {
        "bg_R": float(bg[0]), "bg_G": float(bg[1]), "bg_B": float(bg[2]),
        "noise_R": float(noise[0]), "noise_G": float(noise[1]), "noise_B": float(noise[2]),
        "flux": flux, "peak": peak, "hlr": hlr,
        "colour_RG": float((channel_flux[0] - channel_flux[1]) / denom),
        "colour_GB": float((channel_flux[1] - channel_flux[2]) / denom),
    }


def features(stats: list[dict]) -> np.ndarray:
    """The classifier's feature matrix (rows: images, columns: ``FEATURES``)."""
    rows = []
    for s in stats:
        flux = max(s["flux"], 1.0)
        peak = max(s["peak"], 1.0)
        hlr = s["hlr"] if np.isfinite(s["hlr"]) else SIZE_RADIUS
        rows.append([np.log10(flux), np.log10(peak), hlr, s["colour_RG"], s["colour_GB"],
                     np.log10(peak / flux)])
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class LogisticRegression:
    """A fitted multinomial logistic regression on standardised features (numpy only).

    Attributes:
        mean, std: per-feature standardisation learnt on the training rows.
        weights: (F + 1, K) weights, the last row the bias.
    """

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int | None = None, steps: int = 2000,
            lr: float = 0.5, l2: float = 1e-3) -> "LogisticRegression":
        """Full-batch gradient descent on the mean cross-entropy plus an L2 penalty.

        Args:
            x: (N, F) features. y: (N,) class indices.
            n_classes: number of classes (default ``y.max() + 1``).
            steps, lr, l2: optimisation settings (deterministic: no randomness at all).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
        xs = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
        k = int(n_classes or y.max() + 1)
        w = np.zeros((xs.shape[1], k))
        onehot = np.eye(k)[y]
        for _ in range(steps):
            logits = xs @ w
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            w -= lr * (xs.T @ (p - onehot) / len(xs) + l2 * w)
        return cls(mean=mean, std=std, weights=w)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, K) class probabilities."""
        xs = np.hstack([(np.asarray(x, dtype=np.float64) - self.mean) / self.std, np.ones((len(x), 1))])
        logits = xs @ self.weights
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N,) predicted class indices."""
        return self.probabilities(x).argmax(axis=1)


def image_features(images: np.ndarray) -> np.ndarray:
    """The feature matrix of a stack of RGB uint8 cutouts (N, H, W, 3)."""
    return features([image_stats(image) for image in images])


def majority_class(train_labels: np.ndarray) -> int:
    """The most frequent class of the training labels (lowest index on ties)."""
    return int(np.bincount(np.asarray(train_labels, dtype=np.int64)).argmax())


BASELINE_SIZE = 128  # features are measured at the cutouts' native 128 px (0.4"/px)


@dataclass(frozen=True)
class Floors:
    """The two floors on one split of a dataset.

    Attributes:
        split: the split scored (``test``). paths: its images, in order. labels: true classes.
        majority: the training split's most frequent class.
        feature_probs: (N, C) probabilities of the feature logistic regression.
    """

    split: str
    paths: tuple[str, ...]
    labels: np.ndarray
    majority: int
    feature_probs: np.ndarray

    def record(self) -> dict:
        """A flat record: each floor's accuracy with its Wilson interval and macro-F1."""
        from device.dataset import LABELS
        from device.metrics import classification_metrics

        out = {"split": self.split, "n": len(self.labels), "majority_class": LABELS[self.majority],
               "features": list(FEATURES), "features_size": BASELINE_SIZE}
        for name, pred in (("majority", np.full(len(self.labels), self.majority)),
                           ("features", self.feature_probs.argmax(axis=1))):
            m = classification_metrics(self.labels, pred, prefix="")
            out.update({f"{name}_{k}": m[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1")})
        return out

    def paired(self) -> dict:
        """Per-image lists sorted by path, as ``bench run`` lines carry them, to pair with models.

        ``images_sha256`` names the image set; ``label_indices``, ``features_pred_indices``
        and ``majority_pred_index`` give the truth and the floors' answers.
        """
        from device.predictions import images_sha256

        order = sorted(range(len(self.paths)), key=self.paths.__getitem__)
        pred = self.feature_probs.argmax(axis=1)
        return {"images_sha256": images_sha256(self.paths), "label_indices": [int(self.labels[i]) for i in order],
                "features_pred_indices": [int(pred[i]) for i in order], "majority_pred_index": int(self.majority)}


def floors(dataset, split: str = "test", size: int = BASELINE_SIZE, train=None) -> Floors:
    """Fit both floors on a training split and score them on ``dataset``'s ``split``.

    Args:
        dataset: a ``device.dataset.Dataset``.
        split: the split to score (``test`` by default; never one used for choices).
        size: the side images are read at for the features.
        train: the dataset whose training split fits the floors (default ``dataset``): the
            models' own training set when ``dataset`` is a separate evaluation set.

    Raises:
        ValueError: an empty training split or an empty ``split``.
    """
    from device.dataset import LABELS

    train = dataset if train is None else train
    fit_on = train.load_arrays("train", size)
    scored = dataset.load_arrays(split, size)
    if not len(fit_on.labels):
        raise ValueError(f"{train.root}: floors need a training split to fit on")
    if not len(scored.labels):
        raise ValueError(f"{dataset.root}: no readable images in split {split!r}")
    model = LogisticRegression.fit(image_features(fit_on.images), fit_on.labels, n_classes=len(LABELS))
    return Floors(split=split, paths=tuple(r.path for r in scored.records), labels=scored.labels,
                  majority=majority_class(fit_on.labels), feature_probs=model.probabilities(image_features(scored.images)))
