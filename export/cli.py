"""The command line both exporters run (``run_cli``): the common options, read from
``ExportConfig``'s defaults, and the exit status from the records made."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from device.command import Exit, run_command
from device.options import at_least, defaults
from device import exports_manifest as manifest
from train.console import VERBOSE_HELP, quiet_tensorflow
from export.config import (CALIB_DEFAULT, DEFAULT_VARIANTS, SELECT_HELP, ExportConfig, ExportError, StrictFailure,
                           parse_variants)
from export.pipeline import Converter, export_runs
from export.quantize import CalibrationError

def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments both exporters take; their defaults are ``ExportConfig``'s."""
    d = defaults(ExportConfig)
    p.add_argument("--runs", required=True, help="train.sweep output folder")
    p.add_argument("--out", required=True, help="exports folder (shared by both formats)")
    p.add_argument("--select", default=d["select"], help=SELECT_HELP)
    p.add_argument("--calib", type=int, default=d["calib"],
                   help=f"training images for int8 calibration (default {CALIB_DEFAULT}, or all when fewer)")
    p.add_argument("--calib-seed", type=int, default=d["calib_seed"],
                   help="seed of the random draw of calibration images from the training split (default %(default)s)")
    p.add_argument("--threads", type=at_least(1), default=d["threads"],
                   help="runtime threads for verification (default: runtime's)")
    p.add_argument("--int8-rescue", choices=("on", "off"), default=d["int8_rescue"],
                   help="on: an int8 TFLite artifact below 97%% agreement is rebuilt with outlier-robust ranges, "
                        "then its worst layers in float, until it agrees (export.int8_rescue); off: the plain "
                        "recipe (default %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="fail when fp32/fp16 agreement < 99.5%% or int8 agreement < 97%% (default: warn)")


def build_parser(prog: str, doc: str, allowed: tuple[str, ...],
                 extra_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """One exporter's parser: the common arguments, ``--variants`` among ``allowed``, its own."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p)
    variants = [v for v in allowed if v in DEFAULT_VARIANTS]
    p.add_argument("--variants", default=",".join(variants),
                   help=f"comma-separated: {','.join(allowed)} (default {','.join(variants)}; tta, the mean over the "
                        f"8 rotations and flips inside the graph, costs 8 passes per image)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    extra_arguments(p)
    return p


def run_cli(argv, prog: str, doc: str, fmt: str, allowed: tuple[str, ...], convert: Converter,
            extra_arguments: Callable[[argparse.ArgumentParser], None], config_extra: Callable[[argparse.Namespace], dict]) -> int:
    """The command line of one exporter: parse, build the config, export, report.

    Returns:
        0 on success, 1 on a ``--strict`` failure, 2 on bad input, 3 when some artifacts
        failed, 130 on Ctrl-C.
    """
    args = build_parser(prog, doc, allowed, extra_arguments).parse_args(argv)

    def work() -> int:
        config = ExportConfig(runs=args.runs, out=args.out, select=args.select,
                              variants=parse_variants(args.variants, allowed), calib=args.calib, calib_seed=args.calib_seed,
                              strict=args.strict, threads=args.threads, int8_rescue=args.int8_rescue, **config_extra(args))
        quiet_tensorflow(args.verbose)  # after the options are checked: a typo is answered at once
        try:
            records = export_runs(config, fmt, config.variants, convert)
        except StrictFailure as exc:
            print(f"error: --strict: {exc}", file=sys.stderr)
            return Exit.DIFFERS
        return _report_records(config, records)

    return run_command(work, (ExportError, CalibrationError, ValueError),
                       f"finished artifacts are in {Path(args.out) / manifest.MANIFEST}; rerun the same command to "
                       f"make the rest (unchanged ones are skipped)")


def _report_records(config: ExportConfig, records: list[dict]) -> int:
    """Print the manifest's path and the failures; the exit status."""
    failed = [r for r in records if "error" in r]
    print(f"manifest: {Path(config.out) / manifest.MANIFEST} ({len(records) - len(failed)} artifacts ok, {len(failed)} failed)")
    if failed:
        print(f"finished with failures: {len(failed)} of {len(records)} artifact(s) failed (exit status "
              f"{Exit.PARTIAL:d}); their manifest records carry the error", file=sys.stderr)
        return Exit.PARTIAL
    return Exit.OK
