"""Verification of an exported artifact on the validation split, with the device's own code.

The artifact is loaded and run by ``device.runtime`` (the code the benchmark runs), one raw
image at a time, and compared with the Keras model's saved validation predictions
(``val_predictions.csv`` of the run): accuracy, top-1 agreement and the largest absolute
difference of any class probability.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from device.predictions import read_probabilities
from device.runtime import load
from train.console import hidden_output

# --strict thresholds of top-1 agreement with the Keras model, by variant
STRICT_AGREEMENT = {"fp32": 0.995, "fp16": 0.995, "dynamic": 0.97, "int8": 0.97, "qat": 0.97,
                    "tta": 0.995}  # tta: against the Keras model's own 8-view mean


@dataclass(frozen=True)
class Reference:
    """The Keras model's validation predictions of a run, aligned with the images."""

    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.probs.argmax(1) == self.labels)) if len(self.labels) else float("nan")


def read_reference(path: str | os.PathLike) -> Reference:
    """Read a run's ``val_predictions.csv`` (through ``device.predictions``).

    Raises:
        ValueError: missing columns or an empty file (names the file).
    """
    paths, labels, probs = read_probabilities(path)
    return Reference(paths=paths, labels=labels, probs=probs)


@dataclass(frozen=True)
class Verification:
    """How an artifact compares with the Keras model on the validation split."""

    val_n: int
    keras_val_accuracy: float
    val_accuracy: float
    agreement: float
    max_abs_diff: float
    keras_confidence: float = float("nan")  # the Keras model's mean top probability on these images
    probs: np.ndarray | None = None  # the artifact's probabilities (N, C), reference order
    labels: np.ndarray | None = None  # the true labels of those images

    def as_record(self) -> dict:
        return {"val_n": self.val_n, "keras_val_accuracy": round(self.keras_val_accuracy, 6),
                "val_accuracy": round(self.val_accuracy, 6),
                "accuracy_delta": round(self.val_accuracy - self.keras_val_accuracy, 6),
                "agreement": round(self.agreement, 6), "max_abs_diff": round(self.max_abs_diff, 6),
                "keras_confidence": round(self.keras_confidence, 6)}


def align(reference: Reference, images: np.ndarray, paths: list[str]) -> tuple[np.ndarray, Reference]:
    """The validation images in the reference's order, and the reference rows that have one.

    Raises:
        ValueError: no reference row matches any image (the run used another dataset).
    """
    index = {p: i for i, p in enumerate(paths)}
    keep = [i for i, p in enumerate(reference.paths) if p in index]
    if not keep:
        raise ValueError("no validation image of the dataset matches the run's val_predictions.csv; "
                         "was the run trained on another dataset?")
    ref = Reference(paths=[reference.paths[i] for i in keep], labels=reference.labels[keep],
                    probs=reference.probs[keep])
    return images[[index[p] for p in ref.paths]], ref


def verify(path: str | os.PathLike, images: np.ndarray, reference: Reference, threads: int | None = None) -> Verification:
    """Run an artifact on ``images`` (raw uint8, aligned with ``reference``) and compare.

    Args:
        path: ``.tflite`` or ``.onnx`` file.
        images: (N, H, W, 3) raw RGB pixels, row i being ``reference.paths[i]``.
        reference: the Keras model's validation predictions.
        threads: runtime threads (``None``: the runtime's default).

    Returns:
        The comparison.

    Raises:
        device.runtime.ModelLoadError, RuntimeUnavailable: the artifact cannot be loaded.
    """
    with hidden_output():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" note
        model = load(path, threads=threads)
    probs = model.predict_many(images)
    pred = probs.argmax(1)
    return Verification(
        val_n=int(len(reference.labels)),
        keras_val_accuracy=reference.accuracy,
        val_accuracy=float(np.mean(pred == reference.labels)),
        agreement=float(np.mean(pred == reference.probs.argmax(1))),
        max_abs_diff=float(np.max(np.abs(probs - reference.probs))),
        keras_confidence=float(reference.probs.max(axis=1).mean()) if len(reference.probs) else float("nan"),
        probs=probs, labels=reference.labels,
    )


UNSURE_CONFIDENCE = 0.6  # a 3-class model whose mean top probability is below this hardly prefers a class


def strict_failure(variant: str, agreement: float, keras_confidence: float = float("nan"),
                   random_weights: bool = False) -> str | None:
    """A message when ``agreement`` is below the variant's ``--strict`` threshold, else ``None``.

    The threshold protects against a conversion that changes what the model answers (a wrong
    graph, int8 ranges stretched by outliers). When the Keras model itself hardly prefers any
    class (mean top probability ``keras_confidence`` below ``UNSURE_CONFIDENCE``), or its frozen
    layers kept random weights (``random_weights``: a run from ``--weights none``, as the demo's),
    small rounding flips answers that mean nothing, so the message says so and what to do.
    """
    threshold = STRICT_AGREEMENT.get(variant, 0.97)
    if agreement >= threshold:
        return None
    message = f"agreement {100 * agreement:.2f}% < {100 * threshold:.1f}% required for {variant}"
    advice = ("judge int8 on a trained model, such as one pretrained in-domain with train.pretrain; the threshold "
              "is there to catch a conversion that changes what a trained model answers")
    if random_weights:
        message += (" (this run's frozen layers have random weights, --weights none: their features are noise that "
                    "int8 rounding reshuffles, so this agreement says nothing about the conversion; " + advice + ")")
    elif keras_confidence < UNSURE_CONFIDENCE:
        message += (f" (the Keras model's own mean top probability is {keras_confidence:.2f}: it hardly prefers a "
                    f"class, so any rounding flips its near-ties and this agreement says little about the "
                    f"conversion; {advice})")
    return message
