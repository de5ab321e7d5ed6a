"""The study's experiment: fine-tune every backbone at every trainable level, per seed.

    python -m train.sweep --data DIR --backbones paper --levels paper --epochs 10 \\
        --img-size 224 --seeds 0,1,2 --weights imagenet --out sweeps/paper

Resumable (rerun the same command: finished runs are skipped, a killed run resumes from its
last finished epoch) and shardable (``--shard i/n`` runs a deterministic share: whole
backbones, balanced by planned cost, ``train.shards``; shards write into one shared output
folder without conflicts). Frozen features are cached
by default (``--cache-features auto``); see ``train.cache``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from device.atomic import check_output_folder, try_lock, write_json
from device.checksum import sha256_file
from device.choices import first_bad_choice
from device.command import Exit, run_command
from device.backbones import Backbone, resolve
from device.dataset import LABELS, DatasetError, class_weights, open_dataset
from device.metrics import classification_metrics
from device.options import SEED_MAX, check_number
from device.predictions import write_predictions
from device.progress import Progress
from device.preprocess import preprocess
from device.sweep_results import (BASELINE, BASELINE_PREDICTIONS, CHECKPOINT, CONFIG, METRICS, RESULTS,
                                   TEST_PREDICTIONS, VAL_PREDICTIONS, append_run, succeeded_ids)
from device import sweep_results as layout
from train.console import VERBOSE_HELP, command_parser, quiet_tensorflow
from train.levels import BN_MODES
from train.shards import assign, groups, layer_macs

CACHE_MODES = ("auto", "on", "off")
PRECISIONS = ("float32", "mixed_float16")
STRATEGIES = ("none", "mirrored")
AUGMENTS = ("none", "d4")  # d4: the 8 flips and quarter turns of the square, drawn per image and epoch

# fields of a run's config that must match for a finished or half-done run to be reused
RUN_IDENTITY = ("backbone", "level", "seed", "epochs", "batch_size", "lr", "img_size", "weights",
                "augment", "bn_reestimate", "bn", "data_fingerprint")


# settings every shard of one sweep (every record in its --out) must share
SHARD_SETTINGS = ("epochs", "batch_size", "lr", "img_size", "weights", "augment", "bn_reestimate", "bn")

RUN_LOCK = ".lock"  # in each run folder, held while a process trains that run


class SweepError(ValueError):
    """A sweep that cannot start as configured; the message names the option and the fix."""


@dataclass(frozen=True)
class SweepConfig:
    """Resolved settings of a sweep (command line beats defaults; see ``from_args``)."""

    data: str
    out: str
    backbones: tuple[str, ...] = ("mobilenetv2",)
    levels: str = "paper"
    epochs: int = 10
    batch_size: int = 32
    img_size: int = 128
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0,)
    weights: str = "imagenet"
    augment: str = "none"
    cache_features: str = "auto"
    cache_budget_gb: float = 4.0
    cache_dir: str | None = None  # spill folder root; None: $TMPDIR when set, else OUT/cache
    summary: bool = False  # a shard of several writes the summary only when asked (one job does it at the end)
    precision: str = "float32"
    jit: bool = False
    strategy: str = "none"
    shard: tuple[int, int] = (0, 1)
    bn_reestimate: str = "auto"
    bn: str = "frozen"


@dataclass(frozen=True)
class RunPlan:
    """One run of the sweep."""

    backbone: Backbone
    level: int
    seed: int

    @property
    def run_id(self) -> str:
        """The run's name in results.jsonl and logs: ``mobilenetv2-L010-s0``."""
        return layout.run_id(self.backbone.name, self.level, self.seed)

    @property
    def rel_dir(self) -> str:
        """The run's folder below the sweep folder: ``runs/mobilenetv2/L010-s0``."""
        return layout.run_dir(self.backbone.name, self.level, self.seed)


@dataclass
class Plan:
    """Everything validated before training starts."""

    config: SweepConfig
    runs: list[RunPlan]
    todo: list[RunPlan]
    layer_names: dict[str, list[str]] = field(default_factory=dict)
    data_fingerprint: str = ""
    notes: list[str] = field(default_factory=list)
    dataset: object = None  # the opened dataset, read again by nothing else
    # the bases built to plan, kept for the backbones this process trains (without a
    # distribution strategy, whose scope they were not built in); training takes each once
    bases: dict[str, object] = field(default_factory=dict)


def _fingerprint(records) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.path},{r.label},{r.split}\n".encode())
    return digest.hexdigest()[:16]


def _run_identity(config: SweepConfig, run: RunPlan, fingerprint: str) -> dict:
    return {"backbone": run.backbone.name, "level": run.level, "seed": run.seed, "epochs": config.epochs,
            "batch_size": config.batch_size, "lr": config.lr, "img_size": config.img_size,
            "weights": config.weights, "augment": config.augment,
            "bn_reestimate": _bn_reestimate(config), "bn": config.bn, "data_fingerprint": fingerprint}


def _use_cache(config: SweepConfig) -> bool:
    """Cache frozen features: ``on``, or ``auto`` without augmentation (which changes them every epoch)."""
    return config.cache_features == "on" or (config.cache_features == "auto" and config.augment == "none")


def _bn_reestimate(config: SweepConfig) -> bool:
    return config.bn_reestimate == "on" or (config.bn_reestimate == "auto" and config.weights == "none")


def _check_options(config: SweepConfig) -> None:
    """Refuse option values that cannot work, before anything is built or read."""
    if config.epochs < 1 or config.batch_size < 1 or not (0 < config.lr < float("inf")):
        raise SweepError(f"--epochs {config.epochs}, --batch-size {config.batch_size}, --lr {config.lr}: expected positive values")
    try:
        check_number(config.img_size, "--img-size", 1, 4096, integer=True)
        for seed in config.seeds:
            check_number(seed, "--seeds", 0, SEED_MAX, integer=True)
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    if not 0 <= config.cache_budget_gb < float("inf"):
        raise SweepError(f"--cache-budget-gb {config.cache_budget_gb}: expected a size in GB, 0 or more "
                         f"(0 keeps every cached array on disk)")
    problem = first_bad_choice(("--cache-features", config.cache_features, CACHE_MODES),
                               ("--precision", config.precision, PRECISIONS), ("--strategy", config.strategy, STRATEGIES),
                               ("--augment", config.augment, AUGMENTS), ("--bn", config.bn, BN_MODES))
    if problem:
        raise SweepError(problem)
    if config.cache_features == "on" and config.augment != "none":
        raise SweepError("--cache-features on with --augment d4: augmented images change the frozen "
                         "features every epoch; use --cache-features auto or off")
    try:
        check_output_folder(config.out, "--out")
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    index, count = config.shard
    if not 0 <= index < count:
        raise SweepError(f"--shard {index}/{count}: expected i/n with 0 <= i < n")


def _shard_settings(record: dict) -> dict:
    """The settings of a shard record (or config dict) that shards of one sweep share."""
    settings = {k: record[k] for k in SHARD_SETTINGS if k in record}
    if "bn_reestimate" in settings:  # compare what it resolves to: auto with --weights none is on
        settings["bn_reestimate"] = settings["bn_reestimate"] == "on" or (
            settings["bn_reestimate"] == "auto" and record.get("weights") == "none")
    return settings


def check_shards(config: SweepConfig) -> None:
    """Refuse a sweep whose training settings differ from the shard records already in ``--out``
    (shards of different settings would merge silently into one summary).

    Raises:
        SweepError: naming the record and the differing settings, with both values.
    """
    mine = _shard_settings(asdict(config))
    for path, record in layout.read_shard_records(config.out):
        theirs = _shard_settings(record)
        diff = [k for k in SHARD_SETTINGS if k in theirs and theirs[k] != mine[k]]
        if diff:
            raise SweepError(f"--out {config.out}: {path.name} was run with different settings ("
                             + ", ".join(f"--{k.replace('_', '-')} {theirs[k]} there, {mine[k]} here" for k in diff)
                             + "); use the same settings for every shard, or another --out")


def check_config(config: SweepConfig) -> tuple[Backbone, ...]:
    """Refuse bad options, unknown backbones and settings that differ from the shards already
    in ``--out`` in a moment, before TensorFlow is imported; returns the backbones the sweep names.

    Raises:
        SweepError: the message names the option and what is expected.
    """
    _check_options(config)
    check_shards(config)
    try:
        return tuple(resolve(list(config.backbones)))
    except KeyError as exc:
        raise SweepError(f"--backbones: {exc.args[0]}") from None


def _open_data(config: SweepConfig):
    """The dataset and its notes, refused when a split the sweep needs is empty."""
    try:
        dataset = open_dataset(config.data)
    except DatasetError as exc:
        raise SweepError(f"--data: {exc}") from None
    notes = list(dataset.notes)
    train = dataset.split("train")
    if not train:
        raise SweepError(f"--data {config.data}: the training split is empty; expected a manifest with split=train rows")
    if len({r.label for r in train}) < 2:
        raise SweepError(f"--data {config.data}: the training split has only {train[0].label}; expected at least two classes")
    if not dataset.split("val"):
        raise SweepError(f"--data {config.data}: the validation split is empty")
    if not dataset.split("test"):
        notes.append(f"{config.data}: no test split; runs are scored on the validation images that chose "
                     f"their epoch, which is optimistic (index the data again: `python -m train.data index`)")
    return dataset, notes


def plan(config: SweepConfig, log: Callable[[str], None] = print) -> Plan:
    """Validate a sweep and list its runs, before any training.

    Raises:
        SweepError: bad option values, a level beyond a backbone's depth, an image size
            below a backbone's minimum, a training split that is empty or has one class, a
            run folder made with different settings.
        WeightsError: ImageNet weights not available offline (names the file).
    """
    backbones = check_config(config)
    dataset, notes = _open_data(config)  # a bad dataset is refused before TensorFlow loads
    fingerprint = _fingerprint(dataset.records)

    import tf_keras as keras

    from train.levels import LevelError, parse_schedule
    from train.model import build_base, resolve_weights

    layer_names: dict[str, list[str]] = {}
    macs: dict[str, list[float]] = {}
    bases: dict[str, object] = {}
    runs: list[RunPlan] = []
    for backbone in backbones:
        if config.img_size < backbone.min_size:
            raise SweepError(f"--img-size {config.img_size}: {backbone.name} needs at least {backbone.min_size} px")
        keras.utils.set_random_seed(0)  # as train.model.build seeds it, so the base is the one training would build
        bases[backbone.name] = base = build_base(backbone, config.img_size, resolve_weights(backbone, config.weights))
        layer_names[backbone.name] = [l.name for l in base.layers]
        macs[backbone.name] = layer_macs(base)
        try:
            levels = parse_schedule(config.levels, backbone, layer_names[backbone.name])
        except LevelError as exc:
            raise SweepError(f"{backbone.name}: {exc}") from None
        # a seed named twice (--seeds 0,0) is one run, not two trainings of the same run
        runs += [RunPlan(backbone, level, seed) for level in levels for seed in dict.fromkeys(config.seeds)]
    index, count = config.shard
    cached = _use_cache(config)
    shares = assign(groups(runs, macs, config.epochs, cached), count, macs, config.epochs, cached)
    own = {id(run) for group in shares[index] for run in group.runs}
    mine = [run for run in runs if id(run) in own]
    if count > 1:
        total = sum(g.cost for share in shares for g in share) or 1.0
        notes.append(f"shard {index}/{count}: " + (", ".join(f"{g.name} ({len(g.runs)} runs)" for g in shares[index])
                                                    or "no runs (more shards than runs)")
                     + f"; {100 * sum(g.cost for g in shares[index]) / total:.0f}% of the sweep's planned arithmetic")
    todo = _still_to_do(config, mine, fingerprint, notes)
    keep = {r.backbone.name for r in todo} if config.strategy == "none" else set()
    return Plan(config=config, runs=mine, todo=todo, layer_names=layer_names, data_fingerprint=fingerprint,
                notes=notes, dataset=dataset, bases={name: b for name, b in bases.items() if name in keep})


def _still_to_do(config: SweepConfig, runs: list[RunPlan], fingerprint: str, notes: list[str]) -> list[RunPlan]:
    """The runs with no finished, intact result; refuses a run folder made with other settings."""
    out = Path(config.out)
    todo = []
    for run in runs:
        run_dir = out / run.rel_dir
        identity = _run_identity(config, run, fingerprint)
        saved = run_dir / CONFIG
        if saved.is_file():
            try:
                previous = json.loads(saved.read_text())
            except ValueError:
                previous = {}
            if previous:
                previous.setdefault("bn", "study")  # folders from before --bn trained the study's way
            diff = [k for k in RUN_IDENTITY if previous.get(k) != identity[k]]
            if previous and diff:
                raise SweepError(f"{run_dir} was made with different settings ({', '.join(diff)}); "
                                 f"use another --out or remove that folder")
        if not (run_dir / METRICS).is_file():
            todo.append(run)
        elif _damaged_checkpoint(run_dir):
            notes.append(f"{run.run_id}: best.h5 is missing or differs from the sha256 recorded when the run "
                         f"finished; training it again")
            todo.append(run)
    return todo


def _damaged_checkpoint(run_dir: Path) -> bool:
    """True when a finished run's ``best.h5`` is gone or not the file its metrics recorded."""
    try:
        recorded = json.loads((run_dir / METRICS).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError):
        return True
    if not recorded:  # runs from before the hash was recorded
        return not (run_dir / CHECKPOINT).is_file()
    return not (run_dir / CHECKPOINT).is_file() or sha256_file(run_dir / CHECKPOINT) != recorded


def _ensure_results_line(out: Path, run: RunPlan) -> None:
    """A run whose metrics.json exists but whose results line was lost (kill in between)."""
    if run.run_id in succeeded_ids(out):
        return
    append_run(out, json.loads((out / run.rel_dir / METRICS).read_text()))


def _write_floors(dataset, out: Path, fingerprint: str, log: Callable[[str], None]) -> None:
    """Score the majority class and the feature baseline on the test split, once per dataset."""
    from device.baseline import floors

    path = out / BASELINE

    def current() -> bool:
        try:
            return json.loads(path.read_text()).get("data_fingerprint") == fingerprint
        except (OSError, ValueError):
            return False

    if current() or not dataset.split("test"):
        return
    lock = try_lock(out / ".baseline.lock")
    if lock is None:  # another shard is scoring them; the summary reads its file
        return
    try:
        if current():  # written by a shard that held the lock a moment ago
            return
        t0 = time.perf_counter()
        result = floors(dataset, "test")
        write_predictions(out / BASELINE_PREDICTIONS, result.paths, result.labels, result.feature_probs)
        record = {**result.record(), "data_fingerprint": fingerprint}
        write_json(path, record)
    finally:
        os.close(lock)
    log(f"floors on {record['n']} test images: majority class ({record['majority_class']}) "
        f"{100 * record['majority_accuracy']:.1f}%, feature logistic regression {100 * record['features_accuracy']:.1f}% "
        f"({time.perf_counter() - t0:.0f}s)")


def failed_runs(out: Path, run_ids: list[str]) -> list[str]:
    """The runs among ``run_ids`` with no successful line in ``results.jsonl`` (a later
    success supersedes an earlier failure)."""
    succeeded = succeeded_ids(out)
    return [run_id for run_id in run_ids if run_id not in succeeded]


def run_sweep(config: SweepConfig, log: Callable[[str], None] = print) -> Path:
    """Run (this shard of) a sweep; returns the output folder.

    Writes a run folder per (backbone, level, seed), ``results.jsonl`` (a line per run, a
    failed run with an ``error`` field) and the summary (``train.summary``).
    """
    the_plan = plan(config, log)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = layout.shard_record(out, config.shard)
    write_json(record_path, {**asdict(config), "runs": [r.run_id for r in the_plan.runs]})
    for note in the_plan.notes:
        log(f"note: {note}")
    for run in the_plan.runs:
        if run not in the_plan.todo:
            _ensure_results_line(out, run)
    _write_floors(the_plan.dataset, out, the_plan.data_fingerprint, log)
    done = len(the_plan.runs) - len(the_plan.todo)
    log(f"sweep: {len(the_plan.runs)} runs in this shard ({done} already finished), output {out}")
    busy: list[str] = []
    frozen_passes: dict[str, int] = {}
    if the_plan.todo:
        with _precision(config.precision):
            busy, frozen_passes = _execute(the_plan, out, log)
    failed = [r for r in failed_runs(out, [r.run_id for r in the_plan.runs]) if r not in busy]
    if busy:
        log(f"{len(busy)} run(s) were being trained by another process on {out} and were left to it: "
            f"{', '.join(busy[:10])}{' ...' if len(busy) > 10 else ''}; rerun this command when it ends for a "
            f"complete summary")
    write_json(record_path, {**asdict(config), "runs": [r.run_id for r in the_plan.runs], "failed": failed,
                              "frozen_passes": frozen_passes})
    if failed:
        log(f"{len(failed)} of {len(the_plan.runs)} runs failed: {', '.join(failed[:10])}"
            f"{' ...' if len(failed) > 10 else ''} (errors in {out / RESULTS}; rerun to retry them)")
    if config.shard[1] > 1 and not config.summary:
        log(f"shard {config.shard[0]}/{config.shard[1]}: no summary (other shards may still be running); after the "
            f"last one: python -m train.summary {out}")
        return out
    try:
        from train.summary import write_summary

        write_summary(out, log=log)
    except Exception as exc:  # the runs are safe in results.jsonl; say why the summary failed
        log(f"warning: summary not written ({type(exc).__name__}: {exc}); rerun `python -m train.summary {out}`")
    return out


@contextlib.contextmanager
def _precision(policy: str):
    import tf_keras as keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def spill_dir(config: SweepConfig, out: Path) -> Path:
    """This process's own folder for memory-mapped features, removed only by this process.

    Under ``--cache-dir``, else ``$TMPDIR`` (node-local scratch on a cluster), else
    ``OUT/cache``; named by host and process, so shards sharing a root never touch each
    other's files.
    """
    root = Path(config.cache_dir or os.environ.get("TMPDIR") or out / "cache")
    return root / f"skyedge-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Split:
    """One split's images (raw, resized), labels and manifest records."""

    x: np.ndarray
    y: np.ndarray
    records: list


@dataclass
class _Loaded:
    """One backbone built for training: its model, inputs per split and level caches."""

    backbone: Backbone
    model: object
    base: object
    initial: list  # the weights every run starts from (before its own head init)
    inputs: dict[str, np.ndarray]  # preprocessed images per split
    caches: dict | None  # LevelCache per split, None when features are not cached
    strategy: object


def _load_splits(dataset, img_size: int, log: Callable[[str], None]) -> dict[str, _Split]:
    loaded, skipped = dataset.load_splits(img_size)
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s): " + "; ".join(p for p, _ in skipped[:10]))
    return {name: _Split(*arrays) for name, arrays in loaded.items()}


def _execute(the_plan: Plan, out: Path, log: Callable[[str], None]) -> tuple[list[str], dict[str, int]]:
    """Train the plan's runs still to do, backbone by backbone, deepest level first.

    Returns the ids of runs another process holds, and per backbone how many times this
    process ran its frozen layers over the training images (1 with caching: one pass shared
    by every level).
    """
    import tensorflow as tf
    import tf_keras as keras

    from train.cache import FeatureStore

    config = the_plan.config
    splits = _load_splits(the_plan.dataset, config.img_size, log)
    strategy = tf.distribute.MirroredStrategy() if config.strategy == "mirrored" else tf.distribute.get_strategy()
    use_cache = _use_cache(config)
    store = FeatureStore(budget_bytes=int(config.cache_budget_gb * 2 ** 30), spill_dir=spill_dir(config, out))
    busy: list[str] = []
    frozen_passes: dict[str, int] = {}
    progress = Progress(len(the_plan.todo), "runs", log)
    try:
        for backbone in dict.fromkeys(r.backbone for r in the_plan.todo):
            runs = sorted((r for r in the_plan.todo if r.backbone == backbone), key=lambda r: (-r.level, r.seed))
            loaded = _load_backbone(config, backbone, the_plan.bases.pop(backbone.name, None), splits,
                                    store if use_cache else None, strategy, log)
            for run in runs:
                with _claimed(out, run, log) as claim:
                    if claim == "busy":
                        busy.append(run.run_id)
                    elif claim == "mine":
                        record = _train_run(the_plan, run, out, loaded, splits, log)
                        append_run(out, record)
                        progress.done(run.run_id, _run_line(record, config.epochs))
            if loaded.caches is not None:
                frozen_passes[backbone.name] = loaded.caches["train"].passes_from_images
                log(f"{backbone.name}: {frozen_passes[backbone.name]} frozen pass(es) over the images shared by "
                    f"{len(runs)} run(s)")
                for cache in loaded.caches.values():
                    if cache.arrays[0] is not cache.images:
                        store.release(cache.arrays)
            del loaded
            keras.backend.clear_session()
    finally:
        store.close()
    return busy, frozen_passes


@contextlib.contextmanager
def _claimed(out: Path, run: RunPlan, log: Callable[[str], None]) -> Iterator[str]:
    """Hold a run's lock while the block trains it: one process per run, so a second sweep
    on the same folder takes the other runs.

    Yields ``"mine"`` (train it), ``"busy"`` (another process holds it) or ``"done"`` (another
    process finished it meanwhile; its results line is made sure of).
    """
    run_dir = out / run.rel_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = try_lock(run_dir / RUN_LOCK)
    if lock is None:
        log(f"{run.run_id}: being trained by another process on {out}; left to it")
        yield "busy"
        return
    try:
        if (run_dir / METRICS).is_file() and not _damaged_checkpoint(run_dir):
            _ensure_results_line(out, run)
            log(f"{run.run_id}: finished meanwhile by another process")
            yield "done"
        else:
            yield "mine"
    finally:
        os.close(lock)


def _load_backbone(config: SweepConfig, backbone: Backbone, base, splits: dict[str, _Split], store, strategy,
                   log: Callable[[str], None]) -> _Loaded:
    """Give a backbone its head (building it unless planning left its ``base``), preprocess
    every split, set up its level caches."""
    from train.cache import LevelCache
    from train.model import Built, attach_head, build, reestimate_batchnorm, resolve_weights

    if base is not None:
        built = Built(model=attach_head(base, seed=0), base=base)
    else:
        with strategy.scope():
            built = build(backbone, config.img_size, resolve_weights(backbone, config.weights), seed=0)
    inputs = {name: preprocess(split.x, backbone.preprocess) for name, split in splits.items()}
    if _bn_reestimate(config):
        pick = np.random.default_rng(0).permutation(len(inputs["train"]))[:512]
        count = reestimate_batchnorm(built.base, inputs["train"][pick])
        log(f"{backbone.name}: BatchNorm statistics re-estimated on {len(pick)} training images ({count} layers)")
    caches = None
    if store is not None:
        caches = {name: LevelCache(built.model, built.base, x, store) for name, x in inputs.items()
                  if len(splits[name].y)}
    return _Loaded(backbone, built.model, built.base, built.model.get_weights(), inputs, caches, strategy)


def _train_run(the_plan: Plan, run: RunPlan, out: Path, loaded: _Loaded, splits: dict[str, _Split],
               log: Callable[[str], None]) -> dict:
    """Train and score one run; its results line (with ``error`` when it failed)."""
    from train.cache import top_model
    from train.model import head_init
    from train.levels import level_info, set_level
    from train.trainer import FitConfig, NonFiniteError, fit, predict

    config, model, base, strategy = the_plan.config, loaded.model, loaded.base, loaded.strategy
    train, val, test = splits["train"], splits["val"], splits["test"]
    t0 = time.perf_counter()
    run_dir = out / run.rel_dir
    record = {"run_id": run.run_id, "run_dir": run.rel_dir, "backbone": run.backbone.name,
              "level": run.level, "seed": run.seed}
    try:
        weights_by_class = class_weights(train.y)
        head = model.get_layer("head")
        model.set_weights(loaded.initial)
        head.set_weights(head_init(head.kernel.shape, run.seed))
        run_initial = model.get_weights()
        info = level_info(model, base, run.level, bn=config.bn)
        identity = _run_identity(config, run, the_plan.data_fingerprint)
        write_json(run_dir / CONFIG, {
            **identity, **{k: v for k, v in asdict(config).items() if k not in identity},
            "data_resolved": str(Path(config.data).resolve()), "preprocess": run.backbone.preprocess,
            "keras_name": run.backbone.keras_name, "labels": list(LABELS),
            "class_weights": {LABELS[c]: w for c, w in weights_by_class.items()},
            "train_n": int(len(train.y)), "val_n": int(len(val.y)), "test_n": int(len(test.y)), **info})
        t_cache = time.perf_counter()
        if loaded.caches is not None:
            # caches must see the initial weights of the frozen layers
            arrays = {name: cache.advance(run.level) for name, cache in loaded.caches.items()}
            with strategy.scope():
                top = top_model(model, loaded.caches["train"].boundary)
        else:
            arrays, top = {name: [x] for name, x in loaded.inputs.items()}, model
        cache_seconds = time.perf_counter() - t_cache
        set_level(model, base, run.level, bn=config.bn)
        with strategy.scope():
            result = fit(model, top, train_inputs=arrays["train"], train_labels=train.y,
                         val_inputs=arrays["val"], val_labels=val.y, class_weights=weights_by_class,
                         config=FitConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                          seed=run.seed, jit=config.jit, augment=config.augment),
                         run_dir=run_dir, initial_weights=run_initial, log=log)
        write_predictions(run_dir / VAL_PREDICTIONS, val.records, val.y, result.val_probs)
        metrics = classification_metrics(val.y, result.val_probs.argmax(1))
        if len(test.y):
            # scored once, with the best epoch's weights; nothing above read these images
            test_probs = predict(top, arrays["test"])
            if not np.isfinite(test_probs).all():
                raise NonFiniteError("test outputs are not finite")
            write_predictions(run_dir / TEST_PREDICTIONS, test.records, test.y, test_probs)
            metrics.update(classification_metrics(test.y, test_probs.argmax(1), prefix="test_"))
        record.update({
            "img_size": config.img_size, "epochs": config.epochs, "epochs_run": len(result.history),
            "best_epoch": result.best_epoch, **metrics, **{k: v for k, v in info.items() if k != "level"},
            "weights": config.weights, "bn": config.bn, "cache_features": loaded.caches is not None,
            "cache_seconds": round(cache_seconds, 3), "train_seconds": round(result.train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - t0, 3),
            "train_images_per_s": round(result.images_trained / result.train_seconds, 1) if result.train_seconds else None,
            "resumed_from_epoch": result.resumed_from,
            "precision": config.precision, "jit": config.jit, "strategy": config.strategy,
            "checkpoint_sha256": sha256_file(run_dir / CHECKPOINT),
        })
        write_json(run_dir / METRICS, record)
    except Exception as exc:  # one failed run must not stop the sweep
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _run_line(record: dict, epochs: int) -> str:
    """What a finished run gave, for its progress line."""
    if "error" in record:
        return f"error: {record['error']}, {record['wall_seconds']:.1f}s"
    return (f"val acc {100 * record['val_accuracy']:.1f}% [{100 * record['val_accuracy_ci_low']:.1f}, "
            f"{100 * record['val_accuracy_ci_high']:.1f}]"
            + (f", test acc {100 * record['test_accuracy']:.1f}%" if "test_accuracy" in record else "")
            + f", best epoch {record['best_epoch']}/{epochs}, {record['wall_seconds']:.1f}s")


def parse_shard(text: str, environ=None) -> tuple[int, int]:
    """``i/n``, or ``auto``: this task's share in a job array.

    ``auto`` reads Slurm's ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT`` (the id
    counted from ``SLURM_ARRAY_TASK_MIN``, so ``--array=1-4`` works as well as ``0-3``; with
    ``SKYEDGE_SHARDS`` set, the id as it is out of that many, so one task of an array can be
    submitted again alone), or a
    Kubernetes Indexed Job's ``JOB_COMPLETION_INDEX`` with ``SKYEDGE_SHARDS`` for the count;
    outside an array it is ``0/1``.
    """
    env = os.environ if environ is None else environ
    if text == "auto":
        try:
            if "SLURM_ARRAY_TASK_ID" in env and "SKYEDGE_SHARDS" in env:
                # a task submitted again on its own (--array=1) keeps its share of the whole array
                return int(env["SLURM_ARRAY_TASK_ID"]), int(env["SKYEDGE_SHARDS"])
            if "SLURM_ARRAY_TASK_ID" in env:
                first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
                return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
            if "JOB_COMPLETION_INDEX" in env:
                return int(env["JOB_COMPLETION_INDEX"]), int(env["SKYEDGE_SHARDS"])
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(
                "--shard auto: SLURM_ARRAY_TASK_ID needs SLURM_ARRAY_TASK_COUNT, and JOB_COMPLETION_INDEX needs "
                "SKYEDGE_SHARDS (the number of tasks), as integers") from None
        return 0, 1
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n such as 0/4, or auto") from None
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("python -m train.sweep", __doc__)
    d = {f.name: f.default for f in fields(SweepConfig) if f.default is not MISSING}  # the one set of defaults
    p.add_argument("--data", required=True, help="dataset folder (manifest.csv, labels.csv or class folders)")
    p.add_argument("--out", required=True, help="sweep output folder (shared by shards)")
    p.add_argument("--backbones", default=",".join(d["backbones"]),
                   help="names and groups: paper, mobile, all (default %(default)s)")
    p.add_argument("--levels", default=d["levels"], help="paper | blocks | 0,5,10 | step:N[:max] (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d["epochs"],
                   help="epochs per run; the best by validation accuracy is kept (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="images per training step (default %(default)s)")
    p.add_argument("--img-size", type=int, default=d["img_size"], help="input side in pixels (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate (default %(default)s)")
    p.add_argument("--seeds", default=",".join(map(str, d["seeds"])), help="comma-separated seeds (default %(default)s)")
    p.add_argument("--weights", default=d["weights"],
                   help="imagenet (downloaded by Keras) | none (random) | PATH (a file or folder of Keras weight files) "
                        "(default %(default)s)")
    p.add_argument("--augment", default=d["augment"], choices=AUGMENTS,
                   help="d4: the 8 rotations/flips (default %(default)s)")
    p.add_argument("--cache-features", default=d["cache_features"], choices=CACHE_MODES,
                   help="run the frozen layers once per image and train only the top (auto: when not augmenting; "
                        "default %(default)s)")
    p.add_argument("--cache-budget-gb", type=float, default=d["cache_budget_gb"],
                   help="feature cache kept in memory; beyond, memory-mapped files (default %(default)s)")
    p.add_argument("--cache-dir", help="where memory-mapped features go, in a folder of this process's own "
                                       "(default $TMPDIR when set, else OUT/cache)")
    p.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                   help="mixed_float16 on GPUs with tensor cores (default %(default)s)")
    p.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    p.add_argument("--strategy", default=d["strategy"], choices=STRATEGIES,
                   help="mirrored: all GPUs of this machine (default %(default)s)")
    p.add_argument("--shard", type=parse_shard, default=d["shard"], help="i/n: run the i-th of n shares (whole backbones, balanced by planned arithmetic); "
                        "auto: from a Slurm array (SLURM_ARRAY_TASK_ID/COUNT) or an Indexed Job (default 0/1)")
    p.add_argument("--bn", default=d["bn"], choices=BN_MODES,
                   help="BatchNorm while fine-tuning: frozen (inference mode, fixed; default) or study "
                        "(trainable BatchNorm layers update their statistics with the backbone's momentum)")
    p.add_argument("--summary", action="store_true",
                   help="write summary.md even as one shard of several (by default only an unsharded sweep does; "
                        "run `python -m train.summary OUT` after the last shard)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--bn-reestimate", default=d["bn_reestimate"], choices=("auto", "on", "off"),
                   help="re-estimate frozen BatchNorm statistics on training images (auto: with --weights none; "
                        "default %(default)s)")
    return p


def from_args(args: argparse.Namespace) -> SweepConfig:
    """Build the config from parsed arguments (the only place a Namespace is read)."""
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise SweepError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    return SweepConfig(data=args.data, out=args.out, backbones=tuple(b for b in args.backbones.split(",") if b.strip()),
                       levels=args.levels, epochs=args.epochs, batch_size=args.batch_size, img_size=args.img_size,
                       lr=args.lr, seeds=seeds or (0,), weights=args.weights, augment=args.augment,
                       cache_features=args.cache_features, cache_budget_gb=args.cache_budget_gb, cache_dir=args.cache_dir,
                       precision=args.precision, jit=args.jit, strategy=args.strategy, shard=args.shard,
                       bn_reestimate=args.bn_reestimate, bn=args.bn, summary=args.summary)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        config = from_args(args)
        check_config(config)  # a typo is answered at once, not after TensorFlow has loaded
        quiet_tensorflow(args.verbose)
        from train.model import WeightsError

        try:
            out = run_sweep(config)
        except WeightsError as exc:
            raise SweepError(str(exc)) from None
        print(f"results: {out / RESULTS}; summary: {out / 'summary.md'}")
        shard = json.loads(layout.shard_record(out, config.shard).read_text())
        if shard.get("failed"):
            print(f"finished with failures: {len(shard['failed'])} of {len(shard['runs'])} runs failed",
                  file=sys.stderr)
            return Exit.PARTIAL
        return 0

    return run_command(work, (SweepError, DatasetError),
                       "finished epochs are saved; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
