"""The report's calibration section: are a model's probabilities worth picking candidates by?

For every artifact scored on a device (its first kernel-mode line with per-image
probabilities), on the images ``bench run`` scored:

- the expected calibration error (15 bins) of the raw probabilities and after the
  artifact's temperature (fitted on validation images at export, so the scored images
  never chose it);
- a reliability diagram (accuracy against confidence, per bin, before and after);
- an accuracy-coverage curve: the accuracy of the answers kept when abstaining below a
  confidence (``skyedge classify --min-confidence``), against the share kept.

TensorFlow-free; the figures need matplotlib (``skyedge[report]``), as the rest of the report.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from device.calibration import ECE_BINS, SURVEY_MIX, accuracy_coverage, apply_temperature, \
    expected_calibration_error, mix_metrics, reliability_bins
from device.dataset import LABELS

COVERAGES = (1.0, 0.9, 0.8, 0.5)  # accuracy at these shares of images kept, in the table


def scored(lines: list[dict]) -> list[dict]:
    """One line per artifact that carries per-image probabilities (kernel mode preferred)."""
    chosen: dict[str, dict] = {}
    for line in lines:
        if "error" in line or not line.get("probabilities") or not line.get("label_indices"):
            continue
        if len(line["probabilities"]) != len(line["label_indices"]):
            continue
        aid = str(line.get("artifact_id"))
        if aid not in chosen or (chosen[aid].get("mode") != "kernel" and line.get("mode") == "kernel"):
            chosen[aid] = line
    return list(chosen.values())


def calibration_rows(lines: list[dict]) -> list[dict]:
    """Per artifact: ECE before and after its temperature, and accuracy at ``COVERAGES``."""
    rows = []
    for line in scored(lines):
        probs = np.asarray(line["probabilities"], dtype=np.float64)
        labels = np.asarray(line["label_indices"], dtype=int)
        temperature = line.get("temperature")
        scaled = apply_temperature(probs, temperature) if temperature else None
        coverage, accuracy, _ = accuracy_coverage(scaled if scaled is not None else probs, labels)
        at = {c: float(accuracy[max(0, int(math.ceil(c * len(labels))) - 1)]) for c in COVERAGES}
        rows.append({"artifact_id": line.get("artifact_id"), "n": len(labels), "temperature": temperature,
                     "ece": expected_calibration_error(probs, labels),
                     "ece_scaled": expected_calibration_error(scaled, labels) if scaled is not None else None,
                     "accuracy_at": at, "probs": probs, "scaled": scaled, "labels": labels})
    return rows


def section(device: str, lines: list[dict], out: Path, slug: str) -> tuple[list[str], list[Path]]:
    """Markdown lines and figures of one device's calibration section."""
    rows = calibration_rows(lines)
    if not rows:
        return [f"No line of {device} carries per-image probabilities (made by a bench run older than this "
                f"section), so calibration is not shown.", ""], []
    md = [f"Expected calibration error (ECE, {ECE_BINS} bins of the top-class confidence) on the {rows[0]['n']} "
          f"scored images, raw and after each artifact's temperature T (fitted on the validation images at export: "
          f"the scored images chose nothing). Lower is better; 0 means the confidence is the accuracy. Accuracy "
          f"when abstaining below a confidence, at the share of images kept (after T).", "",
          "| Artifact | T | ECE raw | ECE after T | " + " | ".join(f"acc @ {int(100 * c)}% kept" for c in COVERAGES) + " |",
          "|---|---|---|---|" + "---|" * len(COVERAGES)]
    for r in sorted(rows, key=lambda r: str(r["artifact_id"])):
        t = f"{r['temperature']:.3g}" if r["temperature"] else "none"
        after = f"{100 * r['ece_scaled']:.1f}%" if r["ece_scaled"] is not None else "-"
        md.append(f"| {r['artifact_id']} | {t} | {100 * r['ece']:.1f}% | {after} | "
                  + " | ".join(f"{100 * r['accuracy_at'][c]:.1f}%" for c in COVERAGES) + " |")
    md.append("")
    figures = [_reliability_figure(rows, out / f"reliability-{slug}.png", device),
               _coverage_figure(rows, out / f"accuracy-coverage-{slug}.png", device)]
    md += [f"![reliability diagrams, {device}]({figures[0].name})", "",
           f"![accuracy against coverage, {device}]({figures[1].name})", ""]
    return md, figures


def _reliability_figure(rows: list[dict], path: Path, device: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, label="perfect")
        curves = [(r["probs"], f"raw (ECE {100 * r['ece']:.1f}%)", "o-")]
        if r["scaled"] is not None:
            curves.append((r["scaled"], f"T={r['temperature']:.3g} (ECE {100 * r['ece_scaled']:.1f}%)", "s-"))
        for probs, name, style in curves:
            bins = [b for b in reliability_bins(probs, r["labels"]) if b.count]
            ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], style, ms=3, lw=1, label=name)
        ax.set_title(str(r["artifact_id"]), fontsize=7)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.set_xlim(0.3, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"Reliability, {device} (the model's format is in each title)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _coverage_figure(rows: list[dict], path: Path, device: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in sorted(rows, key=lambda r: str(r["artifact_id"])):
        coverage, accuracy, _ = accuracy_coverage(r["scaled"] if r["scaled"] is not None else r["probs"], r["labels"])
        ax.plot(coverage, accuracy, lw=1, label=str(r["artifact_id"]))
    ax.set_xlabel("share of images kept (abstaining below a confidence)")
    ax.set_ylabel("accuracy of the kept answers")
    ax.set_xlim(0, 1)
    ax.set_title(f"Accuracy against coverage, {device}", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mix_rows(lines: list[dict], mix=SURVEY_MIX) -> list[dict]:
    """Per artifact: accuracy on the scored images as they are and under ``mix`` (images
    reweighted, probabilities temperature-scaled and moved to ``mix`` from the training mix),
    with each class's purity and completeness under ``mix``."""
    rows = []
    for line in scored(lines):
        probs = np.asarray(line["probabilities"], dtype=np.float64)
        labels = np.asarray(line["label_indices"], dtype=int)
        if line.get("temperature"):
            probs = apply_temperature(probs, line["temperature"])
        prior = line.get("train_prior") or [1.0 / len(LABELS)] * len(LABELS)
        on_mix = mix_metrics(probs, labels, prior, mix)
        rows.append({"artifact_id": line.get("artifact_id"), "n": len(labels),
                     "scored_accuracy": float(np.mean(probs.argmax(1) == labels)), "mix_accuracy": on_mix["accuracy"],
                     "purity": on_mix["purity"], "completeness": on_mix["completeness"],
                     "prior_known": bool(line.get("train_prior"))})
    return sorted(rows, key=lambda r: str(r["artifact_id"]))


def mix_section(device: str, lines: list[dict], mix=SURVEY_MIX) -> list[str]:
    """Markdown: every model's accuracy on the study's class mix, with purity and completeness."""
    rows = mix_rows(lines, mix)
    if not rows:
        return [f"No line of {device} carries per-image probabilities, so the mix is not shown.", ""]
    shares = ", ".join(f"{100 * m:g}% {label}" for label, m in zip(LABELS, mix))
    md = [f"The {rows[0]['n']} scored images reweighted to the study's mix ({shares}), each model answering with "
          f"its probabilities moved to that mix from its training mix by Bayes' rule (as `skyedge classify --prior "
          f"survey`). Completeness is a class's recall; purity, the share of the objects it calls that class that "
          f"are (precision), under the mix.", "",
          "| Artifact | Accuracy (scored images) | Accuracy (study's mix) | "
          + " | ".join(f"{label} purity / completeness" for label in LABELS) + " |",
          "|---|---|---|" + "---|" * len(LABELS)]
    pct = lambda v: "n/a" if v != v else f"{100 * v:.1f}%"  # noqa: E731 (nan != nan)
    for r in rows:
        name = r["artifact_id"] if r["prior_known"] else f"{r['artifact_id']} (training mix unknown: balanced assumed)"
        cells = [pct(r["scored_accuracy"]), pct(r["mix_accuracy"])]
        cells += [f"{pct(r['purity'][c])} / {pct(r['completeness'][c])}" for c in range(len(LABELS))]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    return md + [""]
