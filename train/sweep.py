"""The study's experiment: fine-tune every backbone at every trainable level, per seed.

    python -m train.sweep --data DIR --backbones paper --levels paper --epochs 10 \\
        --img-size 224 --seeds 0,1,2 --weights imagenet --out sweeps/paper

Resumable (rerun the same command: finished runs are skipped, a killed run resumes from its
last finished epoch) and shardable (``--shard i/n`` runs a deterministic share: whole
backbones, balanced by planned cost, ``train.shards``; shards write into one shared output
folder without conflicts). Frozen features are cached by default (``--cache-features auto``);
see ``train.cache``.

This module is the command line (options, Slurm's array variables). The work is split by job:
``train.sweep_config`` (the settings and their checks), ``train.sweep_plan`` (the runs, checked
against the data and the folders in ``--out``) and ``train.sweep_run`` (training and recording
them). Their public names are importable from here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from device.command import Exit, run_command
from device.dataset import DatasetError
from device.options import defaults
from device.sweep_results import RESULTS
from device import sweep_results as layout
from train.console import VERBOSE_HELP, command_parser, quiet_tensorflow
from train.levels import BN_MODES
from train.recipe import AUGMENTS
from train.precision import PRECISION_HELP, PRECISIONS
from train.sweep_config import (CACHE_MODES, STRATEGIES, SweepConfig, SweepError, check_config)
from train.sweep_plan import Plan, RunPlan, failed_runs, plan, plan_with_bases
from train.sweep_run import run_sweep, spill_dir

__all__ = ["SweepConfig", "SweepError", "Plan", "RunPlan", "check_config", "plan", "plan_with_bases", "run_sweep",
           "failed_runs", "spill_dir", "parse_shard", "build_parser", "from_args", "main"]


def parse_shard(text: str, environ=None) -> tuple[int, int]:
    """``i/n``, or ``auto``: this task's share in a job array.

    ``auto`` reads Slurm's ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT`` (the id
    counted from ``SLURM_ARRAY_TASK_MIN``, so ``--array=1-4`` works as well as ``0-3``; with
    ``SKYEDGE_SHARDS`` set, the id as it is out of that many, so one task of an array can be
    submitted again alone), or a
    Kubernetes Indexed Job's ``JOB_COMPLETION_INDEX`` with ``SKYEDGE_SHARDS`` for the count;
    outside an array it is ``0/1``.
    """
    env = os.environ if environ is None else environ
    if text == "auto":
        try:
            if "SLURM_ARRAY_TASK_ID" in env and "SKYEDGE_SHARDS" in env:
                # a task submitted again on its own (--array=1) keeps its share of the whole array
                return int(env["SLURM_ARRAY_TASK_ID"]), int(env["SKYEDGE_SHARDS"])
            if "SLURM_ARRAY_TASK_ID" in env:
                first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
                return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
            if "JOB_COMPLETION_INDEX" in env:
                return int(env["JOB_COMPLETION_INDEX"]), int(env["SKYEDGE_SHARDS"])
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(
                "--shard auto: SLURM_ARRAY_TASK_ID needs SLURM_ARRAY_TASK_COUNT, and JOB_COMPLETION_INDEX needs "
                "SKYEDGE_SHARDS (the number of tasks), as integers") from None
        return 0, 1
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n such as 0/4, or auto") from None
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("python -m train.sweep", __doc__)
    d = defaults(SweepConfig)  # the one set of defaults
    p.add_argument("--data", required=True, help="dataset folder (manifest.csv, labels.csv or class folders)")
    p.add_argument("--out", required=True, help="sweep output folder (shared by shards)")
    p.add_argument("--backbones", default=",".join(d["backbones"]),
                   help="names and groups: paper, mobile, all (default %(default)s)")
    p.add_argument("--levels", default=d["levels"], help="paper | blocks | 0,5,10 | step:N[:max] (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d["epochs"],
                   help="epochs per run; the best by validation accuracy is kept (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="images per training step (default %(default)s)")
    p.add_argument("--img-size", type=int, default=d["img_size"], help="input side in pixels (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate (default %(default)s)")
    p.add_argument("--seeds", default=",".join(map(str, d["seeds"])), help="comma-separated seeds (default %(default)s)")
    p.add_argument("--weights", default=d["weights"],
                   help="imagenet (downloaded by Keras) | none (random) | PATH (a file or folder of Keras weight files) "
                        "(default %(default)s)")
    p.add_argument("--augment", default=d["augment"], choices=AUGMENTS,
                   help="d4: the 8 rotations/flips (default %(default)s)")
    p.add_argument("--cache-features", default=d["cache_features"], choices=CACHE_MODES,
                   help="run the frozen layers once per image and train only the top (auto: when not augmenting; "
                        "default %(default)s)")
    p.add_argument("--cache-budget-gb", type=float, default=d["cache_budget_gb"],
                   help="feature cache kept in memory; beyond, memory-mapped files (default %(default)s)")
    p.add_argument("--cache-dir", help="where memory-mapped features go, in a folder of this process's own "
                                       "(default $TMPDIR when set, else OUT/cache)")
    p.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                   help=PRECISION_HELP + " (default %(default)s)")
    p.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    p.add_argument("--strategy", default=d["strategy"], choices=STRATEGIES,
                   help="mirrored: all GPUs of this machine (default %(default)s)")
    p.add_argument("--shard", type=parse_shard, default=d["shard"], help="i/n: run the i-th of n shares (whole backbones, balanced by planned arithmetic); "
                        "auto: from a Slurm array (SLURM_ARRAY_TASK_ID/COUNT) or an Indexed Job (default 0/1)")
    p.add_argument("--bn", default=d["bn"], choices=BN_MODES,
                   help="BatchNorm while fine-tuning: frozen (inference mode, fixed; default) or study "
                        "(trainable BatchNorm layers update their statistics with the backbone's momentum)")
    p.add_argument("--summary", action="store_true",
                   help="write summary.md even as one shard of several (by default only an unsharded sweep does; "
                        "run `python -m train.summary OUT` after the last shard)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("--bn-reestimate", default=d["bn_reestimate"], choices=("auto", "on", "off"),
                   help="re-estimate frozen BatchNorm statistics on training images (auto: with --weights none; "
                        "default %(default)s)")
    return p


def from_args(args: argparse.Namespace) -> SweepConfig:
    """Build the config from parsed arguments (the only place a Namespace is read)."""
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise SweepError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    return SweepConfig(data=args.data, out=args.out, backbones=tuple(b for b in args.backbones.split(",") if b.strip()),
                       levels=args.levels, epochs=args.epochs, batch_size=args.batch_size, img_size=args.img_size,
                       lr=args.lr, seeds=seeds or (0,), weights=args.weights, augment=args.augment,
                       cache_features=args.cache_features, cache_budget_gb=args.cache_budget_gb, cache_dir=args.cache_dir,
                       precision=args.precision, jit=args.jit, strategy=args.strategy, shard=args.shard,
                       bn_reestimate=args.bn_reestimate, bn=args.bn, summary=args.summary)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        config = from_args(args)
        check_config(config)  # a typo is answered at once, not after TensorFlow has loaded
        quiet_tensorflow(args.verbose)
        from train.model import WeightsError

        try:
            out = run_sweep(config)
        except WeightsError as exc:
            raise SweepError(str(exc)) from None
        print(f"results: {out / RESULTS}; summary: {out / 'summary.md'}")
        shard = json.loads(layout.shard_record(out, config.shard).read_text())
        if shard.get("failed"):
            print(f"finished with failures: {len(shard['failed'])} of {len(shard['runs'])} runs failed",
                  file=sys.stderr)
            return Exit.PARTIAL
        return 0

    return run_command(work, (SweepError, DatasetError),
                       "finished epochs are saved; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
