"""``bench bundle``: one .tar.gz with everything a Raspberry Pi needs to run ``bench run``.

Contents (under one top folder named after the archive):
``manifest.json`` (the exports manifest, ``data`` rewritten to the bundle's ``data``),
the model files at their manifest paths, the reference-prediction CSVs (rows of the
bundled images only), ``data/`` (labelled images of one split, the test split by default,
with a ``manifest.csv``), ``setup_pi.sh``, ``INSTALL.md`` and the SkyEdge wheel.

The wheel is built from the source tree this SkyEdge runs from, at bundle time (``pip
wheel``), so ``setup_pi.sh`` installs exactly the code that made the bundle, with its
``device`` extra; ``--wheel FILE`` ships a given wheel instead (an installed, non-editable
SkyEdge has no source tree to build from). ``--offline`` also downloads the wheels of the
``device`` extra for the Pi (``pip download`` for aarch64, the Pi's Python and glibc) into
``wheels/``; ``setup_pi.sh`` then installs from them with no package index.

Reference CSVs name images by their path in the dataset's manifest. Where a reference
path is relative to another root (or absolute), it is matched to a dataset image by its
resolved location or by a unique path suffix, and both the bundled manifest and the
reference CSV get the same new relative path, so ``agreement`` joins on the device.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from PIL import Image

from bench.jobs import BenchError, load_manifest
from device import exports_manifest
from device.checksum import sha256_file
from device.atomic import atomic_open, write_text
from device.dataset import LABELS, Dataset, Record, open_dataset, write_manifest

INSTALL_MD = """# SkyEdge bundle

This folder holds exported models (`manifest.json`), the Keras models' reference predictions,
labelled images of the {split} split (`data/`, {images} images), the SkyEdge wheel that made
it{offline}. On a Raspberry Pi (Raspberry Pi OS 64-bit):

    bash setup_pi.sh            # python venv, skyedge[device], governor and cooling checks
    source ~/skyedge-venv/bin/activate
    bench run --models . --threads 1,4 --out results.jsonl
    bench run --models . --threads 1,4 --mode e2e --out results.jsonl --resume
    skyedge classify --model . my-images/ --out labels.csv   # label your own images

Useful options: `--cooldown-temp 55` (wait for the SoC to cool below 55 C before each
job), `--strict` (MLPerf single-stream minimum: >= 1024 queries and >= 60 s per job),
`--device-name pi5-fan`. `--resume` skips jobs already in the output file.
Copy `results.jsonl` back for `bench report`. See docs/raspberry-pi.md in the project.
"""


@dataclass(frozen=True)
class BundleConfig:
    """What to bundle: the exports folder, the dataset it was validated on, the output."""

    exports: Path
    data: Path
    out: Path
    max_images: int | None = None
    split: str = "test"
    seed: int = 0
    wheels: tuple[Path, ...] = ()
    offline: bool = False
    pi_python: str = "3.11"   # Raspberry Pi OS Bookworm's Python
    pi_glibc: str = "2.36"    # and its glibc
    pi_machine: str = "aarch64"

    def __post_init__(self):
        if self.max_images is not None and self.max_images < 1:
            raise BenchError(f"max_images must be >= 1 (or None for all), got {self.max_images}")
        for wheel in self.wheels:
            if not Path(wheel).is_file() or not Path(wheel).name.endswith((".whl", ".tar.gz")):
                raise BenchError(f"--wheel {wheel}: expected an existing skyedge .whl (or sdist .tar.gz) file")
        if not _version_ok(self.pi_python, 2) or not _version_ok(self.pi_glibc, 2):
            raise BenchError(f"--pi-python {self.pi_python!r} / --pi-glibc {self.pi_glibc!r}: expected versions such "
                             f"as 3.11 and 2.36")


def _version_ok(text: str, parts: int) -> bool:
    bits = str(text).split(".")
    return len(bits) == parts and all(b.isdigit() for b in bits)


def pi_platforms(machine: str, glibc: str) -> list[str]:
    """pip's platform tags a Pi with this glibc accepts (pip does not widen an explicit tag)."""
    major, minor = (int(v) for v in glibc.split("."))
    return [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)] + [f"manylinux2014_{machine}", "linux_" + machine]


def build_wheel(dest: Path, log=print) -> Path:
    """Build the SkyEdge wheel of the source tree this code runs from into ``dest``.

    Raises:
        BenchError: no source tree (an installed wheel), or pip failed (its last lines).
    """
    source = Path(__file__).resolve().parents[1]
    if not (source / "pyproject.toml").is_file():
        raise BenchError(f"this SkyEdge ({source}) is installed from a wheel, not a source tree, so the bundle's "
                         f"wheel cannot be built here: pass --wheel FILE (pip wheel --no-deps -w dist SOURCE_TREE)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyedge-build-") as build:
        log(f"bundle: building the SkyEdge wheel from {source}")
        # from a clean copy of what the wheel holds: setuptools' build/ in the checkout would keep
        # modules deleted since an earlier build, and the user's tree stays untouched
        tree = Path(build) / "src"
        tree.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, tree / name)
        for package in ("train", "export", "bench", "device"):
            shutil.copytree(source / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), str(tree)]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": build,
                                                                              "PIP_NO_INPUT": "1"})
    wheels = sorted(dest.glob("skyedge-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise BenchError(f"building the SkyEdge wheel failed (pip wheel exit {result.returncode}): {tail}")
    return wheels[-1]


def download_device_wheels(wheel: Path, dest: Path, config: BundleConfig, log=print) -> int:
    """``pip download`` the ``device`` extra's wheels for the Pi into ``dest``; how many.

    Raises:
        BenchError: pip failed (no network, or a package without a wheel for that platform).
    """
    platforms = pi_platforms(config.pi_machine, config.pi_glibc)
    log(f"bundle: downloading the device extra's wheels for {config.pi_machine}, Python {config.pi_python}, "
        f"glibc {config.pi_glibc}")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", config.pi_python, *[a for tag in platforms for a in ("--platform", tag)],
               "--dest", str(dest), f"{wheel}[device]"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise BenchError(f"--offline: downloading the device extra's wheels failed (pip download exit "
                         f"{result.returncode}; it needs a package index once, here): {tail}")
    for own in dest.glob("skyedge-*"):
        own.unlink()  # the bundle's own wheel sits at its top
    return len(list(dest.glob("*.whl")))


def subset(records: list[Record], max_images: int | None, seed: int = 0) -> list[Record]:
    """A stratified, seeded subset of about ``max_images`` records (all if ``None``).

    Each class keeps its share, rounded, and at least one image (so the total can exceed
    ``max_images`` by up to the number of classes); sorted by path.
    """
    if not max_images or max_images >= len(records):
        return sorted(records, key=lambda r: r.path)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in LABELS:
        group = sorted((r for r in records if r.label == label), key=lambda r: r.path)
        if not group:
            continue
        take = max(1, int(round(max_images * len(group) / len(records))))
        chosen.extend(group[i] for i in sorted(rng.permutation(len(group))[:take]))
    return sorted(chosen, key=lambda r: r.path)


def _clean_relative(path: str) -> bool:
    pure = PurePosixPath(path.replace("\\", "/"))
    return not pure.is_absolute() and ".." not in pure.parts and bool(pure.parts)


class _Matcher:
    """Finds the dataset record a reference CSV path names."""

    def __init__(self, dataset: Dataset, records: list[Record]):
        self.dataset = dataset
        self.exact = {r.path: r for r in records}
        self.resolved = {os.path.realpath(dataset.resolve(r)): r for r in records}
        self.records = records

    def find(self, path: str, roots: list[Path]) -> Record | None:
        if path in self.exact:
            return self.exact[path]
        candidates = [Path(path)] if Path(path).is_absolute() else [root / path for root in roots]
        for candidate in candidates:
            record = self.resolved.get(os.path.realpath(candidate))
            if record is not None:
                return record
        norm = path.replace("\\", "/").lstrip("./")
        hits = [r for r in self.records
                if r.path.endswith("/" + norm) or norm.endswith("/" + r.path.lstrip("./"))]
        return hits[0] if len(hits) == 1 else None


def _image_problem(path: Path) -> str | None:
    """Why the image at ``path`` cannot go into a bundle (None when it decodes)."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"not a readable image ({exc})"
    return None


def _read_reference(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def make_bundle(config: BundleConfig, log=print) -> dict:
    """Write the bundle ``config.out`` atomically.

    Returns:
        ``{"out", "artifacts", "images", "size_bytes", "notes"}``.

    Raises:
        BenchError: no manifest, no usable artifact, or no images in the split.
        DatasetError: the dataset cannot be read.
    """
    exports = Path(config.exports)
    notes: list[str] = []
    usable = _usable_artifacts(exports, notes)
    dataset = open_dataset(config.data)
    split = dataset.split(config.split)
    if not split:
        raise BenchError(f"{config.data}: no images in split {config.split!r}")
    readable = []
    for record in split:
        problem = _image_problem(dataset.resolve(record))
        if problem:
            notes.append(f"left out image {record.path}: {problem}")
        else:
            readable.append(record)
    if not readable:
        raise BenchError(f"{config.data}: no readable image in split {config.split!r}")
    chosen = subset(readable, config.max_images, config.seed)
    new_path = _bundle_paths(chosen)

    top = Path(config.out).name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz") or "bundle"
    with tempfile.TemporaryDirectory(prefix="skyedge-bundle-") as tmp:
        stage = Path(tmp) / top
        (stage / "data").mkdir(parents=True)
        for record in chosen:
            dest = stage / "data" / new_path[record.path]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dataset.resolve(record), dest)
        write_manifest(stage / "data", [Record(path=new_path[r.path], label=r.label, split=config.split,
                                               objid=r.objid, ra=r.ra, dec=r.dec, source=r.source) for r in chosen])

        matcher = _Matcher(dataset, dataset.records)  # rows of other splits match too, and are left out quietly
        references: dict[str, str] = {}
        out_artifacts = []
        for artifact in usable:
            record = dict(artifact)
            dest = stage / artifact["file"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(exports / artifact["file"], dest)
            ref = artifact.get("reference_predictions")
            if ref:
                if ref not in references:
                    references[ref] = _bundle_reference(exports, ref, artifact, matcher, new_path, stage, notes,
                                                        len(references))
                record["reference_predictions"] = references[ref]
            record["data"] = "data"
            record["bundle_val_n"] = len(chosen)
            out_artifacts.append(record)
        exports_manifest.write(stage, out_artifacts, bundle={"split": config.split, "images": len(chosen),
                                                              "source_data": str(config.data)})
        setup = Path(__file__).resolve().parents[1] / "device" / "setup_pi.sh"
        if setup.is_file():
            shutil.copy2(setup, stage / "setup_pi.sh")
            os.chmod(stage / "setup_pi.sh", 0o755)
        else:
            notes.append(f"setup_pi.sh not found at {setup}; bundle has no setup script")
        for wheel in config.wheels:
            shutil.copy2(wheel, stage / Path(wheel).name)
        own = [stage / Path(w).name for w in config.wheels if Path(w).name.endswith(".whl")] \
            or [build_wheel(stage, log)]
        wheels = download_device_wheels(own[0], stage / "wheels", config, log) if config.offline else 0
        offline = (f" and, in `wheels/`, the {wheels} wheels of its device extra for {config.pi_machine}, Python "
                   f"{config.pi_python} (so setup_pi.sh needs no network)") if config.offline else ""
        write_text(stage / "INSTALL.md", INSTALL_MD.format(split=config.split, images=len(chosen), offline=offline))

        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(config.out, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
            tar.add(stage, arcname=top)
    return {"out": str(config.out), "artifacts": len(out_artifacts), "images": len(chosen),
            "size_bytes": Path(config.out).stat().st_size, "notes": notes}


def _usable_artifacts(exports: Path, notes: list[str]) -> list[dict]:
    """The manifest's artifacts whose model file is there and intact; a note for each left out."""
    usable = []
    for artifact in load_manifest(exports):
        aid = artifact.get("artifact_id")
        file = str(artifact.get("file", ""))
        if artifact.get("error"):
            notes.append(f"left out {aid}: export failed ({artifact['error']})")
        elif not _clean_relative(file) or not (exports / file).is_file():
            notes.append(f"left out {aid}: model file {file!r} not found inside {exports}")
        elif artifact.get("sha256") and sha256_file(exports / file) != artifact["sha256"]:
            notes.append(f"left out {aid}: {exports / file} does not match the sha256 in the manifest "
                         f"(changed or damaged since export)")
        else:
            usable.append(artifact)
    if not usable:
        raise BenchError(f"{exports}: no artifact with a model file to bundle")
    return usable


def _bundle_paths(chosen: list) -> dict[str, str]:
    """A new, clean relative path inside the bundle for every chosen image (unique)."""
    new_path: dict[str, str] = {}
    taken: set[str] = set()
    for record in chosen:
        path = record.path if _clean_relative(record.path) else f"images/{record.label}/{Path(record.path).name}"
        stem, suffix, k = path.rsplit(".", 1)[0], Path(path).suffix, 1
        while path in taken:
            path, k = f"{stem}-{k}{suffix}", k + 1
        taken.add(path)
        new_path[record.path] = path
    return new_path


def _bundle_reference(exports: Path, ref: str, artifact: dict, matcher: _Matcher, new_path: dict[str, str],
                      stage: Path, notes: list[str], index: int) -> str | None:
    """Copy one reference CSV with bundled rows only, paths rewritten; its bundle path."""
    source = Path(ref) if Path(ref).is_absolute() else exports / ref
    if not source.is_file():
        notes.append(f"reference {ref} not found; agreement will be missing for {artifact.get('artifact_id')}")
        return None
    target = ref if _clean_relative(ref) else f"reference/{index}-{source.name}"
    columns, rows = _read_reference(source)
    roots = [Path(artifact["data"])] if artifact.get("data") else []
    roots.append(matcher.dataset.root)
    kept, unmatched = [], 0
    for row in rows:
        record = matcher.find(row.get("path", ""), roots)
        if record is None:
            unmatched += 1
        elif record.path in new_path:
            kept.append({**row, "path": new_path[record.path]})
    if unmatched:
        notes.append(f"{ref}: {unmatched} of its {len(rows)} rows name images not in {matcher.dataset.root} "
                     f"(a reference made on other data?); agreement is computed on the rest")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    (stage / target).parent.mkdir(parents=True, exist_ok=True)
    write_text(stage / target, buf.getvalue())
    return target
