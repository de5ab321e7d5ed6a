"""``bench``: the on-device benchmark command line.

Subcommands: ``run`` (measure exported models), ``overhead`` (check the timed loop's cost),
``bundle`` (pack models and a validation subset for a device), ``floors`` (the majority class
and the feature baseline on the images a run scores), ``android`` (drive TFLite's
``benchmark_model`` on a phone over adb). Each subcommand is an entry of ``COMMANDS``: a
function adding its arguments and a function running it, so adding one is a few lines.
Modules listed in ``EXTERNAL`` (``report`` -> ``bench.report``) own their arguments: when
the module is installed, ``bench NAME ARGS...`` calls its ``main(ARGS)``.

Parsing stays here; each command builds a config and calls one library function, so every command can be driven from Python too.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from bench.android import DELEGATE_FLAGS, AndroidConfig
from bench.bundle import BundleConfig
from bench.jobs import RunConfig
from bench.latency import STRICT_MIN_QUERIES, STRICT_MIN_SECONDS
from device.options import at_least, defaults, names, number, positive_ints, seconds, seed
from device.command import Exit, run_command
from device.runtime import DELEGATES

EXTERNAL = {"report": "bench.report"}
EXTERNAL_HELP = {"report": "tables, plots and the verdict on the study's claim from bench run results "
                           "(needs skyedge[report]; see `bench report --help`)"}


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, type=Path, help="exports folder with manifest.json (or an extracted bundle)")
    p.add_argument("--out", required=True, type=Path, help="JSON-lines file to append to")
    p.add_argument("--data", type=Path, help="dataset folder (default: the artifact's data, else EXPORTS/data)")
    p.add_argument("--split", default=defaults(RunConfig)["split"],
                   help="images scored for accuracy (default test: never used for any choice; val is optimistic)")
    d = defaults(RunConfig)
    p.add_argument("--runtime", type=names, default=d["runtimes"],
                   help=f"{','.join(d['runtimes'])} (default); tensorflow: TensorFlow's TFLite interpreter, only when named")
    p.add_argument("--threads", type=positive_ints, default=d["threads"], help=f"comma-separated, e.g. 1,4 (default {','.join(map(str, d['threads']))})")
    p.add_argument("--mode", type=names, default=d["modes"],
                   help="kernel (the model call), e2e (decode + preprocess + call) or kernel,e2e (default kernel)")
    p.add_argument("--warmup", type=at_least(0), default=d["warmup"], help="untimed calls first (default %(default)s)")
    p.add_argument("--runs", type=at_least(1), default=d["runs"], help="minimum timed runs (default %(default)s)")
    p.add_argument("--min-secs", type=seconds(), default=d["min_secs"],
                   help="minimum timed seconds (default %(default)s)")
    p.add_argument("--delegate", choices=DELEGATES, default=d["delegate"],
                   help="TFLite: xnnpack (the interpreter's default delegate) or none (built-in kernels only, "
                        "to measure what XNNPACK takes); ONNX jobs ignore it (default %(default)s)")
    p.add_argument("--max-secs", type=seconds(low_open=True), default=d["max_secs"],
                   help="stop a job's timed loop after this many seconds even short of --runs, keeping what "
                        "was measured (the line says so); --job-timeout instead kills the job and keeps nothing")
    p.add_argument("--strict", action="store_true",
                   help=f"MLPerf single-stream minimum: >= {STRICT_MIN_QUERIES} runs and >= {STRICT_MIN_SECONDS:.0f} s")
    p.add_argument("--shuffle", action="store_true", help="cycle the images in a seeded random order")
    p.add_argument("--seed", type=seed, default=d["seed"], help="seed of --shuffle's order (default %(default)s)")
    cool = p.add_mutually_exclusive_group()
    cool.add_argument("--cooldown-temp", type=number(0, 150), help="before each job wait until below this many C")
    cool.add_argument("--cooldown-secs", type=seconds(), help="before each job sleep this long")
    p.add_argument("--cooldown-timeout", type=seconds(), default=d["cooldown_timeout_s"],
                   help="seconds to wait for --cooldown-temp before measuring anyway, with a note (default %(default)s)")
    p.add_argument("--device-name", help="name of this device in the records (default: host name)")
    p.add_argument("--resume", action="store_true", help="skip jobs already in --out")
    p.add_argument("--select", help="glob on artifact id or model file name")
    p.add_argument("--job-timeout", type=seconds(1), default=d["job_timeout_s"],
                   help="seconds before a worker is killed (default %(default)s)")


def _cmd_run(args) -> int:
    from bench.jobs import RunConfig, run_benchmarks

    config = RunConfig(models=args.models, out=args.out, data=args.data, split=args.split,
                       runtimes=args.runtime, threads=args.threads, modes=args.mode, warmup=args.warmup,
                       runs=args.runs, min_secs=args.min_secs, strict=args.strict, shuffle=args.shuffle,
                       seed=args.seed, cooldown_temp_c=args.cooldown_temp, cooldown_secs=args.cooldown_secs,
                       cooldown_timeout_s=args.cooldown_timeout, device_name=args.device_name, max_secs=args.max_secs, delegate=args.delegate,
                       resume=args.resume, select=args.select, job_timeout_s=args.job_timeout)
    summary = run_benchmarks(config, progress=lambda line: print(line, flush=True))
    print(f"{summary['written']} line(s) ({summary['errors']} with error) appended to {summary['out']}")
    return _failures(summary["errors"], summary["written"])


def _failures(errors: int, written: int) -> int:
    """``Exit.PARTIAL`` with a line saying so when some jobs failed, else ``Exit.OK``."""
    if errors:
        print(f"{errors} of {written} job(s) failed (exit status {Exit.PARTIAL:d}); their lines carry the error",
              file=sys.stderr)
        return Exit.PARTIAL
    return Exit.OK


def _add_overhead(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help=".tflite or .onnx file")
    p.add_argument("--threads", type=at_least(1), default=1)
    p.add_argument("--runs", type=at_least(1), default=500, help="timed calls per round and loop")
    p.add_argument("--rounds", type=at_least(1), default=7)


def _cmd_overhead(args) -> int:
    from bench.overhead import measure_overhead

    result = measure_overhead(args.model, threads=args.threads, runs=args.runs, rounds=args.rounds)
    print(f"bench worker loop median {result['worker_median_ms']:.4f} ms, bare invoke loop median "
          f"{result['bare_median_ms']:.4f} ms, ratio {result['ratio']:.3f} "
          f"({'within' if result['ratio'] <= result['target_ratio'] else 'ABOVE'} the {result['target_ratio']} target)")
    return 0


def _add_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exports", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="dataset the reference predictions were made on")
    p.add_argument("--out", required=True, type=Path, help="FILE.tar.gz")
    p.add_argument("--max-images", type=at_least(1), help="images of --split to include (stratified; default all)")
    p.add_argument("--split", default=defaults(BundleConfig)["split"],
                   help="split shipped for on-device accuracy (default %(default)s)")
    p.add_argument("--wheel", type=Path, action="append", default=[],
                   help="ship this skyedge wheel instead of building one from this source tree (repeatable)")
    b = defaults(BundleConfig)
    p.add_argument("--offline", action="store_true",
                   help="also download the device extra's wheels for the Pi into the bundle (needs a package index "
                        "here, none on the Pi)")
    p.add_argument("--pi-python", default=b["pi_python"],
                   help="--offline: the Pi's Python version (default %(default)s, Raspberry Pi OS Bookworm; 3.13 for Trixie)")
    p.add_argument("--pi-glibc", default=b["pi_glibc"],
                   help="--offline: the Pi's glibc version (default %(default)s, Bookworm; 2.41 for Trixie)")


def _cmd_bundle(args) -> int:
    from bench.bundle import BundleConfig, make_bundle

    summary = make_bundle(BundleConfig(exports=args.exports, data=args.data, out=args.out,
                                       max_images=args.max_images, split=args.split, wheels=tuple(args.wheel),
                                       offline=args.offline, pi_python=args.pi_python, pi_glibc=args.pi_glibc))
    for note in summary["notes"]:
        print(note)
    print(f"bundle {summary['out']}: {summary['artifacts']} model(s), {summary['images']} image(s), "
          f"{summary['size_bytes']} bytes")
    return 0


def _add_floors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="dataset whose images the models are scored on")
    p.add_argument("--split", default="test", help="split of --data to score (default test)")
    p.add_argument("--train", type=Path,
                   help="dataset whose training split fits the floors (default --data; give the models' "
                        "training set when --data is a separate evaluation set such as a holdout)")
    p.add_argument("--out", required=True, type=Path, help="floors JSON file for `bench report --floors`")


def _cmd_floors(args) -> int:
    from device.atomic import write_json
    from device.baseline import floors
    from device.dataset import open_dataset

    dataset = open_dataset(args.data)
    train = open_dataset(args.train) if args.train else dataset
    for note in dataset.notes + (train.notes if args.train else []):
        print(f"note: {note}")
    result = floors(dataset, args.split, train=train)
    record = {**result.record(), "data": str(args.data), "train_data": str(args.train or args.data),
              **result.paired()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(f"floors on {record['n']} {args.split} images of {args.data}: majority class ({record['majority_class']}) "
          f"{100 * record['majority_accuracy']:.1f}%, feature logistic regression "
          f"{100 * record['features_accuracy']:.1f}% [{100 * record['features_accuracy_ci_low']:.1f}, "
          f"{100 * record['features_accuracy_ci_high']:.1f}]; wrote {args.out}")
    return 0


def _add_android(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--adb", required=True, help="path to adb")
    p.add_argument("--benchmark-binary", required=True,
                   help="TFLite benchmark_model for the phone's ABI (a local file is pushed; a /data/... path is used as is)")
    p.add_argument("--out", required=True, type=Path)
    a = defaults(AndroidConfig)
    p.add_argument("--threads", type=positive_ints, default=a["threads"])
    p.add_argument("--delegate", choices=tuple(DELEGATE_FLAGS), default=a["delegate"])
    p.add_argument("--runs", type=at_least(1), default=a["runs"], help="--num_runs (default %(default)s, as bench run)")
    p.add_argument("--warmup", type=at_least(0), default=a["warmup"],
                   help="--warmup_runs (default %(default)s, as bench run)")
    p.add_argument("--min-secs", type=seconds(), default=a["min_secs"],
                   help="--min_secs (default %(default)s, as bench run)")
    p.add_argument("--affinity", help="taskset CPU mask in hex for benchmark_model, e.g. f0 for the big cores "
                                      "(default: none, the scheduler chooses)")
    p.add_argument("--serial", help="adb device serial (adb -s)")
    p.add_argument("--select", help="glob on artifact id or model file name")
    p.add_argument("--device-name", help="name in the records (default: the phone's model)")


def _cmd_android(args) -> int:
    from bench.jobs import complete_line, load_manifest
    from bench.android import run_android
    from device.atomic import append_jsonl

    config = AndroidConfig(models=args.models, adb=args.adb, benchmark_binary=args.benchmark_binary,
                           threads=args.threads, delegate=args.delegate, runs=args.runs, warmup=args.warmup,
                           min_secs=args.min_secs, affinity=args.affinity, serial=args.serial, select=args.select,
                           device_name=args.device_name)
    artifacts = load_manifest(args.models)
    n = errors = 0
    for record in run_android(config, artifacts, progress=lambda line: print(line, flush=True)):
        line = complete_line(record)
        append_jsonl(args.out, line)
        n += 1
        errors += "error" in line
    print(f"{n} line(s) ({errors} with error) appended to {args.out}")
    return _failures(errors, n)


COMMANDS = {
    "run": (_add_run, _cmd_run, "measure exported models (one subprocess per job)"),
    "overhead": (_add_overhead, _cmd_overhead, "compare the timed loop with a bare invoke() loop"),
    "bundle": (_add_bundle, _cmd_bundle, "pack models and the test images for a device"),
    "floors": (_add_floors, _cmd_floors, "score the majority class and the feature baseline on a dataset's images"),
    "android": (_add_android, _cmd_android, "benchmark .tflite models on a phone with benchmark_model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="On-device benchmark of exported sky-image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _run, help_text) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text))
    for name, module in EXTERNAL.items():
        if _available(module):
            sub.add_parser(name, help=EXTERNAL_HELP.get(name, f"see `bench {name} --help`"), add_help=False)
    return parser


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run ``bench``; returns the exit status (2 for a run that cannot start)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in EXTERNAL and _available(EXTERNAL[argv[0]]):
        return int(importlib.import_module(EXTERNAL[argv[0]]).main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    from bench.jobs import BenchError

    out = getattr(args, "out", None)
    return run_command(lambda: COMMANDS[args.command][1](args), (BenchError, ValueError),
                       INTERRUPTED.get(args.command, "nothing further was written").format(out=out))


# what Ctrl-C / SIGTERM leaves, per subcommand (the rest write one file at the end, atomically)
INTERRUPTED = {
    "run": "every finished job's line is in {out}; rerun the same command with --resume to run the rest",
    "android": "every finished job's line is in {out}",
}


if __name__ == "__main__":
    sys.exit(main())
