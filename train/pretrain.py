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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from train.console import VERBOSE_HELP, command_parser, quiet_tensorflow
from train.recipe import AUGMENTS, LR_SCHEDULES
from train.precision import PRECISION_HELP, PRECISIONS, effective_precision, policy

from device.atomic import write_json
from device.backbones import get
from device.choices import first_bad_choice
from device.command import run_command
from device.dataset import DatasetError, class_weights, open_dataset
from device.metrics import classification_metrics
from device.options import SEED_MAX, at_least, check_number, defaults, number, seed
from device.preprocess import preprocess

BN_MOMENTUM = 0.9
BN_REFRESH_IMAGES = 1024


@dataclass(frozen=True)
class PretrainConfig:
    """``train.pretrain``'s settings, checked when built (the parser reads its defaults here).

    Attributes:
        data: dataset folder (its train split trains, its val split picks the best epoch).
        backbone: registry name.
        out: a folder (the file is ``<backbone>.h5`` in it) or a ``.h5`` file path.
        epochs, img_size, batch_size, lr, seed: training settings.
        augment: ``d4`` (the 8 rotations/flips) or ``none``.
        bn_momentum: momentum given to every BatchNorm layer while pretraining (0 < m < 1).
        lr_schedule: ``cosine`` (decays to zero over all epochs) or ``constant``.
        bn_refresh: re-estimate BatchNorm statistics on training images before each validation.
        precision: ``float32`` or a mixed policy (``train.precision``).
    """

    data: str
    backbone: str
    out: str
    epochs: int = 20
    img_size: int = 96
    batch_size: int = 32
    lr: float = 1e-3
    augment: str = "d4"
    seed: int = 0
    bn_momentum: float = BN_MOMENTUM
    lr_schedule: str = "cosine"
    bn_refresh: bool = True
    precision: str = "float32"

    def __post_init__(self):
        try:
            get(self.backbone)
        except KeyError as exc:
            raise ValueError(f"--backbone: {exc.args[0]}") from None
        for option, value, low, high in (("--epochs", self.epochs, 1, None), ("--batch-size", self.batch_size, 1, None),
                                         ("--img-size", self.img_size, 1, 4096), ("--seed", self.seed, 0, SEED_MAX)):
            check_number(value, option, low, high, integer=True)
        check_number(self.lr, "--lr", 0, None, low_open=True)
        check_number(self.bn_momentum, "--bn-momentum", 0, 1, low_open=True)
        if self.bn_momentum >= 1.0:
            raise ValueError(f"--bn-momentum {self.bn_momentum}: expected a number between 0 and 1 (such as 0.9)")
        problem = first_bad_choice(("--augment", self.augment, AUGMENTS), ("--lr-schedule", self.lr_schedule, LR_SCHEDULES),
                                   ("--precision", self.precision, PRECISIONS))
        if problem:
            raise ValueError(problem)


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


def pretrain(config: PretrainConfig, log: Callable[[str], None] = print) -> Path:
    """Train every layer of the backbone from random init; save the base's weights.

    Returns:
        The weights file: the base (``include_top=False, pooling="avg"``) at the best
        validation epoch, loadable by ``keras.applications.<Name>(weights=FILE)``.

    Raises:
        DatasetError: unusable dataset. ValueError: an output that cannot be written.
    """
    backbone = get(config.backbone)
    target = _target(config.out, backbone.name)
    precision = effective_precision(config.precision, log)
    with policy(precision):
        return _pretrain(config, backbone, target, precision, log)


def _pretrain(config: PretrainConfig, backbone, target: Path, precision: str, log: Callable[[str], None]) -> Path:
    """``pretrain`` under its precision policy (the model is built inside it)."""
    from train.levels import set_level
    from train.model import build, head_init, reestimate_batchnorm
    from train.trainer import FitConfig, fit

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = _load_splits(config.data, config.img_size, log)
    built = build(backbone, config.img_size, None, seed=config.seed)
    model, base = built.model, built.base
    head = model.get_layer("head")
    head.set_weights(head_init(head.kernel.shape, config.seed))
    set_level(model, base, len(base.layers))
    previous = set_bn_momentum(base, config.bn_momentum)
    if previous:
        log(f"BatchNorm momentum {config.bn_momentum} in {sum(previous.values())} layers (Keras's: "
            + ", ".join(f"{m:g} x{n}" for m, n in sorted(previous.items())) + ")")
    run_dir = target.parent / f".pretrain-{backbone.name}-{config.img_size}"
    run_dir.mkdir(exist_ok=True)
    log(f"pretraining {backbone.name} from scratch: {len(train_y)} train / {len(val_y)} val images at "
        f"{config.img_size} px, {config.epochs} epochs, augment {config.augment}, lr {config.lr:g} {config.lr_schedule}, "
        f"{precision}")
    x_train = preprocess(train_x, backbone.preprocess)
    refresh_pick = np.random.default_rng(config.seed).permutation(len(x_train))[:BN_REFRESH_IMAGES]

    def refresh() -> None:
        reestimate_batchnorm(base, x_train[refresh_pick], max_images=BN_REFRESH_IMAGES)

    t0 = time.perf_counter()
    result = fit(model, model, train_inputs=[x_train], train_labels=train_y,
                 val_inputs=[preprocess(val_x, backbone.preprocess)], val_labels=val_y,
                 class_weights=class_weights(train_y),
                 config=FitConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                                  augment=config.augment, lr_schedule=config.lr_schedule),
                 run_dir=run_dir, initial_weights=model.get_weights(), log=log,
                 before_validation=refresh if config.bn_refresh else None)
    metrics = classification_metrics(val_y, result.val_probs.argmax(1))
    majority = _warn_if_chance(metrics, val_y, log)
    test_metrics = {}
    if len(test_y):
        test_probs = model.predict(preprocess(test_x, backbone.preprocess), batch_size=256, verbose=0)
        test_metrics = classification_metrics(test_y, test_probs.argmax(1), prefix="test_")
    _save_weights(base, target)
    settings = {**{k: v for k, v in asdict(config).items() if k not in ("data", "backbone", "out")}, "precision": precision}
    write_json(target.with_suffix(".json"), {
        "backbone": backbone.name, **settings, "best_epoch": result.best_epoch, "data": str(Path(config.data).resolve()),
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


def build_parser():
    """The command's parser; defaults read from ``PretrainConfig``."""
    d = defaults(PretrainConfig)
    p = command_parser("python -m train.pretrain", __doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--out", required=True, help="folder (writes <backbone>.h5) or a .h5 file")
    p.add_argument("--epochs", type=at_least(1), default=d["epochs"], help="(default %(default)s)")
    p.add_argument("--img-size", type=number(1, 4096, int), default=d["img_size"], help="(default %(default)s)")
    p.add_argument("--batch-size", type=at_least(1), default=d["batch_size"], help="(default %(default)s)")
    p.add_argument("--lr", type=number(0, None, float, low_open=True), default=d["lr"], help="(default %(default)s)")
    p.add_argument("--augment", default=d["augment"], choices=AUGMENTS, help="(default %(default)s)")
    p.add_argument("--seed", type=seed, default=d["seed"], help="(default %(default)s)")
    p.add_argument("--bn-momentum", type=number(0, 1, float, low_open=True), default=d["bn_momentum"],
                   help="momentum of every BatchNorm layer while pretraining (default %(default)s)")
    p.add_argument("--lr-schedule", default=d["lr_schedule"], choices=LR_SCHEDULES,
                   help="cosine decays the learning rate to zero over all epochs (default %(default)s)")
    p.add_argument("--no-bn-refresh", dest="bn_refresh", action="store_false",
                   help="do not re-estimate BatchNorm statistics on training images before each validation")
    p.add_argument("--precision", default=d["precision"], choices=PRECISIONS, help=PRECISION_HELP + " (default %(default)s)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        settings = {k: v for k, v in vars(args).items() if k != "verbose"}
        config = PretrainConfig(**settings)  # a bad setting is refused before TensorFlow loads
        quiet_tensorflow(args.verbose)
        pretrain(config)
        return 0

    return run_command(work, (KeyError, ValueError, DatasetError),
                       "finished epochs are saved; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
