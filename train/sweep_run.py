"""Running a planned sweep: backbone by backbone, deepest level first, each run trained and
scored once under its own lock, its record appended to ``results.jsonl`` as it finishes
(``run_sweep``). Frozen features are computed once per backbone and shared by its levels
(``train.cache``).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from device.atomic import try_lock, write_json
from device.backbones import Backbone
from device.checksum import sha256_file
from device.dataset import LABELS, class_weights
from device.metrics import classification_metrics
from device.predictions import write_predictions
from device.progress import Progress, StepTimer
from device.preprocess import preprocess
from device.sweep_results import (BASELINE, BASELINE_PREDICTIONS, CHECKPOINT, CONFIG, METRICS, RESULTS,
                                   TEST_PREDICTIONS, VAL_PREDICTIONS, append_run)
from device import sweep_results as layout
from train.sweep_config import SweepConfig, bn_reestimate_on, use_cache
from train.precision import effective_precision, policy
from train.sweep_plan import (Plan, RunPlan, damaged_checkpoint, ensure_results_line, failed_runs, plan_with_bases,
                              run_identity)

RUN_LOCK = ".lock"  # in each run folder, held while a process trains that run
HEARTBEAT_S = 20.0  # a progress line at least this often within a run


def run_sweep(config: SweepConfig, log: Callable[[str], None] = print) -> Path:
    """Run (this shard of) a sweep; returns the output folder.

    Writes a run folder per (backbone, level, seed), ``results.jsonl`` (a line per run, a
    failed run with an ``error`` field) and the summary (``train.summary``).
    """
    the_plan, bases = plan_with_bases(config, log)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = layout.shard_record(out, config.shard)
    write_json(record_path, {**asdict(config), "runs": [r.run_id for r in the_plan.runs]})
    for note in the_plan.notes:
        log(f"note: {note}")
    for run in the_plan.runs:
        if run not in the_plan.todo:
            ensure_results_line(out, run)
    _write_floors(the_plan.dataset, out, the_plan.data_fingerprint, log)
    done = len(the_plan.runs) - len(the_plan.todo)
    log(f"sweep: {len(the_plan.runs)} runs in this shard ({done} already finished), output {out}")
    busy: list[str] = []
    frozen_passes: dict[str, int] = {}
    if the_plan.todo:
        with policy(effective_precision(config.precision, log)):
            busy, frozen_passes = _execute(the_plan, bases, out, log)
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


def _step_seconds(wall: float, cache_seconds: float, fit_seconds: dict[str, float]) -> dict[str, float]:
    """Where one run's wall time went: the frozen pass, the trainer's parts, and the rest
    (building the top, level settings, test predictions, files)."""
    parts = {"frozen features": cache_seconds, **fit_seconds}
    return {**{k: round(v, 3) for k, v in parts.items()}, "other": round(max(0.0, wall - sum(parts.values())), 3)}


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
    """One backbone built for training: its model, preprocessed inputs (plain training) or its level cache."""

    model: object
    base: object
    initial: list  # the weights every run starts from (before its own head init)
    inputs: dict[str, np.ndarray]  # preprocessed images per split
    cache: object | None  # one LevelCache over every split's images in a row; None: not cached
    bounds: dict[str, tuple[int, int]]  # each split's rows in the cache's arrays
    strategy: object

    def features(self, level: int) -> dict[str, list[np.ndarray]]:
        """Each split's boundary arrays at ``level``: views of one frozen pass over all of them."""
        arrays = self.cache.advance(level)
        return {name: [a[lo:hi] for a in arrays] for name, (lo, hi) in self.bounds.items()}


def _load_splits(dataset, img_size: int, log: Callable[[str], None]) -> dict[str, _Split]:
    loaded, skipped = dataset.load_splits(img_size)
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s): " + "; ".join(p for p, _ in skipped[:10]))
    return {name: _Split(*arrays) for name, arrays in loaded.items()}


def _execute(the_plan: Plan, bases: dict[str, object], out: Path,
             log: Callable[[str], None]) -> tuple[list[str], dict[str, int]]:
    """Train the plan's runs still to do, backbone by backbone, deepest level first, starting
    each backbone from its base in ``bases`` (built to plan) where there is one.

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
    cached = use_cache(config)
    store = FeatureStore(budget_bytes=int(config.cache_budget_gb * 2 ** 30), spill_dir=spill_dir(config, out))
    busy: list[str] = []
    frozen_passes: dict[str, int] = {}
    progress = Progress(len(the_plan.todo), "runs", log)
    try:
        for backbone in dict.fromkeys(r.backbone for r in the_plan.todo):
            runs = sorted((r for r in the_plan.todo if r.backbone == backbone), key=lambda r: (-r.level, r.seed))
            loaded = _load_backbone(config, backbone, bases.pop(backbone.name, None), splits,
                                    store if cached else None, strategy, log)
            for run in runs:
                with _claimed(out, run, log) as claim:
                    if claim == "busy":
                        busy.append(run.run_id)
                    elif claim == "mine":
                        record = _train_run(the_plan, run, out, loaded, splits, log)
                        append_run(out, record)
                        progress.done(run.run_id, _run_line(record, config.epochs))
            if loaded.cache is not None:
                frozen_passes[backbone.name] = loaded.cache.passes_from_images
                log(f"{backbone.name}: {frozen_passes[backbone.name]} frozen pass(es) over the images shared by "
                    f"{len(runs)} run(s)")
                if loaded.cache.arrays[0] is not loaded.cache.images:
                    store.release(loaded.cache.arrays)
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
        if (run_dir / METRICS).is_file() and not damaged_checkpoint(run_dir):
            ensure_results_line(out, run)
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
    if bn_reestimate_on(config):
        pick = np.random.default_rng(0).permutation(len(inputs["train"]))[:512]
        count = reestimate_batchnorm(built.base, inputs["train"][pick])
        log(f"{backbone.name}: BatchNorm statistics re-estimated on {len(pick)} training images ({count} layers)")
    cache, bounds = None, {}
    if store is not None:
        # one frozen pass (one graph per level) over train, val and test in a row
        names = [name for name in inputs if len(splits[name].y)]
        starts = np.cumsum([0] + [len(inputs[name]) for name in names])
        bounds = {name: (int(starts[i]), int(starts[i + 1])) for i, name in enumerate(names)}
        cache = LevelCache(built.model, built.base, np.concatenate([inputs[name] for name in names]), store)
        inputs = {}  # the cache holds the images now
    return _Loaded(built.model, built.base, built.model.get_weights(), inputs, cache, bounds, strategy)


def _train_run(the_plan: Plan, run: RunPlan, out: Path, loaded: _Loaded, splits: dict[str, _Split],
               log: Callable[[str], None]) -> dict:
    """Train and score one run; its results line (with ``error`` when it failed)."""
    import tf_keras as keras

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
        identity = run_identity(config, run, the_plan.data_fingerprint)
        write_json(run_dir / CONFIG, {
            **identity, **{k: v for k, v in asdict(config).items() if k not in identity},
            "data_resolved": str(Path(config.data).resolve()), "preprocess": run.backbone.preprocess,
            "keras_name": run.backbone.keras_name, "labels": list(LABELS),
            "class_weights": {LABELS[c]: w for c, w in weights_by_class.items()},
            "train_n": int(len(train.y)), "val_n": int(len(val.y)), "test_n": int(len(test.y)), **info})
        t_cache = time.perf_counter()
        # a heartbeat line every 20 s while the frozen pass or an epoch (with its tracing) runs long
        steps = StepTimer(run.run_id, log, every_s=HEARTBEAT_S, noun="run")
        if loaded.cache is not None:
            # the cache must see the initial weights of the frozen layers
            with steps.step("frozen features"):
                arrays = loaded.features(run.level)
            with strategy.scope():
                top = top_model(model, loaded.cache.boundary)
        else:
            arrays, top = {name: [x] for name, x in loaded.inputs.items()}, model
        cache_seconds = time.perf_counter() - t_cache
        set_level(model, base, run.level, bn=config.bn)
        with strategy.scope(), steps.step("training"):
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
        wall = time.perf_counter() - t0
        record.update({
            "img_size": config.img_size, "epochs": config.epochs, "epochs_run": len(result.history),
            "best_epoch": result.best_epoch, **metrics, **{k: v for k, v in info.items() if k != "level"},
            "weights": config.weights, "bn": config.bn, "cache_features": loaded.cache is not None,
            "cache_seconds": round(cache_seconds, 3), "train_seconds": round(result.train_seconds, 3),
            "wall_seconds": round(wall, 3), "step_seconds": _step_seconds(wall, cache_seconds, result.seconds),
            "train_images_per_s": round(result.images_trained / result.train_seconds, 1) if result.train_seconds else None,
            "resumed_from_epoch": result.resumed_from,
            # the policy it trained under (float32 where a bfloat16 request fell back)
            "precision": keras.mixed_precision.global_policy().name, "jit": config.jit, "strategy": config.strategy,
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
