"""The floors in ``bench report``: the majority class and the feature baseline scored on the
same images as the models (``bench floors`` files), each model paired with them, and the
verdict's reasons when no model beats them. TensorFlow-free."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.verdict import DeviceVerdict, percent
from device.metrics import mcnemar
from device.sweep_tables import markdown_table
from bench.report_tables import majority_share


def read_floors_file(path: str | os.PathLike) -> dict:
    """A ``bench floors`` file, checked for the fields the pairing needs.

    Raises:
        ValueError: missing, not JSON, or without the per-image lists; the message names it.
    """
    import json

    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--floors {path}: cannot read ({exc.strerror or exc})") from None
    except ValueError:
        raise ValueError(f"--floors {path}: not JSON; expected a file written by `bench floors`") from None
    need = ("images_sha256", "label_indices", "features_pred_indices", "features_accuracy", "majority_accuracy")
    if not isinstance(record, dict) or any(k not in record for k in need):
        raise ValueError(f"--floors {path}: expected a file written by `bench floors` (with {', '.join(need)})")
    return {**record, "_source": str(path)}


def floors_pairs(files: list[dict], verdicts: dict, alpha: float) -> tuple[list[dict], int]:
    """Each model point paired with the floors file scored on its very images.

    Returns:
        ``(pairs, unmatched)``: one dict per paired point (device, artifact, accuracies,
        McNemar b, c and p against the feature baseline, ``beats``), and how many points
        had no floors file on their images or no per-image predictions.
    """
    by_images = {f["images_sha256"]: f for f in files}
    pairs, unmatched = [], 0
    for device, v in verdicts.items():
        for point in sorted(v.points, key=lambda p: -p.accuracy):
            floor = by_images.get(point.line.get("images_sha256"))
            pred, truth = point.line.get("pred_indices"), point.line.get("label_indices")
            if floor is None or not pred or truth != floor["label_indices"]:
                unmatched += 1
                continue
            truth = np.asarray(truth)
            test = mcnemar(np.asarray(pred) == truth, np.asarray(floor["features_pred_indices"]) == truth)
            pairs.append({"device": device, "artifact_id": point.artifact_id, "label": point.label,
                          "family": point.family, "accuracy": point.accuracy, "floors": floor["_source"],
                          "features_accuracy": floor["features_accuracy"],
                          "majority_accuracy": floor["majority_accuracy"], "b": test["b"], "c": test["c"],
                          "n": test["n"], "p_value": test["p_value"], "accuracy_diff": test["accuracy_diff"],
                          "beats_features": bool(test["accuracy_diff"] > 0 and test["p_value"] < alpha)})
    return pairs, unmatched


def floors_section(files: list[dict], pairs: list[dict], unmatched: int, alpha: float) -> list[str]:
    """Each model against the floors scored on the very same images (McNemar, exact)."""
    if not files:
        return []
    lines = ["## Against the floors on the same images", ""]
    for f in files:
        lines.append(f"- `{f['_source']}`: {f.get('n')} `{f.get('split')}` images of `{f.get('data')}`; floors fitted "
                     f"on the training split of `{f.get('train_data')}`: always {f.get('majority_class')} "
                     f"{percent(f['majority_accuracy'])}, logistic regression on image features "
                     f"{percent(f['features_accuracy'])} [{percent(f.get('features_accuracy_ci_low'))}, "
                     f"{percent(f.get('features_accuracy_ci_high'))}].")
    lines += [""]
    if pairs:
        lines += [f"McNemar's exact test of each model against the feature baseline on the same images (b and c "
                  f"as stated at the top). Beats it: higher accuracy and p < {alpha:g}.", ""]
        lines += markdown_table(["Device", "Model", "Family", "Accuracy", "Feature floor", "Difference (points)", "b / c",
                         "McNemar p", "Beats it"],
                        [[q["device"], q["label"], q["family"], percent(q["accuracy"]), percent(q["features_accuracy"]),
                          f"{100 * q['accuracy_diff']:+.1f}", f"{q['b']} / {q['c']}", f"{q['p_value']:.2g}",
                          "yes" if q["beats_features"] else "no"] for q in pairs])
    if unmatched:
        lines += [f"{unmatched} model line(s) were scored on other images than any floors file, or carry no "
                  f"per-image predictions; they are not paired.", ""]
    return lines


def device_floors(v: DeviceVerdict, pairs: list[dict]) -> dict:
    """The floors drawn on a device's plots: the majority class (from the scored labels) and the
    feature floor where a floors file was scored on the same images."""
    labels = next((p.line.get("label_indices") for p in v.points if p.line.get("label_indices")), None)
    mine = [q for q in pairs if q["device"] == v.device]
    return {"majority": majority_share(labels) if labels else None,
            "features": mine[0]["features_accuracy"] if mine else None}


def floor_reasons(verdicts: dict, pairs: list[dict], alpha: float) -> None:
    """Add to each device's reasons whether any model beats the feature floor on its images."""
    for device, v in verdicts.items():
        mine = [q for q in pairs if q["device"] == device]
        if not mine:
            continue
        beat = [q for q in mine if q["beats_features"]]
        floor = percent(mine[0]["features_accuracy"])
        v.reasons.append(f"Against the feature floor ({floor} on the same images, McNemar at alpha {alpha:g}): "
                         + (f"{len(beat)} of {len(mine)} models beat it." if beat else
                            "no model beats it, so none of these accuracies is evidence of a learnt image "
                            "classifier beyond six hand-made measurements, and the verdict compares models "
                            "that are no better than that floor."))
