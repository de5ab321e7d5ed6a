"""The export pipeline both formats share (``export.tflite`` and ``export.onnx``).

Validation of the inputs before any conversion, the lazily built Keras model and calibration
set per run (``Context``), each artifact's timed steps, its verification against the Keras
model on the device code, and its manifest record (``device.exports_manifest``). A format
brings only its converter. The settings are ``export.config``'s, the runs ``export.select``'s
and the command line ``export.cli``'s.
"""
from __future__ import annotations

import csv
import importlib.metadata
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from device.atomic import check_output_folder
from device.calibration import apply_temperature, expected_calibration_error, fit_temperature
from device.checksum import sha256_file
from device.command import console_line
from device.dataset import LABELS, DatasetError, open_dataset
from device.model_info import description
from device.progress import Progress, StepTimer, duration
from device import exports_manifest as manifest
from device.exports_manifest import rescue_summary
from train.console import hidden_output
from export.config import CALIB_DEFAULT, ExportConfig, ExportError, StrictFailure, calib_count
from export.embed import embed
from export.int8_layers import summary as int8_summary
from export.int8_ranges import FLOAT_OPS
from export.int8_rescue import candidate_path, rescue
from export.quantize import Calibration, calibration_set, check_calibration_size
from export.select import Source, keras_model, select_runs, write_reference
from export.verify import (STRICT_AGREEMENT, UNSURE_CONFIDENCE, Reference, align, read_reference, strict_failure,
                           verify)

_VERSION_PACKAGES = {"tensorflow": "tensorflow", "tf_keras": "tf-keras", "tfmot": "tensorflow-model-optimization",
                     "tf2onnx": "tf2onnx", "onnx": "onnx", "onnxruntime": "onnxruntime",
                     "ai_edge_litert": "ai-edge-litert"}


def versions() -> dict[str, str | None]:
    """Installed versions of the converters and runtimes (``None`` when absent)."""
    out = {}
    for key, package in _VERSION_PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


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

    @property
    def random_weights(self) -> bool:
        """Whether the run's frozen layers kept random weights (``--weights none``, the demo's)."""
        return str(self.source.config.get("weights")).lower() == "none"

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
STEPS = ("build", "calibration images", "qat training", "convert", "int8 layers", "inspect", "verify", "int8 rescue",
         "embed")
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
    if variant == "int8":
        settings["int8_rescue"] = config.int8_rescue
    if variant == "int8" and fmt == "tflite":
        settings["int8_float_ops"] = list(FLOAT_OPS)
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
        write_reference(source, exports / reference_rel)
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
    seconds = [[r["step_seconds"].get(s, 0.0) for s in STEPS] for r in records]
    rows = [[r["artifact_id"]] + [f"{t:.1f}" for t in times] + [f"{r['seconds']:.1f}"] for r, times in zip(records, seconds)]
    totals = [sum(column) for column in zip(*seconds)]
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
        if variant == "int8":
            result = _rescued(ctx, path, check, result, record)
        record.update(result.as_record())
        record.update(calibration_fields(result.probs, result.labels, ctx.train_prior()))
        with ctx.step("embed"):
            embed(path, description(record))  # the file describes itself; the graph is unchanged
            record.update({"sha256": sha256_file(path), "size_bytes": path.stat().st_size})
        problem = strict_failure(variant, result.agreement, result.keras_confidence,
                                 random_weights=ctx.random_weights)
        if problem and record.get("int8_worst_layers"):
            problem += (f"; largest int8 errors (rounding alone: 0.29 steps): {int8_summary(record['int8_worst_layers'])}; "
                        f"every layer in {record['int8_layers_file']}")
        if problem and record.get("int8_rescue"):
            problem += f"; int8 rescue: {rescue_summary(record['int8_rescue'])}"
        if problem:
            record["warning"] = problem
    except Exception as exc:  # one variant's crash is recorded; the others still export
        text = str(exc).strip()
        record["error"] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:2000]
        record["file"] = record["file"] if path.is_file() else None
        problem = record["error"]
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return problem


def _rescued(ctx: Context, path: Path, check: _Verifier, result, record: dict):
    """The int8 rescue (``export.int8_rescue``) where the artifact agrees too little and the
    format's converter left a builder; the verification of the model kept."""
    build = ctx.notes.pop("int8_builder", None)
    threshold = STRICT_AGREEMENT["int8"]
    if build is None or ctx.config.int8_rescue == "off" or result.agreement >= threshold:
        return result
    if ctx.random_weights:
        record["int8_rescue"] = {"skipped": "random frozen weights (--weights none): no range fixes that"}
        return result
    if result.keras_confidence < UNSURE_CONFIDENCE:
        record["int8_rescue"] = {"skipped": f"the Keras model hardly prefers a class (mean top probability "
                                            f"{result.keras_confidence:.2f})"}
        return result
    rows = _layer_rows(ctx.exports, record.get("int8_layers_file"))
    with ctx.step("int8 rescue"):
        try:
            result, record["int8_rescue"] = rescue(path, build, check, result, threshold, rows, ctx.log)
        except Exception as exc:  # noqa: BLE001 - the plain model stands; the rescue's failure is on the record
            record["int8_rescue"] = {"skipped": f"the rescue failed ({type(exc).__name__}: {str(exc).strip()[:200]}); "
                                                f"the plain model is kept"}
            ctx.log(f"    int8 rescue failed: {type(exc).__name__}: {exc}; the plain model is kept")
        finally:
            candidate_path(path).unlink(missing_ok=True)
    return result


def _layer_rows(exports: Path, rel: str | None) -> list[dict]:
    """The rows of an artifact's int8 layer table, worst first (none when it was not made)."""
    if not rel or not (exports / rel).is_file():
        return []
    with open(exports / rel, newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row.get("tensor")]


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
