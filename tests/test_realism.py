"""train.realism: the statistics mean what they say, and the classifier learns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train.realism import compare, image_stats, logistic_accuracy, stratified_indices
from train.synth import synthesize

REAL = Path(__file__).parents[2] / "shared/data/sdss-dr16-128"


def _blob(sigma: float, amplitude: float, colour=(1.0, 1.0, 1.0), noise: float = 0.0, seed: int = 0):
    y, x = np.mgrid[0:128, 0:128] - 63.5
    profile = amplitude * np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    rng = np.random.default_rng(seed)
    image = 10.0 + profile[..., None] * np.array(colour) + rng.normal(0, noise, (128, 128, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def test_image_stats_background_size_and_colour():
    small, large = image_stats(_blob(1.5, 200)), image_stats(_blob(4.0, 200))
    assert small["bg_G"] == pytest.approx(10.0, abs=0.5)
    assert small["hlr"] < large["hlr"]
    assert small["flux"] < large["flux"]
    red = image_stats(_blob(2.0, 150, colour=(1.0, 0.6, 0.3)))
    assert red["colour_RG"] > 0 and red["colour_GB"] > 0
    noisy = image_stats(_blob(2.0, 150, noise=3.0))
    assert noisy["noise_R"] == pytest.approx(3.0, rel=0.25)


def test_stratified_indices_keep_class_shares():
    labels = np.repeat([0, 1, 2], [30, 60, 90])
    train, test = stratified_indices(labels, seed=1)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    assert np.bincount(labels[test]).tolist() == [9, 18, 27]


def test_logistic_accuracy_separable_vs_random():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    separable = rng.normal(0, 0.3, (180, 2)) + np.eye(3)[y][:, :2] * 3
    assert logistic_accuracy(separable, y) > 0.95
    assert logistic_accuracy(rng.normal(size=(180, 2)), y) < 0.6


def test_compare_real_and_synthetic(tmp_path):
    if not (REAL / "labels.csv").is_file():
        pytest.skip(f"{REAL} not available")
    synthesize(tmp_path / "s", n=30, size=128, seed=0, mix=(1 / 3, 1 / 3, 1 / 3), workers=1)
    summary = compare(tmp_path / "s", REAL, n=30, seed=0, figure=tmp_path / "fig.png")
    assert set(summary["stats"]) == {"real", "synth"}
    assert summary["n"]["real"] == {"GALAXY": 10, "QSO": 10, "STAR": 10}
    assert 0.0 <= summary["accuracy"]["synth"] <= 1.0
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert "| GALAXY | hlr |" in summary["table"]


def test_confusion_matches_accuracy():
    from train.realism import logistic_confusion

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(0, 1.0, (120, 2)) + np.eye(3)[y][:, :2] * 2
    confusion = logistic_confusion(x, y, seed=2)
    assert confusion.sum() == 36 and confusion.sum(axis=1).tolist() == [12, 12, 12]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(logistic_accuracy(x, y, seed=2))
