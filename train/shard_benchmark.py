"""Benchmark of sharding: one sweep as one process, then as three shards started at once.

    python -m train.shard_benchmark [--data DIR] [--backbones mobilenetv2,mobilenetv3small,densenet121]
        [--levels paper] [--epochs 8] [--img-size 64] [--shards 3] [--out DIR]

Without ``--data`` it uses the real SDSS sample shipped with SkyEdge. Each sweep runs as its
own processes (``python -m train.sweep``); their CPU time (user + system, from the kernel's
accounting of waited-for children) is summed; the shards' sum includes the final
``train.summary`` that the one-process sweep does itself. Prints both sums, their ratio (target: the
shards' within 15% of one process's), the wall times, the frozen passes each shard made per
backbone (target: one per backbone in all) and whether the two sweeps' results agree.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from device import sweep_results as layout
from device.atomic import write_json
from device.sweep_results import load_runs
from train.console import command_parser

REPO = Path(__file__).resolve().parents[1]


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sweeps(commands: list[list[str]], logs: list[Path]) -> tuple[float, float, list[int]]:
    """Start the commands at once, wait for all; returns (CPU seconds, wall seconds, exit codes)."""
    cpu0, t0 = _cpu_children(), time.perf_counter()
    procs = []
    for command, log in zip(commands, logs):
        with open(log, "w") as fh:
            procs.append(subprocess.Popen(command, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    return _cpu_children() - cpu0, time.perf_counter() - t0, codes


def compare(data: str, out: Path, backbones: str, levels: str, epochs: int, img_size: int, shards: int,
            log=print) -> dict:
    """Run the plan as one process and as ``shards`` processes at once; return both costs."""
    common = [sys.executable, "-m", "train.sweep", "--data", data, "--backbones", backbones, "--levels", levels,
              "--epochs", str(epochs), "--img-size", str(img_size), "--weights", "none"]
    single, sharded = out / "single", out / "sharded"
    for folder in (single, sharded):
        shutil.rmtree(folder, ignore_errors=True)
    log(f"--- one process: {' '.join(common[1:])} --out {single}")
    cpu_single, wall_single, codes = _sweeps([common + ["--out", str(single)]], [out / "single.log"])
    if codes != [0]:
        raise RuntimeError(f"the single-process sweep exited {codes[0]}; see {out / 'single.log'}")
    log(f"    {cpu_single:.1f} CPU s, {wall_single:.1f} s wall")
    log(f"--- {shards} shards at once into {sharded}, then train.summary")
    cpu_sharded, wall_sharded, codes = _sweeps(
        [common + ["--out", str(sharded), "--shard", f"{i}/{shards}"] for i in range(shards)],
        [out / f"shard{i}.log" for i in range(shards)])
    if any(codes):
        raise RuntimeError(f"shard exit codes {codes}; see {out}/shard*.log")
    # the one-process sweep wrote its summary; the shards leave it to a final step, counted too
    cpu_summary, wall_summary, codes = _sweeps([[sys.executable, "-m", "train.summary", str(sharded)]],
                                               [out / "summary.log"])
    if any(codes):
        raise RuntimeError(f"train.summary exited {codes[0]}; see {out / 'summary.log'}")
    cpu_sharded, wall_sharded = cpu_sharded + cpu_summary, wall_sharded + wall_summary
    log(f"    {cpu_sharded:.1f} CPU s, {wall_sharded:.1f} s wall")

    passes: dict[str, int] = {}
    placement = {}
    for i in range(shards):
        record = json.loads(layout.shard_record(sharded, (i, shards)).read_text())
        placement[f"{i}/{shards}"] = sorted({run.split("-L")[0] for run in record["runs"]})
        for backbone, count in record.get("frozen_passes", {}).items():
            passes[backbone] = passes.get(backbone, 0) + count
    one = {r["run_id"]: r for r in load_runs(single)[0]}
    many = {r["run_id"]: r for r in load_runs(sharded)[0]}
    same = sum(one[k]["val_accuracy"] == many[k]["val_accuracy"] for k in one if k in many)
    result = {"cpu_seconds_single": round(cpu_single, 1), "cpu_seconds_shards": round(cpu_sharded, 1),
              "cpu_ratio": round(cpu_sharded / cpu_single, 3), "wall_seconds_single": round(wall_single, 1),
              "wall_seconds_shards": round(wall_sharded, 1), "frozen_passes": passes, "placement": placement,
              "runs_single": len(one), "runs_shards": len(many), "runs_same_val_accuracy": same,
              "backbones": backbones, "levels": levels, "epochs": epochs, "img_size": img_size, "shards": shards,
              "data": data, "cpus": os.cpu_count()}
    write_json(out / "shard_benchmark.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = command_parser("python -m train.shard_benchmark", __doc__)
    p.add_argument("--data", help="dataset folder (default: the SDSS sample shipped with SkyEdge)")
    p.add_argument("--backbones", default="mobilenetv2,mobilenetv3small,densenet121",
                   help="(default: %(default)s)")
    p.add_argument("--levels", default="paper", help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=8, help="(default: %(default)s, the study's)")
    p.add_argument("--img-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--shards", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--out", default="out/shard-benchmark", help="(default: %(default)s)")
    args = p.parse_args(argv)
    if args.shards < 2:
        p.error(f"--shards {args.shards}: expected 2 or more")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from train.data import copy_sample

        data = str(copy_sample(out / "data"))
    r = compare(data, out, args.backbones, args.levels, args.epochs, args.img_size, args.shards)
    print(f"\nshard benchmark: {r['runs_single']} runs ({r['backbones']}; levels {r['levels']}; {r['epochs']} epochs; "
          f"{r['img_size']} px; {r['cpus']} CPUs)")
    print(f"  one process : {r['cpu_seconds_single']:8.1f} CPU s {r['wall_seconds_single']:8.1f} s wall")
    print(f"  {r['shards']} shards    : {r['cpu_seconds_shards']:8.1f} CPU s {r['wall_seconds_shards']:8.1f} s wall "
          f"(with the final train.summary)")
    print(f"  CPU ratio   : {r['cpu_ratio']:.3f} (target <= 1.15)")
    print("  placement   : " + "; ".join(f"{k}: {', '.join(v)}" for k, v in r["placement"].items()))
    print("  frozen passes per backbone over all shards: "
          + ", ".join(f"{k} {v}" for k, v in sorted(r["frozen_passes"].items())) + " (target: 1 each)")
    print(f"  same validation accuracy in {r['runs_same_val_accuracy']} of {r['runs_single']} runs "
          f"({r['runs_shards']} finished in the shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
