"""Trainable levels, exactly as METHOD.md defines them, and level schedules.

Level ``k`` makes the last ``k`` layers of ``base.layers`` trainable, plus the head, and
freezes every other layer. ``LTR = k / len(base.layers)``; ``PTR`` = trainable parameters /
all parameters of base + head (Keras's ``count_params``, BatchNorm moving statistics
included in the total, not in the trainable count).

    python -m train.levels --backbone mobilenetv2 --levels paper [--img-size 224] [--json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np

from device.backbones import Backbone, get
from device.command import run_command
from device.options import number
from train.console import VERBOSE_HELP, command_parser, quiet_tensorflow

SCHEDULE_HELP = "paper | blocks | a list such as 0,5,10 | step:N[:max]"


class LevelError(ValueError):
    """A level or schedule that does not fit the backbone."""


def block_levels(backbone: Backbone, layer_names: list[str]) -> list[int]:
    """Levels whose trainable part is made of whole blocks (plus the layers after the last one).

    A block's level is the count of layers from its first layer to the end; it is kept only
    when no layer of an earlier block comes after that first layer (so the trainable suffix
    cuts no block in two). Level 0 (head only) comes first.
    """
    pattern = re.compile(backbone.block_pattern)
    n = len(layer_names)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    order: list[str] = []
    for i, name in enumerate(layer_names):
        match = pattern.search(name)
        if not match:
            continue
        block = match.group(1)
        if block not in first:
            first[block] = i
            order.append(block)
        last[block] = i
    levels = {0}
    latest_earlier_end = -1
    for block in order:
        if latest_earlier_end < first[block]:
            levels.add(n - first[block])
        latest_earlier_end = max(latest_earlier_end, last[block])
    return sorted(levels)


def parse_schedule(spec: str, backbone: Backbone, layer_names: list[str]) -> list[int]:
    """Expand a schedule for one backbone into sorted, unique levels.

    Args:
        spec: ``paper`` (the study's schedule), ``blocks``, ``0,5,10`` or ``step:N[:max]``
            (``max`` defaults to the base's depth).
        backbone: registry record.
        layer_names: names of ``base.layers`` in Keras order.

    Raises:
        LevelError: a malformed schedule, or a level beyond the base's depth (naming the
            depth).
    """
    depth = len(layer_names)
    text = spec.strip().lower()
    if text == "paper":
        levels = list(backbone.paper_levels)
    elif text == "blocks":
        levels = block_levels(backbone, layer_names)
    elif text.startswith("step:"):
        parts = text.split(":")[1:]
        try:
            step = int(parts[0])
            stop = int(parts[1]) if len(parts) > 1 and parts[1] else depth
        except (ValueError, IndexError):
            raise LevelError(f"--levels {spec!r}: expected step:N or step:N:max with integers") from None
        if step <= 0 or len(parts) > 2:
            raise LevelError(f"--levels {spec!r}: expected step:N[:max] with N > 0")
        levels = list(range(0, stop + 1, step))
    else:
        try:
            levels = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise LevelError(f"--levels {spec!r}: expected {SCHEDULE_HELP}") from None
        if not levels:
            raise LevelError(f"--levels {spec!r}: expected {SCHEDULE_HELP}")
    bad = [k for k in levels if k < 0 or k > depth]
    if bad:
        raise LevelError(f"--levels {spec!r}: level(s) {bad} outside 0..{depth}, the depth of "
                         f"{backbone.name}'s base (len(base.layers))")
    return sorted(set(levels))


# BatchNorm during fine-tuning. frozen: every BatchNorm layer stays in inference mode with
# its statistics, gamma and beta fixed (Keras's transfer-learning advice). study: a
# trainable BatchNorm layer runs in training mode and updates its moving statistics with
# the backbone's own momentum (Keras's default, as the study ran it).
BN_MODES = ("frozen", "study")


def set_level(model, base, level: int, bn: str = "study") -> None:
    """Freeze ``model`` to level ``level``: last ``level`` base layers and the head trainable.

    Args:
        bn: ``study`` (a BatchNorm layer among the last ``level`` is trainable and so runs in
            training mode, as the study's Keras fine-tuning did) or ``frozen`` (every
            BatchNorm layer frozen, so it runs in inference mode with fixed statistics).
    """
    if bn not in BN_MODES:
        raise LevelError(f"bn mode {bn!r}: expected one of {', '.join(BN_MODES)}")
    n = len(base.layers)
    if not 0 <= level <= n:
        raise LevelError(f"level {level} outside 0..{n} for {base.name}")
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= n - level and not (bn == "frozen" and _is_batchnorm(layer))
    for layer in model.layers:
        if layer is not base and layer not in base.layers:
            layer.trainable = True


def _is_batchnorm(layer) -> bool:
    return type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization")


def count_params(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def level_info(model, base, level: int, bn: str = "study") -> dict:
    """Counts for one level (sets the model's trainable flags to that level and ``bn`` mode).

    Returns:
        ``level``, ``trainable_params``, ``total_params``, ``layers_total``, ``ltr``, ``ptr``
        and ``first_trainable_layer`` (``head`` at level 0).
    """
    set_level(model, base, level, bn=bn)
    n = len(base.layers)
    trainable = count_params(model.trainable_weights)
    total = int(model.count_params())
    return {
        "level": level,
        "trainable_params": trainable,
        "total_params": total,
        "layers_total": n,
        "ltr": level / n,
        "ptr": trainable / total,
        "first_trainable_layer": base.layers[n - level].name if level else "head",
    }


def table(backbone_name: str, spec: str, img_size: int | None = None) -> list[dict]:
    """Level table of a backbone for a schedule, built with ``weights=None`` (no download)."""
    backbone = get(backbone_name)  # an unknown name is refused before TensorFlow loads
    from train.model import build

    built = build(backbone, img_size or backbone.default_size, None)
    names = [l.name for l in built.base.layers]
    levels = parse_schedule(spec, backbone, names)
    return [{"backbone": backbone.name, **level_info(built.model, built.base, k)} for k in levels]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m train.levels", __doc__)
    parser.add_argument("--backbone", required=True, help="e.g. resnet50, mobilenetv2")
    parser.add_argument("--levels", default="paper", help=SCHEDULE_HELP + " (default paper)")
    parser.add_argument("--img-size", type=number(1, 4096, int), default=None, help="input side (default: the backbone's)")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = parser.parse_args(argv)
    return run_command(lambda: _print_table(args), (KeyError, ValueError))


def _print_table(args: argparse.Namespace) -> int:
    get(args.backbone)  # an unknown name is refused before TensorFlow loads
    quiet_tensorflow(args.verbose)
    rows = table(args.backbone, args.levels, args.img_size)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{rows[0]['backbone']}: {rows[0]['layers_total']} base layers, {rows[0]['total_params']:,} parameters")
    print(f"{'level':>5} {'trainable':>12} {'total':>12} {'LTR':>7} {'PTR':>8}  first trainable layer")
    for r in rows:
        print(f"{r['level']:>5} {r['trainable_params']:>12,} {r['total_params']:>12,} {r['ltr']:>7.4f} "
              f"{r['ptr']:>8.5f}  {r['first_trainable_layer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
