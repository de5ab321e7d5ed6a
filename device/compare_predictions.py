"""Same models, same images, two machines: do they predict the same?

    python -m device.compare_predictions predict --models EXPORTS --out PROBS.json [--data DIR]
    python -m device.compare_predictions compare A.json B.json [--lines A.jsonl B.jsonl] [--atol 1e-4]

``predict`` runs every artifact of an exports manifest on the validation images, exactly as
``bench.worker`` prepares them (decode, resize, the runtime's own input quantization), and
writes each image's class probabilities with the machine's architecture and a hash of the
decoded pixels. ``compare`` reads two such files (an x86 host and an arm64 device, or the
same under emulation) and prints one row per artifact. It fails when a float model's
probabilities differ by more than ``atol`` anywhere, or when a quantized model predicts a
different class for any image: integer kernels may round differently by one step between
instruction sets, which may move a probability a little but should not move a prediction on
these images. With ``--lines`` it also checks that ``bench run`` recorded the same predicted
classes for each artifact on both machines.

No TensorFlow: this runs on the device.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

from device.atomic import read_jsonl, write_json
from device.command import Exit, run_command

FLOAT_VARIANTS = ("fp32", "fp16")
DEFAULT_ATOL = 1e-4


def predict_exports(models: Path, data: Path | None = None, split: str = "test") -> dict:
    """Class probabilities of every artifact on a split.

    Args:
        models: exports folder with ``manifest.json``.
        data: the dataset (default: each artifact's ``data``, else ``models/data``).
        split: the split to predict.

    Returns:
        ``{"arch", "python", "runtimes", "artifacts": {artifact_id: {"variant", "format",
        "paths", "pixels_sha256", "probs"}}}``; an artifact that cannot run has ``error``.

    Raises:
        ValueError: no manifest, or an artifact with no dataset.
    """
    from device.dataset import open_dataset
    from device.runtime import load

    from device import exports_manifest

    out: dict = {"arch": platform.machine(), "python": platform.python_version(), "runtimes": {}, "artifacts": {}}
    for artifact in exports_manifest.read_artifacts(models):
        if artifact.get("error"):
            continue
        aid = str(artifact.get("artifact_id"))
        root = _data_for(Path(models), artifact, data)
        size = int((artifact.get("input_shape") or [1, artifact.get("img_size")])[1])
        arrays = open_dataset(root).load_arrays(split, size)
        entry = {"variant": artifact.get("variant"), "format": artifact.get("format"),
                 "paths": [r.path for r in arrays.records],
                 "pixels_sha256": hashlib.sha256(arrays.images.tobytes()).hexdigest()}
        try:
            model = load(Path(models) / str(artifact["file"]))
            entry["probs"] = [model.probabilities(model.invoke(model.prepare(img))).tolist() for img in arrays.images]
            out["runtimes"][model.package] = model.version
        except Exception as exc:  # one broken artifact is a row of the comparison, not the end of it
            entry["error"] = f"{type(exc).__name__}: {exc}"
        out["artifacts"][aid] = entry
    return out


def read_prediction_file(path: Path) -> dict:
    """A file written by ``predict``.

    Raises:
        ValueError: not JSON, or not a predictions file (names the file and what was expected).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not JSON ({exc}); expected a file written by "
                         f"`python -m device.compare_predictions predict`") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict) or "arch" not in data:
        raise ValueError(f"{path}: no 'arch' and 'artifacts'; expected a file written by "
                         f"`python -m device.compare_predictions predict`")
    return data


def _data_for(models: Path, artifact: dict, data: Path | None) -> Path:
    if data is not None:
        return Path(data)
    declared = artifact.get("data")
    if declared and (Path(declared) if Path(declared).is_absolute() else models / declared).is_dir():
        return Path(declared) if Path(declared).is_absolute() else models / declared
    if (models / "data").is_dir():
        return models / "data"
    raise ValueError(f"{artifact.get('artifact_id')}: no dataset ({declared!r} missing, no {models / 'data'}); "
                     "pass --data")


def compare(a: dict, b: dict, atol: float = DEFAULT_ATOL, lines_a=None, lines_b=None) -> tuple[list[dict], bool]:
    """Compare two ``predict_exports`` results artifact by artifact.

    Args:
        a, b: the two results (``a`` is the reference, e.g. x86).
        atol: largest allowed absolute probability difference for a float model.
        lines_a, lines_b: optional ``bench run`` lines of the two machines; their
            ``pred_indices`` of the same artifact must then be equal too.

    Returns:
        ``(rows, ok)``: one dict per artifact (``artifact_id``, ``variant``, ``format``,
        ``images``, ``same_pixels``, ``max_abs_diff``, ``class_changes``, ``bench_same``,
        ``rule``, ``ok``, ``why``) and whether every row passed.
    """
    bench_a = _bench_preds(lines_a)
    bench_b = _bench_preds(lines_b)
    rows = []
    for aid in sorted(set(a["artifacts"]) | set(b["artifacts"])):
        ea, eb = a["artifacts"].get(aid), b["artifacts"].get(aid)
        row = {"artifact_id": aid, "variant": (ea or eb).get("variant"), "format": (ea or eb).get("format"),
               "images": None, "same_pixels": None, "max_abs_diff": None, "class_changes": None,
               "bench_same": None, "ok": False, "why": ""}
        is_float = str(row["variant"]) in FLOAT_VARIANTS
        row["rule"] = f"max abs diff <= {atol:g}" if is_float else "same predicted classes"
        if ea is None or eb is None:
            row["why"] = f"only on {a['arch'] if eb is None else b['arch']}"
        elif ea.get("error") or eb.get("error"):
            row["why"] = "; ".join(f"{m['arch']}: {e['error']}" for m, e in ((a, ea), (b, eb)) if e.get("error"))
        elif ea["paths"] != eb["paths"]:
            row["why"] = "different images"
        else:
            pa, pb = np.asarray(ea["probs"], dtype=np.float64), np.asarray(eb["probs"], dtype=np.float64)
            row["images"] = len(ea["paths"])
            row["same_pixels"] = ea["pixels_sha256"] == eb["pixels_sha256"]
            row["max_abs_diff"] = float(np.max(np.abs(pa - pb))) if pa.size else 0.0
            row["class_changes"] = int(np.sum(pa.argmax(axis=1) != pb.argmax(axis=1)))
            if is_float:
                row["ok"] = row["max_abs_diff"] <= atol
                row["why"] = "" if row["ok"] else f"probabilities differ by {row['max_abs_diff']:.2g} > {atol:g}"
            else:
                row["ok"] = row["class_changes"] == 0
                row["why"] = "" if row["ok"] else f"{row['class_changes']} image(s) change class"
            if not row["same_pixels"]:
                row["why"] = (row["why"] + "; " if row["why"] else "") + "decoded pixels differ"
        if bench_a is not None and bench_b is not None and aid in bench_a and aid in bench_b:
            row["bench_same"] = bench_a[aid] == bench_b[aid]
            if not row["bench_same"]:
                row["ok"] = False
                row["why"] = (row["why"] + "; " if row["why"] else "") + "bench run predictions differ"
        rows.append(row)
    return rows, bool(rows) and all(r["ok"] for r in rows)


def _bench_preds(lines) -> dict | None:
    if lines is None:
        return None
    return {str(line.get("artifact_id")): list(line.get("pred_indices") or []) for line in lines
            if not line.get("error") and line.get("pred_indices") is not None}


def format_table(rows: list[dict], arch_a: str, arch_b: str) -> str:
    """The comparison as a Markdown table."""
    def cell(value):
        if value is None:
            return "n/a"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.2e}"
        return str(value)

    header = ["Artifact", "Variant", "Format", "Images", "Same pixels", f"Max abs prob diff {arch_a} vs {arch_b}",
              "Class changes", "bench run same", "Rule", "Result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        result = "PASS" if r["ok"] else f"FAIL ({r['why']})"
        lines.append("| " + " | ".join(cell(v) for v in (r["artifact_id"], r["variant"], r["format"], r["images"],
                                                          r["same_pixels"], r["max_abs_diff"], r["class_changes"],
                                                          r["bench_same"], r["rule"], result)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every artifact passes (``compare``) or the file was written (``predict``);
        1 when a comparison fails; 2 for unusable input.
    """
    parser = argparse.ArgumentParser(prog="python -m device.compare_predictions",
                                     description="Write or compare per-image predictions of exported models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict every artifact of an exports folder")
    p.add_argument("--models", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--split", default="test", help="images to predict (default test)")
    c = sub.add_parser("compare", help="compare two prediction files")
    c.add_argument("a", type=Path, help="reference predictions (e.g. x86)")
    c.add_argument("b", type=Path, help="predictions to check (e.g. arm64)")
    c.add_argument("--lines", type=Path, nargs=2, metavar=("A.jsonl", "B.jsonl"),
                   help="bench run results of the two machines")
    c.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    c.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    return run_command(lambda: _predict(args) if args.command == "predict" else _compare(args), (ValueError, KeyError))


def _predict(args: argparse.Namespace) -> int:
    result = predict_exports(args.models, args.data, args.split)
    write_json(args.out, result)
    print(f"{len(result['artifacts'])} artifact(s) predicted on {result['arch']} -> {args.out}")
    return Exit.OK


def _compare(args: argparse.Namespace) -> int:
    a, b = read_prediction_file(args.a), read_prediction_file(args.b)
    lines = [read_jsonl(path) for path in args.lines] if args.lines else (None, None)
    rows, ok = compare(a, b, args.atol, *lines)
    print(format_table(rows, a["arch"], b["arch"]))
    print(f"runtimes {a['arch']}: {a['runtimes']}; {b['arch']}: {b['runtimes']}")
    if args.out:
        write_json(args.out, {"arch_a": a["arch"], "arch_b": b["arch"], "atol": args.atol, "ok": ok, "rows": rows})
    print("PASS: predictions agree" if ok else "FAIL: predictions differ (see the table)")
    return Exit.OK if ok else Exit.DIFFERS


if __name__ == "__main__":
    sys.exit(main())
