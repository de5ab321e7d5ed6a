"""Shared fixtures: small generated datasets and the path of the shared real SDSS set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_SDSS = REPO.parent / "shared" / "data" / "sdss-dr16-128"


def make_image(path: Path, seed: int, size: int = 48, label_index: int = 0) -> Path:
    """Write a small RGB JPEG/PNG whose colour depends on the class, so a model can learn it."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    c = size // 2
    img[c - 4:c + 4, c - 4:c + 4, label_index] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
    return path


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """A class-folder tree: 10 GALAXY, 6 QSO, 8 STAR small JPEGs."""
    root = tmp_path / "tree"
    for index, (label, count) in enumerate((("GALAXY", 10), ("QSO", 6), ("STAR", 8))):
        for i in range(count):
            make_image(root / label / f"{label.lower()}-{i:03d}.jpg", seed=100 * index + i, label_index=index)
    return root


@pytest.fixture
def shared_sdss() -> Path:
    """The shared real SDSS DR16 set; the test is skipped when it is absent."""
    if not (SHARED_SDSS / "labels.csv").is_file():
        pytest.skip(f"shared SDSS data not found at {SHARED_SDSS}")
    return SHARED_SDSS
