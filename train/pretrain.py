"""In-domain pretraining: train a whole backbone from scratch on a sky-image dataset.

For users without ImageNet weights (offline machines, this workplace's tests): a short
from-scratch training of every layer, saved as a weights file that ``train.sweep
--weights PATH`` accepts, so the study's layer-wise fine-tuning can run on top of
in-domain features (Schneider et al. 2023, "Efficient galaxy classification through
pretraining").

    python -m train.pretrain --data DIR --backbone mobilenetv2 --epochs 20 --img-size 96 \
        --out weights/            # writes weights/mobilenetv2.h5

Resumable: the run folder ``OUT/.pretrain-<backbone>-<size>/`` keeps per-epoch checkpoints.

BatchNorm: Keras gives some backbones a moving-average momentum so close to 1
(MobileNetV2 0.999, NASNetMobile 0.9997) that after a short from-scratch training the
moving statistics still hold their initial values, and the network in inference mode
outputs one class for every image (validation at chance, loss ln 3). Pretraining therefore
sets every BatchNorm momentum to ``--bn-momentum`` (default 0.9: the moving averages
forget their start within a few dozen steps) and, before each validation, re-estimates
every BatchNorm layer's statistics on up to ``BN_REFRESH_IMAGES`` training images (exact
averages of the batch statistics, whatever the momentum; on a 72-image case momentum 0.9
alone still left validation at chance). It warns when the best epoch is still no better
than always answering the majority class.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from train.console import VERBOSE_HELP, command_parser, quiet_tensorflow
from train.sweep import AUGMENTS

from device.atomic import write_json
from device.backbones import get
from device.choices import first_bad_choice
from device.command import run_command
from device.dataset import DatasetError, class_weights, open_dataset
from device.metrics import classification_metrics
from device.options import at_least, number, seed
from device.preprocess import preprocess

LR_SCHEDULES = ("cosine", "constant")  # train.trainer's schedules, checked here before TensorFlow loads


BN_MOMENTUM = 0.9
BN_REFRESH_IMAGES = 1024


def set_bn_momentum(model, momentum: float) -> dict[float, int]:
    """Set every BatchNormalization layer's momentum; returns {previous momentum: count}."""
    import tf_keras as keras

    previous: dict[float, int] = {}
    for layer in model.submodules:
        if isinstance(layer, keras.layers.BatchNormalization):
            previous[float(layer.momentum)] = previous.get(float(layer.momentum), 0) + 1
            layer.momentum = momentum
    return previous


def _warn_if_chance(metrics: dict, val_y: np.ndarray, log: Callable[[str], None]) -> float:
    """The majority-class rate of the val split; a warning when the best epoch is not above it."""
    majority = float(np.bincount(val_y).max() / len(val_y))
    if metrics["val_accuracy_ci_low"] <= majority:
        log(f"warning: the best epoch's validation accuracy {100 * metrics['val_accuracy']:.1f}% is not above the "
            f"majority-class rate {100 * majority:.1f}%: these weights have learnt nothing usable")
    return majority


def _save_weights(base, target: Path) -> None:
    """Write the base's weights to ``target`` atomically (a temporary file, then a rename)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.h5")
    base.save_weights(str(tmp))
    os.replace(tmp, target)


def _check_settings(epochs: int, batch_size: int, lr: float, augment: str, bn_momentum: float,
                    lr_schedule: str) -> None:
    if epochs < 1 or batch_size < 1 or not 0 < lr < float("inf"):
        raise ValueError(f"--epochs {epochs}, --batch-size {batch_size}, --lr {lr}: expected positive values")
    problem = first_bad_choice(("--augment", augment, AUGMENTS), ("--lr-schedule", lr_schedule, LR_SCHEDULES))
    if problem:
        raise ValueError(problem)
    if not 0.0 < bn_momentum < 1.0:
        raise ValueError(f"--bn-momentum {bn_momentum}: expected a number between 0 and 1 (such as 0.9)")


def _target(out: str, backbone_name: str) -> Path:
    """The weights file ``--out`` names (a ``.h5`` path, or ``<backbone>.h5`` in a folder)."""
    target = Path(out)
    if target.suffix != ".h5":
        target = target / f"{backbone_name}.h5"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create folder ({exc.strerror or exc})") from None
    return target


def _load_splits(data: str, img_size: int, log: Callable[[str], None]):
    """``(x, y)`` of train, val and test; refused without two classes to train or a val split."""
    dataset = open_dataset(data)
    for note in dataset.notes:
        log(f"note: {note}")
    log(f"loading {len(dataset.records)} images at {img_size} px")
    loaded, skipped = dataset.load_splits(img_size)
    splits = [(x, y) for x, y, _ in loaded.values()]
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s)")
    if len(set(splits[0][1].tolist())) < 2 or not len(splits[1][1]):
        raise DatasetError(f"--data {data}: need a training split with two or more classes and a validation split")
    return splits


def pretrain(data: str, backbone_name: str, out: str, epochs: int = 20, img_size: int = 96,
             batch_size: int = 32, lr: float = 1e-3, augment: str = "d4", seed: int = 0,
             bn_momentum: float = BN_MOMENTUM, lr_schedule: str = "cosine", bn_refresh: bool = True,
             log: Callable[[str], None] = print) -> Path:
    """Train every layer of ``backbone`` from random init; save the base's weights.

    Args:
        data: dataset folder (its train split trains, its val split picks the best epoch).
        backbone_name: registry name.
        out: a folder (the file is ``<backbone>.h5`` in it) or a ``.h5`` file path.
        epochs, img_size, batch_size, lr, seed: training settings.
        augment: ``d4`` (default: the 8 rotations/flips) or ``none``.
        bn_momentum: momentum given to every BatchNorm layer while pretraining (0 < m < 1).
        lr_schedule: ``cosine`` (default: decays to zero over all epochs) or ``constant``.
        bn_refresh: re-estimate BatchNorm statistics on training images before each validation.
        log: progress lines.

    Returns:
        The weights file: the base (``include_top=False, pooling="avg"``) at the best
        validation epoch, loadable by ``keras.applications.<Name>(weights=FILE)``.

    Raises:
        DatasetError: unusable dataset. ValueError: bad settings.
    """
    from train.levels import set_level
    from train.model import build, reestimate_batchnorm
    from train.model import head_init
    from train.trainer import FitConfig, fit

    backbone = get(backbone_name)
    _check_settings(epochs, batch_size, lr, augment, bn_momentum, lr_schedule)
    target = _target(out, backbone.name)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = _load_splits(data, img_size, log)
    built = build(backbone, img_size, None, seed=seed)
    model, base = built.model, built.base
    head = model.get_layer("head")
    head.set_weights(head_init(head.kernel.shape, seed))
    set_level(model, base, len(base.layers))
    previous = set_bn_momentum(base, bn_momentum)
    if previous:
        log(f"BatchNorm momentum {bn_momentum} in {sum(previous.values())} layers (Keras's: "
            + ", ".join(f"{m:g} x{n}" for m, n in sorted(previous.items())) + ")")
    run_dir = target.parent / f".pretrain-{backbone.name}-{img_size}"
    run_dir.mkdir(exist_ok=True)
    log(f"pretraining {backbone.name} from scratch: {len(train_y)} train / {len(val_y)} val images at "
        f"{img_size} px, {epochs} epochs, augment {augment}, lr {lr:g} {lr_schedule}")
    x_train = preprocess(train_x, backbone.preprocess)
    refresh_pick = np.random.default_rng(seed).permutation(len(x_train))[:BN_REFRESH_IMAGES]

    def refresh() -> None:
        reestimate_batchnorm(base, x_train[refresh_pick], max_images=BN_REFRESH_IMAGES)

    t0 = time.perf_counter()
    result = fit(model, model, train_inputs=[x_train], train_labels=train_y,
                 val_inputs=[preprocess(val_x, backbone.preprocess)], val_labels=val_y,
                 class_weights=class_weights(train_y),
                 config=FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, augment=augment,
                                  lr_schedule=lr_schedule),
                 run_dir=run_dir, initial_weights=model.get_weights(), log=log,
                 before_validation=refresh if bn_refresh else None)
    metrics = classification_metrics(val_y, result.val_probs.argmax(1))
    majority = _warn_if_chance(metrics, val_y, log)
    test_metrics = {}
    if len(test_y):
        test_probs = model.predict(preprocess(test_x, backbone.preprocess), batch_size=256, verbose=0)
        test_metrics = classification_metrics(test_y, test_probs.argmax(1), prefix="test_")
    _save_weights(base, target)
    write_json(target.with_suffix(".json"), {
        "backbone": backbone.name, "img_size": img_size, "epochs": epochs, "best_epoch": result.best_epoch,
        "augment": augment, "lr": lr, "lr_schedule": lr_schedule, "batch_size": batch_size, "seed": seed,
        "bn_momentum": bn_momentum, "bn_refresh": bn_refresh, "data": str(Path(data).resolve()),
        "train_n": int(len(train_y)), "val_n": int(len(val_y)), "test_n": int(len(test_y)),
        "val_accuracy": metrics["val_accuracy"], "val_macro_f1": metrics["val_macro_f1"],
        "val_majority": majority,
        **{k: v for k, v in test_metrics.items() if k in ("test_accuracy", "test_accuracy_ci_low",
                                                          "test_accuracy_ci_high", "test_macro_f1")},
        "seconds": round(time.perf_counter() - t0, 1)})
    log(f"best epoch {result.best_epoch}: val accuracy {100 * metrics['val_accuracy']:.1f}% "
        f"[{100 * metrics['val_accuracy_ci_low']:.1f}, {100 * metrics['val_accuracy_ci_high']:.1f}]"
        + (f"; test accuracy {100 * test_metrics['test_accuracy']:.1f}% on {len(test_y)} images" if test_metrics else "")
        + f"; wrote {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    p = command_parser("python -m train.pretrain", __doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--out", required=True, help="folder (writes <backbone>.h5) or a .h5 file")
    p.add_argument("--epochs", type=at_least(1), default=20)
    p.add_argument("--img-size", type=number(1, 4096, int), default=96)
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--lr", type=number(0, None, float, low_open=True), default=1e-3)
    p.add_argument("--augment", default="d4", choices=AUGMENTS)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--bn-momentum", type=number(0, 1, float, low_open=True), default=BN_MOMENTUM,
                   help=f"momentum of every BatchNorm layer while pretraining (default {BN_MOMENTUM})")
    p.add_argument("--lr-schedule", default="cosine", choices=LR_SCHEDULES,
                   help="cosine decays the learning rate to zero over all epochs (default cosine)")
    p.add_argument("--no-bn-refresh", dest="bn_refresh", action="store_false",
                   help="do not re-estimate BatchNorm statistics on training images before each validation")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = p.parse_args(argv)

    def work() -> int:
        get(args.backbone)  # an unknown backbone or bad setting is refused before TensorFlow loads
        _check_settings(args.epochs, args.batch_size, args.lr, args.augment, args.bn_momentum, args.lr_schedule)
        quiet_tensorflow(args.verbose)
        pretrain(args.data, args.backbone, args.out, epochs=args.epochs, img_size=args.img_size,
                 batch_size=args.batch_size, lr=args.lr, augment=args.augment, seed=args.seed,
                 bn_momentum=args.bn_momentum, lr_schedule=args.lr_schedule, bn_refresh=args.bn_refresh)
        return 0

    return run_command(work, (KeyError, ValueError, DatasetError),
                       "finished epochs are saved; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
