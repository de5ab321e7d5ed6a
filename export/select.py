"""Which finished sweep runs an export takes (``--select``), and each run rebuilt as the Keras
model the artifacts are converted from and verified against."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from device.atomic import write_text
from device.backbones import Backbone, get
from device.checksum import sha256_file
from device.sweep_results import (CHECKPOINT, CONFIG, RESULTS, TEST_PREDICTIONS, VAL_PREDICTIONS, aggregate,
                                   best_level, load_runs)
from device import sweep_results as layout
from export.config import SELECT_HELP, ExportError

@dataclass
class Source:
    """One selected run: where its checkpoint, predictions and data are."""

    run_id: str
    backbone: Backbone
    level: int
    seed: int
    rel_dir: str
    run_dir: Path
    config: dict
    checkpoint: Path
    predictions: Path
    data: Path
    img_size: int
    checkpoint_sha256: str = ""

    @property
    def stem(self) -> str:
        return layout.run_id(self.backbone.name, self.level, self.seed)


def _finished_runs(runs_root: Path) -> list[dict]:
    """The sweep's successful runs, by ``device.sweep_results.load_runs``'s rule (the last
    successful line of a run wins), so that export and the sweep summary read the same results."""
    if not runs_root.is_dir():
        raise ExportError(f"--runs {runs_root}: no such folder; expected a train.sweep output folder")
    if not (runs_root / RESULTS).is_file():
        raise ExportError(f"--runs {runs_root}: no {RESULTS}; expected a train.sweep output folder")
    try:
        finished, _, _ = load_runs(runs_root)
    except ValueError as exc:
        raise ExportError(f"--runs {runs_root}: {exc}") from None
    if not finished:
        raise ExportError(f"--runs {runs_root}: {RESULTS} has no finished run")
    return finished


def pick_records(records: list[dict], spec: str) -> list[dict]:
    """The finished runs ``--select`` names: ``all``, ``best`` (one per backbone) or ``backbone:level[:seed]`` items."""
    spec = spec.strip()
    if spec == "all":
        return sorted(records, key=lambda r: (r["backbone"], r["level"], r["seed"]))
    if spec == "best":
        # the level the sweep summary calls best (mean accuracy over seeds; ties: fewer
        # trainable parameters, then the lower level), exported from its seed-0 run (its
        # lowest seed when seed 0 did not finish there)
        chosen = []
        for backbone, levels in aggregate(records).items():
            level = best_level(levels).level
            at_level = [r for r in records if r["backbone"] == backbone and int(r["level"]) == level]
            chosen.append(min(at_level, key=lambda r: int(r.get("seed", 0))))
        return chosen
    chosen = []
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        parts = item.split(":")
        try:
            name = get(parts[0]).name
            level = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 else 0
            if len(parts) not in (2, 3):
                raise ValueError
        except (KeyError, ValueError, IndexError):
            raise ExportError(f"--select {item!r}: expected {SELECT_HELP}") from None
        match = [r for r in records if r["backbone"] == name and r["level"] == level and r["seed"] == seed]
        if not match:
            have = sorted({f"{r['backbone']}:{r['level']}:{r['seed']}" for r in records if r["backbone"] == name})
            raise ExportError(f"--select {item!r} names no finished run; finished {name} runs: "
                              f"{', '.join(have) or 'none'}")
        chosen.append(match[0])
    if not chosen:
        raise ExportError(f"--select {spec!r} names nothing; expected {SELECT_HELP}")
    return chosen


def _data_folder(config: dict, run_dir: Path) -> Path:
    for key in ("data", "data_resolved"):
        value = config.get(key)
        if value and Path(value).exists():
            return Path(value).resolve()
    raise ExportError(f"{run_dir}/config.json: dataset folder {config.get('data')!r} not found "
                      f"(nor data_resolved {config.get('data_resolved')!r}); run from the sweep's folder")


def write_reference(source, path: Path) -> None:
    """The Keras model's predictions the device compares with: validation rows, then test rows.

    Verification here reads only the validation rows; ``bench run`` (test split by default)
    finds its images among the test rows.
    """
    text = source.predictions.read_text(encoding="utf-8")
    test = source.run_dir / TEST_PREDICTIONS
    if test.is_file():
        header, *rows = test.read_text(encoding="utf-8").splitlines()
        if header == text.splitlines()[0]:
            text = text.rstrip("\n") + "\n" + "".join(row + "\n" for row in rows)
    write_text(path, text)


def select_runs(runs: str | os.PathLike, spec: str = "best") -> list[Source]:
    """The runs to export, each checked for checkpoint, predictions and data.

    Args:
        runs: a ``train.sweep`` output folder.
        spec: ``best``, ``all`` or ``NAME:LEVEL[:SEED]`` items separated by commas.

    Returns:
        One ``Source`` per selected run, with its checkpoint hashed.

    Raises:
        ExportError: missing folder, no finished run, a selection naming nothing, a run
            without ``best.h5``, ``config.json`` or ``val_predictions.csv``, or a ``best.h5``
            that is not the file the sweep recorded.
    """
    root = Path(runs)
    sources = []
    for record in pick_records(_finished_runs(root), spec):
        run_dir = root / record["run_dir"]
        for name in (CONFIG, CHECKPOINT, VAL_PREDICTIONS):
            if not (run_dir / name).is_file():
                what = "checkpoint" if name == CHECKPOINT else name
                raise ExportError(f"run {record['run_id']}: no {what} ({run_dir / name}); rerun the sweep to finish it")
        import json

        config = json.loads((run_dir / CONFIG).read_text())
        source = Source(run_id=record["run_id"], backbone=get(record["backbone"]), level=int(record["level"]),
                        seed=int(record["seed"]), rel_dir=record["run_dir"], run_dir=run_dir, config=config,
                        checkpoint=run_dir / CHECKPOINT, predictions=run_dir / VAL_PREDICTIONS,
                        data=_data_folder(config, run_dir), img_size=int(config["img_size"]))
        source.checkpoint_sha256 = sha256_file(source.checkpoint)
        recorded = record.get("checkpoint_sha256")
        if recorded and recorded != source.checkpoint_sha256:
            raise ExportError(f"run {record['run_id']}: {source.checkpoint} differs from the sha256 recorded when "
                              f"the run finished (damaged or replaced); rerun the sweep to train it again")
        sources.append(source)
    return sources


def keras_model(source: Source, batch_size: int | None = 1):
    """Rebuild the run's model from ``best.h5`` and wrap it as the deployable graph."""
    from export.graph import deployable
    from train.model import build

    model = build(source.backbone, source.img_size, None).model
    model.load_weights(str(source.checkpoint))
    return deployable(model, source.backbone, source.img_size, batch_size=batch_size)
