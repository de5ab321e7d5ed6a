"""Distillation: a mobile student learns from the best model's probabilities (Hinton et al. 2015).

    python -m train.distill --data D --teacher EXPORTS [--teacher-artifacts ID,ID] \\
        --student mobilenetv2 --weights weights/ --level 25 --out distill/ [--seeds 0,1,2] \\
        [--temperature 4] [--alpha 0.1] [--epochs 8] [--img-size 64]

The teacher is one or more exported models (fp32 artifacts of an exports folder, by default
the most accurate one on validation); with several, their probabilities are averaged. Its
probabilities over the training images are computed once, with the device runtime, and kept
(``OUT/teacher-<key>.npz``), so every student and seed reads the same targets.

The student (any registry backbone, from ``--weights``, at ``--level`` as in the sweep) is
trained with the usual soft-target loss::

    loss = alpha * CE(y, p_s) + (1 - alpha) * T^2 * CE(p_t^(T), p_s^(T))

where ``p^(T) = softmax(log p / T)`` softens a distribution (``T`` the temperature; the
``T^2`` keeps the soft term's gradients at the hard term's scale), ``y`` the true label and
``p_t`` the teacher's probabilities. Validation picks the best epoch (on true labels), as in
the sweep; the test split is scored once.

``OUT`` is laid out as a sweep folder (``device.sweep_results``): ``results.jsonl`` and one run
folder per (student, level, seed), each config recording its teacher, so ``python -m
export.tflite --runs OUT`` exports, and ``bench`` measures and reports, a student like any run.
Resumable: rerun the same command; finished runs are skipped, a killed run resumes from its
last finished epoch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from device import exports_manifest
from device import sweep_results as layout
from device.atomic import write_json
from device.backbones import get
from device.checksum import sha256_file
from device.choices import first_bad_choice
from train.precision import PRECISION_HELP, PRECISIONS, effective_precision, policy
from device.command import Exit, run_command
from device.dataset import LABELS, DatasetError, class_weights, open_dataset
from device.metrics import classification_metrics
from device.predictions import write_predictions
from device.options import defaults
from device.progress import Progress
from train.console import VERBOSE_HELP, command_parser, hidden_output, quiet_tensorflow

BN_CHOICES = ("frozen", "study")


class DistillError(ValueError):
    """Settings or inputs distillation cannot use; the message names them."""


@dataclass(frozen=True)
class DistillConfig:
    """``train.distill``'s settings, checked when built (the parser reads its defaults here)."""

    data: str
    teacher: str
    student: str
    out: str
    level: int
    weights: str = "imagenet"
    teacher_artifacts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    temperature: float = 4.0
    alpha: float = 0.1
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    img_size: int = 64
    bn: str = "frozen"
    precision: str = "float32"

    def __post_init__(self):
        for name, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--img-size", self.img_size, 32), ("--level", self.level, 0)):
            if not isinstance(value, int) or value < low:
                raise DistillError(f"{name} {value!r}: expected an integer >= {low}")
        for name, value in (("--temperature", self.temperature), ("--lr", self.lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise DistillError(f"{name} {value!r}: expected a finite number > 0")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise DistillError(f"--alpha {self.alpha!r}: expected a number from 0 (soft targets only) to 1 (labels only)")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise DistillError(f"--seeds {self.seeds!r}: expected non-negative integers")
        problem = first_bad_choice(("--bn", self.bn, BN_CHOICES), ("--precision", self.precision, PRECISIONS))
        if problem:
            raise DistillError(problem)
        try:
            get(self.student)
        except KeyError as exc:
            raise DistillError(f"--student: {exc.args[0]}") from None


def teacher_records(exports: str | Path, ids: tuple[str, ...]) -> list[dict]:
    """The teacher's manifest records: ``ids``, or the most accurate fp32 artifact on validation.

    Raises:
        DistillError: no manifest, an unknown id, or no usable fp32 artifact.
    """
    folder = Path(exports)
    try:
        records = {r.get("artifact_id"): r for r in exports_manifest.read_artifacts(folder) if isinstance(r, dict)}
    except (FileNotFoundError, ValueError) as exc:
        raise DistillError(f"--teacher: {exc}") from None
    usable = {aid: r for aid, r in records.items()
              if r.get("file") and not r.get("error") and (folder / r["file"]).is_file()}
    if ids:
        missing = [i for i in ids if i not in usable]
        if missing:
            raise DistillError(f"--teacher-artifacts {','.join(missing)}: not usable artifacts of {folder}; expected "
                               f"some of {', '.join(sorted(map(str, usable)))}")
        return [usable[i] for i in ids]
    fp32 = [r for r in usable.values() if r.get("variant") == "fp32"]
    if not fp32:
        raise DistillError(f"--teacher {folder}: no fp32 artifact to teach with")
    return [min(fp32, key=lambda r: (-float(r.get("val_accuracy") or 0), str(r.get("artifact_id"))))]


def teacher_probabilities(config: DistillConfig, dataset, log: Callable[[str], None]) -> tuple[np.ndarray, dict]:
    """The teacher's mean probabilities on every training image, computed once and kept.

    Returns:
        ``(probs (N, C) in the train split's order, description)``.
    """
    from device.runtime import load

    records = teacher_records(config.teacher, config.teacher_artifacts)
    train = dataset.split("train")
    key = hashlib.sha256(json.dumps({"teacher": [r.get("sha256") for r in records],
                                     "images": [r.path for r in train]}).encode()).hexdigest()[:16]
    cache = Path(config.out) / f"teacher-{key}.npz"
    about = {"teacher_artifacts": [r["artifact_id"] for r in records], "teacher_exports": str(config.teacher),
             "teacher_val_accuracy": [r.get("val_accuracy") for r in records], "teacher_key": key}
    if cache.is_file():
        return np.load(cache)["probs"], about
    total = np.zeros((len(train), len(LABELS)), np.float64)
    for record in records:
        size = int(record.get("img_size") or record["input_shape"][1])
        images, _, kept, skipped = dataset.load_arrays("train", size)
        if skipped:
            raise DistillError(f"{len(skipped)} training image(s) unreadable (first: {skipped[0][0]}); fix or remove them")
        with hidden_output():
            model = load(Path(config.teacher) / record["file"])
        progress = Progress(len(images), "images", log, every_s=10.0, label=f"teacher {record['artifact_id']}")
        for i, image in enumerate(images):
            total[i] = model.predict(image)
            progress.update(i + 1)
    probs = (total / len(records)).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp.npz")
    np.savez(tmp, probs=probs)
    tmp.replace(cache)
    return probs, about


def soft_target_loss(temperature: float, alpha: float, classes: int = len(LABELS)):
    """The Keras loss of the student: ``y_true`` holds [one-hot label | teacher probabilities]."""
    import tensorflow as tf

    def loss(y_true, y_pred):
        hard, teacher = y_true[:, :classes], y_true[:, classes:]
        log_student = tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0))
        log_teacher = tf.math.log(tf.clip_by_value(teacher, 1e-7, 1.0))
        soft_teacher = tf.nn.softmax(log_teacher / temperature)
        soft_student = tf.nn.log_softmax(log_student / temperature)
        hard_term = -tf.reduce_sum(hard * log_student, axis=-1)
        soft_term = -tf.reduce_sum(soft_teacher * soft_student, axis=-1) * temperature ** 2
        return alpha * hard_term + (1.0 - alpha) * soft_term

    return loss


def _splits(dataset, size: int) -> dict:
    """``{split: (images, labels, records)}`` at the student's size; unreadable images refused."""
    loaded, skipped = dataset.load_splits(size)
    if skipped:
        raise DistillError(f"{len(skipped)} image(s) unreadable (first: {skipped[0][0]}); fix or remove them")
    return loaded


def _distill_run(config: DistillConfig, seed: int, splits: dict, teacher: np.ndarray, about: dict,
                 log: Callable[[str], None]) -> dict:
    """Train one student seed; its results record (``error`` when it failed)."""
    from device.preprocess import preprocess
    from train.levels import level_info, set_level
    from train.model import build, head_init, resolve_weights
    from train.trainer import FitConfig, fit, predict

    backbone = get(config.student)
    rel = layout.run_dir(backbone.name, config.level, seed)
    run_dir = Path(config.out) / rel
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": layout.run_id(backbone.name, config.level, seed), "run_dir": rel, "backbone": backbone.name,
              "level": config.level, "seed": seed, "distilled": True, **about}
    t0 = time.perf_counter()
    (train_x, train_y, _), (val_x, val_y, val_records), (test_x, test_y, test_records) = (
        splits["train"], splits["val"], splits["test"])
    built = build(backbone, config.img_size, resolve_weights(backbone, config.weights), seed=seed)
    model, base = built.model, built.base
    head = model.get_layer("head")
    head.set_weights(head_init(head.kernel.shape, seed))
    initial = model.get_weights()
    info = level_info(model, base, config.level, bn=config.bn)
    write_json(run_dir / layout.CONFIG, {**asdict(config), "seed": seed, "backbone": backbone.name,
                                         "data_resolved": str(Path(config.data).resolve()), "labels": list(LABELS),
                                         "preprocess": backbone.preprocess, "keras_name": backbone.keras_name,
                                         **about, **info})
    set_level(model, base, config.level, bn=config.bn)
    onehot = np.eye(len(LABELS), dtype=np.float32)[train_y]
    result = fit(model, model, train_inputs=[preprocess(train_x, backbone.preprocess)], train_labels=train_y,
                 val_inputs=[preprocess(val_x, backbone.preprocess)], val_labels=val_y,
                 class_weights=class_weights(train_y),
                 config=FitConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=seed),
                 run_dir=run_dir, initial_weights=initial, log=log,
                 targets=np.concatenate([onehot, teacher], axis=1), loss=soft_target_loss(config.temperature, config.alpha))
    write_predictions(run_dir / layout.VAL_PREDICTIONS, val_records, val_y, result.val_probs)
    metrics = classification_metrics(val_y, result.val_probs.argmax(1))
    if len(test_y):  # scored once, with the best epoch's weights
        test_probs = predict(model, [preprocess(test_x, backbone.preprocess)])
        write_predictions(run_dir / layout.TEST_PREDICTIONS, test_records, test_y, test_probs)
        metrics.update(classification_metrics(test_y, test_probs.argmax(1), prefix="test_"))
    record.update({"img_size": config.img_size, "epochs": config.epochs, "epochs_run": len(result.history),
                   "best_epoch": result.best_epoch, **metrics, **{k: v for k, v in info.items() if k != "level"},
                   "weights": config.weights, "bn": config.bn, "temperature": config.temperature,
                   "alpha": config.alpha, "wall_seconds": round(time.perf_counter() - t0, 3),
                   "checkpoint_sha256": sha256_file(run_dir / layout.CHECKPOINT)})
    write_json(run_dir / layout.METRICS, record)
    return record


def distill(config: DistillConfig, log: Callable[[str], None] = print) -> Path:
    """Distil the teacher into the student for every seed of ``config``; the output folder.

    Raises:
        DistillError, DatasetError: unusable settings or inputs, before any training.
    """
    from train.model import WeightsError

    dataset = open_dataset(config.data)
    for note in dataset.notes:
        log(f"note: {note}")
    if not dataset.split("train") or not dataset.split("val"):
        raise DatasetError(f"--data {config.data}: need a train and a val split")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    done = layout.succeeded_ids(out)
    todo = [s for s in config.seeds if layout.run_id(config.student, config.level, s) not in done]
    teacher, about = teacher_probabilities(config, dataset, log)
    labels = np.array([r.label_index for r in dataset.split("train")])
    about["teacher_train_accuracy"] = round(float(np.mean(teacher.argmax(1) == labels)), 6)
    log(f"teacher {', '.join(about['teacher_artifacts'])}: probabilities on {len(teacher)} training images, "
        f"{100 * about['teacher_train_accuracy']:.1f}% of them right")
    if not todo:
        log(f"every seed is already distilled in {out}")
        return out
    splits = _splits(dataset, config.img_size)
    precision = effective_precision(config.precision, log)
    progress = Progress(len(todo), "runs", log)
    for seed in todo:
        progress.started(f"{config.student} L{config.level} seed {seed}: distilling (T {config.temperature:g}, "
                         f"alpha {config.alpha:g})")
        try:
            with policy(precision):
                record = _distill_run(config, seed, splits, teacher, about, log)
        except (WeightsError, DistillError):
            raise
        except Exception as exc:  # one failed seed is recorded; the others still run
            record = {"run_id": layout.run_id(config.student, config.level, seed), "backbone": config.student,
                      "level": config.level, "seed": seed, "distilled": True, "error": f"{type(exc).__name__}: {exc}"}
        layout.append_run(out, record)
        progress.done(record["run_id"], record.get("error") or f"val acc {100 * record['val_accuracy']:.1f}%"
                      + (f", test acc {100 * record['test_accuracy']:.1f}%" if "test_accuracy" in record else ""))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command's parser; defaults read from ``DistillConfig``."""
    d = defaults(DistillConfig)
    p = command_parser("python -m train.distill", __doc__)
    p.add_argument("--data", required=True, help="dataset folder (its train split is taught, val picks the epoch)")
    p.add_argument("--teacher", required=True, help="exports folder of the teacher model(s)")
    p.add_argument("--teacher-artifacts", default="", help="artifact ids, comma-separated; several are averaged "
                   "(default: the most accurate fp32 on validation)")
    p.add_argument("--student", required=True, help="student backbone, e.g. mobilenetv2")
    p.add_argument("--weights", default=d["weights"], help="the student's starting weights: imagenet, none, a file "
                   "or a folder of train.pretrain files (default %(default)s)")
    p.add_argument("--level", required=True,
                   help="trainable-layer level of the student (as in the sweep), or best: the student's best level "
                        "in the sweep --sweep names (chosen there on validation images)")
    p.add_argument("--sweep", help="with --level best: the train.sweep folder to read the student's best level from")
    p.add_argument("--out", required=True, help="output folder, laid out as a sweep folder")
    p.add_argument("--seeds", default=",".join(map(str, d["seeds"])), help="comma-separated (default %(default)s)")
    p.add_argument("--temperature", type=float, default=d["temperature"], help="softening T (default %(default)s)")
    p.add_argument("--alpha", type=float, default=d["alpha"],
                   help="weight of the true labels' loss; 1 - alpha goes to the teacher's (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="(default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate (default %(default)s)")
    p.add_argument("--img-size", type=int, default=d["img_size"], help="the student's input side (default %(default)s)")
    p.add_argument("--bn", default=d["bn"], choices=BN_CHOICES, help="BatchNorm mode, as the sweep's (default %(default)s)")
    p.add_argument("--precision", default=d["precision"], choices=PRECISIONS, help=PRECISION_HELP + " (default %(default)s)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return p


def student_level(level: str, sweep: str | None, student: str) -> int:
    """``--level``: an integer, or ``best``, the student's best level in ``--sweep`` (highest mean
    validation accuracy over seeds, ties to fewer trainable parameters, as the summary and export
    choose).

    Raises:
        DistillError: not an integer nor ``best``; ``best`` without a sweep that trained the student.
    """
    if level != "best":
        try:
            return int(level)
        except ValueError:
            raise DistillError(f"--level {level!r}: expected an integer or best") from None
    if not sweep:
        raise DistillError("--level best: name the sweep to read the best level from with --sweep")
    try:
        runs, _, _ = layout.load_runs(sweep)
    except layout.ResultsError as exc:
        raise DistillError(f"--sweep {sweep}: {exc}") from None
    levels = layout.aggregate(runs).get(get(student).name)
    if not levels:
        raise DistillError(f"--sweep {sweep}: no finished run of {student}; expected a sweep that trained it")
    return layout.best_level(levels).level


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise DistillError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
        config = DistillConfig(data=args.data, teacher=args.teacher, student=args.student, out=args.out,
                               level=student_level(args.level, args.sweep, args.student), weights=args.weights, seeds=seeds,
                               teacher_artifacts=tuple(a for a in args.teacher_artifacts.split(",") if a.strip()),
                               temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, img_size=args.img_size, bn=args.bn,
                               precision=args.precision)
        teacher_records(config.teacher, config.teacher_artifacts)  # checked before TensorFlow loads
        quiet_tensorflow(args.verbose)
        from train.model import WeightsError

        try:
            out = distill(config)
        except WeightsError as exc:
            raise DistillError(str(exc)) from None
        runs, failures, _ = layout.load_runs(out)
        print(f"results: {out / layout.RESULTS} ({len(runs)} distilled run(s), {len(failures)} failed); export with "
              f"python -m export.tflite --runs {out}")
        return Exit.PARTIAL if failures else Exit.OK

    return run_command(work, (DistillError, DatasetError), "finished epochs are saved; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
