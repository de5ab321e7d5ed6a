"""Probabilities that mean something: temperature scaling, priors, ECE, and the report's section."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from device.calibration import (SURVEY_MIX, accuracy_coverage, adjust_prior, apply_temperature,
                                expected_calibration_error, fit_temperature, parse_prior, reliability_bins)
from test_bench_run import QUICK, bench, exports_dir, read_lines  # noqa: F401  (fixture)


def _overconfident(n: int = 3000, sharpen: float = 3.0, seed: int = 0):
    """Scores whose calibrated posterior is softmax(1.5 x): the model reports softmax(sharpen x)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0.0, 1.0, (n, 3))
    x[np.arange(n), y] += 1.5
    p = np.exp(sharpen * x)
    return p / p.sum(1, keepdims=True), y


def test_temperature_recovers_the_calibrated_posterior_and_lowers_ece():
    probs, y = _overconfident()
    t = fit_temperature(probs, y)
    assert t == pytest.approx(3.0 / 1.5, rel=0.08)  # the Bayes posterior of this set-up is softmax(1.5 x)
    before, after = expected_calibration_error(probs, y), expected_calibration_error(apply_temperature(probs, t), y)
    assert after < before / 2
    assert (apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()  # never changes the class
    calibrated, _ = _overconfident(sharpen=1.5)
    assert fit_temperature(calibrated, y) == pytest.approx(1.0, abs=0.08)


def test_ece_reliability_and_coverage_by_hand():
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    y = np.array([0, 1, 0, 1])
    # bins: 0.9 (2 images, 1 right): gap 0.4; 0.6 (1 right): gap 0.4; 0.7 (1 right): gap 0.3
    assert expected_calibration_error(probs, y) == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4)
    bins = [b for b in reliability_bins(probs, y) if b.count]
    assert [b.count for b in bins] == [1, 1, 2] and bins[-1].accuracy == 0.5
    coverage, accuracy, threshold = accuracy_coverage(probs, y)
    assert list(coverage) == [0.25, 0.5, 0.75, 1.0] and accuracy[-1] == 0.75 and threshold[0] == 0.9
    assert expected_calibration_error(np.array([[1.0, 0.0, 0.0]]), np.array([0])) == 0.0


def test_mix_metrics_by_hand():
    from device.calibration import mix_metrics

    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.eye(3)[[0, 1, 1, 2, 2, 2]] * 0.9 + 0.1 / 3
    balanced = mix_metrics(p, y, (1 / 3,) * 3, (1 / 3,) * 3)
    assert balanced["accuracy"] == pytest.approx(4 / 6) and balanced["purity"][1] == pytest.approx(0.5)
    survey = mix_metrics(p, y, (1 / 3,) * 3)  # recall per class 0.5, 0.5, 1 weighted by 44 / 6.2 / 49.8
    assert survey["accuracy"] == pytest.approx(0.44 * 0.5 + 0.062 * 0.5 + 0.498)
    # purity of QSO under the mix: its right answers (0.062 * 0.5) among all it called QSO
    assert survey["purity"][1] == pytest.approx(0.031 / (0.031 + 0.44 * 0.5))
    assert survey["completeness"] == balanced["completeness"]


def test_prior_is_bayes_rule():
    p = np.array([[0.5, 0.3, 0.2]])
    q = adjust_prior(p, (1 / 3,) * 3, SURVEY_MIX)
    expected = np.array([0.5 * 0.44, 0.3 * 0.062, 0.2 * 0.498])
    assert np.allclose(q, expected / expected.sum())
    assert np.allclose(adjust_prior(p, (1 / 3,) * 3, parse_prior("balanced")), p)
    assert parse_prior("2,1,1") == (0.5, 0.25, 0.25) and parse_prior("survey") == SURVEY_MIX
    for bad in ("1,2", "a,b,c", "0,1,1", "nan,1,1", "inf,1,1", "-1,1,1", "natural"):
        with pytest.raises(ValueError, match="--prior"):
            parse_prior(bad)


def test_report_shows_calibration_and_writes_the_recommendation(exports_dir, tmp_path):  # noqa: F811
    exports = tmp_path / "exports"
    shutil.copytree(exports_dir, exports)
    manifest = json.loads((exports / "manifest.json").read_text())
    for record in manifest["artifacts"]:
        record["temperature"] = 1.5
    (exports / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "r.jsonl"
    assert bench("run", "--models", str(exports), "--out", str(out), *QUICK).returncode == 0
    lines = read_lines(out)
    assert all(len(line["probabilities"]) == line["n_images"] and line["temperature"] == 1.5 for line in lines)

    done = bench("report", "--results", str(out), "--exports", str(exports), "--out", str(tmp_path / "rep"))
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## 7. Probabilities: calibration and abstention", 1)[1]
    line = lines[0]
    probs, labels = np.asarray(line["probabilities"]), np.asarray(line["label_indices"])
    row = next(r for r in section.splitlines() if r.startswith(f"| {line['artifact_id']} |"))
    assert f"{100 * expected_calibration_error(probs, labels):.1f}%" in row
    assert f"{100 * expected_calibration_error(apply_temperature(probs, 1.5), labels):.1f}%" in row
    assert list((tmp_path / "rep").glob("reliability-*.png")) and list((tmp_path / "rep").glob("accuracy-coverage-*.png"))

    # #21 item 6: every model on the study's mix, from the same per-image probabilities
    from device.calibration import mix_metrics

    mix = md.split("## 8. On the study's class mix", 1)[1]
    expected = mix_metrics(apply_temperature(probs, 1.5), labels, (1 / 3,) * 3)
    row = next(r for r in mix.splitlines() if r.startswith(f"| {line['artifact_id']}"))
    assert f"{100 * expected['accuracy']:.1f}%" in row and "purity / completeness" in mix

    recommendation = json.loads((exports / "recommendation.json").read_text())
    assert recommendation["artifact_id"] in {a["artifact_id"] for a in manifest["artifacts"]}
    assert "## 6. Recommendation" in md and recommendation["reason"] in md
    from device.classify import Classifier

    assert Classifier(exports).info.artifact_id == recommendation["artifact_id"]
