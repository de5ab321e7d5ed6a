"""The export commands' settings: ``ExportConfig`` (the one set of defaults, checked when
built), the variants each format makes, and the errors an export ends with."""
from __future__ import annotations

from dataclasses import dataclass

from device.options import SEED_MAX, check_number

TFLITE_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "qat", "tta")
# made unless --variants says otherwise; tta (8 forward passes per image) only when asked for
DEFAULT_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "qat")
SELECT_HELP = "best (each backbone's best level, seed 0 or its lowest) | all | NAME:LEVEL[:SEED][,...]"
CALIB_DEFAULT = 200


def calib_count(requested: int | None, available: int) -> int:
    """Calibration images to use: ``requested``, or the default capped at what there is."""
    return requested if requested is not None else min(CALIB_DEFAULT, available)


class ExportError(ValueError):
    """An export that cannot start as asked; the message names the option or file and the fix."""


class StrictFailure(RuntimeError):
    """``--strict``: an artifact failed or agreed too little with the Keras model."""


@dataclass(frozen=True)
class ExportConfig:
    """Resolved settings of one export command (command line beats defaults).

    Attributes:
        runs, out: the sweep folder read and the exports folder written.
        select: ``best`` (each backbone's best level), ``all``, or ``backbone:level[:seed]`` items.
        variants: the artifacts to make per run (fp32, fp16, int8, ...).
        calib, calib_seed, calib_method: the int8 calibration images (how many, which, and how
            the ranges are taken from them).
        qat_epochs: epochs of quantization-aware training for the ``qat`` variant.
        opset: the ONNX opset (ONNX exports only).
        onnx_int8: the ONNX int8 variant's form (``export.onnx.INT8_FORMS``; ONNX exports only).
        int8_rescue: ``on`` rebuilds an int8 TFLite artifact that agrees too little with its Keras
            model (``export.int8_rescue``); ``off`` keeps the plain recipe.
        strict: exit 1 when an artifact fails or agrees too little with the Keras model.
        threads: runtime threads for verification (None: the runtime's default).
    """

    runs: str
    out: str
    select: str = "best"
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    calib: int | None = None  # None: CALIB_DEFAULT, or every training image when there are fewer
    calib_seed: int = 0
    calib_method: str = "minmax"
    qat_epochs: int = 2
    opset: int = 17
    onnx_int8: str = "qoperator"  # fastest on x86 here (docs/export.md); qdq-s8 for ARM
    int8_rescue: str = "on"
    strict: bool = False
    threads: int | None = None

    def __post_init__(self):
        # --calib is checked against the training images available (``check_calibration_size``)
        if not (isinstance(self.calib_seed, int) and 0 <= self.calib_seed <= SEED_MAX):
            raise ExportError(f"--calib-seed {self.calib_seed}: expected a non-negative integer")
        if not (isinstance(self.qat_epochs, int) and self.qat_epochs >= 1):
            raise ExportError(f"--qat-epochs {self.qat_epochs}: expected at least 1")
        if not (isinstance(self.opset, int) and 13 <= self.opset <= 21):
            raise ExportError(f"--opset {self.opset}: expected 13..21 (QDQ per-channel needs 13 or later)")
        if self.threads is not None:
            try:
                check_number(self.threads, "--threads", 1, None, integer=True)
            except ValueError as exc:
                raise ExportError(str(exc)) from None
        if self.int8_rescue not in ("on", "off"):
            raise ExportError(f"--int8-rescue {self.int8_rescue!r}: expected on or off")
        if not self.variants:
            raise ExportError("--variants: expected at least one variant")


def parse_variants(text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated variant names, checked against ``allowed``, in the given order.

    Raises:
        ExportError: an unknown or no variant.
    """
    items = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ExportError(f"--variants {text!r}: expected a comma-separated subset of {','.join(allowed)}")
    return items
