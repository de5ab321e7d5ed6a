"""The fault set: bad inputs and faults over every command, run as a user would.

    .venv/bin/python tests/fault_set.py [--out DIR] [--only TEXT] [--doc docs/reliability.md]

Builds a small real base once (40 generated cutouts, a one-epoch MobileNetV2 sweep at 32 px,
its TFLite and ONNX exports, a bench results file), then runs each case in its own folder:
a command line on real files, sometimes after breaking one of them, and sometimes a second
command (a rerun). Each case is classified from what the user would see:

- ``clear error``: exit 2 and no traceback (the message is quoted);
- ``recorded failure``: exit 3 (the run finished; failures named and kept);
- ``handled``: exit 0 (or 1 where 1 is the documented answer) and the case's check passes
  (what must be true of the files afterwards: nothing lost, nothing counted twice);
- ``TRACEBACK``, ``SILENT WRONG`` (exit 0 but the check fails), ``UNEXPECTED EXIT`` or
  ``HANG``: faults to fix. The script exits 1 when any case ends in one of them.

``--doc`` rewrites the table between the ``fault-set`` markers of that file.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from conftest import make_image  # noqa: E402
from skyserver import SkyServer, position_key  # noqa: E402

PY = sys.executable
BENCH = str(Path(sys.executable).parent / "bench")
TRACEBACK = "Traceback (most recent call last)"
BAD = ("TRACEBACK", "SILENT WRONG", "UNEXPECTED EXIT", "HANG")


@dataclass
class Case:
    """One fault: a command (``{name}`` placeholders filled from the case's folders)."""

    area: str
    what: str
    argv: list[str]
    expect: tuple[int, ...] = (2,)
    prepare: Callable[[Path, dict], None] | None = None
    check: Callable[[Path, dict, subprocess.CompletedProcess], str | None] | None = None
    before: list[list[str]] = field(default_factory=list)  # commands run first (their result ignored)
    timeout: float = 600.0


# --- the base every case starts from -------------------------------------------------------


def make_data(root: Path, per_class: tuple[int, int, int] = (16, 12, 12), size: int = 40) -> Path:
    from device.dataset import index_tree, stratified_split, write_manifest

    for index, (label, count) in enumerate(zip(("GALAXY", "QSO", "STAR"), per_class)):
        for i in range(count):
            make_image(root / label / f"{label.lower()}-{i:03d}.png", seed=100 * index + i, size=size,
                       label_index=index)
    write_manifest(root, stratified_split(index_tree(root)[0], seed=0))
    return root


def build_base(base: Path, log=print) -> dict:
    """Data, a sweep, its exports and bench results: made once, copied by the cases."""
    paths = {"data": base / "data", "sweep": base / "sweep", "exports": base / "exports",
             "results": base / "results.jsonl"}
    if not (paths["results"]).is_file():
        shutil.rmtree(base, ignore_errors=True)
        make_data(paths["data"])
        steps = [
            [PY, "-m", "train.sweep", "--data", str(paths["data"]), "--backbones", "mobilenetv2", "--levels", "0",
             "--epochs", "1", "--batch-size", "8", "--img-size", "32", "--weights", "none", "--out", str(paths["sweep"])],
            [PY, "-m", "export.tflite", "--runs", str(paths["sweep"]), "--out", str(paths["exports"]),
             "--variants", "fp32,int8"],
            [PY, "-m", "export.onnx", "--runs", str(paths["sweep"]), "--out", str(paths["exports"])],
            [BENCH, "run", "--models", str(paths["exports"]), "--runs", "5", "--min-secs", "0", "--warmup", "1",
             "--out", str(paths["results"])],
        ]
        for step in steps:
            log("base: " + " ".join(Path(a).name if a in (PY, BENCH) else a for a in step))
            done = subprocess.run(step, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"fault set: building the base failed at {' '.join(step)}:\n{done.stderr[-2000:]}")
    return {k: str(v) for k, v in paths.items()}


# --- helpers the cases use -----------------------------------------------------------------


def copy(name: str, to: str | None = None):
    """Prepare step: copy the base's ``name`` into the case folder (as ``to``)."""
    def step(case: Path, base: dict) -> None:
        src, dst = Path(base[name]), case / (to or name)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return step


def steps(*prepares):
    def step(case: Path, base: dict) -> None:
        for prepare in prepares:
            prepare(case, base)
    return step


def write(rel: str, content: bytes | str):
    def step(case: Path, base: dict) -> None:
        path = case / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return step


def edit_manifest(rel: str, change: Callable[[list[dict]], list[dict]]):
    def step(case: Path, base: dict) -> None:
        path = case / rel / "manifest.csv"
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            fields = list(rows[0].keys())
        rows = change(rows)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return step


def damage(rel: str, how: str = "flip"):
    """Prepare step: damage a file (``flip`` bytes in the middle, ``empty`` it, ``cut`` it in half)."""
    def step(case: Path, base: dict) -> None:
        path = case / rel
        data = bytearray(path.read_bytes())
        if how == "empty":
            data = bytearray()
        elif how == "cut":
            data = data[:len(data) // 2]
        else:
            middle = len(data) // 2
            data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
        path.write_bytes(bytes(data))
    return step


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.is_file() else []


def sweep_cmd(data: str = "{data}", out: str = "{case}/out", *extra: str) -> list[str]:
    return [PY, "-m", "train.sweep", "--data", data, "--backbones", "mobilenetv2", "--levels", "0", "--epochs", "1",
            "--batch-size", "8", "--img-size", "32", "--weights", "none", "--out", out, *extra]


def check_results(path_rel: str, runs: int):
    """Check: the results file has exactly ``runs`` successful runs, each once."""
    def check(case: Path, base: dict, done) -> str | None:
        from device.atomic import read_jsonl

        rows = [r for r in read_jsonl(case / path_rel) if isinstance(r, dict) and "error" not in r]
        ids = [r.get("run_id") for r in rows]
        if len(ids) != runs or len(set(ids)) != runs:
            return f"{path_rel}: {len(ids)} successful lines for {runs} runs ({ids})"
        return None
    return check


def check_manifest_rows(rel: str, rows: int):
    def check(case: Path, base: dict, done) -> str | None:
        with open(case / rel / "manifest.csv", newline="") as fh:
            got = sum(1 for _ in csv.DictReader(fh))
        return None if got == rows else f"{rel}/manifest.csv has {got} rows, expected {rows}"
    return check


def check_said(*texts: str):
    def check(case: Path, base: dict, done) -> str | None:
        said = done.stdout + done.stderr
        missing = [t for t in texts if t not in said]
        return f"output does not say {missing}" if missing else None
    return check


def check_all(*checks):
    def check(case: Path, base: dict, done) -> str | None:
        for one in checks:
            problem = one(case, base, done)
            if problem:
                return problem
        return None
    return check


def check_lines_kept(rel: str):
    """Check: every line of ``rel`` as ``keep_before`` saved it is still there, byte for byte."""
    def check(case: Path, base: dict, done) -> str | None:
        before = lines_of(case / (rel + ".before"))
        after = lines_of(case / rel)
        lost = [line for line in before if line not in after]
        return f"{rel}: {len(lost)} line(s) lost" if lost else None
    return check


def keep_before(rel: str):
    def step(case: Path, base: dict) -> None:
        shutil.copy(case / rel, case / (rel + ".before"))
    return step


# --- the cases -----------------------------------------------------------------------------


def cases() -> list[Case]:
    data_cmd = [PY, "-m", "train.data"]
    c: list[Case] = []

    # train.data: index, stats, synth, sample
    c += [
        Case("data", "index a folder that does not exist", data_cmd + ["index", "{case}/nowhere"]),
        Case("data", "index a file instead of a folder", data_cmd + ["index", "{case}/file.txt"],
             prepare=write("file.txt", "x")),
        Case("data", "index a folder with no class folders", data_cmd + ["index", "{case}/empty"],
             prepare=write("empty/readme.txt", "nothing")),
        Case("data", "index with --val 1.5", data_cmd + ["index", "{case}/data", "--val", "1.5"], prepare=copy("data")),
        Case("data", "index with --val 0.6 --test 0.6", data_cmd + ["index", "{case}/data", "--val", "0.6", "--test", "0.6"],
             prepare=copy("data")),
        Case("data", "index with --val -0.1", data_cmd + ["index", "{case}/data", "--val", "-0.1"], prepare=copy("data")),
        Case("data", "index with a corrupt PNG among the images", data_cmd + ["index", "{case}/data"], expect=(0,),
             prepare=steps(copy("data"), write("data/GALAXY/broken.png", b"\x89PNG\r\n\x1a\nnot really")),
             check=check_all(check_manifest_rows("data", 40), check_said("broken.png"))),
        Case("data", "index with a 0-byte image", data_cmd + ["index", "{case}/data"], expect=(0,),
             prepare=steps(copy("data"), write("data/QSO/empty.jpg", b"")),
             check=check_all(check_manifest_rows("data", 40), check_said("empty.jpg"))),
        Case("data", "index with a PNG claiming 20,000 x 20,000 px (decompression bomb)", data_cmd + ["index", "{case}/data"],
             expect=(0,), prepare=steps(copy("data"), _bomb("data/STAR/bomb.png")),
             check=check_all(check_manifest_rows("data", 40), check_said("bomb.png"))),
        Case("data", "stats of a folder that does not exist", data_cmd + ["stats", "{case}/nowhere"]),
        Case("data", "stats with a decompression bomb listed in the manifest", data_cmd + ["stats", "{case}/data"],
             expect=(0,), prepare=steps(copy("data"), _bomb("data/STAR/bomb.png"),
                                        edit_manifest("data", _list_file("STAR/bomb.png", "STAR", "train"))),
             check=check_said("bomb.png")),
        Case("data", "stats of a manifest with a missing image", data_cmd + ["stats", "{case}/data"], expect=(0, 2),
             prepare=steps(copy("data"), _remove_one_image("data"))),
        Case("data", "synth with --n 0", data_cmd + ["synth", "--out", "{case}/s", "--n", "0"]),
        Case("data", "synth with --n -5", data_cmd + ["synth", "--out", "{case}/s", "--n", "-5"]),
        Case("data", "synth with --mix a,b,c", data_cmd + ["synth", "--out", "{case}/s", "--n", "6", "--mix", "a,b,c"]),
        Case("data", "synth with --mix 0.5,0.5 (two fractions)", data_cmd + ["synth", "--out", "{case}/s", "--n", "6", "--mix", "0.5,0.5"]),
        Case("data", "synth with --size 4", data_cmd + ["synth", "--out", "{case}/s", "--n", "6", "--size", "4"]),
        Case("data", "synth --out an existing file", data_cmd + ["synth", "--out", "{case}/file.txt", "--n", "6"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("data", "sample --out an existing file", data_cmd + ["sample", "--out", "{case}/file.txt"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("data", "sample --out a folder holding other images", data_cmd + ["sample", "--out", "{case}/data"],
             prepare=copy("data"), check=check_manifest_rows("data", 40)),
        Case("data", "sample twice into one folder", data_cmd + ["sample", "--out", "{case}/s"], expect=(0,),
             before=[data_cmd + ["sample", "--out", "{case}/s"]], check=check_manifest_rows("s", 600)),
        Case("data", "index --subset of a labels.csv subset that does not exist",
             data_cmd + ["index", "{case}/data", "--subset", "nosuch"], prepare=copy("data"), expect=(0, 2)),
    ]

    # train.data sdss against a local SkyServer (the {server} placeholder)
    sdss = data_cmd + ["sdss", "--base-url", "{server}", "--rate", "1000", "--timeout", "0.5", "--retries", "1",
                       "--backoff", "0.01", "--size", "64"]
    c += [
        Case("fetch", "catalogue file that does not exist", sdss + ["--out", "{case}/f", "--catalog", "{case}/none.csv"]),
        Case("fetch", "catalogue without ra/dec/class columns", sdss + ["--out", "{case}/f", "--catalog", "{case}/c.csv"],
             prepare=write("c.csv", "a,b\n1,2\n")),
        Case("fetch", "catalogue with a non-numeric ra", sdss + ["--out", "{case}/f", "--catalog", "{case}/c.csv"],
             prepare=write("c.csv", "ra,dec,class\nabc,1.0,galaxy\n")),
        Case("fetch", "catalogue with an unknown class", sdss + ["--out", "{case}/f", "--catalog", "{case}/c.csv"],
             prepare=write("c.csv", "ra,dec,class\n1.0,1.0,nebula\n")),
        Case("fetch", "catalogue that is empty", sdss + ["--out", "{case}/f", "--catalog", "{case}/c.csv"],
             prepare=write("c.csv", "")),
        Case("fetch", "--n 0", sdss + ["--out", "{case}/f", "--n", "0"]),
        Case("fetch", "--size 10 (below 64)", sdss + ["--out", "{case}/f", "--n", "6", "--size", "10"]),
        Case("fetch", "--rate 0", sdss + ["--out", "{case}/f", "--n", "6", "--rate", "0"]),
        Case("fetch", "--mix that does not sum to 1", sdss + ["--out", "{case}/f", "--n", "6", "--mix", "0.9,0.9,0.9"]),
        Case("fetch", "SkyServer unreachable (closed port)",
             data_cmd + ["sdss", "--base-url", "http://127.0.0.1:9", "--out", "{case}/f", "--n", "6", "--timeout", "0.5",
                         "--retries", "1", "--backoff", "0.01"]),
        Case("fetch", "a good fetch of 12 objects", sdss + ["--out", "{case}/f", "--n", "12"], expect=(0,),
             check=check_manifest_rows("f", 12)),
        Case("fetch", "every cutout 404 into an existing dataset",
             [a.replace("{server}", "{server404}") for a in sdss] + ["--out", "{case}/f", "--catalog", "{case}/c.csv"],
             expect=(3,), before=[sdss + ["--out", "{case}/f", "--n", "12"]],
             prepare=write("c.csv", "objid,ra,dec,class\n901,1.5,2.5,galaxy\n902,3.5,4.5,qso\n"),
             check=check_manifest_rows("f", 12)),
        Case("fetch", "the same fetch again (resume: nothing downloaded twice)", sdss + ["--out", "{case}/f", "--n", "12"],
             expect=(0,), before=[sdss + ["--out", "{case}/f", "--n", "12"]], check=check_manifest_rows("f", 12)),
        Case("fetch", "--out an existing file", sdss + ["--out", "{case}/file.txt", "--n", "6"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
    ]

    # train.sweep
    c += [
        Case("sweep", "--data that does not exist", sweep_cmd("{case}/nowhere")),
        Case("sweep", "--data without a manifest", sweep_cmd("{case}/empty"), prepare=write("empty/x.txt", "x")),
        Case("sweep", "unknown backbone", [PY, "-m", "train.sweep", "--data", "{data}", "--backbones", "nosuchnet",
                                            "--out", "{case}/out", "--weights", "none"]),
        Case("sweep", "level beyond the backbone's depth", sweep_cmd("{data}", "{case}/out", "--levels", "9999")),
        Case("sweep", "--levels garbage", sweep_cmd("{data}", "{case}/out", "--levels", "a,b")),
        Case("sweep", "--img-size 8 (below the backbone's minimum)", sweep_cmd("{data}", "{case}/out", "--img-size", "8")),
        Case("sweep", "--epochs 0", sweep_cmd("{data}", "{case}/out", "--epochs", "0")),
        Case("sweep", "--lr nan", sweep_cmd("{data}", "{case}/out", "--lr", "nan")),
        Case("sweep", "--lr -1", sweep_cmd("{data}", "{case}/out", "--lr", "-1")),
        Case("sweep", "--batch-size 0", sweep_cmd("{data}", "{case}/out", "--batch-size", "0")),
        Case("sweep", "--seeds x", sweep_cmd("{data}", "{case}/out", "--seeds", "x")),
        Case("sweep", "--shard 3/2", sweep_cmd("{data}", "{case}/out", "--shard", "3/2")),
        Case("sweep", "--shard abc", sweep_cmd("{data}", "{case}/out", "--shard", "abc")),
        Case("sweep", "--cache-budget-gb -1", sweep_cmd("{data}", "{case}/out", "--cache-budget-gb", "-1")),
        Case("sweep", "--cache-features on with --augment d4",
             sweep_cmd("{data}", "{case}/out", "--cache-features", "on", "--augment", "d4")),
        Case("sweep", "--out an existing file", sweep_cmd("{data}", "{case}/file.txt"),
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("sweep", "--out under an existing file", sweep_cmd("{data}", "{case}/file.txt/out"),
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("sweep", "--weights a file that does not exist", sweep_cmd("{data}", "{case}/out")[:-4] +
             ["--weights", "{case}/none.h5", "--out", "{case}/out"]),
        Case("sweep", "--weights imagenet with no network (offline)", sweep_cmd("{data}", "{case}/out")[:-4] +
             ["--weights", "imagenet", "--out", "{case}/out"], prepare=_offline_keras_home),
        Case("sweep", "a training split with one class", sweep_cmd("{case}/data"),
             prepare=steps(copy("data"), edit_manifest("data", lambda rows: [r for r in rows if r["split"] != "train"
                                                                             or r["label"] == "GALAXY"]))),
        Case("sweep", "an empty validation split", sweep_cmd("{case}/data"),
             prepare=steps(copy("data"), edit_manifest("data", lambda rows: [r for r in rows if r["split"] != "val"]))),
        Case("sweep", "a manifest listing an image twice, as train and as test", sweep_cmd("{case}/data"), expect=(0,),
             prepare=steps(copy("data"), edit_manifest("data", _duplicate_across_splits)),
             check=check_all(check_said("dropped"), check_results("out/results.jsonl", 1))),
        Case("sweep", "a manifest row whose image is missing", sweep_cmd("{case}/data"), expect=(0, 2),
             prepare=steps(copy("data"), _remove_one_image("data"))),
        Case("sweep", "a manifest with an unknown label", sweep_cmd("{case}/data"), expect=(0, 2),
             prepare=steps(copy("data"), edit_manifest("data", lambda rows: [{**rows[0], "label": "NEBULA"}] + rows[1:]))),
        Case("sweep", "a manifest that is not CSV", sweep_cmd("{case}/data"),
             prepare=steps(copy("data"), write("data/manifest.csv", b"\x00\x01garbage\xff\n"))),
        Case("sweep", "a corrupt image listed in the manifest", sweep_cmd("{case}/data"), expect=(0,),
             prepare=steps(copy("data"), _corrupt_one_image("data")),
             check=check_all(check_said("unreadable"), check_results("out/results.jsonl", 1))),
        Case("sweep", "rerun after the last results line was cut by a crash", sweep_cmd("{data}", "{case}/sweep"),
             expect=(0,), prepare=steps(copy("sweep"), _cut_last_line("sweep/results.jsonl")),
             check=check_results("sweep/results.jsonl", 1)),
        Case("sweep", "rerun after best.h5 of a finished run was damaged", sweep_cmd("{data}", "{case}/sweep"),
             expect=(0,), prepare=steps(copy("sweep"), _damage_best("sweep")),
             check=check_all(check_said("training it again"), _best_loads("sweep"))),
        Case("sweep", "rerun with other settings into the same folder",
             sweep_cmd("{data}", "{case}/sweep", "--lr", "0.01"), prepare=copy("sweep")),
        Case("sweep", "rerun of a finished sweep (nothing to do)", sweep_cmd("{data}", "{case}/sweep"), expect=(0,),
             prepare=copy("sweep"), check=check_all(check_said("already finished"), check_results("sweep/results.jsonl", 1))),
        Case("sweep", "kill -9 mid-sweep, then rerun", sweep_cmd("{data}", "{case}/out", "--levels", "0,7", "--epochs", "4"),
             expect=(0,), before=[["timeout", "-s", "KILL", "25"] + sweep_cmd("{data}", "{case}/out", "--levels", "0,7",
                                                                               "--epochs", "4")],
             check=check_results("out/results.jsonl", 2)),
        Case("sweep", "--lr 1e6 (training diverges)", sweep_cmd("{data}", "{case}/out", "--lr", "1e6"), expect=(0, 3),
             check=_failed_or_finite("out")),
    ]

    # train.pretrain, train.summary, train.levels
    pre = [PY, "-m", "train.pretrain", "--backbone", "mobilenetv2", "--img-size", "32", "--batch-size", "8"]
    c += [
        Case("pretrain", "--data that does not exist", pre + ["--data", "{case}/nowhere", "--out", "{case}/w"]),
        Case("pretrain", "unknown backbone", [PY, "-m", "train.pretrain", "--data", "{data}", "--backbone", "nosuch",
                                               "--out", "{case}/w"]),
        Case("pretrain", "--epochs 0", pre + ["--data", "{data}", "--out", "{case}/w", "--epochs", "0"]),
        Case("pretrain", "--out an existing non-.h5 file", pre + ["--data", "{data}", "--out", "{case}/file.txt", "--epochs", "1"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("summary", "a folder without results.jsonl", [PY, "-m", "train.summary", "{case}"]),
        Case("summary", "results.jsonl with non-UTF-8 bytes and a cut line", [PY, "-m", "train.summary", "{case}/sweep"],
             expect=(0,), prepare=steps(copy("sweep"), _append_bytes("sweep/results.jsonl", b"\xff\xfe garbage\n{\"run_id\": ")),
             check=_exists("sweep/summary.md")),
        Case("levels", "unknown backbone", [PY, "-m", "train.levels", "--backbone", "nosuch", "--levels", "paper"]),
        Case("levels", "a level beyond the depth", [PY, "-m", "train.levels", "--backbone", "mobilenetv2", "--levels", "9999"]),
    ]

    # export
    tfl = [PY, "-m", "export.tflite"]
    onnx = [PY, "-m", "export.onnx"]
    c += [
        Case("export", "--runs that does not exist", tfl + ["--runs", "{case}/nowhere", "--out", "{case}/e"]),
        Case("export", "--runs with no results.jsonl", tfl + ["--runs", "{case}/empty", "--out", "{case}/e"],
             prepare=write("empty/x.txt", "x")),
        Case("export", "--variants bogus", tfl + ["--runs", "{sweep}", "--out", "{case}/e", "--variants", "bogus"]),
        Case("export", "--calib 0", tfl + ["--runs", "{sweep}", "--out", "{case}/e", "--calib", "0"]),
        Case("export", "--calib -1", tfl + ["--runs", "{sweep}", "--out", "{case}/e", "--calib", "-1"]),
        Case("export", "--select bogus", tfl + ["--runs", "{sweep}", "--out", "{case}/e", "--select", "nosuch-run"]),
        Case("export", "--out an existing file", tfl + ["--runs", "{sweep}", "--out", "{case}/file.txt"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("export", "a damaged best.h5", tfl + ["--runs", "{case}/sweep", "--out", "{case}/e"],
             prepare=steps(copy("sweep"), _damage_best("sweep"))),
        Case("export", "re-export of a damaged run over a good export", tfl + ["--runs", "{case}/sweep", "--out", "{case}/exports"],
             expect=(2, 3), prepare=steps(copy("sweep"), copy("exports"), keep_before("exports/manifest.json"),
                                          _damage_best("sweep")),
             check=_manifest_keeps_good("exports")),
        Case("export", "the default --calib on a dataset with under 200 training images",
             tfl + ["--runs", "{sweep}", "--out", "{case}/e", "--variants", "int8"], expect=(0,),
             check=check_said("calibrating int8 on all")),
        Case("export", "onnx: --runs that does not exist", onnx + ["--runs", "{case}/nowhere", "--out", "{case}/e"]),
        Case("export", "onnx: --out an existing file", onnx + ["--runs", "{sweep}", "--out", "{case}/file.txt"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("export", "the sweep's data folder moved away", tfl + ["--runs", "{case}/sweep", "--out", "{case}/e",
                                                                    "--variants", "int8"],
             expect=(2, 3), prepare=_sweep_with_moved_data),
    ]

    # bench
    run = [BENCH, "run", "--runs", "5", "--min-secs", "0", "--warmup", "1"]
    c += [
        Case("bench", "run: --models that does not exist", run + ["--models", "{case}/nowhere", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --models without manifest.json", run + ["--models", "{case}/empty", "--out", "{case}/r.jsonl"],
             prepare=write("empty/x.txt", "x")),
        Case("bench", "run: --runs 0 --min-secs 0", [BENCH, "run", "--models", "{exports}", "--runs", "0", "--min-secs", "0",
                                                     "--out", "{case}/r.jsonl"], check=_absent("r.jsonl")),
        Case("bench", "run: --threads 0", run + ["--models", "{exports}", "--threads", "0", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --threads abc", run + ["--models", "{exports}", "--threads", "abc", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --warmup -1", [BENCH, "run", "--models", "{exports}", "--warmup", "-1", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --runtime bogus", run + ["--models", "{exports}", "--runtime", "bogus", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --mode bogus", run + ["--models", "{exports}", "--mode", "bogus", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --data that does not exist", run + ["--models", "{exports}", "--data", "{case}/nowhere",
                                                                "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --split bogus", run + ["--models", "{exports}", "--split", "bogus", "--out", "{case}/r.jsonl"]),
        Case("bench", "run: --out an existing folder", run + ["--models", "{exports}", "--out", "{case}/dir"],
             prepare=write("dir/keep.txt", "keep me")),
        Case("bench", "run: --select matching nothing", run + ["--models", "{exports}", "--select", "nosuch*",
                                                               "--out", "{case}/r.jsonl"]),
        Case("bench", "run: a model file that no longer matches its sha256", run + ["--models", "{case}/exports",
                                                                                     "--out", "{case}/r.jsonl"],
             expect=(3,), prepare=steps(copy("exports"), _damage_model("exports", ".tflite")),
             check=_lines_with_error_or_latency("r.jsonl")),
        Case("bench", "run: a truncated ONNX model", run + ["--models", "{case}/exports", "--out", "{case}/r.jsonl"],
             expect=(3,), prepare=steps(copy("exports"), _damage_model("exports", ".onnx", "cut")),
             check=_lines_with_error_or_latency("r.jsonl")),
        Case("bench", "run --resume onto a results file whose last line was cut", run + ["--models", "{exports}", "--resume",
                                                                                          "--out", "{case}/results.jsonl"],
             expect=(0,), prepare=steps(copy("results", "results.jsonl"), _cut_last_line("results.jsonl"), keep_before("results.jsonl")),
             check=check_lines_kept("results.jsonl")),
        Case("bench", "run --resume onto a results file with non-UTF-8 bytes", run + ["--models", "{exports}", "--resume",
                                                                                       "--out", "{case}/results.jsonl"],
             expect=(0,), prepare=steps(copy("results", "results.jsonl"), _append_bytes("results.jsonl", b"\xff\xfe not json\n"),
                                        keep_before("results.jsonl")),
             check=check_lines_kept("results.jsonl")),
        Case("bench", "run --resume when every job is done", run + ["--models", "{exports}", "--resume",
                                                                    "--out", "{case}/results.jsonl"],
             expect=(0,), prepare=steps(copy("results", "results.jsonl"), keep_before("results.jsonl")),
             check=check_lines_kept("results.jsonl")),
        Case("bench", "floors: --data that does not exist", [BENCH, "floors", "--data", "{case}/nowhere", "--out", "{case}/f.json"]),
        Case("bench", "floors: --split bogus", [BENCH, "floors", "--data", "{data}", "--split", "bogus", "--out", "{case}/f.json"]),
        Case("bench", "floors: --out an existing folder", [BENCH, "floors", "--data", "{data}", "--out", "{case}/dir"],
             prepare=write("dir/keep.txt", "keep me")),
        Case("bench", "floors: a data set with no test split", [BENCH, "floors", "--data", "{case}/data", "--out", "{case}/f.json"],
             prepare=steps(copy("data"), edit_manifest("data", lambda rows: [r for r in rows if r["split"] != "test"]))),
        Case("bench", "report: --results that does not exist", [BENCH, "report", "--results", "{case}/none.jsonl",
                                                                "--out", "{case}/rep"]),
        Case("bench", "report: an empty results file", [BENCH, "report", "--results", "{case}/r.jsonl", "--out", "{case}/rep"],
             prepare=write("r.jsonl", "")),
        Case("bench", "report: results with non-UTF-8 bytes and a cut line",
             [BENCH, "report", "--results", "{case}/results.jsonl", "--exports", "{exports}", "--out", "{case}/rep"],
             expect=(0,), prepare=steps(copy("results", "results.jsonl"), _append_bytes("results.jsonl", b"\xff\xfe\n{\"artifact")),
             check=check_all(check_said("results.jsonl"), _exists("rep/report.md"))),
        Case("bench", "report: --out an existing file", [BENCH, "report", "--results", "{results}", "--out", "{case}/file.txt"],
             prepare=write("file.txt", "keep me"), check=_unchanged("file.txt", "keep me")),
        Case("bench", "report: --floors file that does not exist", [BENCH, "report", "--results", "{results}",
                                                                    "--floors", "{case}/none.json", "--out", "{case}/rep"]),
        Case("bench", "report: --floors file that is not JSON", [BENCH, "report", "--results", "{results}",
                                                                 "--floors", "{case}/f.json", "--out", "{case}/rep"],
             prepare=write("f.json", "not json")),
        Case("bench", "report: --budgets abc", [BENCH, "report", "--results", "{results}", "--budgets", "abc",
                                                "--out", "{case}/rep"]),
        Case("bench", "report: --alpha 2", [BENCH, "report", "--results", "{results}", "--alpha", "2", "--out", "{case}/rep"]),
        Case("bench", "report: --runs folder that does not exist", [BENCH, "report", "--results", "{results}",
                                                                    "--runs", "{case}/nowhere", "--out", "{case}/rep"]),
        Case("bench", "report: a complete set", [BENCH, "report", "--results", "{results}", "--runs", "{sweep}",
                                                 "--exports", "{exports}", "--out", "{case}/rep"], expect=(0,),
             check=_exists("rep/report.md")),
        Case("bench", "bundle: --max-images -3", [BENCH, "bundle", "--exports", "{exports}", "--data", "{data}",
                                                  "--max-images", "-3", "--out", "{case}/b.tar.gz"], check=_absent("b.tar.gz")),
        Case("bench", "bundle: --exports that does not exist", [BENCH, "bundle", "--exports", "{case}/nowhere",
                                                                "--data", "{data}", "--out", "{case}/b.tar.gz"]),
        Case("bench", "bundle: a 0-byte image and a model that does not match its sha256",
             [BENCH, "bundle", "--exports", "{case}/exports", "--data", "{case}/data", "--out", "{case}/b.tar.gz"],
             expect=(0,), prepare=steps(copy("exports"), copy("data"), _empty_one_test_image("data"),
                                        _damage_model("exports", ".onnx")),
             check=check_all(_bundle_without_bad("b.tar.gz"), _exists("b.tar.gz"))),
        Case("bench", "bundle: --out in a folder that does not exist", [BENCH, "bundle", "--exports", "{exports}",
                                                                        "--data", "{data}", "--out", "{case}/no/dir/b.tar.gz"],
             expect=(0, 2)),
        Case("bench", "an unknown subcommand", [BENCH, "nosuch"]),
    ]

    # device tools
    cmp_ = [PY, "-m", "device.compare_predictions", "compare"]
    c += [
        Case("device", "compare: a predictions file that does not exist", cmp_ + ["{case}/a.csv", "{case}/b.csv"]),
        Case("device", "compare: predictions of one machine against themselves", cmp_ + ["{case}/a.json", "{case}/a.json"],
             expect=(0,), before=[[PY, "-m", "device.compare_predictions", "predict", "--models", "{exports}",
                                   "--out", "{case}/a.json"]], check=check_said("PASS")),
        Case("device", "compare: a CSV instead of a predict file", cmp_ + ["{case}/a.csv", "{case}/a.csv"],
             prepare=write("a.csv", "path,label,prob_GALAXY,prob_QSO,prob_STAR\nx.png,GALAXY,0.9,0.05,0.05\n"),
             check=check_said("a.csv")),
        Case("device", "compare: JSON that is not a predict file", cmp_ + ["{case}/a.json", "{case}/a.json"],
             prepare=write("a.json", "{}"), check=check_said("a.json")),
        Case("device", "predict: --models without a manifest", [PY, "-m", "device.compare_predictions", "predict",
                                                                 "--models", "{case}/empty", "--out", "{case}/p.json"],
             prepare=write("empty/x.txt", "x"), check=_absent("p.json")),
    ]
    return c


# --- case-specific steps and checks ---------------------------------------------------------


def _bomb(rel: str):
    def step(case: Path, base: dict) -> None:
        from PIL import Image

        path = case / rel
        Image.new("RGB", (64, 64), (10, 20, 30)).save(path)
        data = bytearray(path.read_bytes())
        data[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height
        path.write_bytes(bytes(data))
    return step


def _remove_one_image(rel: str):
    def step(case: Path, base: dict) -> None:
        with open(case / rel / "manifest.csv", newline="") as fh:
            first = next(csv.DictReader(fh))
        (case / rel / first["path"]).unlink()
    return step


def _corrupt_one_image(rel: str):
    def step(case: Path, base: dict) -> None:
        with open(case / rel / "manifest.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
        (case / rel / rows[0]["path"]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return step


def _empty_one_test_image(rel: str):
    def step(case: Path, base: dict) -> None:
        with open(case / rel / "manifest.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
        (case / rel / rows[0]["path"]).write_bytes(b"")
    return step


def _list_file(path: str, label: str, split: str):
    def change(rows: list[dict]) -> list[dict]:
        return rows + [{**rows[0], "path": path, "label": label, "split": split,
                        **({"objid": ""} if "objid" in rows[0] else {})}]
    return change


def _duplicate_across_splits(rows: list[dict]) -> list[dict]:
    train = next(r for r in rows if r["split"] == "train")
    return rows + [{**train, "split": "test"}]


def _cut_last_line(rel: str):
    def step(case: Path, base: dict) -> None:
        path = case / rel
        data = path.read_bytes().rstrip(b"\n")
        path.write_bytes(data[: len(data) - max(1, len(data.splitlines()[-1]) // 2)])
    return step


def _append_bytes(rel: str, extra: bytes):
    def step(case: Path, base: dict) -> None:
        with open(case / rel, "ab") as fh:
            fh.write(extra)
    return step


def _damage_best(rel: str):
    def step(case: Path, base: dict) -> None:
        best = next((case / rel / "runs").glob("*/*/best.h5"))
        damage(str(best.relative_to(case)))(case, base)
    return step


def _damage_model(rel: str, suffix: str, how: str = "flip"):
    def step(case: Path, base: dict) -> None:
        model = sorted((case / rel).rglob(f"*{suffix}"))[0]
        damage(str(model.relative_to(case)), how)(case, base)
    return step


def _offline_keras_home(case: Path, base: dict) -> None:
    (case / "keras-home").mkdir()


def _sweep_with_moved_data(case: Path, base: dict) -> None:
    copy("sweep")(case, base)
    for config in (case / "sweep" / "runs").glob("*/*/config.json"):
        record = json.loads(config.read_text())
        record["data"] = record["data_resolved"] = str(case / "moved-away")
        config.write_text(json.dumps(record))


def _unchanged(rel: str, content: str):
    def check(case: Path, base: dict, done) -> str | None:
        path = case / rel
        return None if path.is_file() and path.read_text() == content else f"{rel} was changed"
    return check


def _absent(rel: str):
    def check(case: Path, base: dict, done) -> str | None:
        return f"{rel} was written" if (case / rel).exists() else None
    return check


def _exists(rel: str):
    def check(case: Path, base: dict, done) -> str | None:
        return None if (case / rel).is_file() else f"{rel} was not written"
    return check


def _best_loads(rel: str):
    """Check: the last successful line of every run records the sha256 of the best.h5 on disk."""
    def check(case: Path, base: dict, done) -> str | None:
        from device.atomic import read_jsonl
        from device.checksum import sha256_file

        last = {}
        for line in read_jsonl(case / rel / "results.jsonl"):
            if isinstance(line, dict) and "error" not in line:
                last[line["run_id"]] = line
        for run_id, line in last.items():
            if line.get("checkpoint_sha256") != sha256_file(case / rel / line["run_dir"] / "best.h5"):
                return f"{run_id}: best.h5 differs from the sha256 its results line records"
        return None if last else "no successful run"
    return check


def _failed_or_finite(rel: str):
    def check(case: Path, base: dict, done) -> str | None:
        from device.atomic import read_jsonl

        for line in read_jsonl(case / rel / "results.jsonl"):
            if isinstance(line, dict) and "error" not in line:
                value = line.get("val_accuracy")
                if not isinstance(value, (int, float)) or value != value:
                    return f"a run with val_accuracy {value!r} counted as successful"
        return None
    return check


def _manifest_keeps_good(rel: str):
    def check(case: Path, base: dict, done) -> str | None:
        before = json.loads((case / rel / "manifest.json.before").read_text())
        after = json.loads((case / rel / "manifest.json").read_text())
        good = {a.get("id") for a in before.get("artifacts", []) if not a.get("error")}
        kept = {a.get("id") for a in after.get("artifacts", []) if not a.get("error")}
        lost = good - kept
        return f"good export records replaced: {sorted(lost)}" if lost else None
    return check


def _lines_with_error_or_latency(rel: str):
    def check(case: Path, base: dict, done) -> str | None:
        from device.atomic import read_jsonl

        rows = [r for r in read_jsonl(case / rel) if isinstance(r, dict)]
        bad = [r.get("artifact") for r in rows if "error" not in r and r.get("latency_ms_p50") is None]
        if not rows:
            return f"{rel}: no line written"
        return f"{rel}: lines with neither latency nor error: {bad}" if bad else None
    return check


def _bundle_without_bad(rel: str):
    """Check: no 0-byte image and not the model ``_damage_model`` damaged (the first .onnx by name)."""
    def check(case: Path, base: dict, done) -> str | None:
        import tarfile

        damaged = sorted((case / "exports").rglob("*.onnx"))[0].name
        with tarfile.open(case / rel) as tar:
            names = [m.name for m in tar.getmembers()]
            empty = [m.name for m in tar.getmembers() if m.isfile() and m.size == 0 and m.name.endswith((".png", ".jpg"))]
        if empty:
            return f"bundle ships 0-byte images {empty}"
        shipped = [n for n in names if n.endswith("/" + damaged)]
        return f"bundle ships the damaged model {shipped}" if shipped else None
    return check


# --- running -------------------------------------------------------------------------------


def _fill(argv: list[str], values: dict) -> list[str]:
    return [a.format(**values) if "{" in a else a for a in argv]


def run_case(case: Case, folder: Path, base: dict, servers: dict) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    values = {**base, "case": str(folder), **servers}
    if case.prepare:
        case.prepare(folder, base)
    env = {**os.environ}
    if case.prepare is _offline_keras_home:
        env["KERAS_HOME"] = str(folder / "keras-home")
    for command in case.before:
        subprocess.run(_fill(command, values), cwd=REPO, env=env, capture_output=True, timeout=case.timeout)
    argv = _fill(case.argv, values)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, errors="replace",
                              timeout=case.timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "HANG", "code": None, "message": f"no answer within {case.timeout:.0f}s", "seconds": case.timeout}
    seconds = time.perf_counter() - t0
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    message = said[-1] if said else ""
    if TRACEBACK in done.stderr or TRACEBACK in done.stdout:
        outcome = "TRACEBACK"
        message = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
    elif done.returncode not in case.expect:
        outcome = "UNEXPECTED EXIT"
    else:
        problem = case.check(folder, base, done) if case.check else None
        if problem:
            outcome, message = "SILENT WRONG", problem
        elif done.returncode == 2:
            outcome = "clear error"
        elif done.returncode == 3:
            outcome = "recorded failure"
        else:
            outcome = "handled"
    return {"outcome": outcome, "code": done.returncode, "message": _relative(message, folder, base),
            "seconds": round(seconds, 1)}


def _relative(text: str, folder: Path, base: dict) -> str:
    """``text`` with this machine's folders written as the table's placeholders."""
    text = text.replace(str(folder), "CASE")
    for name, path in sorted(base.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(path, "{" + name + "}")
    return text


def _shown(argv: list[str]) -> str:
    parts = []
    for a in argv:
        if a == PY:
            parts.append("python")
        elif a == BENCH:
            parts.append("bench")
        else:
            parts.append(a)
    return " ".join(parts)


def table(rows: list[dict]) -> str:
    lines = ["| # | Area | Fault | Command | Exit | Outcome | What the user sees |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        message = r["message"].replace("|", "\\|")[:160]
        lines.append(f"| {i} | {r['area']} | {r['what']} | `{r['command']}` | {r['code']} | {r['outcome']} | {message} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/fault-set", help="working folder (default: %(default)s)")
    p.add_argument("--only", help="run only the cases whose area or description contains this text")
    p.add_argument("--doc", help="rewrite the table between the fault-set markers of this Markdown file")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    base = build_base(out / "base")
    chosen = [c for c in cases() if not args.only or args.only in c.area or args.only in c.what]
    rows = []
    t0 = time.perf_counter()
    gone = {position_key(1.5, 2.5), position_key(3.5, 4.5)}  # the cutouts the 404 case asks for
    with SkyServer() as server, SkyServer(missing=gone) as server404:
        servers = {"server": server.base_url, "server404": server404.base_url}
        for i, case in enumerate(chosen, 1):
            result = run_case(case, out / "cases" / f"{i:03d}", base, servers)
            shown = _fill(case.argv, {**{k: f"{{{k}}}" for k in base}, "case": "CASE", "server": "URL",
                                      "server404": "URL"})
            row = {"area": case.area, "what": case.what, "command": _shown(shown), **result}
            rows.append(row)
            print(f"[{i}/{len(chosen)}] {case.area}: {case.what}: {result['outcome']} (exit {result['code']}, "
                  f"{result['seconds']}s) {result['message'][:120]}", flush=True)
    bad = [r for r in rows if r["outcome"] in BAD]
    counts = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"\nfault set: {len(rows)} cases in {time.perf_counter() - t0:.0f}s: "
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    (out / "fault-set.json").write_text(json.dumps(rows, indent=1))
    if args.doc:
        doc = Path(args.doc)
        text = doc.read_text()
        start, end = "<!-- fault-set: start -->", "<!-- fault-set: end -->"
        if start not in text or end not in text:
            print(f"error: {doc}: no {start} ... {end} markers", file=sys.stderr)
            return 2
        summary = (f"{len(rows)} cases; " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".\n\n")
        text = text[:text.index(start) + len(start)] + "\n" + summary + table(rows) + text[text.index(end):]
        doc.write_text(text)
    for r in bad:
        print(f"FAULT: {r['area']}: {r['what']}: {r['outcome']}: {r['message']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
