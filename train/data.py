"""Data commands: simulate, fetch, index and describe SDSS-like datasets.

    python -m train.data synth --out DIR --n N --size PX --seed S [--mix G,Q,S]
    python -m train.data sdss  --out DIR --n N [--mix ...] [--catalog CSV] [--base-url URL] ...
    python -m train.data index DIR [--out DIR] [--seed S] [--val F] [--test F] [--subset dev]
    python -m train.data stats DIR
    python -m train.data sample --out DIR     # the 600 real SDSS cutouts shipped with SkyEdge

Every dataset these commands write is a folder with ``manifest.csv`` (see
``device.dataset``), ready for ``python -m train.sweep --data DIR``.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from device.dataset import LABELS, SPLITS, TEST_FRACTION, VAL_FRACTION, DatasetError, index_tree, \
    open_dataset, stratified_split, write_manifest
from device.command import run_command
from device.images import ImageError, image_size
from device.options import at_least, fraction, number, seconds, seed
from device.progress import Progress
from train.console import command_parser
from train.sky_objects import STUDY_MIX


def parse_mix(text: str) -> tuple[float, float, float]:
    """Parse ``G,Q,S`` class fractions (GALAXY, QSO, STAR) that sum to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected three numbers G,Q,S such as {','.join(map(str, STUDY_MIX))}")
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 0.01:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected three non-negative fractions G,Q,S summing to 1")
    return parts  # type: ignore[return-value]


def describe(root: Path) -> str:
    """Counts per class and split, and image sizes, of a dataset folder, as text."""
    dataset = open_dataset(root)
    lines = [f"dataset {root} ({dataset.origin}, {len(dataset.records)} images)"]
    lines += [f"note: {n}" for n in dataset.notes]
    counts = dataset.counts()
    header = f"{'split':<8}" + "".join(f"{label:>8}" for label in LABELS) + f"{'total':>8}"
    lines.append(header)
    for split in list(SPLITS) + [""]:
        if split not in counts:
            continue
        row = counts[split]
        lines.append(f"{split or '(none)':<8}" + "".join(f"{row[label]:>8}" for label in LABELS)
                     + f"{sum(row.values()):>8}")
    sizes: Counter = Counter()
    unreadable = []
    for record in dataset.records:
        try:
            sizes[image_size(dataset.resolve(record))] += 1
        except ImageError as exc:
            unreadable.append(f"{record.path} ({exc})")
    lines.append("image sizes: " + ", ".join(f"{w}x{h}: {c}" for (h, w), c in sizes.most_common()))
    if unreadable:
        lines.append(f"unreadable: {len(unreadable)}: " + "; ".join(unreadable[:10]))
    return "\n".join(lines)


def _cmd_synth(args) -> int:
    from train.synth import synthesize

    line = Progress(args.n, "images", lambda text: print(text, file=sys.stderr, flush=True), every_s=2.0, label="synth")
    summary = synthesize(out=args.out, n=args.n, size=args.size, seed=args.seed, mix=args.mix,
                         workers=args.workers, val=args.val, test=args.test,
                         progress=lambda done, total: line.update(done))
    print(f"wrote {args.n} images to {args.out} in {summary.seconds:.1f}s")
    print(describe(Path(args.out)))
    return 0


def _cmd_sdss(args) -> int:
    from train.fetch import FetchConfig, fetch

    config = FetchConfig(out=Path(args.out), n=args.n, mix=args.mix, dr=args.dr, size=args.size,
                         scale=args.scale, catalog=Path(args.catalog) if args.catalog else None,
                         base_url=args.base_url, rate=args.rate, workers=args.workers,
                         timeout=args.timeout, retries=args.retries, backoff=args.backoff,
                         seed=args.seed, val=args.val, test=args.test)
    summary = fetch(config)
    return 0 if summary.failed == 0 else 3


def _readable(records: list, base: Path) -> list:
    """The records whose image header reads (0-byte, corrupt and decompression-bomb files are
    left out with a warning naming them, so no split counts an image no one can load)."""
    kept, unreadable = [], []
    for record in records:
        try:
            image_size(base / record.path)
            kept.append(record)
        except ImageError as exc:
            unreadable.append(str(exc))
    if unreadable:
        print(f"warning: left out {len(unreadable)} unreadable image(s): " + "; ".join(unreadable[:10])
              + (" ..." if len(unreadable) > 10 else ""), file=sys.stderr)
    if not kept:
        raise DatasetError(f"{base}: none of the {len(records)} images could be read")
    return kept


def _cmd_index(args) -> int:
    source = Path(args.dir)
    out = Path(args.out) if args.out else source
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{out}: cannot create output folder ({exc.strerror or exc})") from exc
    records, layout = index_tree(source, base=out, subset=args.subset)
    records = _readable(records, out)
    records = stratified_split(records, seed=args.seed, val=args.val, test=args.test)
    try:
        path = write_manifest(out, records)
    except OSError as exc:
        raise DatasetError(f"{out}: cannot write manifest.csv ({exc.strerror or exc})") from exc
    print(f"indexed {len(records)} images ({layout}) into {path}")
    print(describe(out))
    return 0


def copy_sample(out: Path) -> Path:
    """Copy the embedded real SDSS sample (images, manifest, provenance) into ``out``.

    Files already there with the same bytes are kept; nothing else in ``out`` is touched.

    Raises:
        DatasetError: ``out`` cannot be created, or holds a different file of the same name.
    """
    import shutil

    from device.dataset import SAMPLE_DIR

    files = sorted(p for p in SAMPLE_DIR.rglob("*") if p.is_file() and p.suffix in (".jpg", ".csv", ".md"))
    if not files:
        raise DatasetError(f"{SAMPLE_DIR}: the embedded sample is missing from this installation")
    for src in files:
        dst = out / src.relative_to(SAMPLE_DIR)
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        if dst.exists():
            raise DatasetError(f"{dst}: exists and differs from the embedded sample; use another --out")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
        except OSError as exc:
            raise DatasetError(f"--out {out}: cannot write {dst.name} ({exc.strerror or exc})") from None
    return out


def _cmd_sample(args) -> int:
    out = copy_sample(Path(args.out))
    print(f"copied the embedded real SDSS sample to {out} (provenance: {out / 'README.md'})")
    print(describe(out))
    return 0


def _cmd_stats(args) -> int:
    print(describe(Path(args.dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m train.data", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def split_args(p):
        p.add_argument("--seed", type=seed, default=0, help="seed of the stratified split (default 0)")
        p.add_argument("--val", type=fraction(), default=VAL_FRACTION,
                       help=f"validation fraction: chooses epochs, levels, calibration (default {VAL_FRACTION})")
        p.add_argument("--test", type=fraction(), default=TEST_FRACTION,
                       help=f"test fraction: scored only, never used for a choice (default {TEST_FRACTION}; "
                            f"--val 0 --test 1 makes an evaluation-only set, such as a holdout)")

    p = sub.add_parser("synth", help="simulate SDSS-like cutouts with GalSim")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=at_least(1), required=True, help="number of images")
    p.add_argument("--size", type=number(8, 4096, int), default=128, help="side in pixels at 0.4\"/px (default 128)")
    p.add_argument("--mix", type=parse_mix, default=STUDY_MIX,
                   help=f"GALAXY,QSO,STAR fractions (default the study's {','.join(map(str, STUDY_MIX))})")
    p.add_argument("--workers", type=at_least(1), default=None, help="processes (default: all cores)")
    split_args(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("sdss", help="download SDSS cutouts from SkyServer")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=at_least(1), default=None, help="objects (default: 1000, or all catalogue rows)")
    p.add_argument("--mix", type=parse_mix, default=STUDY_MIX,
                   help=f"GALAXY,QSO,STAR fractions (default the study's {','.join(map(str, STUDY_MIX))})")
    p.add_argument("--dr", type=at_least(1), default=16, help="data release (default 16)")
    p.add_argument("--size", type=number(64, 2048, int), default=512, help="cutout side in pixels (64..2048, default 512)")
    p.add_argument("--scale", type=number(0, 100, float, low_open=True), default=0.4, help="arcsec per pixel (default 0.4)")
    p.add_argument("--catalog", help="CSV with ra,dec,class (or alpha,delta,class) instead of the SQL query")
    p.add_argument("--base-url", default="https://skyserver.sdss.org")
    p.add_argument("--rate", type=number(0, 1000, float, low_open=True), default=1.0, help="requests per second (default 1)")
    p.add_argument("--workers", type=number(1, 64, int), default=4)
    p.add_argument("--timeout", type=seconds(low_open=True), default=30.0, help="seconds per request (default 30)")
    p.add_argument("--retries", type=number(0, 100, int), default=5)
    p.add_argument("--backoff", type=number(0, 3600, float), default=1.0, help="first retry delay in seconds, doubled each retry (default 1)")
    split_args(p)
    p.set_defaults(func=_cmd_sdss)

    p = sub.add_parser("index", help="write manifest.csv for an existing image tree")
    p.add_argument("dir", help="folder with labels.csv or GALAXY/ QSO/ STAR/ folders")
    p.add_argument("--out", help="where to write manifest.csv (default: DIR itself)")
    p.add_argument("--subset", default="dev", help="labels.csv subset to index (default dev; 'all' for every row)")
    split_args(p)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("sample", help="copy the 600 real SDSS cutouts shipped with SkyEdge into a folder")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("stats", help="counts per class and split, image sizes")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", None) is None and args.command == "sdss" and not args.catalog:
        args.n = 1000
    return run_command(lambda: args.func(args), (DatasetError, ValueError),
                       "files written so far are complete; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
