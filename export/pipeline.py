"""The export pipeline both formats share (``export.tflite`` and ``export.onnx``).

Run selection (``--select``), validation of the inputs before any conversion, the lazily
built Keras model and calibration set per run (``Context``), verification of every artifact
against the Keras model on the device code, manifest records (``device.exports_manifest``)
and the command line both exporters run (``run_cli``). A format brings only its converter.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from device.atomic import check_output_folder, write_text
from device.backbones import Backbone, get
from device.options import SEED_MAX, at_least, check_number, defaults
from device.calibration import apply_temperature, expected_calibration_error, fit_temperature
from device.checksum import sha256_file
from device.command import Exit, console_line, run_command
from device.dataset import LABELS, DatasetError, open_dataset
from device.model_info import description
from device.progress import Progress, StepTimer, duration
from device import exports_manifest as manifest
from device.sweep_results import (CHECKPOINT, CONFIG, RESULTS, TEST_PREDICTIONS, VAL_PREDICTIONS, aggregate,
                                   best_level, load_runs)
from device import sweep_results as layout
from train.console import VERBOSE_HELP, hidden_output, quiet_tensorflow
from export.embed import embed
from export.quantize import Calibration, CalibrationError, calibration_set, check_calibration_size
from export.verify import Reference, align, read_reference, strict_failure, verify

TFLITE_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "qat", "tta")
# made unless --variants says otherwise; tta (8 forward passes per image) only when asked for
DEFAULT_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "qat")
SELECT_HELP = "best (each backbone's best level, seed 0 or its lowest) | all | NAME:LEVEL[:SEED][,...]"
_VERSION_PACKAGES = {"tensorflow": "tensorflow", "tf_keras": "tf-keras", "tfmot": "tensorflow-model-optimization",
                     "tf2onnx": "tf2onnx", "onnx": "onnx", "onnxruntime": "onnxruntime",
                     "ai_edge_litert": "ai-edge-litert"}


CALIB_DEFAULT = 200


def calib_count(requested: int | None, available: int) -> int:
    """Calibration images to use: ``requested``, or the default capped at what there is."""
    return requested if requested is not None else min(CALIB_DEFAULT, available)


class ExportError(ValueError):
    """An export that cannot start as asked; the message names the option or file and the fix."""


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
        if not self.variants:
            raise ExportError("--variants: expected at least one variant")


@dataclass
class Source:
    """One selected run: where its checkpoint, predictions and data are."""

    run_id: str
    backbone: Backbone
    level: int
    seed: int
    rel_dir: str
    run_dir: Path
    config: dict
    checkpoint: Path
    predictions: Path
    data: Path
    img_size: int
    checkpoint_sha256: str = ""

    @property
    def stem(self) -> str:
        return layout.run_id(self.backbone.name, self.level, self.seed)


def versions() -> dict[str, str | None]:
    """Installed versions of the converters and runtimes (``None`` when absent)."""
    out = {}
    for key, package in _VERSION_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def _finished_runs(runs_root: Path) -> list[dict]:
    """The sweep's successful runs, by ``device.sweep_results.load_runs``'s rule (the last
    successful line of a run wins), so that export and the sweep summary read the same results."""
    if not runs_root.is_dir():
        raise ExportError(f"--runs {runs_root}: no such folder; expected a train.sweep output folder")
    if not (runs_root / RESULTS).is_file():
        raise ExportError(f"--runs {runs_root}: no {RESULTS}; expected a train.sweep output folder")
    try:
        finished, _, _ = load_runs(runs_root)
    except ValueError as exc:
        raise ExportError(f"--runs {runs_root}: {exc}") from None
    if not finished:
        raise ExportError(f"--runs {runs_root}: {RESULTS} has no finished run")
    return finished


def pick_records(records: list[dict], spec: str) -> list[dict]:
    """The finished runs ``--select`` names: ``all``, ``best`` (one per backbone) or ``backbone:level[:seed]`` items."""
    spec = spec.strip()
    if spec == "all":
        return sorted(records, key=lambda r: (r["backbone"], r["level"], r["seed"]))
    if spec == "best":
        # the level the sweep summary calls best (mean accuracy over seeds; ties: fewer
        # trainable parameters, then the lower level), exported from its seed-0 run (its
        # lowest seed when seed 0 did not finish there)
        chosen = []
        for backbone, levels in aggregate(records).items():
            level = best_level(levels).level
            at_level = [r for r in records if r["backbone"] == backbone and int(r["level"]) == level]
            chosen.append(min(at_level, key=lambda r: int(r.get("seed", 0))))
        return chosen
    chosen = []
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        parts = item.split(":")
        try:
            name = get(parts[0]).name
            level = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else 0
            if len(parts) not in (2, 3):
                raise ValueError
        except (KeyError, ValueError, IndexError):
            raise ExportError(f"--select {item!r}: expected {SELECT_HELP}") from None
        match = [r for r in records if r["backbone"] == name and r["level"] == level and r["seed"] == seed]
        if not match:
            have = sorted({f"{r['backbone']}:{r['level']}:{r['seed']}" for r in records if r["backbone"] == name})
            raise ExportError(f"--select {item!r} names no finished run; finished {name} runs: "
                              f"{', '.join(have) or 'none'}")
        chosen.append(match[0])
    if not chosen:
        raise ExportError(f"--select {spec!r} names nothing; expected {SELECT_HELP}")
    return chosen


def _data_folder(config: dict, run_dir: Path) -> Path:
    for key in ("data", "data_resolved"):
        value = config.get(key)
        if value and Path(value).exists():
            return Path(value).resolve()
    raise ExportError(f"{run_dir}/config.json: dataset folder {config.get('data')!r} not found "
                      f"(nor data_resolved {config.get('data_resolved')!r}); run from the sweep's folder")


def _write_reference(source, path: Path) -> None:
    """The Keras model's predictions the device compares with: validation rows, then test rows.

    Verification here reads only the validation rows; ``bench run`` (test split by default)
    finds its images among the test rows.
    """
    text = source.predictions.read_text(encoding="utf-8")
    test = source.run_dir / TEST_PREDICTIONS
    if test.is_file():
        header, *rows = test.read_text(encoding="utf-8").splitlines()
        if header == text.splitlines()[0]:
            text = text.rstrip("\n") + "\n" + "".join(row + "\n" for row in rows)
    write_text(path, text)


def select_runs(runs: str | os.PathLike, spec: str = "best") -> list[Source]:
    """The runs to export, each checked for checkpoint, predictions and data.

    Args:
        runs: a ``train.sweep`` output folder.
        spec: ``best``, ``all`` or ``NAME:LEVEL[:SEED]`` items separated by commas.

    Returns:
        One ``Source`` per selected run, with its checkpoint hashed.

    Raises:
        ExportError: missing folder, no finished run, a selection naming nothing, a run
            without ``best.h5``, ``config.json`` or ``val_predictions.csv``, or a ``best.h5``
            that is not the file the sweep recorded.
    """
    root = Path(runs)
    sources = []
    for record in pick_records(_finished_runs(root), spec):
        run_dir = root / record["run_dir"]
        for name in (CONFIG, CHECKPOINT, VAL_PREDICTIONS):
            if not (run_dir / name).is_file():
                what = "checkpoint" if name == CHECKPOINT else name
                raise ExportError(f"run {record['run_id']}: no {what} ({run_dir / name}); rerun the sweep to finish it")
        import json

        config = json.loads((run_dir / CONFIG).read_text())
        source = Source(run_id=record["run_id"], backbone=get(record["backbone"]), level=int(record["level"]),
                        seed=int(record["seed"]), rel_dir=record["run_dir"], run_dir=run_dir, config=config,
                        checkpoint=run_dir / CHECKPOINT, predictions=run_dir / VAL_PREDICTIONS,
                        data=_data_folder(config, run_dir), img_size=int(config["img_size"]))
        source.checkpoint_sha256 = sha256_file(source.checkpoint)
        recorded = record.get("checkpoint_sha256")
        if recorded and recorded != source.checkpoint_sha256:
            raise ExportError(f"run {record['run_id']}: {source.checkpoint} differs from the sha256 recorded when "
                              f"the run finished (damaged or replaced); rerun the sweep to train it again")
        sources.append(source)
    return sources


def keras_model(source: Source, batch_size: int | None = 1):
    """Rebuild the run's model from ``best.h5`` and wrap it as the deployable graph."""
    from export.graph import deployable
    from train.model import build

    model = build(source.backbone, source.img_size, None).model
    model.load_weights(str(source.checkpoint))
    return deployable(model, source.backbone, source.img_size, batch_size=batch_size)


@dataclass
class Context:
    """What converters of one source need, built lazily and shared across its variants."""

    source: Source
    config: ExportConfig
    exports: Path
    log: Callable[[str], None]
    dataset: object = None
    _calibration: Calibration | None = None
    _model: object = None
    notes: dict = field(default_factory=dict)
    steps: StepTimer | None = None  # the artifact being made: its steps are timed, with a heartbeat

    def step(self, name: str):
        """Time ``name`` as a step of the artifact being made (see ``STEPS``)."""
        return self.steps.step(name) if self.steps is not None else nullcontext()

    def calibration(self) -> Calibration:
        if self._calibration is None:
            with self.step("calibration images"):
                count = calib_count(self.config.calib, len(self.dataset.split("train")))
                self._calibration = calibration_set(self.dataset, self.source.img_size, count,
                                                    seed=self.config.calib_seed)
        return self._calibration

    def train_prior(self) -> list[float]:
        """The class mix of the training split, in label order (what the model learnt as its prior)."""
        counts = np.bincount([LABELS.index(r.label) for r in self.dataset.split("train")], minlength=len(LABELS))
        return [round(float(c) / max(int(counts.sum()), 1), 6) for c in counts]

    def tta_model(self):
        """The deployable model averaged over the 8 rotations and flips of its input (``export.graph``)."""
        if "tta_model" not in self.notes:
            from export.graph import with_tta

            with self.step("build"):
                free = keras_model(self.source, batch_size=None)  # the run's graph with a free batch of 8 views
                self.notes["tta_model"] = with_tta(free, self.source.img_size)
        return self.notes["tta_model"]

    def model(self):
        if self._model is None:
            with self.step("build"):
                self._model = keras_model(self.source)
        return self._model


# the timed steps of one artifact, in the order of the closing table; the first variant of a run
# pays for "build" and "calibration images", which its other variants share
STEPS = ("build", "calibration images", "qat training", "convert", "inspect", "verify", "embed")
HEARTBEAT_S = 20.0  # a line at least this often while a step runs


# a converter writes the artifact file and returns (converter name, settings-independent notes)
Converter = Callable[[Context, str, Path], tuple[str, dict]]


def _settings(config: ExportConfig, fmt: str, variant: str, train_n: int) -> dict:
    settings: dict = {"format": fmt, "variant": variant, "contract": 1}
    if variant in ("int8", "qat"):
        settings["calib"] = calib_count(config.calib, train_n)
        settings["calib_seed"] = config.calib_seed
    if variant == "qat":
        settings["qat_epochs"] = config.qat_epochs
    if fmt == "onnx":
        settings["opset"] = config.opset
        if variant == "int8":
            settings["calib_method"] = config.calib_method
            settings["onnx_int8"] = config.onnx_int8
    return settings


def _io_fields(path: Path) -> dict:
    from device.runtime import load

    with hidden_output():
        model = load(path)
    return {"input_shape": [int(d) for d in model.input_shape], "input_dtype": model.input_dtype.name,
            "input_scale": float(model.input_quant.scale), "input_zero_point": int(model.input_quant.zero_point)}


def export_runs(config: ExportConfig, fmt: str, variants: tuple[str, ...], convert: Converter,
                log: Callable[[str], None] = console_line) -> list[dict]:
    """Export, verify and record every (selected run x variant); shared by both formats.

    Everything that can be checked is checked before the first conversion: the runs
    folder, the selection, each run's checkpoint and data, the calibration size.

    Args:
        config: export settings.
        fmt: ``tflite`` or ``onnx`` (the file suffix and folder name).
        variants: variants to make, in order.
        convert: writes one variant's file (see ``export.tflite.convert_tflite``).
        log: progress lines (by default to the terminal, even while a converter's own
            output is hidden, so the heartbeat of a long step is seen).

    Returns:
        The records written this time (skipped artifacts included, as they stand).

    Raises:
        ExportError, CalibrationError: bad input, before any conversion.
    """
    exports = Path(config.out)
    sources = select_runs(config.runs, config.select)
    datasets = _checked_datasets(config, sources, variants, log)
    try:
        check_output_folder(exports, "--out")
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    exports.mkdir(parents=True, exist_ok=True)
    (exports / fmt).mkdir(exist_ok=True)
    (exports / "reference").mkdir(exist_ok=True)
    common = {"versions": versions(), "runs_root": str(Path(config.runs).resolve())}
    written, failures, made = [], [], []
    progress = Progress(len(sources) * len(variants), "artifacts", log)
    for source in sources:
        ctx = Context(source=source, config=config, exports=exports, log=log, dataset=datasets[source.data])
        reference_rel = f"reference/{source.stem}.csv"
        _write_reference(source, exports / reference_rel)
        check = _Verifier(source, ctx.dataset, read_reference(source.predictions), config.threads)
        for variant in variants:
            artifact_id = f"{source.stem}-{variant}-{fmt}"
            settings = _settings(config, fmt, variant, len(ctx.dataset.split("train")))
            key = manifest.source_key(source.checkpoint_sha256, settings)
            previous = manifest.read(exports).get(artifact_id)
            if manifest.is_current(exports, previous, key):
                progress.done(artifact_id, "unchanged, skipped")
                written.append(_with_macs(exports, previous))
                continue
            record = {"artifact_id": artifact_id, "backbone": source.backbone.name, "level": source.level,
                      "seed": source.seed, "variant": variant, "format": fmt, "file": f"{fmt}/{source.stem}-{variant}.{fmt}",
                      "img_size": source.img_size, "preprocess": source.backbone.preprocess, "labels": list(LABELS),
                      "source_run": source.rel_dir, "checkpoint_sha256": source.checkpoint_sha256,
                      "reference_predictions": reference_rel, "data": str(source.data), **common,
                      "settings": settings, "source_key": key}
            progress.started(f"{artifact_id}: converting {source.run_id} to {fmt} {variant}, then verifying it")
            ctx.steps = StepTimer(artifact_id, log, every_s=HEARTBEAT_S, noun="artifact")
            problem = _make_artifact(ctx, variant, convert, check, record)
            record["step_seconds"] = {name: round(s, 3) for name, s in ctx.steps.seconds.items()}
            ctx.steps = None
            made.append(record)
            if problem:
                failures.append(f"{artifact_id}: {problem}")
            kept = _keep_good_record(exports, previous, record)
            manifest.merge(exports, [kept])
            manifest.write_sidecar(exports, kept)
            written.append(record)
            progress.done(artifact_id, f"{_status(record)}, {record['seconds']:.1f}s")
    if made:
        log(step_table(made, skipped=len(written) - len(made)))
    if failures and config.strict:
        raise StrictFailure("; ".join(failures))
    return written


def step_table(records: list[dict], skipped: int = 0) -> str:
    """The closing table: seconds per step of each artifact made, and where the time went."""
    rows = [[r["artifact_id"]] + [f"{r.get('step_seconds', {}).get(s, 0.0):.1f}" for s in STEPS] + [f"{r['seconds']:.1f}"]
            for r in records]
    totals = [sum(r.get("step_seconds", {}).get(s, 0.0) for r in records) for s in STEPS]
    whole = sum(r["seconds"] for r in records)
    rows.append(["all"] + [f"{t:.1f}" for t in totals] + [f"{whole:.1f}"])
    header = ["seconds per step"] + list(STEPS) + ["total"]
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    largest = max(range(len(STEPS)), key=lambda i: totals[i])
    share = f"{100 * totals[largest] / whole:.0f}%" if whole > 0 else "?"
    lines.append(f"{len(records)} artifact(s) made in {duration(whole)}; the largest step, {STEPS[largest]}, took {share}"
                 + (f"; {skipped} unchanged artifact(s) skipped" if skipped else ""))
    return "\n".join(lines)


def _checked_datasets(config: ExportConfig, sources: list[Source], variants: tuple[str, ...],
                      log: Callable[[str], None]) -> dict:
    """Each source's dataset, opened once; the calibration size checked where int8 is asked for."""
    datasets = {}
    for source in sources:
        if source.data not in datasets:
            try:
                datasets[source.data] = open_dataset(source.data)
            except DatasetError as exc:
                raise ExportError(f"run {source.run_id}: {exc}") from None
        if any(v in ("int8", "qat") for v in variants):
            available = len(datasets[source.data].split("train"))
            check_calibration_size(calib_count(config.calib, available), available)
            if config.calib is None and available < CALIB_DEFAULT:
                log(f"note: run {source.run_id}: calibrating int8 on all {available} training images "
                    f"(fewer than the default {CALIB_DEFAULT})")
    return datasets


class _Verifier:
    """Checks artifacts of one source on its validation images (read once, on first use)."""

    def __init__(self, source: Source, dataset, reference, threads: int | None):
        self.source, self.dataset, self.reference, self.threads = source, dataset, reference, threads
        self.images = None

    def __call__(self, path: Path, keras_model=None):
        """Verify the artifact at ``path`` against the run's Keras predictions, or, given
        ``keras_model`` (the graph it was converted from, such as the TTA wrapper), against that
        model's own predictions on the same images."""
        if self.images is None:
            val = self.dataset.load_arrays("val", self.source.img_size)
            self.images, self.reference = align(self.reference, val.images, [r.path for r in val.records])
        reference = self.reference
        if keras_model is not None:
            # one image per call (the graph's batch is 1), run as a compiled loop: eager calls
            # took 92 s for the TTA model of 450 images here
            probs = keras_model.predict(self.images.astype(np.float32), batch_size=1, verbose=0)
            reference = Reference(paths=reference.paths, labels=reference.labels, probs=probs)
        return verify(path, self.images, reference, threads=self.threads)


def _make_artifact(ctx: Context, variant: str, convert: Converter, check: _Verifier, record: dict) -> str | None:
    """Convert, hash and verify one variant into ``record``; the problem to report, if any.

    A crash is recorded in the record (``error``) and returned, so the other variants still
    export; an agreement below the variant's threshold is a ``warning``.
    """
    t0 = time.perf_counter()
    path = ctx.exports / record["file"]
    problem = None
    try:
        with ctx.step("convert"):
            converter_name, extra = convert(ctx, variant, path)
        record["converter"] = converter_name
        record.update(extra)
        with ctx.step("inspect"):
            if record.get("macs") is None:  # multiply-accumulates per image, from the graph (unless the converter counted them)
                record.update(manifest.macs_fields(path))
            record.update(_io_fields(path))
        reference_model = ctx.tta_model() if variant == "tta" else None
        with ctx.step("verify"):
            result = check(path, reference_model)
            record.update(result.as_record())
            record.update(calibration_fields(result.probs, result.labels, ctx.train_prior()))
        with ctx.step("embed"):
            embed(path, description(record))  # the file describes itself; the graph is unchanged
            record.update({"sha256": sha256_file(path), "size_bytes": path.stat().st_size})
        problem = strict_failure(variant, result.agreement, result.keras_confidence,
                                 random_weights=str(ctx.source.config.get("weights")).lower() == "none")
        if problem:
            record["warning"] = problem
    except Exception as exc:  # one variant's crash is recorded; the others still export
        text = str(exc).strip()
        record["error"] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:2000]
        record["file"] = record["file"] if path.is_file() else None
        problem = record["error"]
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return problem


def calibration_fields(probs: np.ndarray, labels: np.ndarray, train_prior: list[float]) -> dict:
    """The artifact's temperature, fitted on the validation images, with the validation ECE
    before and after it (15 bins), and the training mix its probabilities assume."""
    temperature = fit_temperature(probs, labels)
    return {"temperature": temperature, "train_prior": train_prior,
            "val_ece": round(expected_calibration_error(probs, labels), 6),
            "val_ece_scaled": round(expected_calibration_error(apply_temperature(probs, temperature), labels), 6)}


def _status(record: dict) -> str:
    if "error" in record:
        return f"error: {record['error']}"
    status = (f"{record['size_bytes'] / 1e6:.2f} MB, {record['input_dtype']} in, "
              f"acc {100 * record['val_accuracy']:.1f}% (keras {100 * record['keras_val_accuracy']:.1f}%), "
              f"agreement {100 * record['agreement']:.2f}%, max diff {record['max_abs_diff']:.4f}")
    return status + (f" WARNING {record['warning']}" if "warning" in record else "")


def _keep_good_record(exports: Path, previous: dict | None, record: dict) -> dict:
    """The record to store: never a failure in place of an earlier good artifact.

    When this attempt failed but an earlier export of the same artifact succeeded and its
    file is still there unchanged, the good record stays, with this failure beside it
    (``last_failure``); otherwise the new record as it is.
    """
    if "error" not in record or not previous or previous.get("error") or not previous.get("file"):
        return record
    path = exports / previous["file"]
    if not path.is_file() or sha256_file(path) != previous.get("sha256"):
        return record
    failure = {k: record[k] for k in ("error", "seconds", "source_key", "checkpoint_sha256") if k in record}
    return {**previous, "last_failure": failure}


def _with_macs(exports: Path, record: dict) -> dict:
    """An unchanged artifact's record, given its ``macs`` (stored) when it was made before the field."""
    if "macs" in record:
        return record
    record = {**record, **manifest.macs_fields(exports / record["file"])}
    manifest.merge(exports, [record])
    manifest.write_sidecar(exports, record)
    return record


class StrictFailure(RuntimeError):
    """``--strict``: an artifact failed or agreed too little with the Keras model."""


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


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments both exporters take; their defaults are ``ExportConfig``'s."""
    d = defaults(ExportConfig)
    p.add_argument("--runs", required=True, help="train.sweep output folder")
    p.add_argument("--out", required=True, help="exports folder (shared by both formats)")
    p.add_argument("--select", default=d["select"], help=SELECT_HELP)
    p.add_argument("--calib", type=int, default=d["calib"],
                   help=f"training images for int8 calibration (default {CALIB_DEFAULT}, or all when fewer)")
    p.add_argument("--calib-seed", type=int, default=d["calib_seed"],
                   help="seed of the random draw of calibration images from the training split (default %(default)s)")
    p.add_argument("--threads", type=at_least(1), default=d["threads"],
                   help="runtime threads for verification (default: runtime's)")
    p.add_argument("--strict", action="store_true",
                   help="fail when fp32/fp16 agreement < 99.5%% or int8 agreement < 97%% (default: warn)")


def build_parser(prog: str, doc: str, allowed: tuple[str, ...],
                 extra_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """One exporter's parser: the common arguments, ``--variants`` among ``allowed``, its own."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    variants = [v for v in allowed if v in DEFAULT_VARIANTS]
    p.add_argument("--variants", default=",".join(variants),
                   help=f"comma-separated: {','.join(allowed)} (default {','.join(variants)}; tta, the mean over the "
                        f"8 rotations and flips inside the graph, costs 8 passes per image)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    extra_arguments(p)
    return p


def run_cli(argv, prog: str, doc: str, fmt: str, allowed: tuple[str, ...], convert: Converter,
            extra_arguments: Callable[[argparse.ArgumentParser], None], config_extra: Callable[[argparse.Namespace], dict]) -> int:
    """The command line of one exporter: parse, build the config, export, report.

    Returns:
        0 on success, 1 on a ``--strict`` failure, 2 on bad input, 3 when some artifacts
        failed, 130 on Ctrl-C.
    """
    args = build_parser(prog, doc, allowed, extra_arguments).parse_args(argv)

    def work() -> int:
        config = ExportConfig(runs=args.runs, out=args.out, select=args.select,
                              variants=parse_variants(args.variants, allowed), calib=args.calib, calib_seed=args.calib_seed,
                              strict=args.strict, threads=args.threads, **config_extra(args))
        quiet_tensorflow(args.verbose)  # after the options are checked: a typo is answered at once
        try:
            records = export_runs(config, fmt, config.variants, convert)
        except StrictFailure as exc:
            print(f"error: --strict: {exc}", file=sys.stderr)
            return Exit.DIFFERS
        return _report_records(config, records)

    return run_command(work, (ExportError, CalibrationError, ValueError),
                       f"finished artifacts are in {Path(args.out) / manifest.MANIFEST}; rerun the same command to "
                       f"make the rest (unchanged ones are skipped)")


def _report_records(config: ExportConfig, records: list[dict]) -> int:
    """Print the manifest's path and the failures; the exit status."""
    failed = [r for r in records if "error" in r]
    print(f"manifest: {Path(config.out) / manifest.MANIFEST} ({len(records) - len(failed)} artifacts ok, {len(failed)} failed)")
    if failed:
        print(f"finished with failures: {len(failed)} of {len(records)} artifact(s) failed (exit status "
              f"{Exit.PARTIAL:d}); their manifest records carry the error", file=sys.stderr)
        return Exit.PARTIAL
    return Exit.OK
