"""Planning a sweep: every run it names, checked against the data, the backbones' depths and
the run folders already in ``--out``, before any training (``plan``).

A run folder made with other settings is refused; a finished run whose checkpoint is missing
or damaged is planned again. The bases built to plan are handed to execution (``plan_with_bases``)
so that each backbone is built once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from device.checksum import sha256_file
from device.backbones import Backbone
from device.dataset import DatasetError, open_dataset
from device.sweep_results import CHECKPOINT, CONFIG, METRICS, append_run, succeeded_ids
from device import sweep_results as layout
from train.shards import assign, groups, layer_macs
from train.sweep_config import SweepConfig, SweepError, bn_reestimate_on, check_config, use_cache

# fields of a run's config that must match for a finished or half-done run to be reused
RUN_IDENTITY = ("backbone", "level", "seed", "epochs", "batch_size", "lr", "img_size", "weights",
                "augment", "bn_reestimate", "bn", "data_fingerprint")


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
    runs: list[RunPlan]  # this shard's runs
    todo: list[RunPlan]  # those with no finished, intact result
    data_fingerprint: str = ""
    notes: list[str] = field(default_factory=list)
    dataset: object = None  # the opened dataset, which execution reads its images from


def _fingerprint(records) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.path},{r.label},{r.split}\n".encode())
    return digest.hexdigest()[:16]


def run_identity(config: SweepConfig, run: RunPlan, fingerprint: str) -> dict:
    return {"backbone": run.backbone.name, "level": run.level, "seed": run.seed, "epochs": config.epochs,
            "batch_size": config.batch_size, "lr": config.lr, "img_size": config.img_size,
            "weights": config.weights, "augment": config.augment,
            "bn_reestimate": bn_reestimate_on(config), "bn": config.bn, "data_fingerprint": fingerprint}


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
    """Validate a sweep and list its runs, before any training (``plan_with_bases`` without its bases)."""
    return plan_with_bases(config, log)[0]


def plan_with_bases(config: SweepConfig, log: Callable[[str], None] = print) -> tuple[Plan, dict[str, object]]:
    """Validate a sweep and list its runs, before any training; with the Keras bases built to
    plan (to read their layers), by backbone name, for execution to reuse.

    Only the bases of backbones this process will train are kept, and none under a
    distribution strategy (whose scope they were not built in) or a mixed precision policy
    (their layers were built in float32).

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

    macs: dict[str, list[float]] = {}
    bases: dict[str, object] = {}
    runs: list[RunPlan] = []
    for backbone in backbones:
        if config.img_size < backbone.min_size:
            raise SweepError(f"--img-size {config.img_size}: {backbone.name} needs at least {backbone.min_size} px")
        keras.utils.set_random_seed(0)  # as train.model.build seeds it, so the base is the one training would build
        bases[backbone.name] = base = build_base(backbone, config.img_size, resolve_weights(backbone, config.weights))
        macs[backbone.name] = layer_macs(base)
        try:
            levels = parse_schedule(config.levels, backbone, [layer.name for layer in base.layers])
        except LevelError as exc:
            raise SweepError(f"{backbone.name}: {exc}") from None
        # a seed named twice (--seeds 0,0) is one run, not two trainings of the same run
        runs += [RunPlan(backbone, level, seed) for level in levels for seed in dict.fromkeys(config.seeds)]
    index, count = config.shard
    cached = use_cache(config)
    shares = assign(groups(runs, macs, config.epochs, cached), count, macs, config.epochs, cached)
    own = {id(run) for group in shares[index] for run in group.runs}
    mine = [run for run in runs if id(run) in own]
    if count > 1:
        total = sum(g.cost for share in shares for g in share) or 1.0
        notes.append(f"shard {index}/{count}: " + (", ".join(f"{g.name} ({len(g.runs)} runs)" for g in shares[index])
                                                    or "no runs (more shards than runs)")
                     + f"; {100 * sum(g.cost for g in shares[index]) / total:.0f}% of the sweep's planned arithmetic")
    todo = _still_to_do(config, mine, fingerprint, notes)
    # a base built here is float32 and outside any strategy's scope: reuse it only for that
    keep = {r.backbone.name for r in todo} if config.strategy == "none" and config.precision == "float32" else set()
    the_plan = Plan(config=config, runs=mine, todo=todo, data_fingerprint=fingerprint, notes=notes, dataset=dataset)
    return the_plan, {name: b for name, b in bases.items() if name in keep}


def _still_to_do(config: SweepConfig, runs: list[RunPlan], fingerprint: str, notes: list[str]) -> list[RunPlan]:
    """The runs with no finished, intact result; refuses a run folder made with other settings."""
    out = Path(config.out)
    todo = []
    for run in runs:
        run_dir = out / run.rel_dir
        identity = run_identity(config, run, fingerprint)
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
        elif damaged_checkpoint(run_dir):
            notes.append(f"{run.run_id}: best.h5 is missing or differs from the sha256 recorded when the run "
                         f"finished; training it again")
            todo.append(run)
    return todo


def damaged_checkpoint(run_dir: Path) -> bool:
    """True when a finished run's ``best.h5`` is gone or not the file its metrics recorded."""
    try:
        recorded = json.loads((run_dir / METRICS).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError):
        return True
    if not recorded:  # runs from before the hash was recorded
        return not (run_dir / CHECKPOINT).is_file()
    return not (run_dir / CHECKPOINT).is_file() or sha256_file(run_dir / CHECKPOINT) != recorded


def ensure_results_line(out: Path, run: RunPlan) -> None:
    """A run whose metrics.json exists but whose results line was lost (kill in between)."""
    if run.run_id in succeeded_ids(out):
        return
    append_run(out, json.loads((out / run.rel_dir / METRICS).read_text()))


def failed_runs(out: Path, run_ids: list[str]) -> list[str]:
    """The runs among ``run_ids`` with no successful line in ``results.jsonl`` (a later
    success supersedes an earlier failure)."""
    succeeded = succeeded_ids(out)
    return [run_id for run_id in run_ids if run_id not in succeeded]
