"""The sweep's settings: ``SweepConfig``, the one set of defaults, and the checks that refuse a
bad sweep in a moment, before TensorFlow is imported (``check_config``).

The command line (``train.sweep``) reads its defaults from ``SweepConfig``; planning
(``train.sweep_plan``) and execution (``train.sweep_run``) read nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from device.atomic import check_output_folder
from device.backbones import Backbone, resolve
from device.choices import first_bad_choice
from train.precision import PRECISIONS
from device.options import SEED_MAX, check_number
from device import sweep_results as layout
from train.levels import BN_MODES
from train.recipe import AUGMENTS

CACHE_MODES = ("auto", "on", "off")


STRATEGIES = ("none", "mirrored")

# settings every shard of one sweep (every record in its --out) must share
SHARD_SETTINGS = ("epochs", "batch_size", "lr", "img_size", "weights", "augment", "bn_reestimate", "bn")


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

    def __post_init__(self):
        """Refuse option values that cannot work, before anything is built or read."""
        if self.epochs < 1 or self.batch_size < 1 or not (0 < self.lr < float("inf")):
            raise SweepError(f"--epochs {self.epochs}, --batch-size {self.batch_size}, --lr {self.lr}: "
                             f"expected positive values")
        try:
            check_number(self.img_size, "--img-size", 1, 4096, integer=True)
            for seed in self.seeds:
                check_number(seed, "--seeds", 0, SEED_MAX, integer=True)
        except ValueError as exc:
            raise SweepError(str(exc)) from None
        if not 0 <= self.cache_budget_gb < float("inf"):
            raise SweepError(f"--cache-budget-gb {self.cache_budget_gb}: expected a size in GB, 0 or more "
                             f"(0 keeps every cached array on disk)")
        problem = first_bad_choice(("--cache-features", self.cache_features, CACHE_MODES),
                                   ("--precision", self.precision, PRECISIONS), ("--strategy", self.strategy, STRATEGIES),
                                   ("--augment", self.augment, AUGMENTS), ("--bn", self.bn, BN_MODES))
        if problem:
            raise SweepError(problem)
        if self.cache_features == "on" and self.augment != "none":
            raise SweepError("--cache-features on with --augment d4: augmented images change the frozen "
                             "features every epoch; use --cache-features auto or off")
        index, count = self.shard
        if not 0 <= index < count:
            raise SweepError(f"--shard {index}/{count}: expected i/n with 0 <= i < n")


def use_cache(config: SweepConfig) -> bool:
    """Cache frozen features: ``on``, or ``auto`` without augmentation (which changes them every epoch)."""
    return config.cache_features == "on" or (config.cache_features == "auto" and config.augment == "none")


def bn_reestimate_on(config: SweepConfig) -> bool:
    return config.bn_reestimate == "on" or (config.bn_reestimate == "auto" and config.weights == "none")


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
    try:
        check_output_folder(config.out, "--out")
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    check_shards(config)
    try:
        return tuple(resolve(list(config.backbones)))
    except KeyError as exc:
        raise SweepError(f"--backbones: {exc.args[0]}") from None
