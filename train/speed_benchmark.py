"""Training speed per backbone under each precision and compiler mode, side by side.

    python -m train.speed_benchmark [--backbones mobilenetv2,densenet121,resnet50]
        [--modes float32,mixed_bfloat16] [--img-size 64] [--batch-size 64] [--steps 20]
        [--accuracy-epochs 0] [--data DIR | --n 600] [--out DIR]

For every backbone (every layer trainable, as in-domain pretraining trains it) and mode it
measures:

- **bare step**: images/s of a Keras ``fit`` on in-memory tensors, after a short ``fit``
  that traces the step;
- **pipeline** (with ``--accuracy-epochs``): images/s of ``train.trainer.fit`` as
  ``train.pretrain`` runs it (D4 augmentation, the input pipeline, its BatchNorm momentum;
  the BatchNorm refresh before each validation is done but not counted), its epochs after
  the first, and that as a share of the bare step;
- **accuracy** (with ``--accuracy-epochs``): the best validation accuracy over those epochs,
  with its 95% interval, on the same images and seeds for every mode.

A mode is a precision policy (``float32``, ``mixed_float16``, ``mixed_bfloat16``), with
``+xla`` to compile the step with XLA. Ratios are against the first mode. On a CPU without
bfloat16 instructions a bfloat16 mode says so and is skipped. ``docs/gpu_check.sh`` runs it
on a GPU. Figures move with the CPU: the table names it.
"""
from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.fingerprint import cpu_model
from device.atomic import write_json
from device.backbones import get
from device.command import run_command
from device.dataset import DatasetError, class_weights, open_dataset
from device.metrics import wilson_interval
from device.preprocess import preprocess
from train.console import command_parser, quiet_tensorflow
from train.precision import PRECISIONS, cpu_bfloat16_flags


def parse_mode(mode: str) -> tuple[str, bool]:
    """``"mixed_float16+xla"`` -> ``("mixed_float16", True)``; refuses an unknown precision."""
    precision, _, extra = mode.partition("+")
    if precision not in PRECISIONS or extra not in ("", "xla"):
        raise ValueError(f"--modes {mode!r}: expected a precision ({', '.join(PRECISIONS)}), optionally with +xla")
    return precision, extra == "xla"


def _model(backbone, img_size: int, precision: str, jit: bool, seed: int = 0):
    import tf_keras as keras

    from train.model import build, head_init
    from train.precision import policy

    with policy(precision):
        built = build(backbone, img_size, None, seed=seed)
    head = built.model.get_layer("head")
    head.set_weights(head_init(head.kernel.shape, seed))
    built.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", jit_compile=jit)
    return built


def bare_step(backbone, img_size: int, batch_size: int, steps: int, precision: str, jit: bool) -> float:
    """Images/s of a Keras ``fit`` over ``steps`` batches of in-memory tensors, after a
    two-batch ``fit`` that traces the step."""
    import tensorflow as tf

    built = _model(backbone, img_size, precision, jit)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (steps * batch_size, img_size, img_size, 3)).astype(np.float32))
    y = tf.constant(np.eye(3, dtype=np.float32)[rng.integers(0, 3, steps * batch_size)])
    built.model.fit(x[:2 * batch_size], y[:2 * batch_size], batch_size=batch_size, epochs=1, verbose=0)
    t0 = time.perf_counter()
    built.model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    return steps * batch_size / (time.perf_counter() - t0)


def pipeline_and_accuracy(backbone, splits, img_size: int, batch_size: int, epochs: int, precision: str,
                          jit: bool) -> dict:
    """``train.trainer.fit`` over every layer for ``epochs`` (D4 augmentation, cosine rate):
    images/s of its epochs after the first, and the best validation accuracy."""
    from train.levels import set_level
    from train.model import reestimate_batchnorm
    from train.precision import policy
    from train.pretrain import BN_MOMENTUM, BN_REFRESH_IMAGES, set_bn_momentum
    from train.trainer import FitConfig, fit

    (train_x, train_y), (val_x, val_y) = splits
    built = _model(backbone, img_size, precision, jit)
    set_level(built.model, built.base, len(built.base.layers))
    # BatchNorm as train.pretrain sets it: Keras's momenta near 1 leave a short from-scratch run's
    # moving statistics at their start, and validation at chance (MobileNetV2: 33.3% here)
    set_bn_momentum(built.base, BN_MOMENTUM)
    x_train = preprocess(train_x, backbone.preprocess)
    pick = np.random.default_rng(0).permutation(len(x_train))[:BN_REFRESH_IMAGES]
    refreshes: list[float] = []

    def refresh() -> None:  # timed apart: the pipeline figure is the training's alone
        t0 = time.perf_counter()
        reestimate_batchnorm(built.base, x_train[pick], max_images=BN_REFRESH_IMAGES)
        refreshes.append(time.perf_counter() - t0)

    with policy(precision), tempfile.TemporaryDirectory() as run_dir:
        result = fit(built.model, built.model, train_inputs=[x_train],
                     train_labels=train_y, val_inputs=[preprocess(val_x, backbone.preprocess)], val_labels=val_y,
                     class_weights=class_weights(train_y),
                     config=FitConfig(epochs=epochs, batch_size=batch_size, lr=1e-3, seed=0, jit=jit, augment="d4",
                                      lr_schedule="cosine"),
                     run_dir=Path(run_dir), initial_weights=built.model.get_weights(), log=lambda m: None,
                     before_validation=refresh)
    right = int(np.sum(result.val_probs.argmax(1) == val_y))
    low, high = wilson_interval(right, len(val_y))
    timed = result.seconds["epochs"] - sum(refreshes[1:])  # the first epoch's refresh is in "first epoch"
    return {"pipeline_images_per_s": round((epochs - 1) * len(train_y) / timed, 1) if epochs > 1 and timed else None,
            "val_accuracy": right / len(val_y), "val_accuracy_ci": [round(low, 4), round(high, 4)],
            "best_epoch": result.best_epoch}


def _splits(data: str | None, n: int, out: Path, img_size: int, max_train: int):
    if data is None:
        from train.synth import synthesize

        data = str(out / "data")
        if not (Path(data) / "manifest.csv").is_file():
            synthesize(out=data, n=n, size=128, seed=0)
    loaded, _ = open_dataset(data).load_splits(img_size, ("train", "val"))
    (train_x, train_y, _), (val_x, val_y, _) = loaded["train"], loaded["val"]
    if not len(val_y) or len(set(train_y.tolist())) < 2:
        raise DatasetError(f"--data {data}: need a training split with two or more classes and a validation split")
    keep = np.random.default_rng(0).permutation(len(train_y))[:max_train]
    return (train_x[keep], train_y[keep]), (val_x, val_y)


def benchmark(backbones: list[str], modes: list[str], img_size: int, batch_size: int, steps: int,
              accuracy_epochs: int, data: str | None, n: int, out: Path, max_train: int, log=print) -> dict:
    """Measure every backbone in every mode; the result as written to ``speed_benchmark.json``."""
    parsed = [(mode, *parse_mode(mode)) for mode in modes]
    flags = cpu_bfloat16_flags()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if any(p == "mixed_bfloat16" for _, p, _ in parsed) and not (flags or gpus):
        log("note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX) and no GPU is visible: "
            "bfloat16 modes are skipped")
        parsed = [m for m in parsed if m[1] != "mixed_bfloat16"]
    splits = _splits(data, n, out, img_size, max_train) if accuracy_epochs else None
    rows = []
    for name in backbones:
        backbone = get(name)
        for mode, precision, jit in parsed:
            t0 = time.perf_counter()
            row = {"backbone": backbone.name, "mode": mode,
                   "bare_images_per_s": round(bare_step(backbone, img_size, batch_size, steps, precision, jit), 1)}
            if splits is not None:
                row.update(pipeline_and_accuracy(backbone, splits, img_size, batch_size, accuracy_epochs, precision, jit))
                if row["pipeline_images_per_s"]:
                    row["pipeline_share"] = round(row["pipeline_images_per_s"] / row["bare_images_per_s"], 3)
            first = next((r for r in rows if r["backbone"] == backbone.name), None)
            row["ratio"] = round(row["bare_images_per_s"] / first["bare_images_per_s"], 2) if first else 1.0
            rows.append(row)
            log(f"{backbone.name} {mode}: {row['bare_images_per_s']} images/s (bare step), {row['ratio']}x"
                + (f"; pipeline {row.get('pipeline_images_per_s')} images/s, val acc "
                   f"{100 * row['val_accuracy']:.1f}%" if splits is not None else "")
                + f" ({time.perf_counter() - t0:.0f}s)")
    result = {"cpu": cpu_model() or platform.machine(), "cpu_bfloat16_flags": flags, "gpus": [g.name for g in gpus], "img_size": img_size,
              "batch_size": batch_size, "steps": steps, "accuracy_epochs": accuracy_epochs,
              "train_images": len(splits[0][1]) if splits else 0, "val_images": len(splits[1][1]) if splits else 0,
              "rows": rows}
    write_json(out / "speed_benchmark.json", result)
    return result


def table(result: dict) -> str:
    """The result as a Markdown table (the form docs/training.md quotes)."""
    accuracy = bool(result["accuracy_epochs"])
    head = "| backbone | mode | bare step, images/s | vs first mode |"
    rule = "|---|---|---:|---:|"
    if accuracy:
        head += " pipeline, images/s | pipeline / bare | val accuracy [95% CI] |"
        rule += "---:|---:|---|"
    lines = [head, rule]
    for r in result["rows"]:
        line = f"| {r['backbone']} | {r['mode']} | {r['bare_images_per_s']:.1f} | {r['ratio']:.2f}x |"
        if accuracy:
            share = r.get("pipeline_share")
            low, high = r["val_accuracy_ci"]
            line += (f" {r['pipeline_images_per_s'] or float('nan'):.1f} | {f'{100 * share:.0f}%' if share else 'n/a'} |"
                     f" {100 * r['val_accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] |")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = command_parser("python -m train.speed_benchmark", __doc__)
    p.add_argument("--backbones", default="mobilenetv2,densenet121,resnet50")
    p.add_argument("--modes", default="float32,mixed_bfloat16",
                   help="comma-separated precisions, each optionally +xla (default %(default)s)")
    p.add_argument("--img-size", type=int, default=64, help="(default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per mode (default %(default)s)")
    p.add_argument("--accuracy-epochs", type=int, default=0,
                   help="also train this many epochs per mode for the pipeline speed and the accuracy (default 0: "
                        "bare steps only)")
    p.add_argument("--data", help="dataset folder for --accuracy-epochs (default: simulate --n images)")
    p.add_argument("--n", type=int, default=600, help="images to simulate without --data (default %(default)s)")
    p.add_argument("--max-train", type=int, default=2000, help="training images used at most (default %(default)s)")
    p.add_argument("--out", default="out/speed-benchmark", help="(default %(default)s)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    def work() -> int:
        for option, value in (("--img-size", args.img_size), ("--batch-size", args.batch_size), ("--steps", args.steps),
                              ("--n", args.n), ("--max-train", args.max_train)):
            if value < 1:
                raise ValueError(f"{option} {value}: expected a positive integer")
        if args.accuracy_epochs < 0:
            raise ValueError(f"--accuracy-epochs {args.accuracy_epochs}: expected 0 or more")
        backbones = [b for b in args.backbones.split(",") if b.strip()]
        for name in backbones:
            get(name)  # an unknown name is refused before TensorFlow loads
        modes = [m for m in args.modes.split(",") if m.strip()]
        for mode in modes:
            parse_mode(mode)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        quiet_tensorflow(args.verbose)
        result = benchmark(backbones, modes, args.img_size, args.batch_size, args.steps, args.accuracy_epochs,
                           args.data, args.n, out, args.max_train)
        print(f"\nspeed benchmark on {result['cpu']}"
              + (f" and {', '.join(result['gpus'])}" if result["gpus"] else "")
              + f" (bfloat16 instructions: {', '.join(result['cpu_bfloat16_flags']) or 'none'}); {args.img_size} px, "
              f"batch {args.batch_size}" + (f", {args.accuracy_epochs} epochs on {result['train_images']} training / "
                                            f"{result['val_images']} validation images" if args.accuracy_epochs else ""))
        print(table(result))
        print(f"wrote {out / 'speed_benchmark.json'}")
        return 0

    return run_command(work, (KeyError, ValueError, DatasetError))


if __name__ == "__main__":
    sys.exit(main())
