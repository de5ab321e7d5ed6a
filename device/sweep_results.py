"""A sweep folder: its layout and its results. The one owner of the format: every file name
and the run id are spelled here and nowhere else; ``train.sweep`` writes ``results.jsonl``,
the shard records and each run's folder, ``train.trainer`` each run's ``history.csv`` and
checkpoint (pretraining's too); the summary, export, ``bench report`` and the benchmarks read
them through here; TensorFlow-free.

Layout of ``RUNS/``::

    results.jsonl                     RESULTS: one record per finished or failed run
    sweep-shard<i>of<n>.json          shard_record(): each shard's settings and planned runs
    baseline.json                     BASELINE: the floors on the test split
    baseline_test_predictions.csv     BASELINE_PREDICTIONS: the feature floor's per-image answers
    summary.md, summary.csv, plots/   written by train.summary
    runs/<backbone>/L<level:03>-s<seed>/   run_dir(): one run (run_id(): <backbone>-L<level:03>-s<seed>)
        config.json  history.csv  best.h5  best.json  metrics.json
        val_predictions.csv  test_predictions.csv

``results.jsonl`` holds one flat JSON record per finished or failed run, appended as runs end
(several shards may append to one file). A record carries ``results_version`` (lines written
before the field existed are read as version 1), ``run_id``, ``backbone``, ``level``,
``seed``, ``run_dir`` and the run's metrics (``val_accuracy`` with its Wilson interval,
``test_accuracy``, macro-F1, parameters, tuning ratios, ...); a failed run has ``error``.
A run that appears several times is resolved by ``load_runs``: its last successful line wins.

``history.csv`` has one row per finished epoch, columns ``HISTORY_COLUMNS``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.atomic import append_jsonl, read_jsonl_records, skipped_warning, write_text
from device.csvtext import CsvError, dict_rows
from device.metrics import wilson_interval

RESULTS_VERSION = 1
RESULTS = "results.jsonl"
BASELINE = "baseline.json"
BASELINE_PREDICTIONS = "baseline_test_predictions.csv"
SHARD_RECORDS = "sweep-shard*of*.json"  # the glob of shard_record()'s names
# one run's folder
CONFIG = "config.json"
HISTORY = "history.csv"
CHECKPOINT = "best.h5"
CHECKPOINT_META = "best.json"
METRICS = "metrics.json"
VAL_PREDICTIONS = "val_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"


def run_id(backbone: str, level: int, seed: int) -> str:
    """A run's name in results.jsonl, logs and artifact ids: ``mobilenetv2-L010-s0``."""
    return f"{backbone}-L{int(level):03d}-s{int(seed)}"


def run_dir(backbone: str, level: int, seed: int) -> str:
    """A run's folder, relative to the sweep folder: ``runs/mobilenetv2/L010-s0``."""
    return f"runs/{backbone}/L{int(level):03d}-s{int(seed)}"


def shard_record(root: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """The record a shard writes of its settings and planned runs: ``sweep-shard1of3.json``."""
    return Path(root) / f"sweep-shard{shard[0]}of{shard[1]}.json"


def read_shard_records(root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """``(path, record)`` of every shard record in ``root`` (``SHARD_RECORDS``), in name order;
    a record cut short or damaged is left out (its shard rewrites it when it starts again)."""
    out = []
    for path in sorted(Path(root).glob(SHARD_RECORDS)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            out.append((path, record))
    return out


HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


class ResultsError(ValueError):
    """A results file that cannot be used; the message names the file and the problem."""


def append_run(root: str | os.PathLike, record: dict) -> None:
    """Append one run's record to ``root/results.jsonl``, stamped with ``results_version``."""
    append_jsonl(Path(root) / RESULTS, {"results_version": RESULTS_VERSION, **record})


def record_problem(record: dict) -> str | None:
    """Why a JSON object is not a run's record (``None`` when it is one): a record names its
    run (``run_id``, ``backbone``, ``level``, ``seed``) and carries an ``error`` or a
    ``val_accuracy`` from 0 to 1."""
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        return "no run_id"
    missing = [k for k in ("backbone", "level", "seed") if record.get(k) is None]
    if missing:
        return f"no {', '.join(missing)}"
    if record.get("error"):
        return None
    if not 0 <= as_float(record.get("val_accuracy")) <= 1:
        return "neither an error nor a val_accuracy from 0 to 1"
    return None


_warned: set = set()  # (file, skipped lines) already named in this process


def read_records(root: str | os.PathLike, warn=None) -> list[dict]:
    """Every record of ``root/results.jsonl`` in file order (empty when there is no file yet).

    Lines that are not records (a crash's fragment, JSON that is not an object, ``{}``, an
    object without the fields a record needs: ``record_problem``) are left in the file, never
    counted, and named in one warning given to ``warn`` (default: stderr, once per process
    for the same lines).

    Raises:
        ResultsError: a record of another ``results_version``; the message names the file,
            the line and the versions.
    """
    path = Path(root) / RESULTS
    records, skipped = read_jsonl_records(path, record_problem)
    if skipped and (warn is not None or (str(path), tuple(skipped)) not in _warned):
        _warned.add((str(path), tuple(skipped)))
        (warn or (lambda line: print(line, file=sys.stderr)))(skipped_warning(path, skipped))
    for number, record in enumerate(records, 1):
        version = record.get("results_version", RESULTS_VERSION)
        if version != RESULTS_VERSION:
            raise ResultsError(f"{path}: record {number} has results_version {version!r}; this SkyEdge reads "
                               f"version {RESULTS_VERSION} (rerun the sweep with it, or use the SkyEdge that wrote it)")
    return records


def succeeded_ids(root: str | os.PathLike) -> set[str]:
    """The run ids with at least one successful line."""
    return {str(r.get("run_id")) for r in read_records(root) if not is_failed(r)}


def is_failed(record: dict) -> bool:
    """A record with an ``error``, or without a finite ``val_accuracy``."""
    return bool(record.get("error")) or not math.isfinite(as_float(record.get("val_accuracy")))


def load_runs(root: str | os.PathLike) -> tuple[list[dict], list[dict], int]:
    """Read ``root/results.jsonl`` and resolve reruns.

    A run is identified by ``run_id``. When it appears several times, the last successful
    line wins; a run with no successful line is a failure, reported by its last line.

    Returns:
        ``(successes, failures, superseded)``: successful records sorted by backbone, level
        and seed; failed records in file order; and the number of failed lines of runs that
        later (or earlier) succeeded.

    Raises:
        ResultsError: ``results.jsonl`` is missing, holds no complete record, or is of
            another version; the message names the file.
    """
    path = Path(root) / RESULTS
    if not path.is_file():
        raise ResultsError(f"{path}: no such file; expected the sweep's results.jsonl in {root}")
    records = read_records(root)
    if not records:
        raise ResultsError(f"{path}: no complete JSON record in the file; nothing to summarise")
    successes: dict[str, dict] = {}
    failures: dict[str, dict] = {}
    failed_lines: dict[str, int] = {}
    for index, record in enumerate(records):
        run_id = str(record.get("run_id") or f"line-{index + 1}")
        if is_failed(record):
            failures[run_id] = record if record.get("error") else {**record, "error": "record has no val_accuracy"}
            failed_lines[run_id] = failed_lines.get(run_id, 0) + 1
        else:
            successes[run_id] = record
    superseded = sum(count for run_id, count in failed_lines.items() if run_id in successes)
    ok = sorted(successes.values(), key=run_key)
    failed = [record for run_id, record in failures.items() if run_id not in successes]
    return ok, failed, superseded


def run_key(record: dict) -> tuple:
    """Sort key of a record: backbone, level, seed, run id."""
    return (str(record.get("backbone", "")), as_int(record.get("level")) or 0,
            as_int(record.get("seed")) or 0, str(record.get("run_id", "")))


@dataclass(frozen=True)
class LevelStats:
    """The successful runs of one backbone at one level, aggregated over seeds.

    Attributes:
        backbone: backbone name.
        level: trainable-layer level k.
        runs: the runs, sorted by seed.
        acc_mean, acc_std: validation accuracy over seeds (std is the sample std, nan for one seed).
        acc_min, acc_max: range of validation accuracy over seeds.
        ci_low, ci_high: Wilson 95% bounds, averaged over seeds.
        f1_mean, f1_std: macro-F1 over seeds.
        epochs_mean, epochs_std: epochs actually run over seeds.
        wall_mean, wall_std: wall seconds over seeds.
        trainable_params, total_params: from the lowest-seed run (the same for every seed).
        ltr, ptr: layer and parameter tuning ratios.
        test_mean, test_std, test_ci_low, test_ci_high: test accuracy over seeds (nan when
            the runs have no test split); never used to choose anything.
    """

    backbone: str
    level: int
    runs: tuple[dict, ...]
    acc_mean: float
    acc_std: float
    acc_min: float
    acc_max: float
    ci_low: float
    ci_high: float
    f1_mean: float
    f1_std: float
    epochs_mean: float
    epochs_std: float
    wall_mean: float
    wall_std: float
    trainable_params: int | None
    total_params: int | None
    ltr: float
    ptr: float
    test_mean: float = float("nan")
    test_std: float = float("nan")
    test_ci_low: float = float("nan")
    test_ci_high: float = float("nan")

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def reference(self) -> dict:
        """The run that stands for this level in paired tests and curves: the lowest seed."""
        return self.runs[0]


def aggregate(runs: list[dict]) -> dict[str, list[LevelStats]]:
    """Group successful runs by backbone and level and summarise each group over seeds.

    Returns:
        ``{backbone: [LevelStats, ...]}`` with backbones and levels in ascending order.
    """
    groups: dict[tuple[str, int], list[dict]] = {}
    for run in sorted(runs, key=run_key):
        groups.setdefault((str(run["backbone"]), int(run["level"])), []).append(run)
    out: dict[str, list[LevelStats]] = {}
    for (backbone, level), members in sorted(groups.items()):
        out.setdefault(backbone, []).append(_level_stats(backbone, level, members))
    return out


def _level_stats(backbone: str, level: int, members: list[dict]) -> LevelStats:
    def column(key: str, fallback: str | None = None) -> np.ndarray:
        return np.array([as_float(r.get(key, r.get(fallback) if fallback else None)) for r in members])

    acc = np.array([float(r["val_accuracy"]) for r in members])
    bounds = np.array([_val_interval(r) for r in members])
    test, first = column("test_accuracy"), members[0]
    return LevelStats(
        backbone=backbone, level=level, runs=tuple(members),
        acc_mean=float(acc.mean()), acc_std=_std(acc), acc_min=float(acc.min()), acc_max=float(acc.max()),
        ci_low=float(bounds[:, 0].mean()), ci_high=float(bounds[:, 1].mean()),
        f1_mean=_mean(column("val_macro_f1")), f1_std=_std(column("val_macro_f1")),
        epochs_mean=_mean(column("epochs_run", "epochs")), epochs_std=_std(column("epochs_run", "epochs")),
        wall_mean=_mean(column("wall_seconds")), wall_std=_std(column("wall_seconds")),
        trainable_params=as_int(first.get("trainable_params")), total_params=as_int(first.get("total_params")),
        ltr=as_float(first.get("ltr")), ptr=as_float(first.get("ptr")),
        test_mean=_mean(test), test_std=_std(test),
        test_ci_low=_mean(column("test_accuracy_ci_low")), test_ci_high=_mean(column("test_accuracy_ci_high")),
    )


def best_level(levels: list[LevelStats]) -> LevelStats:
    """The level with the highest mean validation accuracy over seeds.

    Ties go to fewer trainable parameters, then to the lower level, so the cheaper model
    wins when the accuracy cannot tell them apart.
    """
    return min(levels, key=lambda s: (-s.acc_mean, _params_key(s), s.level))


def overall_best(best: dict[str, LevelStats]) -> LevelStats:
    """The most accurate of the backbones' best levels; ties go to fewer trainable parameters."""
    return min(best.values(), key=lambda s: (-s.acc_mean, _params_key(s), s.backbone))


class HistoryError(ValueError):
    """A ``history.csv`` that cannot be read (not UTF-8, a record csv refuses); the message
    names the file. A run treats it like a damaged checkpoint: it starts again."""


def read_history(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``history.csv``: ``epoch`` an int, the other columns floats.

    A missing file is an empty history; reading stops at the first row cut short (a run
    killed mid-write resumes from the rows before it).

    Raises:
        HistoryError: the file is not UTF-8 text or not CSV (torn by a crash, damaged);
            the message names it and the reason.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        _columns, records = dict_rows(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{path}: not UTF-8 text (byte {exc.start}); the file is damaged") from None
    except CsvError as exc:
        raise HistoryError(str(exc)) from None
    rows = []
    for row in records:
        try:
            rows.append({k: (int(row[k]) if k == "epoch" else float(row[k])) for k in HISTORY_COLUMNS})
        except (KeyError, ValueError, TypeError):
            break
    return rows


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``history.csv`` atomically, columns ``HISTORY_COLUMNS``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(path), buf.getvalue())


def as_float(value) -> float:
    """``float(value)``, or nan when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def as_int(value) -> int | None:
    """``int(value)``, or None when it is not an integer."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _params_key(stats: LevelStats) -> float:
    return float(stats.trainable_params) if stats.trainable_params is not None else math.inf


def _val_interval(record: dict) -> tuple[float, float]:
    low, high = as_float(record.get("val_accuracy_ci_low")), as_float(record.get("val_accuracy_ci_high"))
    if math.isfinite(low) and math.isfinite(high):
        return low, high
    n = as_int(record.get("val_n")) or 0
    return wilson_interval(round(float(record["val_accuracy"]) * n), n)


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _std(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
