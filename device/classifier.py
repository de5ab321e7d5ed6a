"""The ``Classifier``: an exported model with everything needed to label sky images,
TensorFlow-free (the Python API behind ``skyedge classify``).

    from device.classify import Classifier     # or device.classifier
    clf = Classifier("exports/", prior="survey", min_confidence=0.8)
    for r in clf.predict(["a.jpg", "b.png"]):   # paths, or RGB uint8 arrays
        print(r.path, r.label, r.confidence, r.probabilities, r.error)

A model is a ``.tflite`` or ``.onnx`` file, which describes itself (``device.model_info``), or
an exports folder, where ``artifact`` picks one (default: ``recommendation.json``, written by
``bench report --exports``, else the most accurate artifact on validation). Images are
decoded and converted exactly as in training (any mode to RGB, Pillow's antialiased bilinear
resize to the square input, a non-square image stretched); probabilities are scaled by the
model's fitted temperature and, with ``prior``, moved from the training mix to another one
(``device.calibration``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from device import exports_manifest
from device.calibration import PROB_FLOOR, parse_prior
from device.command import native_output_hidden
from device.images import ImageError, decode, resize
from device.model_info import ModelInfo, model_info
from device.runtime import ModelLoadError, RuntimeUnavailable, load

RECOMMENDATION = "recommendation.json"  # written into an exports folder by `bench report --exports`


class ClassifyError(ValueError):
    """A model, input or option classify cannot use; the message names it and what was expected."""


class Result(NamedTuple):
    """One image's answer.

    Attributes:
        path: the image's path as given (``""`` for an array).
        label: the class, ``None`` when abstained or failed.
        probabilities: class -> probability (after temperature and prior), empty on error.
        confidence: the top probability (``nan`` on error).
        abstained: the confidence is below the classifier's ``min_confidence``.
        error: why the image could not be classified (``None`` when it was).
        conversions: what was done to the image, by kind: ``mode L`` (converted to RGB),
            ``non-square`` (stretched to the square input), ``other size`` (a square image
            resized to the input's side).
    """

    path: str
    label: str | None
    probabilities: dict
    confidence: float
    abstained: bool
    error: str | None = None
    conversions: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------- the model


def _choose_artifact(exports: Path, artifact: str | None) -> dict:
    """The manifest record to classify with (see the module docstring for the default)."""
    try:
        records = [r for r in exports_manifest.read_artifacts(exports) if isinstance(r, dict)]
    except (FileNotFoundError, ValueError) as exc:
        raise ClassifyError(str(exc)) from None
    usable = [r for r in records if r.get("file") and not r.get("error") and (exports / r["file"]).is_file()]
    by_id = {r.get("artifact_id"): r for r in usable}
    if artifact is not None:
        if artifact not in by_id:
            raise ClassifyError(f"--artifact {artifact!r}: not a usable artifact of {exports}; expected one of "
                                f"{', '.join(sorted(map(str, by_id))) or '(none)'}")
        return by_id[artifact]
    if not usable:
        raise ClassifyError(f"{exports}: no exported model file to classify with (every artifact failed or is missing)")
    recommended = exports / RECOMMENDATION
    if recommended.is_file():
        try:
            chosen = json.loads(recommended.read_text(encoding="utf-8")).get("artifact_id")
        except (OSError, ValueError, AttributeError):
            chosen = None
        if chosen in by_id:
            return by_id[chosen]
    # the most accurate on the validation images; ties: the smaller file, then the id
    return min(usable, key=lambda r: (-_number(r.get("val_accuracy")), _number(r.get("size_bytes")),
                                      str(r.get("artifact_id"))))


def _number(value) -> float:
    """A manifest field as a number for ranking (0 when missing or not a finite number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def resolve_model(model: str | os.PathLike, artifact: str | None = None) -> tuple[Path, dict | None]:
    """``(model file, its manifest record or None)`` for a model file or an exports folder.

    Raises:
        ClassifyError: not a model file or an exports folder, or no such artifact.
    """
    path = Path(model)
    if path.is_dir():
        if not (path / exports_manifest.MANIFEST).is_file():
            raise ClassifyError(f"--model {path}: a folder without {exports_manifest.MANIFEST}; expected an exports "
                                f"folder (or an extracted bundle) or a .tflite/.onnx file")
        record = _choose_artifact(path, artifact)
        return path / record["file"], record
    if artifact is not None:
        raise ClassifyError(f"--artifact {artifact!r} picks a model of an exports folder; --model {path} is a file")
    if path.suffix.lower() not in (".tflite", ".onnx"):
        raise ClassifyError(f"--model {path}: expected a .tflite or .onnx file or an exports folder")
    if not path.is_file():
        raise ClassifyError(f"--model {path}: no such file")
    return path, None


class Classifier:
    """An exported model with everything needed to label images.

    Args:
        model: a ``.tflite``/``.onnx`` file or an exports folder.
        artifact: an artifact id of the exports folder (default: see the module docstring).
        threads: runtime threads (``None``: the runtime's default).
        prior: ``balanced``, ``survey``, ``a,b,c`` or a sequence of fractions: the class mix
            the probabilities are moved to (``None``: the training mix, unchanged).
        min_confidence: below this top probability an answer abstains (0..1).
        calibrated: apply the model's fitted temperature (``False``: raw probabilities).
        runtime: ``litert``, ``onnxruntime`` or ``tensorflow`` (default: from the suffix).

    Raises:
        ClassifyError: an unusable model, prior or option.
    """

    def __init__(self, model: str | os.PathLike, artifact: str | None = None, threads: int | None = None,
                 prior: str | Sequence[float] | None = None, min_confidence: float = 0.0, calibrated: bool = True,
                 runtime: str | None = None):
        if not (isinstance(min_confidence, (int, float)) and 0.0 <= min_confidence <= 1.0):
            raise ClassifyError(f"min_confidence {min_confidence!r}: expected a number from 0 to 1")
        self.path, record = resolve_model(model, artifact)
        try:
            with native_output_hidden():  # LiteRT's delegate note
                self.model = load(self.path, runtime=runtime, threads=threads)
            self.info: ModelInfo = model_info(self.path, record, self.model.input_shape)
            self.prior = parse_prior(prior, self.info.labels)
        except (ModelLoadError, RuntimeUnavailable, ValueError) as exc:  # ModelInfoError is a ValueError
            raise ClassifyError(str(exc)) from None
        size = self.info.img_size
        if tuple(self.model.input_shape[1:3]) != (size, size):
            raise ClassifyError(f"{self.path}: described as {size}x{size} px but its input is "
                                f"{self.model.input_shape[1]}x{self.model.input_shape[2]}")
        self.min_confidence = float(min_confidence)
        self.temperature = self.info.temperature if calibrated else 1.0
        self._inverse_t = 1.0 / self.temperature
        target = np.asarray(self.prior if self.prior is not None else self.info.train_prior, np.float64)
        self._ratio = target / np.asarray(self.info.train_prior, np.float64)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Calibrated, prior-adjusted probabilities of one RGB uint8 image at the model's size:
        ``p^(1/T) * prior / train prior``, normalised (``apply_temperature`` then ``adjust_prior``
        in one pass, which matters at a thousand images a second)."""
        p = np.clip(self.model.predict(image).astype(np.float64), PROB_FLOOR, None)
        q = (p ** self._inverse_t if self._inverse_t != 1.0 else p) * self._ratio
        return q / q.sum()

    def classify(self, item: str | os.PathLike | np.ndarray) -> Result:
        """One image: a path (decoded and converted as in training) or an RGB uint8 array."""
        name, conversions = ("" if isinstance(item, np.ndarray) else str(item)), []
        try:
            image = self._image(item, conversions)
        except ImageError as exc:
            return Result(name, None, {}, math.nan, False, str(exc))
        p = self.probabilities(image)
        top = int(np.argmax(p))
        confidence = float(p[top])
        abstained = confidence < self.min_confidence
        return Result(name, None if abstained else self.labels[top],
                      {label: float(v) for label, v in zip(self.labels, p)}, confidence, abstained,
                      None, tuple(conversions))

    def _image(self, item, conversions: list[str]) -> np.ndarray:
        size = self.info.img_size
        if isinstance(item, np.ndarray):
            image, mode = np.asarray(item), "RGB"
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ImageError(f"array of shape {image.shape} {image.dtype}: expected (H, W, 3) uint8 RGB")
        else:
            image, mode = decode(item)
        if mode != "RGB":
            conversions.append(f"mode {mode}")
        if image.shape[0] != image.shape[1]:
            conversions.append("non-square")
        elif image.shape[0] != size:
            conversions.append("other size")
        return resize(image, size)

    def iter_predict(self, items: Iterable[str | os.PathLike | np.ndarray]) -> Iterator[Result]:
        """Classify ``items`` one at a time, yielding each result as it is ready."""
        for item in items:
            yield self.classify(item)

    def predict(self, items: Iterable[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray) -> list[Result]:
        """Classify paths or arrays (a single one is a list of one)."""
        if isinstance(items, (str, os.PathLike)) or (isinstance(items, np.ndarray) and items.ndim == 3):
            items = [items]
        return list(self.iter_predict(items))
