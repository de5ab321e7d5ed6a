"""Does ``skyedge classify`` stream? Its peak memory on many images against few, and its speed
against ``bench run --mode e2e`` on the same model, threads and images.

    python -m bench.classify_benchmark --model demo/exports [--artifact ID] [--data DIR]
        [--many 10000] [--few 100] [--threads 1] [--out out/classify-benchmark]

Images: ``--data``'s images (default: the SDSS sample shipped with SkyEdge), copied round-robin
into folders of ``--few`` and ``--many`` files. Each ``skyedge classify`` runs in its own
process; its peak resident memory is the kernel's (``wait4``'s ``ru_maxrss``). ``bench run
--mode e2e`` times decode + resize + inference per image in its worker; images/s is 1000 over
its mean per-image milliseconds. Targets: peak memory on ``--many`` within 10% of ``--few``;
classify's images/s within 10% of bench's. Prints the figures, the ratios and the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from device.command import run_command

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def image_folder(source: list[Path], n: int, dest: Path) -> Path:
    """``dest`` with ``n`` image files copied round-robin from ``source`` (kept between runs)."""
    if dest.is_dir() and len(list(dest.iterdir())) == n:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for i in range(n):
        src = source[i % len(source)]
        shutil.copyfile(src, dest / f"{i:06d}{src.suffix}")
    return dest


def classify_run(model: str, artifact: str | None, folder: Path, threads: int, out: Path) -> dict:
    """One ``python -m device.classify`` process: its wall time, images/s and peak RSS."""
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "device.classify", "--model", model, str(folder), "--out", str(out),
               "--threads", str(threads)] + (["--artifact", artifact] if artifact else [])
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"classify exited {code}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    closing = next(line for line in err.splitlines() if " images/s" in line and "labelled" in line)
    rate = float(closing.split(" images/s")[0].rsplit(" ", 1)[1])
    return {"images": len(list(folder.iterdir())), "wall_s": wall, "images_per_s": rate,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def bench_e2e(model: str, artifact: str | None, data: Path, threads: int, out: Path) -> dict:
    """``bench run --mode e2e`` on the same model, threads and images (their dataset's test split)."""
    out.unlink(missing_ok=True)
    models = Path(model) if Path(model).is_dir() else None
    if models is None:
        raise ValueError("--model must be an exports folder here (bench run reads its manifest)")
    select = ["--select", artifact] if artifact else []
    if not artifact:
        from device.classify import Classifier

        select = ["--select", Classifier(model).info.artifact_id]
    # bench run reads a folder with manifest.csv; a labels.csv tree is the artifact's own data, read as export did
    where = ["--data", str(data)] if (data / "manifest.csv").is_file() else []
    command = [sys.executable, "-m", "bench.cli", "run", "--models", model, *where, "--mode", "e2e",
               "--threads", str(threads), "--runtime", "litert,onnxruntime", "--runs", "300", "--min-secs", "5",
               "--out", str(out), *select]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench run exited {done.returncode}: {done.stderr.strip()[-500:]}")
    line = json.loads(out.read_text().splitlines()[-1])
    return {"artifact": line["artifact_id"], "mean_ms": line["latency_ms_mean"], "p50_ms": line["latency_ms_p50"],
            "images_per_s": 1000.0 / line["latency_ms_mean"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classify_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exports folder (its recommendation or most accurate artifact)")
    p.add_argument("--artifact", help="artifact id (default: the one skyedge classify picks)")
    p.add_argument("--data", type=Path, help="dataset folder with a test split (default: the shipped SDSS sample)")
    p.add_argument("--many", type=int, default=10000, help="images of the large run (default %(default)s)")
    p.add_argument("--few", type=int, default=100, help="images of the small run (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("out/classify-benchmark"))
    args = p.parse_args(argv)
    return run_command(lambda: _benchmark(args), (ValueError, RuntimeError))


def _benchmark(args: argparse.Namespace) -> int:
    if not 1 <= args.few < args.many:
        raise ValueError(f"--few {args.few} / --many {args.many}: expected 1 <= few < many")
    from device.dataset import open_dataset

    data = args.data or ROOT / "device" / "sdss-sample"  # read in place, never written
    dataset = open_dataset(data)
    source = [dataset.resolve(r) for r in dataset.split("test")] or [dataset.resolve(r) for r in dataset.records]
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; {len(source)} source images from {data}")
    few = classify_run(args.model, args.artifact, image_folder(source, args.few, args.out / f"img-{args.few}"),
                       args.threads, args.out / "few.csv")
    many = classify_run(args.model, args.artifact, image_folder(source, args.many, args.out / f"img-{args.many}"),
                        args.threads, args.out / "many.csv")
    e2e = bench_e2e(args.model, args.artifact, Path(data), args.threads, args.out / "e2e.jsonl")
    memory_ratio = many["peak_rss_mb"] / few["peak_rss_mb"]
    speed_ratio = many["images_per_s"] / e2e["images_per_s"]
    print(f"model {e2e['artifact']}, {args.threads} thread(s)")
    for name, r in (("few", few), ("many", many)):
        print(f"  classify {r['images']:>6} images: {r['images_per_s']:8.1f} images/s, peak RSS {r['peak_rss_mb']:7.1f} MB, "
              f"{r['wall_s']:.1f} s wall")
    print(f"  bench run --mode e2e  : {e2e['images_per_s']:8.1f} images/s (mean {e2e['mean_ms']:.3f} ms, p50 "
          f"{e2e['p50_ms']:.3f} ms per image)")
    print(f"  peak memory {args.many} / {args.few} images: {memory_ratio:.3f} (target <= 1.10)")
    print(f"  classify / bench e2e images/s: {speed_ratio:.3f} (target >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
