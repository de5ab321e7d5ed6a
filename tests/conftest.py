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


def make_labelled_dataset(root: Path, per_class: int = 6, val: int = 4, size: int = 40) -> None:
    """A dataset folder of class-coloured JPEGs under ``images/``: ``val`` per class in val."""
    from device.dataset import LABELS, Record, write_manifest

    records = []
    for index, label in enumerate(LABELS):
        for i in range(per_class):
            path = f"images/{label}/{label.lower()}-{i}.jpg"
            make_image(root / path, seed=10 * index + i, size=size, label_index=index)
            records.append(Record(path=path, label=label, split="val" if i < val else "train"))
    write_manifest(root, records)


def write_tiny_manifest(exports: Path, stem: str, data: Path, val_n: int, size: int) -> None:
    """``manifest.json`` for ``models/<stem>-{fp32,int8}.tflite`` and ``<stem>-fp32.onnx``."""
    import json

    from device.checksum import sha256_file
    from device.dataset import LABELS

    artifacts = []
    for variant, fmt, dtype in (("fp32", "tflite", "float32"), ("int8", "tflite", "int8"), ("fp32", "onnx", "float32")):
        file = exports / "models" / f"{stem}-{variant}.{fmt}"
        artifacts.append({
            "artifact_id": f"{stem}-l0-s0-{variant}-{fmt}", "backbone": stem, "level": 0, "seed": 0,
            "variant": variant, "format": fmt, "file": f"models/{file.name}",
            "sha256": sha256_file(file),
            "size_bytes": file.stat().st_size, "input_shape": [1, size, size, 3], "input_dtype": dtype,
            "img_size": size, "preprocess": "none", "labels": list(LABELS),
            "reference_predictions": f"reference/{stem}.csv", "data": str(data), "val_n": val_n})
    (exports / "manifest.json").write_text(json.dumps({"format_version": 1, "artifacts": artifacts}, indent=2))
