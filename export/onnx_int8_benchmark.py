"""Speed and agreement of the ONNX int8 forms against ONNX fp32, on this machine.

    python -m export.onnx_int8_benchmark --exports EXPORTS [--select BACKBONE,...]
        [--forms qoperator,qdq-u8,qdq-s8] [--threads 1,2] [--rounds 40] [--calib 200] [--calib-seed 0]

For every ONNX fp32 artifact of an ``export.onnx`` folder (``--variants fp32`` is enough), each
form of ``--onnx-int8`` is made from that very file by ``export.onnx.quantize_int8``, calibrated
on training images of the run's dataset as the exporter does (min/max). Then, per thread count,
fp32 and every form run at batch 1 through ``device.runtime`` (the benchmark's own ONNX Runtime
session settings), interleaved round-robin in one process, so that load from other jobs falls on
all of them alike: ``--rounds`` rounds of 3 calls each, after a warm-up; the figure is the median
call. Top-1 agreement with fp32 is measured on the validation and test images (never a
calibration image). Prints a markdown table: backbone, threads, fp32 ms, each form's ms with its
ratio to fp32, and each form's agreement. The quantized files are temporary.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device import exports_manifest as manifest
from device.command import run_command
from device.dataset import open_dataset
from device.runtime import load
from export.onnx import INT8_FORMS, quantize_int8
from export.config import calib_count
from export.quantize import calibration_set

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")  # x86 and ARM int8 features
CALLS_PER_ROUND = 3
WARMUP = 10


@dataclass
class Row:
    """One backbone at one thread count: median ms per variant, agreement per form."""

    backbone: str
    threads: int
    ms: dict[str, float]
    agreement: dict[str, float]


def cpu_description(path: str = "/proc/cpuinfo") -> str:
    """The CPU model, core count and int8-relevant flags (``unknown`` where unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.lower().startswith(("model name", "hardware"))), "unknown CPU")
    flags = set(text.split())
    cores = sum(1 for line in text.splitlines() if line.startswith("processor"))
    have = [f for f in CPU_FLAGS if f in flags]
    return f"{model}, {cores} logical cores, flags {' '.join(have) or 'none of ' + ' '.join(CPU_FLAGS)}"


def fp32_records(exports: Path, select: tuple[str, ...] = ()) -> list[dict]:
    """The folder's finished ONNX fp32 records, by backbone (only those in ``select`` if given).

    Raises:
        ValueError: no such record (names the folder and the fix).
    """
    records = [r for r in manifest.read(exports).values()
               if r.get("format") == "onnx" and r.get("variant") == "fp32" and r.get("file") and "error" not in r
               and (not select or r["backbone"] in select)]
    if not records:
        raise ValueError(f"{exports}: no ONNX fp32 artifact{' of ' + ','.join(select) if select else ''}; "
                         f"make one with python -m export.onnx --variants fp32")
    return sorted(records, key=lambda r: r["backbone"])


def make_forms(record: dict, exports: Path, forms: tuple[str, ...], folder: Path, calib: int | None,
               seed: int) -> tuple[dict[str, Path], np.ndarray]:
    """fp32 and each form's file for one record, and the images agreement is measured on."""
    dataset = open_dataset(record["data"])
    size = int(record["img_size"])
    count = calib_count(calib, len(dataset.split("train")))
    images = calibration_set(dataset, size, count, seed=seed).images
    fp32 = exports / record["file"]
    paths = {"fp32": fp32}
    for form in forms:
        paths[form] = folder / f"{record['backbone']}-{form}.onnx"
        quantize_int8(fp32, paths[form], images, "minmax", form)
    held_out = [dataset.load_arrays(split, size).images for split in ("val", "test") if dataset.split(split)]
    return paths, np.concatenate(held_out)


def agreement(paths: dict[str, Path], images: np.ndarray) -> dict[str, float]:
    """Each form's top-1 agreement with fp32 on ``images``."""
    top = {name: load(path, threads=1).predict_many(images).argmax(1) for name, path in paths.items()}
    return {name: float(np.mean(pred == top["fp32"])) for name, pred in top.items() if name != "fp32"}


def interleaved_ms(paths: dict[str, Path], threads: int, rounds: int, image: np.ndarray) -> dict[str, float]:
    """Median ms of one batch-1 call per variant, all variants timed round-robin in one process."""
    models = {name: load(path, threads=threads) for name, path in paths.items()}
    inputs = {name: model.prepare(image) for name, model in models.items()}
    for name, model in models.items():
        for _ in range(WARMUP):
            model.invoke(inputs[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # a different one goes first each round
            for _ in range(CALLS_PER_ROUND):
                t0 = time.perf_counter()
                models[name].invoke(inputs[name])
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def table(rows: list[Row], forms: tuple[str, ...]) -> str:
    """Markdown: backbone, threads, fp32 ms, each form's ms (ratio to fp32), agreements."""
    head = (["backbone", "threads", "fp32 ms"] + [f"{f} ms (x fp32)" for f in forms]
            + [f"{f} agreement" for f in forms])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        fp32 = row.ms["fp32"]
        cells = [row.backbone, str(row.threads), f"{fp32:.2f}"]
        cells += [f"{row.ms[f]:.2f} ({row.ms[f] / fp32:.2f}x)" for f in forms]
        cells += [f"{100 * row.agreement[f]:.1f}%" for f in forms]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(exports: Path, forms: tuple[str, ...], threads: tuple[int, ...], rounds: int, calib: int | None,
        seed: int, select: tuple[str, ...] = (), log=print) -> list[Row]:
    """Quantize, check agreement and time every selected fp32 artifact; one ``Row`` per thread count."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for record in fp32_records(exports, select):
            paths, held_out = make_forms(record, exports, forms, Path(tmp), calib, seed)
            agree = agreement(paths, held_out)
            for n in threads:
                ms = interleaved_ms(paths, n, rounds, held_out[0])
                rows.append(Row(record["backbone"], n, ms, agree))
                log(f"{record['backbone']} threads {n}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    return rows


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"{option} {text!r}: expected comma-separated positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_int8_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exports", required=True, help="an export.onnx output folder with fp32 artifacts")
    p.add_argument("--select", default="", help="backbones to measure, comma-separated (default: every one)")
    p.add_argument("--forms", default=",".join(INT8_FORMS), help=f"int8 forms (default {','.join(INT8_FORMS)})")
    p.add_argument("--threads", default="1,2", help="intra-op thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=40, help=f"timing rounds, {CALLS_PER_ROUND} calls each (default 40)")
    p.add_argument("--calib", type=int, default=None, help="calibration images (default 200, or all when fewer)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw (default 0)")
    args = p.parse_args(argv)
    return run_command(lambda: _benchmark(args), (ValueError,))


def _benchmark(args: argparse.Namespace) -> int:
    forms = tuple(dict.fromkeys(f.strip() for f in args.forms.split(",") if f.strip()))
    if not forms or any(f not in INT8_FORMS for f in forms):
        raise ValueError(f"--forms {args.forms!r}: expected a comma-separated subset of {','.join(INT8_FORMS)}")
    threads = _ints(args.threads, "--threads")
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: expected a positive integer")
    select = tuple(s.strip() for s in args.select.split(",") if s.strip())
    print(f"machine: {cpu_description()}")
    rows = run(Path(args.exports), forms, threads, args.rounds, args.calib, args.calib_seed, select)
    print(table(rows, forms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
