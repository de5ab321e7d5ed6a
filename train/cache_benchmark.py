"""Benchmark of frozen-feature caching: the same sweep with caching on and off.

    python -m train.cache_benchmark [--data DIR] [--n 300] [--backbones mobilenetv2,densenet121]
        [--levels paper] [--epochs 10] [--img-size 96] [--out DIR]

Without ``--data`` it simulates ``--n`` SDSS-like cutouts first. Prints the wall time of each
sweep, their ratio, where each sweep's time went (the frozen pass, the first epoch with its
tracing, the other epochs, validation passes, checkpoints, the rest of each run, and work
outside the runs), and the largest difference in validation accuracy and in validation
probabilities between matching runs (target: the same accuracies).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from device.atomic import write_json
from device.sweep_results import VAL_PREDICTIONS, read_records
from device.predictions import read_probabilities
from train.console import command_parser
from train.sweep import SweepConfig, run_sweep


def _probs(run_dir: Path) -> np.ndarray:
    return read_probabilities(run_dir / VAL_PREDICTIONS)[2]


def _breakdown(records: dict[str, dict], total: float) -> dict[str, float]:
    """Summed ``step_seconds`` of a sweep's runs, plus what the sweep spent outside its runs
    (loading images, building and preprocessing per backbone, floors, summary)."""
    parts: dict[str, float] = {}
    for record in records.values():
        for part, seconds in record.get("step_seconds", {}).items():
            parts[part] = parts.get(part, 0.0) + seconds
    in_runs = sum(r.get("wall_seconds", 0.0) for r in records.values())
    return {**{k: round(v, 1) for k, v in parts.items()}, "outside runs": round(max(0.0, total - in_runs), 1)}


def compare(data: str, out: Path, backbones: tuple[str, ...], levels: str, epochs: int, img_size: int,
            weights: str = "none", log=print) -> dict:
    """Run the sweep with ``--cache-features auto`` and ``off``; return timings and differences."""
    timings = {}
    for mode in ("auto", "off"):
        folder = out / f"cache-{mode}"
        shutil.rmtree(folder, ignore_errors=True)
        config = SweepConfig(data=data, out=str(folder), backbones=backbones, levels=levels, epochs=epochs,
                             img_size=img_size, weights=weights, cache_features=mode)
        log(f"--- sweep with --cache-features {mode}")
        t0 = time.perf_counter()
        run_sweep(config, log=log)
        timings[mode] = time.perf_counter() - t0
    cached = {r["run_id"]: r for r in read_records(out / "cache-auto")}
    plain = {r["run_id"]: r for r in read_records(out / "cache-off")}
    errors = [k for k, r in {**cached, **plain}.items() if "error" in r]
    common = sorted(k for k in cached if k in plain and "error" not in cached[k] and "error" not in plain[k])
    acc_diff = max((abs(cached[k]["val_accuracy"] - plain[k]["val_accuracy"]) for k in common), default=float("nan"))
    prob_diff = max((float(np.abs(_probs(out / "cache-auto" / cached[k]["run_dir"]) -
                                  _probs(out / "cache-off" / plain[k]["run_dir"])).max()) for k in common),
                    default=float("nan"))
    same = sum(cached[k]["val_accuracy"] == plain[k]["val_accuracy"] for k in common)
    breakdown = {mode: _breakdown(records, timings[key])
                 for mode, records, key in (("cached", cached, "auto"), ("plain", plain, "off"))}
    result = {"runs": len(common), "runs_same_accuracy": same, "failed_runs": errors, "seconds_cached": round(timings["auto"], 1),
              "seconds_plain": round(timings["off"], 1), "speedup": round(timings["off"] / timings["auto"], 2),
              "max_val_accuracy_diff": acc_diff, "max_val_probability_diff": prob_diff,
              "seconds_by_part": breakdown, "backbones": list(backbones), "levels": levels, "epochs": epochs, "img_size": img_size, "data": data}
    write_json(out / "cache_benchmark.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = command_parser("python -m train.cache_benchmark", __doc__)
    p.add_argument("--data", help="dataset folder (default: simulate --n images)")
    p.add_argument("--n", type=int, default=300, help="images to simulate without --data (default 300)")
    p.add_argument("--backbones", default="mobilenetv2,densenet121")
    p.add_argument("--levels", default="paper")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--weights", default="none")
    p.add_argument("--out", default="out/cache-benchmark")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from train.synth import synthesize

        data = str(out / "data")
        if not (Path(data) / "manifest.csv").is_file():
            synthesize(out=data, n=args.n, size=128, seed=0)
    r = compare(data, out, tuple(args.backbones.split(",")), args.levels, args.epochs, args.img_size, args.weights)
    print(f"\ncache benchmark: {r['runs']} runs ({', '.join(r['backbones'])}; levels {r['levels']}; "
          f"{r['epochs']} epochs; {r['img_size']} px)")
    print(f"  caching on : {r['seconds_cached']:8.1f} s")
    print(f"  caching off: {r['seconds_plain']:8.1f} s")
    print(f"  speed-up   : {r['speedup']:.2f}x")
    parts = list(dict.fromkeys([*r["seconds_by_part"]["cached"], *r["seconds_by_part"]["plain"]]))
    print(f"  {'where the time went (s)':<24} {'cached':>8} {'plain':>8}")
    for part in parts:
        print(f"  {part:<24} {r['seconds_by_part']['cached'].get(part, 0.0):8.1f} "
              f"{r['seconds_by_part']['plain'].get(part, 0.0):8.1f}")
    print(f"  same validation accuracy in {r['runs_same_accuracy']} of {r['runs']} runs")
    print(f"  largest validation accuracy difference: {100 * r['max_val_accuracy_diff']:.2f} points; "
          f"largest probability difference: {r['max_val_probability_diff']:.2e}")
    if r["failed_runs"]:
        print(f"  failed runs: {', '.join(r['failed_runs'])}")
    return 0 if not r["failed_runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
