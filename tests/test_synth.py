"""train.synth: deterministic SDSS-like cutouts, a valid dataset folder, clear refusals."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from device.dataset import LABELS, read_manifest
from device.images import read_rgb
from train.synth import SynthSummary, class_counts, synthesize

REAL = Path(__file__).parents[2] / "shared/data/sdss-dr16-128"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "a"
    return out, synthesize(out, n=24, size=64, seed=3, workers=1)


def test_same_seed_is_byte_identical_whatever_the_workers(small, tmp_path):
    out, _ = small
    again = tmp_path / "b"
    synthesize(again, n=24, size=64, seed=3, workers=2)
    first, second = _files(out), _files(again)
    assert sorted(first) == sorted(second)
    assert "manifest.csv" in first and "synth.json" in first
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_differs(small, tmp_path):
    out, _ = small
    other = tmp_path / "c"
    synthesize(other, n=24, size=64, seed=4, workers=1)
    first, second = _files(out), _files(other)
    differing = [n for n in first if n.endswith(".jpg") and first[n] != second.get(n)]
    assert len(differing) > 0


def test_images_manifest_and_split(small):
    out, summary = small
    assert summary.counts == class_counts(24, (0.44, 0.062, 0.498))
    assert sum(summary.counts.values()) == 24
    dataset = read_manifest(out)
    assert len(dataset.records) == 24
    for label in LABELS:
        rows = [r for r in dataset.records if r.label == label]
        assert len(rows) == summary.counts[label]
        # stratified: each class keeps its 15% shares of val and test, rounded per class
        assert sum(r.split == "val" for r in rows) == int(round(len(rows) * 0.15))
        assert sum(r.split == "test" for r in rows) == int(round(len(rows) * 0.15))
        assert all(r.source == "synth" and r.path.startswith(f"{label}/synth-") for r in rows)
        assert all(r.objid == Path(r.path).stem for r in rows)
    for record in dataset.records:
        image = read_rgb(dataset.resolve(record))
        assert image.shape == (64, 64, 3)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["seed"] == 3 and meta["size"] == 64 and meta["galsim_version"]
    assert len(meta["objects"]) == 24


def test_class_counts_largest_remainder():
    assert class_counts(1000, (0.44, 0.062, 0.498)) == {"GALAXY": 440, "QSO": 62, "STAR": 498}
    assert class_counts(10, (1 / 3, 1 / 3, 1 / 3)) == {"GALAXY": 4, "QSO": 3, "STAR": 3}
    assert sum(class_counts(7, (0.44, 0.062, 0.498)).values()) == 7


def test_progress_reaches_n(tmp_path):
    calls = []
    synthesize(tmp_path / "p", n=5, size=32, seed=0, workers=1, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (5, 5)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("kwargs, words", [
    ({"n": 0}, "n must be a positive integer"),
    ({"n": -3}, "n must be a positive integer"),
    ({"size": 16}, "size must be an integer from 32 to 2048"),
    ({"size": 4096}, "size must be an integer from 32 to 2048"),
    ({"mix": (0.5, 0.5)}, "mix must be three non-negative numbers"),
    ({"mix": (0.5, -0.1, 0.6)}, "mix must be three non-negative numbers"),
    ({"mix": (0.5, 0.5, 0.5)}, "mix must be three non-negative numbers"),
    ({"workers": 0}, "workers must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"val": 1.2}, "val and test must be fractions"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, words):
    args = {"out": tmp_path / "x", "n": 3, "size": 32, "workers": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        synthesize(**args)
    assert not list((tmp_path / "x").rglob("*.jpg"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=f"output folder {locked}"):
            synthesize(locked / "out", n=3, size=32, workers=1)
    finally:
        locked.chmod(0o700)


def test_output_path_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=f"output folder {blocker}"):
        synthesize(blocker, n=3, size=32, workers=1)


def test_background_close_to_real_dev(tmp_path):
    """The sky in synthetic cutouts is as dark and as noisy as in real ones (within 40%)."""
    if not (REAL / "labels.csv").is_file():
        pytest.skip(f"{REAL} not available")
    from train.realism import balanced_sample, image_stats, real_images

    synthesize(tmp_path / "s", n=18, size=128, seed=0, mix=(1 / 3, 1 / 3, 1 / 3), workers=1)
    synth = [image_stats(read_rgb(p)) for p in sorted((tmp_path / "s").rglob("*.jpg"))]
    real = [image_stats(read_rgb(p)) for p, _ in balanced_sample(real_images(REAL), 60, seed=0)]
    for key in ("bg_G", "noise_R", "noise_G", "noise_B"):
        s = np.median([x[key] for x in synth])
        r = np.median([x[key] for x in real])
        assert 0.6 < s / r < 1.4, (key, s, r)
