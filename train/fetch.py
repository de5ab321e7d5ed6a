"""Fetch labelled SDSS cutouts from SkyServer into a dataset folder, politely and resumably.

Layout of the output folder::

    objects.csv          the objects asked for (a rerun reuses it instead of querying again)
    GALAXY/<objid>.jpg   one cutout per object, written only once it decodes
    QSO/..., STAR/...
    failures.csv         objects that failed in the last run, with the URL and the reason
    manifest.csv         the objects present, with a stratified train/val/test split

Every file is written atomically, so a fetch killed at any moment leaves only complete
files, and running the same command again downloads only what is missing.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from device.options import SECONDS_MAX
from device.atomic import write_bytes, write_text
from device.dataset import LABELS, MANIFEST, TEST_FRACTION, VAL_FRACTION, DatasetError, Record, read_manifest, \
    stratified_split, write_manifest
from device.images import ImageError, is_jpeg, read_rgb
from device.progress import Progress
from train.polite_http import InvalidBody, PoliteClient, RequestFailed, Unreachable
from train.sky_objects import (STUDY_MIX, SkyObject, class_counts, format_objects, parse_sql_answer,
                               read_catalog, sample, sql_for_class)

DEFAULT_BASE_URL = "https://skyserver.sdss.org"
OBJECTS_CSV = "objects.csv"
FAILURES_CSV = "failures.csv"
FAILURE_COLUMNS = ("objid", "class", "ra", "dec", "url", "reason", "attempts")
PROGRESS_EVERY_S = 10.0
OFFLINE_HINT = "check the network or use `python -m train.data synth` for offline data"


class FetchError(OSError):
    """A fetch that cannot start or go on; the message is one line for the user.

    An ``OSError`` because its causes are the environment (network, disk), so callers that
    already report ``OSError`` as one line report this one too.
    """


@dataclass(frozen=True)
class FetchConfig:
    """What to fetch and how politely.

    Attributes:
        out: output folder (created if missing).
        n: number of objects; None with a catalogue means every row.
        mix: GALAXY, QSO, STAR weights (normalised), used to split ``n``.
        dr: SDSS data release of the services (``/dr16/...``).
        size: cutout width and height in pixels (SkyServer accepts 64..2048).
        scale: arcseconds per pixel (SDSS native 0.396).
        catalog: a CSV of objects to fetch instead of querying SkyServer.
        base_url: the SkyServer root.
        rate: requests per second, all workers and SQL queries together.
        workers: concurrent downloads.
        timeout: seconds per request attempt.
        retries: extra attempts after a transient failure.
        backoff: seconds before the first retry, doubled for each further one.
        seed: seed of the catalogue sample, the split and the retry jitter.
        val, test: validation and test fractions of the split written to ``manifest.csv``.
    """

    out: Path
    n: int | None = None
    mix: tuple[float, float, float] = STUDY_MIX
    dr: int = 16
    size: int = 512
    scale: float = 0.4
    catalog: Path | None = None
    base_url: str = DEFAULT_BASE_URL
    rate: float = 1.0
    workers: int = 4
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 1.0
    seed: int = 0
    val: float = VAL_FRACTION
    test: float = TEST_FRACTION

    def __post_init__(self):
        # Frozen: normalise through object.__setattr__ so callers may pass str paths and lists.
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "catalog", Path(self.catalog) if self.catalog is not None else None)
        object.__setattr__(self, "mix", tuple(float(m) for m in self.mix))
        object.__setattr__(self, "base_url", str(self.base_url).rstrip("/"))
        problems = []
        if self.n is None and self.catalog is None:
            problems.append("n is required without a catalog")
        if self.n is not None and (isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1):
            problems.append(f"n={self.n!r}: expected a positive integer")
        try:
            class_counts(1, self.mix)
        except ValueError as exc:
            problems.append(str(exc))
        if not 64 <= self.size <= 2048:
            problems.append(f"size={self.size}: expected 64..2048 pixels (SkyServer's limits)")
        checks = ((0 < self.scale <= 100, f"scale={self.scale}: expected a finite number > 0 and <= 100 arcsec/pixel"),
                  (self.dr >= 1, f"dr={self.dr}: expected a data release number such as 16"),
                  (0 < self.rate <= 1000, f"rate={self.rate}: expected a finite number > 0 and <= 1000 requests/second"),
                  (self.workers >= 1, f"workers={self.workers}: expected >= 1"),
                  (0 < self.timeout <= SECONDS_MAX, f"timeout={self.timeout}: expected a finite number of seconds > 0"),
                  (self.retries >= 0, f"retries={self.retries}: expected >= 0"),
                  (0 <= self.backoff <= 3600, f"backoff={self.backoff}: expected a finite number of seconds from 0 to 3600"),
                  (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1,
                   f"val={self.val}, test={self.test}: expected fractions with val + test < 1"),
                  (self.base_url.startswith(("http://", "https://")),
                   f"base_url={self.base_url!r}: expected an http:// or https:// URL"))
        problems.extend(message for ok, message in checks if not ok)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def service(self) -> str:
        """Root of the SkyServer web services of the chosen data release."""
        return f"{self.base_url}/dr{self.dr}/SkyServerWS"

    @property
    def source(self) -> str:
        """The manifest's ``source`` column for objects of this fetch."""
        return f"catalog:{self.catalog.name}" if self.catalog is not None else f"skyserver-dr{self.dr}"

    def cutout_url(self, obj: SkyObject) -> str:
        """The ImgCutout URL of one object (no overlays)."""
        query = urllib.parse.urlencode({"ra": repr(obj.ra), "dec": repr(obj.dec), "scale": f"{self.scale:g}",
                                        "width": self.size, "height": self.size, "opt": ""})
        return f"{self.service}/ImgCutout/getjpeg?{query}"

    def sql_url(self, sql: str) -> str:
        """The SqlSearch URL answering ``sql`` as CSV."""
        return f"{self.service}/SearchTools/SqlSearch?{urllib.parse.urlencode({'cmd': sql, 'format': 'csv'})}"


@dataclass
class FetchSummary:
    """What a fetch did.

    Attributes:
        requested: objects in the list.
        downloaded: cutouts downloaded in this run.
        present: cutouts already there from an earlier run (not downloaded again).
        failed: objects without a cutout, listed in ``failures``.
        bytes: bytes of cutouts downloaded in this run.
        seconds: wall time of this run.
        out: the output folder.
        manifest: path of ``manifest.csv``.
        failures: path of ``failures.csv``.
        requests: HTTP requests sent (SQL and cutouts, retries included).
    """

    requested: int
    downloaded: int
    present: int
    failed: int
    bytes: int
    seconds: float
    out: Path
    manifest: Path
    failures: Path
    requests: int = 0

    def line(self) -> str:
        """One line for the log."""
        text = (f"fetch done: {self.requested} requested, {self.downloaded} downloaded now, "
                f"{self.present} already present, {self.failed} failed, "
                f"{self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s, {self.requests} requests")
        return text + (f"; failures listed in {self.failures}" if self.failed else "")


@dataclass
class _Outcome:
    obj: SkyObject
    status: str
    url: str = ""
    size: int = 0
    reason: str = ""
    attempts: int = 0


class _Progress:
    """The download's counts by outcome, with a progress line every few seconds."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.counts = {"downloaded": 0, "present": 0, "failed": 0}
        self.size = 0
        self.line = Progress(total, "images", log, every_s=PROGRESS_EVERY_S, every_share=0.05, label="fetch")

    def add(self, outcome: _Outcome) -> None:
        self.counts[outcome.status] += 1
        self.size += outcome.size
        self.line.update(self.line.count + 1, f"{self.counts['downloaded']} downloaded, {self.counts['present']} "
                                              f"present, {self.counts['failed']} failed, {self.size / 1e6:.1f} MB")


def prepare_output(out: Path) -> None:
    """Create ``out`` and its class folders, and prove a file can be written there.

    Leftover temporary files of a killed run (``.<name>.<random>.tmp``) are removed.

    Raises:
        FetchError: the folder cannot be created or written; the message names it.
    """
    try:
        for label in LABELS:
            (out / label).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FetchError(f"output folder {out} is not writable ({exc.strerror or exc}); "
                         f"choose another --out") from None
    for label in LABELS:
        for leftover in (out / label).glob(".*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _check_jpeg(body: bytes) -> None:
    if body.startswith(b"\xff\xd8\xff") and not is_jpeg(body):
        raise InvalidBody(f"JPEG without its end marker ({len(body)} bytes, truncated)")
    if not is_jpeg(body):
        head = body[:40].decode("latin-1", "replace").replace("\n", " ").strip()
        raise InvalidBody(f"not a JPEG ({len(body)} bytes starting {head!r})")
    try:
        read_rgb(body)
    except ImageError as exc:
        raise InvalidBody(f"JPEG does not decode ({exc})") from None


def _check_table(body: bytes) -> None:
    if not body.lstrip(b"\xef\xbb\xbf \r\n").startswith(b"#Table1"):
        head = body[:60].decode("utf-8", "replace").replace("\n", " ").strip()
        raise InvalidBody(f"not a SkyServer CSV table (starts {head!r})")


def _unreachable(config: FetchConfig, exc: Unreachable) -> FetchError:
    return FetchError(f"cannot reach {config.base_url} ({exc.reason}): {OFFLINE_HINT}")


def _query_objects(config: FetchConfig, client: PoliteClient, log: Callable[[str], None]) -> list[SkyObject]:
    objects = []
    for label, k in class_counts(config.n, config.mix).items():
        if k == 0:
            continue
        url = config.sql_url(sql_for_class(label, k))
        try:
            body, _ = client.get(url, _check_table)
        except Unreachable as exc:
            raise _unreachable(config, exc) from None
        except RequestFailed as exc:
            raise FetchError(f"SkyServer SQL query for {k} {label} failed: {exc.reason} after "
                             f"{exc.attempts} attempt(s) ({config.service}/SearchTools/SqlSearch)") from None
        try:
            found, repeats = parse_sql_answer(body.decode("utf-8-sig", "replace"), f"SqlSearch answer for {label}")
        except DatasetError as exc:
            raise FetchError(f"unexpected SkyServer answer: {exc}") from None
        found = [o for o in found if o.label == label]
        note = f" ({repeats} repeated objids dropped)" if repeats else ""
        if len(found) < k:
            log(f"fetch: SkyServer returned {len(found)} {label} objects of the {k} asked for{note}")
        elif note:
            log(f"fetch: {label}{note}")
        objects.extend(found)
    return objects


def _reuse_saved(config: FetchConfig, saved: list[SkyObject], log: Callable[[str], None]) -> list[SkyObject]:
    """The saved query answer, cut to this run's per-class counts (it is never re-queried)."""
    chosen = []
    for label, k in class_counts(config.n, config.mix).items():
        group = [o for o in saved if o.label == label]
        if len(group) < k:
            log(f"fetch: {config.out / OBJECTS_CSV} has {len(group)} {label} objects, fewer than the {k} "
                f"asked for; using them (delete it to query SkyServer again)")
        chosen.extend(group[:k])
    return chosen


def load_objects(config: FetchConfig, client: PoliteClient, log: Callable[[str], None] = print) -> list[SkyObject]:
    """The objects of a fetch, saved to ``out/objects.csv``.

    From the catalogue (all rows, or a stratified sample of ``n``), else from
    ``out/objects.csv`` of an earlier run, else from one SkyServer SQL query per class.

    Args:
        config: the fetch.
        client: the shared polite client (SQL queries count against the rate).
        log: where notes go.

    Returns:
        The objects, grouped by class.

    Raises:
        DatasetError: a bad catalogue row, or a catalogue with too few rows of a class.
        FetchError: SkyServer cannot be reached or answers nonsense.
    """
    saved_path = config.out / OBJECTS_CSV
    if config.catalog is not None:
        objects = read_catalog(config.catalog)
        if config.n is not None:
            objects = sample(objects, config.n, config.mix, config.seed, str(config.catalog))
        origin = str(config.catalog)
    elif saved_path.is_file():
        objects = _reuse_saved(config, read_catalog(saved_path), log)
        origin = f"{saved_path} (saved by an earlier run)"
    else:
        objects = _query_objects(config, client, log)
        origin = f"SkyServer DR{config.dr} SqlSearch"
    write_text(saved_path, format_objects(objects))
    counts = ", ".join(f"{label} {sum(o.label == label for o in objects)}" for label in LABELS)
    log(f"fetch: {len(objects)} objects ({counts}) from {origin}")
    return objects


def _fetch_one(obj: SkyObject, config: FetchConfig, client: PoliteClient) -> _Outcome:
    path = config.out / obj.relpath
    if path.is_file():
        try:
            read_rgb(path)
            return _Outcome(obj, "present")
        except ImageError:
            pass  # a corrupt leftover is downloaded again and replaced atomically
    url = config.cutout_url(obj)
    try:
        body, attempts = client.get(url, _check_jpeg)
    except RequestFailed as exc:
        return _Outcome(obj, "failed", url, reason=exc.reason, attempts=exc.attempts)
    write_bytes(path, body)
    return _Outcome(obj, "downloaded", url, size=len(body), attempts=attempts)


def _download(objects: list[SkyObject], config: FetchConfig, client: PoliteClient,
              log: Callable[[str], None]) -> tuple[list[_Outcome], _Progress]:
    progress = _Progress(total=len(objects), log=log)
    outcomes = []
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="fetch") as pool:
        futures = [pool.submit(_fetch_one, obj, config, client) for obj in objects]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                progress.add(outcome)
        except BaseException:
            # Stop the others promptly: waiting workers raise Stopped, queued ones never start.
            client.stop.set()
            for future in futures:
                future.cancel()
            raise
    return outcomes, progress


def _format_failures(failed: list[_Outcome]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    for f in sorted(failed, key=lambda f: f.obj.relpath):
        writer.writerow([f.obj.objid, f.obj.label, repr(f.obj.ra), repr(f.obj.dec), f.url, f.reason, f.attempts])
    return buf.getvalue()


def _earlier_rows(out: Path, log: Callable[[str], None]) -> dict[str, Record]:
    """Rows of an existing ``out/manifest.csv`` whose image is still there, by path.

    They are kept, with their split, whatever this run fetches or fails to: a failed or
    partial fetch never shrinks a manifest, and an image never moves between splits.
    """
    if not (out / MANIFEST).is_file():
        return {}
    try:
        earlier = read_manifest(out, check_files=False)
    except DatasetError as exc:
        log(f"fetch: warning: the existing {out / MANIFEST} is unreadable ({exc}); writing a new one")
        return {}
    return {r.path: r for r in earlier.records if (out / r.path).is_file()}


def fetch(config: FetchConfig, log: Callable[[str], None] = print) -> FetchSummary:
    """Download the cutouts of ``config`` and write the dataset folder.

    Objects whose cutout is already there and decodes are not downloaded again;
    ``failures.csv`` and ``manifest.csv`` are rewritten at the end of each run; rows of an
    existing manifest stay, with their split (a fetch never shrinks a manifest).

    Args:
        config: what to fetch.
        log: receives progress lines and the summary.

    Returns:
        The summary, also logged.

    Raises:
        FetchError: the output folder is not writable (checked before any request), or
            SkyServer cannot be reached.
        DatasetError: a bad catalogue.
        KeyboardInterrupt: after stopping the workers; complete files stay, rerun to finish.
    """
    start = time.monotonic()
    prepare_output(config.out)
    client = PoliteClient(config.rate, config.timeout, config.retries, config.backoff, seed=config.seed)
    objects = load_objects(config, client, log)
    log(f"fetch: cutouts {config.size}x{config.size} px at {config.scale:g}\"/px from {config.service} "
        f"into {config.out}, at most {config.rate:g} requests/s with {config.workers} workers "
        f"(about {len(objects) / config.rate / 60:.1f} min if none is present yet)")
    try:
        outcomes, progress = _download(objects, config, client, log)
    except Unreachable as exc:
        raise _unreachable(config, exc) from None
    except KeyboardInterrupt:
        log(f"fetch: interrupted; complete files are kept in {config.out}: run the same command again to finish")
        raise
    failed = [o for o in outcomes if o.status == "failed"]
    failures_path = config.out / FAILURES_CSV
    write_text(failures_path, _format_failures(failed))
    records = [Record(path=o.obj.relpath, label=o.obj.label, objid=o.obj.objid, ra=repr(o.obj.ra),
                      dec=repr(o.obj.dec), source=config.source)
               for o in outcomes if o.status != "failed"]
    kept = _earlier_rows(config.out, log)
    new = [r for r in records if r.path not in kept]
    if kept and len(new) < len(records):
        log(f"fetch: {len(records) - len(new)} object(s) keep their split from the existing manifest")
    others = len(set(kept) - {r.path for r in records})
    if others:
        log(f"fetch: kept {others} row(s) of the existing manifest that this fetch did not ask for "
            f"(a fetch never shrinks a manifest)")
    rows = list(kept.values()) + stratified_split(new, seed=config.seed, val=config.val, test=config.test)
    manifest = write_manifest(config.out, sorted(rows, key=lambda r: r.path))
    summary = FetchSummary(requested=len(objects), downloaded=progress.counts["downloaded"],
                           present=progress.counts["present"], failed=len(failed), bytes=progress.size,
                           seconds=time.monotonic() - start, out=config.out, manifest=manifest,
                           failures=failures_path, requests=client.requests)
    log(summary.line())
    return summary
