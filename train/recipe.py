"""The training recipe's choices, without TensorFlow, so that commands check them before it loads:
augmentation (and its transform, in numpy) and the learning-rate schedules (``train.trainer``).

``d4``: each image turned by a random quarter turn and flipped or not, drawn per image and
epoch: the 8 symmetries of the square, under which a sky cutout's class does not change.
"""
from __future__ import annotations

import numpy as np

AUGMENTS = ("none", "d4")  # d4: the 8 flips and quarter turns of the square, drawn per image and epoch
LR_SCHEDULES = ("cosine", "constant")  # cosine: decay to zero over all training steps


def d4(images: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Apply one of the 8 rotations/flips (``code`` 0..7) to each image of a batch."""
    out = np.empty_like(images)
    for i, code in enumerate(codes):
        img = np.rot90(images[i], k=int(code) % 4, axes=(0, 1))
        out[i] = img[:, ::-1] if code >= 4 else img
    return out
