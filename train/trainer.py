"""One training run (backbone x level x seed): resumable epochs, best epoch restored.

The run folder holds ``history.csv`` (one row per finished epoch), ``ckpt/`` (the last two
epochs' trained weights and optimizer state, for resume), ``best.h5`` with ``best.json``
(the epoch it holds). Order of writes per epoch: checkpoint, best weights, history row, so
a kill at any moment loses at most the epoch in progress.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from device.atomic import write_json
from device.progress import Progress
from train.recipe import LR_SCHEDULES, d4
from device.sweep_results import CHECKPOINT, CHECKPOINT_META, HISTORY, HistoryError, read_history, write_history



@dataclass(frozen=True)
class FitConfig:
    """Training settings of one run."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    jit: bool = False
    augment: str = "none"
    lr_schedule: str = "constant"


# A run's time besides its frozen pass: the first epoch (tracing the training step),
# the other epochs, validation passes, and checkpoint/best-weights/history writes
TIME_PARTS = ("first epoch", "epochs", "validation", "checkpoints")


class NonFiniteError(RuntimeError):
    """Training produced a loss or outputs that are not finite numbers (NaN or inf)."""


@dataclass
class FitResult:
    """What a finished run learned: best epoch, its validation probabilities, history."""

    best_epoch: int
    val_probs: np.ndarray
    history: list[dict]
    train_seconds: float
    images_trained: int
    resumed_from: int
    seconds: dict[str, float]  # where the run's time went, by TIME_PARTS


def _learning_rate(config: FitConfig, n_train: int):
    """Adam's learning rate: a constant, or cosine decay to zero over all training steps.

    The schedule is a function of the optimizer's step count, which the checkpoint keeps,
    so a resumed run continues the same curve.
    """
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule != "cosine":
        raise ValueError(f"lr schedule {config.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
    steps = config.epochs * max(1, -(-n_train // config.batch_size))
    return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=steps)


def _save_weights_atomic(model: keras.Model, path: Path) -> None:
    # legacy HDF5 (by layer order): a ".weights.h5" suffix would switch Keras to another format
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.h5")
    model.save_weights(str(tmp))
    os.replace(tmp, path)


def _cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def _batches(inputs: list[np.ndarray], onehot: np.ndarray, weights: np.ndarray, config: "FitConfig",
             epochs: range):
    """Every batch of ``epochs`` in a row; each epoch's order and D4 codes come from
    ``(config.seed, epoch)``."""
    memmapped = isinstance(inputs[0], np.memmap)
    for epoch in epochs:
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(onehot))
        codes = rng.integers(0, 8, len(onehot)) if config.augment == "d4" else None
        for start in range(0, len(order), config.batch_size):
            idx = np.sort(order[start:start + config.batch_size]) if memmapped else order[start:start + config.batch_size]
            xs = [a[idx] for a in inputs]
            if codes is not None:
                xs[0] = d4(xs[0], codes[idx])
            yield (tuple(xs) if len(xs) > 1 else xs[0]), onehot[idx], weights[idx]


def _dataset(inputs, onehot, weights, config: "FitConfig", epochs: range) -> tf.data.Dataset:
    x_spec = tuple(tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype)) for a in inputs)
    signature = (x_spec if len(x_spec) > 1 else x_spec[0],
                 tf.TensorSpec((None, onehot.shape[1]), tf.float32), tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(lambda: _batches(inputs, onehot, weights, config, epochs),
                                          output_signature=signature).prefetch(tf.data.AUTOTUNE)


def predict(model: keras.Model, inputs: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Class probabilities of ``model`` over ``inputs`` (a list of arrays), inference mode."""
    from train.model import inference_function

    infer = inference_function(model)
    out = []
    for start in range(0, len(inputs[0]), batch_size):
        out.append(np.asarray(infer(*(a[start:start + batch_size] for a in inputs))[0], dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def _compiled(top: keras.Model, config: FitConfig, n_train: int, loss, soft: bool):
    """Compile ``top`` with Adam (its schedule) and the loss; the optimizer. With soft targets
    the training accuracy is not measured (the targets are not one-hot)."""
    optimizer = keras.optimizers.Adam(learning_rate=_learning_rate(config, n_train))
    top.compile(optimizer=optimizer, loss=loss or "categorical_crossentropy", metrics=[] if soft else ["accuracy"],
                jit_compile=config.jit)
    return optimizer


def fit(full: keras.Model, top: keras.Model, *, train_inputs: list[np.ndarray], train_labels: np.ndarray,
        val_inputs: list[np.ndarray], val_labels: np.ndarray, class_weights: dict[int, float],
        config: FitConfig, run_dir: Path, initial_weights: list[np.ndarray],
        log: Callable[[str], None] = print, before_validation: Callable[[], None] | None = None,
        targets: np.ndarray | None = None, loss=None) -> FitResult:
    """Train ``top`` (which shares layers with ``full``), resuming from ``run_dir`` if possible.

    Args:
        full: the whole model (base + head); its best-epoch weights are saved in ``best.h5``.
        top: the model actually trained: ``full`` itself, or its trainable top on cached
            boundary tensors.
        train_inputs, val_inputs: arrays feeding ``top`` (preprocessed images or features).
        train_labels, val_labels: class indices.
        class_weights: ``{class: weight}`` applied as per-sample loss weights.
        config: epochs, batch size, learning rate, seed, XLA, augmentation.
        run_dir: the run folder (created by the caller).
        initial_weights: ``full``'s starting weights, restored if the run restarts.
        log: where per-run notes go.
        before_validation: called after each epoch's training, before the validation pass
            (pretraining re-estimates BatchNorm statistics there).
        targets: what the loss compares the outputs with, one row per training image
            (default: the one-hot labels); distillation passes labels and teacher
            probabilities side by side.
        loss: the Keras loss (default categorical cross-entropy on the probabilities).

    Returns:
        The best epoch (by validation accuracy, first of ties), its validation
        probabilities (the weights of that epoch are restored into ``full``), the history.
    """
    keras.utils.set_random_seed(config.seed)
    n_classes = full.output_shape[-1]
    onehot = np.eye(n_classes, dtype=np.float32)[train_labels] if targets is None else np.asarray(targets, np.float32)
    weights = np.array([class_weights.get(int(c), 0.0) for c in train_labels], dtype=np.float32)
    optimizer = _compiled(top, config, len(train_labels), loss, soft=targets is not None)
    # Only the top changes: the frozen layers come back identical from the seeded init or the
    # weights file, so checkpointing ``top`` (not ``full``) keeps per-epoch saves small.
    ckpt = tf.train.Checkpoint(model=top, optimizer=optimizer)
    best_path = run_dir / CHECKPOINT
    history, manager = _resume(run_dir, full, ckpt, initial_weights, log)
    start_epoch = len(history)
    seconds = dict.fromkeys(TIME_PARTS, 0.0)

    end = _EpochEnd(full, top, val_inputs, val_labels, config, run_dir, manager, history, seconds, start_epoch,
                    before_validation, log)
    if start_epoch < config.epochs:
        # one fit call and one input pipeline for every epoch left: each epoch's order comes
        # from (seed, epoch), so a resumed run draws the same batches as an unbroken one
        steps = -(-len(train_labels) // config.batch_size)
        ds = _dataset(train_inputs, onehot, weights, config, range(start_epoch, config.epochs))
        top.fit(ds, epochs=config.epochs, initial_epoch=start_epoch, steps_per_epoch=steps, verbose=0,
                callbacks=[end])
    if end.best_epoch == 0:
        raise RuntimeError("no epoch finished (epochs must be >= 1)")
    t_end = time.perf_counter()
    full.load_weights(str(best_path))
    val_probs = predict(top, val_inputs)
    seconds["validation"] += time.perf_counter() - t_end
    return FitResult(best_epoch=end.best_epoch, val_probs=val_probs, history=history,
                     train_seconds=seconds["first epoch"] + seconds["epochs"],
                     images_trained=(config.epochs - start_epoch) * len(train_labels),
                     resumed_from=start_epoch, seconds={k: round(v, 3) for k, v in seconds.items()})


class _EpochEnd(keras.callbacks.Callback):
    """What ``fit`` does after each epoch's training: validation, then the checkpoint, the
    best weights and the history row (in that order, so a kill loses at most one epoch)."""

    def __init__(self, full, top, val_inputs, val_labels, config: FitConfig, run_dir: Path, manager,
                 history: list[dict], seconds: dict[str, float], start_epoch: int,
                 before_validation: Callable[[], None] | None, log: Callable[[str], None]):
        super().__init__()
        self.full, self.top, self.val_inputs, self.val_labels, self.config = full, top, val_inputs, val_labels, config
        self.run_dir, self.manager, self.history, self.seconds = run_dir, manager, history, seconds
        self.start_epoch, self.before_validation, self.log = start_epoch, before_validation, log
        self.progress = Progress(config.epochs, "epochs", log, already=start_epoch)
        self.best_epoch, self.best_acc = 0, -1.0
        for row in history:
            if row["val_accuracy"] > self.best_acc:
                self.best_epoch, self.best_acc = row["epoch"], row["val_accuracy"]

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        config, seconds = self.config, self.seconds
        if self.before_validation is not None:
            self.before_validation()
        t_val = time.perf_counter()
        seconds["first epoch" if epoch == self.start_epoch else "epochs"] += t_val - self.t0
        probs = predict(self.top, self.val_inputs)
        t_save = time.perf_counter()
        seconds["validation"] += t_save - t_val
        if not (np.isfinite(logs["loss"]) and np.isfinite(probs).all()):
            raise NonFiniteError(f"epoch {epoch + 1}: training loss {logs['loss']} or validation outputs are "
                                 f"not finite (learning rate {config.lr} too high, or bad input values)")
        labels = self.val_labels
        val_acc = float(np.mean(probs.argmax(1) == labels)) if len(labels) else float("nan")
        row = {"epoch": epoch + 1, "loss": float(logs["loss"]), "accuracy": float(logs.get("accuracy", float("nan"))),
               "val_loss": _cross_entropy(probs, labels), "val_accuracy": val_acc,
               "seconds": round(time.perf_counter() - self.t0, 3)}
        self.manager.save(checkpoint_number=epoch + 1)
        if val_acc > self.best_acc:
            self.best_epoch, self.best_acc = epoch + 1, val_acc
            _save_weights_atomic(self.full, self.run_dir / CHECKPOINT)
            write_json(self.run_dir / CHECKPOINT_META, {"epoch": self.best_epoch, "val_accuracy": self.best_acc})
        self.history.append(row)
        write_history(self.run_dir / HISTORY, self.history)
        seconds["checkpoints"] += time.perf_counter() - t_save
        self.log(f"  epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.3f}, train acc {100 * row['accuracy']:.1f}%, "
                 f"val loss {row['val_loss']:.3f}, val acc {100 * val_acc:.1f}%"
                 f"{' (best)' if self.best_epoch == epoch + 1 else ''}, {row['seconds']:.0f}s; {self.progress.advance()}")


def _h5_readable(path: Path) -> bool:
    """True when ``path`` is an HDF5 file whose weight groups can be listed."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return len(fh.attrs.get("layer_names", [])) > 0
    except (OSError, ValueError):
        return False


def _checkpoint_readable(prefix: str) -> bool:
    """True when every tensor of the checkpoint at ``prefix`` can be read back."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception:  # a damaged file fails in many ways (DataLossError, OpError, ...)
        return False
    return True


def _resume(run_dir: Path, full, ckpt, initial_weights, log):
    """Restore the last good epoch from ``run_dir``.

    Returns:
        ``(history rows kept, checkpoint manager)``.

    History rows beyond the newest restorable checkpoint are dropped (that epoch is redone).
    The best-weights file must load and name an epoch in the kept history; otherwise the
    run starts again from scratch, with a note.
    """
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "ckpt"), max_to_keep=2)
    try:
        history = read_history(run_dir / HISTORY)
    except HistoryError as exc:  # torn or damaged by a crash: like a damaged checkpoint
        log(f"  {exc}; restarting this run")
        return _restart(run_dir, full, ckpt, initial_weights)
    if not history:
        return [], manager
    saved = {int(Path(p).name.rsplit("-", 1)[1]): p for p in manager.checkpoints}
    for epoch in sorted((e for e in saved if e <= len(history)), reverse=True):
        # Read the files first and restore only once resuming is decided: a restore binds
        # variables created later (the optimizer's slots) to this checkpoint, and a restart
        # deletes it, which would then fail at the first training step.
        if not _checkpoint_readable(saved[epoch]):
            log(f"  checkpoint of epoch {epoch} unreadable; trying an earlier one")
            continue
        kept = history[:epoch]
        best_row = max(kept, key=lambda r: (r["val_accuracy"], -r["epoch"]))
        try:
            meta = json.loads((run_dir / CHECKPOINT_META).read_text())
            ok = int(meta["epoch"]) == best_row["epoch"] and _h5_readable(run_dir / CHECKPOINT)
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok and best_row["epoch"] != epoch:
            log(f"  best weights of epoch {best_row['epoch']} missing or stale; restarting this run")
            break
        try:
            ckpt.restore(saved[epoch]).assert_existing_objects_matched()
        except Exception as exc:  # a damaged file fails in many ways (OpError, IndexError, ...)
            log(f"  checkpoint of epoch {epoch} unreadable ({type(exc).__name__}); trying an earlier one")
            continue
        if not ok:
            _save_weights_atomic(full, run_dir / CHECKPOINT)
            write_json(run_dir / CHECKPOINT_META, {"epoch": epoch, "val_accuracy": best_row["val_accuracy"]})
        log(f"  resuming after epoch {epoch}")
        return kept, manager
    else:
        log("  no usable checkpoint; restarting this run")
    return _restart(run_dir, full, ckpt, initial_weights)


def _restart(run_dir: Path, full, ckpt, initial_weights):
    """Start a run again: initial weights, no checkpoint, no history; ``([], manager)``."""
    full.set_weights(initial_weights)
    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    for name in (HISTORY, CHECKPOINT, CHECKPOINT_META):
        (run_dir / name).unlink(missing_ok=True)
    return [], tf.train.CheckpointManager(ckpt, str(run_dir / "ckpt"), max_to_keep=2)
