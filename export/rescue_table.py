"""Before and after the int8 rescue: one markdown table from two exports folders of the same runs.

    python -m export.rescue_table PLAIN_EXPORTS RESCUED_EXPORTS [--runs N]

PLAIN_EXPORTS made with ``--int8-rescue off``, RESCUED_EXPORTS with the default (``on``). Per
int8 TFLite artifact: agreement with the Keras model and accuracy on the validation images,
size, and the median single-thread latency of each file measured here, in this one run (so the
two columns compare), with what the rescue did. Validation images only, as the rescue's own
choice; test and holdout accuracy are ``bench run``'s.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from device.command import Exit
from device.exports_manifest import read
from device.sweep_tables import markdown_table
from device.exports_manifest import rescue_summary
from export.int8_rescue import LATENCY_RUNS, p50_ms


def rows(plain_dir: Path, rescued_dir: Path, runs: int = LATENCY_RUNS) -> list[list[str]]:
    """The table's rows, one per int8 TFLite artifact present in both folders."""
    plain, rescued = read(plain_dir), read(rescued_dir)
    out = []
    for artifact_id, after in sorted(rescued.items()):
        before = plain.get(artifact_id)
        if not before or after.get("variant") != "int8" or after.get("format") != "tflite":
            continue
        if "error" in before or "error" in after:
            out.append([artifact_id, "error", "", "", "", before.get("error") or after.get("error")])
            continue
        image = np.full([int(d) for d in after["input_shape"][1:]], 128, np.uint8)
        times = [p50_ms(folder / record["file"], image, runs) for folder, record in ((plain_dir, before), (rescued_dir, after))]
        out.append([f"{after['backbone']} L{after['level']}",
                    f"{100 * before['agreement']:.1f}% -> {100 * after['agreement']:.1f}%",
                    f"{100 * before['val_accuracy']:.1f}% -> {100 * after['val_accuracy']:.1f}% "
                    f"(Keras {100 * after['keras_val_accuracy']:.1f}%)",
                    f"{before['size_bytes'] / 1e6:.2f} -> {after['size_bytes'] / 1e6:.2f} MB",
                    f"{times[0]:.2f} -> {times[1]:.2f} ms",
                    rescue_summary(after.get("int8_rescue")) or "not needed"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.rescue_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plain", help="exports folder made with --int8-rescue off")
    p.add_argument("rescued", help="exports folder of the same runs made with the rescue on")
    p.add_argument("--runs", type=int, default=LATENCY_RUNS, help="timed runs per file (default %(default)s)")
    args = p.parse_args(argv)
    for name in ("plain", "rescued"):
        if not (Path(getattr(args, name)) / "manifest.json").is_file():
            print(f"error: {name} {getattr(args, name)}: expected an exports folder with manifest.json", file=sys.stderr)
            return Exit.BAD_INPUT
    if args.runs < 1:
        print(f"error: --runs {args.runs}: expected at least 1", file=sys.stderr)
        return Exit.BAD_INPUT
    table = rows(Path(args.plain), Path(args.rescued), args.runs)
    if not table:
        print("error: no int8 TFLite artifact is in both folders", file=sys.stderr)
        return Exit.BAD_INPUT
    print("\n".join(markdown_table(["Model", "Agreement (val)", "Val accuracy", "Size", "p50, 1 thread", "Rescue"],
                                   table)))
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
