import numpy as np
import pytest

from device.metrics import classification_metrics, mcnemar, wilson_interval


def test_wilson_matches_reference_values():
    # 285/300 = 95%: Wilson interval worked by hand (z = 1.96): 0.9192 .. 0.9695
    low, high = wilson_interval(285, 300)
    assert low == pytest.approx(0.9192, abs=2e-4) and high == pytest.approx(0.9695, abs=2e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_classification_metrics_by_hand():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0]
    m = classification_metrics(y_true, y_pred)
    assert m["val_accuracy"] == pytest.approx(5 / 8)
    assert m["val_precision_GALAXY"] == pytest.approx(2 / 3) and m["val_recall_GALAXY"] == pytest.approx(2 / 3)
    assert m["val_precision_QSO"] == pytest.approx(1 / 2) and m["val_recall_QSO"] == pytest.approx(1 / 2)
    assert m["val_f1_STAR"] == pytest.approx(2 / 3)
    assert m["val_macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["val_confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]


def test_mcnemar_exact():
    a = np.array([1] * 10 + [0] * 0 + [1] * 80, dtype=bool)
    b = np.array([0] * 10 + [1] * 80, dtype=bool)
    r = mcnemar(a, b)
    assert (r["b"], r["c"]) == (10, 0)
    assert r["p_value"] == pytest.approx(2 / 2 ** 10)
    assert mcnemar(a, a)["p_value"] == 1.0
