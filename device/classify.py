"""``skyedge classify``: label your own sky images with an exported model, no TensorFlow.

    skyedge classify --model MODEL_FILE_OR_EXPORTS_DIR [--artifact ID] INPUT... [--out F.csv|F.jsonl]
                     [--threads N] [--min-confidence P] [--prior balanced|survey|a,b,c] [--resume]

``python -m device.classify`` is the same command. INPUT: image files, folders (searched
recursively for .jpg, .jpeg, .png, .tif, .tiff, .bmp, .gif, .webp) or CSV files with a
``path`` column (relative paths are taken from the CSV's folder).

``--model`` is a ``.tflite`` or ``.onnx`` file (it describes itself: labels, input size,
temperature, training mix; see ``device.model_info``) or an exports folder, where
``--artifact`` picks a model by id; without it, the report's recommendation
(``recommendation.json``, written by ``bench report --exports``) or else the most accurate
artifact on the validation images.

One row per image: ``path``, ``class``, a probability per class (``p_GALAXY``...),
``confidence`` (the top probability), ``abstained`` (confidence below ``--min-confidence``:
the row keeps its probabilities, its class is empty) and ``error`` (a file that cannot be
read; the others go on, and the exit status is 3). Probabilities are temperature-scaled
with the model's fitted temperature (``--no-calibration`` keeps the raw ones) and, with
``--prior``, moved from the training mix to another one (``survey``: 44% galaxies, 6.2%
quasars, 49.8% stars; see ``device.calibration``).

Images are decoded, converted and classified one at a time exactly as in training (any
mode to RGB, resized with Pillow's antialiased bilinear filter to the model's square size, a
non-square image stretched); each kind of conversion is said once, with how many images it
concerned. Rows are written as they come (flushed at least every half second), so memory
stays flat and a killed run resumes with ``--resume`` (paths already in the output are
skipped; a row a kill cut short is redone).

From Python::

    from device.classify import Classifier
    for result in Classifier("exports/").predict(["a.jpg", "b.png"]):
        print(result.path, result.label, result.confidence)
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from device.classifier import Classifier, ClassifyError, Result  # Classifier: the API, also importable from here
from device.command import Exit, run_command
from device.csvtext import CsvError, dict_rows
from device.progress import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
OUTPUT_SUFFIXES = (".csv", ".jsonl")
NAMED_FAILURES = 10  # unreadable images named on stderr; the rest only in the output
FLUSH_S = 0.5  # rows reach the file at least this often


# ---------------------------------------------------------------------------------- inputs


def iter_inputs(inputs: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Image paths named by ``inputs``: files as they are, folders recursively (image
    suffixes, sorted), CSV files by their ``path`` column.

    Raises:
        ClassifyError: an input that does not exist, or a CSV without a ``path`` column.
    """
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES):
                        yield str(Path(folder) / name)
        elif path.suffix.lower() == ".csv" and path.is_file():
            yield from _csv_paths(path)
        elif path.exists() or path.is_symlink():
            yield str(path)
        else:
            raise ClassifyError(f"input {raw}: no such file or folder; expected images, folders or a CSV with a "
                                f"'path' column")


def _csv_paths(path: Path) -> Iterator[str]:
    try:
        header, records = dict_rows(path.read_text(encoding="utf-8-sig"), str(path))
    except (CsvError, UnicodeDecodeError) as exc:
        raise ClassifyError(f"input {path}: {exc}") from None
    if "path" not in header:
        raise ClassifyError(f"input {path}: a CSV without a 'path' column (columns: {', '.join(header) or 'none'})")
    for row in records:
        value = (row.get("path") or "").strip()
        if value:
            yield value if Path(value).is_absolute() else str(path.parent / value)


# ---------------------------------------------------------------------------------- output


def columns(labels: Sequence[str]) -> list[str]:
    """The CSV columns of a results file."""
    return ["path", "class", *[f"p_{label}" for label in labels], "confidence", "abstained", "error"]


def _row(result: Result, labels: Sequence[str]) -> dict:
    probs = {f"p_{label}": (f"{result.probabilities[label]:.6f}" if result.probabilities else "") for label in labels}
    return {"path": result.path, "class": result.label or "", **probs,
            "confidence": "" if result.error else f"{result.confidence:.6f}",
            "abstained": "" if result.error else str(result.abstained).lower(), "error": result.error or ""}


def _json_line(result: Result) -> str:
    record = {"path": result.path, "class": result.label,
              "probabilities": {k: round(v, 6) for k, v in result.probabilities.items()},
              "confidence": None if result.error else round(result.confidence, 6),
              "abstained": result.abstained, "error": result.error}
    return json.dumps(record, ensure_ascii=False) + "\n"


def done_paths(out: Path) -> set[str]:
    """Paths already in a results file (for ``--resume``); a torn last line is cut off first."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with out.open("r+b") as fh:  # the row a killed run cut short is redone
            fh.truncate(keep)
        data = data[:keep]
    text = data.decode("utf-8", errors="replace")
    if out.suffix.lower() == ".jsonl":
        paths = set()
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                paths.add(record["path"])
        return paths
    try:
        return {row["path"] for row in dict_rows(text, str(out))[1] if row.get("path")}
    except CsvError as exc:
        raise ClassifyError(f"--out {out}: cannot resume from it ({exc})") from None


class _Writer:
    """Appends result rows to a CSV or JSON-lines file (or CSV to stdout), each row one write,
    flushed at least every ``FLUSH_S`` seconds and on close (a kill loses at most that much,
    which ``--resume`` redoes)."""

    def __init__(self, out: Path | None, labels: Sequence[str], resume: bool):
        self.labels, self.jsonl = labels, out is not None and out.suffix.lower() == ".jsonl"
        self.columns, self.flushed = columns(labels), time.monotonic()
        if out is None:
            self.fh, self.close_fh = sys.stdout, False
            self._csv_line(columns(labels))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            fresh = not resume or not out.is_file() or out.stat().st_size == 0
            self.fh, self.close_fh = out.open("a", newline="", encoding="utf-8"), True
            if not fresh and not self.jsonl:
                with out.open(newline="", encoding="utf-8") as existing:
                    header = next(csv.reader(existing), [])
                if header != columns(labels):
                    self.fh.close()
                    raise ClassifyError(f"--out {out}: its columns {header} are not this model's {columns(labels)}; "
                                        f"resume with the same model or write to another file")
            if fresh and not self.jsonl:
                self._csv_line(columns(labels))

    def _csv_line(self, values: list[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self.fh.write(buf.getvalue())  # one write per row: a crash tears at most the last line

    def write(self, result: Result) -> None:
        if self.jsonl:
            self.fh.write(_json_line(result))
        else:
            row = _row(result, self.labels)
            self._csv_line([row[c] for c in self.columns])
        now = time.monotonic()
        if now - self.flushed >= FLUSH_S:
            self.fh.flush()
            self.flushed = now

    def close(self) -> None:
        self.fh.flush()
        if self.close_fh:
            self.fh.close()


# ---------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class ClassifyConfig:
    """``skyedge classify``'s settings, checked when built (the parser reads its defaults here)."""

    model: Path
    inputs: tuple[str, ...]
    artifact: str | None = None
    out: Path | None = None
    threads: int | None = None
    min_confidence: float = 0.0
    prior: str | None = None
    resume: bool = False
    calibrated: bool = True
    runtime: str | None = None
    progress_every_s: float = 10.0

    def __post_init__(self):
        if not self.inputs:
            raise ClassifyError("no INPUT: give image files, folders or a CSV with a 'path' column")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ClassifyError(f"--threads {self.threads!r}: expected an integer >= 1")
        if not (math.isfinite(self.min_confidence) and 0.0 <= self.min_confidence <= 1.0):
            raise ClassifyError(f"--min-confidence {self.min_confidence!r}: expected a number from 0 to 1")
        if self.out is not None:
            if self.out.suffix.lower() not in OUTPUT_SUFFIXES:
                raise ClassifyError(f"--out {self.out}: expected a .csv or .jsonl file")
            if self.out.is_dir():
                raise ClassifyError(f"--out {self.out}: is a folder; expected a .csv or .jsonl file")
            if self.out.exists() and not self.resume:
                raise ClassifyError(f"--out {self.out} exists: add --resume to continue it, or choose another file")
        elif self.resume:
            raise ClassifyError("--resume needs --out (the file whose paths are skipped)")


def classify_files(config: ClassifyConfig, log=lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    """Label every input image of ``config``, writing rows as they come.

    Returns:
        ``{"images", "failed", "abstained", "skipped", "seconds", "images_per_s", "p50_ms",
        "artifact", "conversions"}``.

    Raises:
        ClassifyError: an unusable model, input or option (before any row is written).
    """
    classifier = Classifier(config.model, config.artifact, config.threads, config.prior, config.min_confidence,
                            config.calibrated, config.runtime)
    paths = list(iter_inputs(config.inputs))
    done = done_paths(config.out) if config.resume and config.out else set()
    todo = [p for p in paths if p not in done]
    if not paths:
        raise ClassifyError(f"no image found in {', '.join(config.inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    info = classifier.info
    log(f"classify: {len(todo)} image(s) with {classifier.path} ({info.artifact_id or 'no manifest id'}; "
        f"{info.img_size}x{info.img_size} px; temperature {classifier.temperature:g}; prior "
        f"{'training mix' if classifier.prior is None else ','.join(f'{v:.3g}' for v in classifier.prior)}; "
        f"description from {info.source})" + (f", {len(done)} already in {config.out}" if done else ""))
    writer = _Writer(config.out, classifier.labels, config.resume)
    progress = Progress(len(todo), "images", log, every_s=config.progress_every_s, label="classify")
    kinds: dict[str, int] = {}
    times, failed, abstained = [], 0, 0
    started = time.perf_counter()
    try:
        for n, path in enumerate(todo, 1):
            t0 = time.perf_counter_ns()
            result = classifier.classify(path)
            times.append(time.perf_counter_ns() - t0)
            writer.write(result)
            if result.error is not None:
                failed += 1
                if failed <= NAMED_FAILURES:
                    log(f"cannot classify {result.error}" + (" (further failures only in the output)"
                                                              if failed == NAMED_FAILURES else ""))
            abstained += result.abstained
            for kind in result.conversions:
                kinds[kind] = kinds.get(kind, 0) + 1
            progress.update(n, f"{failed} failed" if failed else "")
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    for kind, count in sorted(kinds.items()):
        what = {"non-square": f"were not square and were stretched to {info.img_size}x{info.img_size}, as in training",
                "other size": f"were square but not {info.img_size}x{info.img_size} and were resized to it, as in "
                              f"training"}.get(kind, f"were not RGB ({kind}) and were converted to RGB, as in training")
        log(f"{'note' if kind == 'other size' else 'warning'}: {count} image(s) {what}")
    n = len(todo)
    p50 = float(np.median(times)) / 1e6 if times else math.nan
    return {"images": n, "failed": failed, "abstained": abstained, "skipped": len(paths) - n, "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else math.nan, "p50_ms": p50,
            "artifact": info.artifact_id or str(classifier.path), "conversions": kinds}


def build_parser(prog: str = "skyedge classify") -> argparse.ArgumentParser:
    """The command's parser; defaults read from ``ClassifyConfig``."""
    d = ClassifyConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog="See the module docs: python -m pydoc device.classify")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or CSVs with a 'path' column")
    p.add_argument("--model", required=True, type=Path, help="a .tflite/.onnx file, or an exports folder (or bundle)")
    p.add_argument("--artifact", default=d["artifact"].default, help="artifact id in the exports folder "
                   "(default: the report's recommendation, else the most accurate on validation)")
    p.add_argument("--out", type=Path, default=d["out"].default, help="results file, .csv or .jsonl (default: CSV on stdout)")
    p.add_argument("--threads", type=int, default=d["threads"].default, help="runtime threads (default: the runtime's)")
    p.add_argument("--min-confidence", type=float, default=d["min_confidence"].default,
                   help="abstain below this top probability, 0..1 (default %(default)s: never)")
    p.add_argument("--prior", default=d["prior"].default,
                   help="class mix to answer for: balanced, survey (44%% galaxies, 6.2%% quasars, 49.8%% stars) or "
                        "G,Q,S fractions (default: the training mix)")
    p.add_argument("--resume", action="store_true", help="skip images already in --out and append the rest")
    p.add_argument("--no-calibration", dest="calibrated", action="store_false",
                   help="raw model probabilities (default: scaled by the temperature fitted at export)")
    p.add_argument("--runtime", default=d["runtime"].default, choices=("litert", "onnxruntime", "tensorflow"),
                   help="default: litert for .tflite, onnxruntime for .onnx; tensorflow only when named")
    return p


def main(argv: list[str] | None = None, prog: str = "skyedge classify") -> int:
    """Run ``skyedge classify``; the exit status (``device.command.Exit``)."""
    args = build_parser(prog).parse_args(argv)

    def work() -> int:
        config = ClassifyConfig(model=args.model, inputs=tuple(args.inputs), artifact=args.artifact, out=args.out,
                                threads=args.threads, min_confidence=args.min_confidence, prior=args.prior,
                                resume=args.resume, calibrated=args.calibrated, runtime=args.runtime)
        summary = classify_files(config)
        where = f"; rows in {config.out}" if config.out else ""
        print(f"classify: {summary['images']} image(s) labelled with {summary['artifact']} in {summary['seconds']:.1f} s: "
              f"{summary['images_per_s']:.1f} images/s, p50 {summary['p50_ms']:.2f} ms per image (decode + classify); "
              f"{summary['abstained']} abstained, {summary['failed']} failed"
              + (f", {summary['skipped']} already done" if summary["skipped"] else "") + where, file=sys.stderr)
        if summary["failed"]:
            print(f"{summary['failed']} image(s) could not be read (exit status {Exit.PARTIAL:d}); their rows carry "
                  f"the error", file=sys.stderr)
            return Exit.PARTIAL
        return Exit.OK

    return run_command(work, (ClassifyError,), f"every finished row is in {args.out}; rerun the same command with "
                       f"--resume to label the rest" if args.out else "rows so far were printed")


if __name__ == "__main__":
    sys.exit(main(prog="python -m device.classify"))
