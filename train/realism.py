"""How close simulated cutouts are to real SDSS ones: the same statistics on both sets.

Per image (RGB, 0-255, after JPEG decoding): per-channel background level and noise (3-sigma
clipped mean and standard deviation of the border pixels); for the central object, the
background-subtracted flux in a central aperture (sum of the three channels), its peak,
half-light radius and colours (normalised R-G and G-B differences of the aperture fluxes).
A multinomial logistic regression on a handful of these features, trained on a stratified
70% and tested on 30%, says how separable the classes are from such simple cues; a
simulation far more separable than the sky is too easy.

    python -m train.realism --synth DIR --real DIR [--n 600]
"""
from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.atomic import write_bytes, write_json
from device.baseline import STATS, LogisticRegression, features, image_stats
from device.dataset import LABELS, read_manifest
from device.images import read_rgb, resize



def stratified_indices(labels: np.ndarray, seed: int, train: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split (``train`` fraction of each class)."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * train))
        tr.extend(idx[:k])
        te.extend(idx[k:])
    return np.sort(np.array(tr)), np.sort(np.array(te))


def logistic_accuracy(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 2000,
                      lr: float = 0.5, l2: float = 1e-3) -> float:
    """Test accuracy of a multinomial logistic regression (numpy, full-batch gradient descent).

    Args:
        x: (N, F) features.
        y: (N,) class indices.
        seed: fixes the stratified 70/30 split.
        steps, lr, l2: optimisation settings.

    Returns:
        Accuracy on the 30% test part.
    """
    confusion = logistic_confusion(x, y, seed=seed, steps=steps, lr=lr, l2=l2)
    return float(np.trace(confusion) / confusion.sum())


def logistic_confusion(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 2000,
                       lr: float = 0.5, l2: float = 1e-3) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted) of ``logistic_accuracy``'s model.

    Args and the split are those of ``logistic_accuracy``.

    Returns:
        (K, K) int array of test counts.
    """
    tr, te = stratified_indices(y, seed)
    k = int(y.max()) + 1
    model = LogisticRegression.fit(x[tr], y[tr], n_classes=k, steps=steps, lr=lr, l2=l2)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y[te], model.predict(x[te])), 1)
    return confusion


@dataclass(frozen=True)
class SetStats:
    """Statistics of one image set: per image stats and labels."""

    name: str
    stats: list
    labels: np.ndarray


def balanced_sample(paths_labels: list[tuple[Path, str]], n: int, seed: int) -> list[tuple[Path, str]]:
    """Up to ``n // 3`` images per class, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    out = []
    for label in LABELS:
        group = sorted(p for p in paths_labels if p[1] == label)
        pick = rng.permutation(len(group))[: n // len(LABELS)]
        out.extend(group[i] for i in sorted(pick))
    return out


def real_images(root: Path) -> list[tuple[Path, str]]:
    """(path, label) of the ``dev`` subset of the shared SDSS set."""
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(root / r["path"], r["label"]) for r in csv.DictReader(fh) if r["subset"] == "dev"]


def synth_images(root: Path) -> list[tuple[Path, str]]:
    """(path, label) of every image of a dataset folder with a manifest."""
    dataset = read_manifest(root)
    return [(dataset.resolve(r), r.label) for r in dataset.records]


def measure(name: str, items: list[tuple[Path, str]], size: int = 128) -> SetStats:
    """Decode each image (resized to ``size`` if needed) and compute its statistics."""
    stats = []
    for path, _ in items:
        image = read_rgb(path)
        if image.shape[:2] != (size, size):
            image = resize(image, size)
        stats.append(image_stats(image))
    labels = np.array([LABELS.index(label) for _, label in items])
    return SetStats(name=name, stats=stats, labels=labels)


def summarise(sets: list[SetStats], seed: int = 0, repeats: int = 5) -> dict:
    """Median and IQR of every statistic per class and set, and the classifier accuracy.

    The accuracy is the mean (and standard deviation) over ``repeats`` stratified 70/30
    splits (seeds ``seed`` .. ``seed + repeats - 1``): one split of a few hundred images
    moves it by several points.
    """
    out: dict = {"stats": {}, "accuracy": {}}
    for s in sets:
        table = {}
        for c, label in enumerate(LABELS):
            rows = [st for st, lab in zip(s.stats, s.labels) if lab == c]
            table[label] = {}
            for key in STATS:
                values = np.array([r[key] for r in rows], dtype=np.float64)
                values = values[np.isfinite(values)]
                q1, med, q3 = np.percentile(values, [25, 50, 75]) if len(values) else (np.nan,) * 3
                table[label][key] = {"median": round(float(med), 4), "q1": round(float(q1), 4),
                                     "q3": round(float(q3), 4)}
        out["stats"][s.name] = table
        confusions = [logistic_confusion(features(s.stats), s.labels, seed=seed + k) for k in range(repeats)]
        accs = [np.trace(c) / c.sum() for c in confusions]
        out["accuracy"][s.name] = round(float(np.mean(accs)), 4)
        out.setdefault("accuracy_std", {})[s.name] = round(float(np.std(accs)), 4)
        out.setdefault("confusion", {})[s.name] = np.sum(confusions, axis=0).tolist()
        out.setdefault("n", {})[s.name] = {label: int((s.labels == c).sum()) for c, label in enumerate(LABELS)}
    return out


def markdown_table(summary: dict) -> str:
    """The per-class statistics of ``summary`` as a Markdown table (real vs synthetic)."""
    names = list(summary["stats"])
    lines = ["| class | statistic | " + " | ".join(f"{n} median [IQR]" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for label in LABELS:
        for key in STATS:
            cells = []
            for n in names:
                v = summary["stats"][n][label][key]
                cells.append(f"{v['median']:.3g} [{v['q1']:.3g}, {v['q3']:.3g}]")
            lines.append(f"| {label} | {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_histograms(sets: list[SetStats], path: str | Path,
                    keys: tuple[str, ...] = ("noise_G", "flux", "peak", "hlr", "colour_RG", "colour_GB")) -> Path:
    """Save per-class histograms of ``keys``, one outline per set, as a PNG.

    Args:
        sets: the measured sets (e.g. real and synthetic).
        path: the PNG to write.
        keys: statistics to plot, one column each; fluxes are shown as log10.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(LABELS), len(keys), figsize=(3.0 * len(keys), 2.4 * len(LABELS)))
    for row, label in enumerate(LABELS):
        for col, key in enumerate(keys):
            ax = axes[row, col]
            per_set = []
            for s in sets:
                v = np.array([st[key] for st, lab in zip(s.stats, s.labels) if LABELS[lab] == label], dtype=float)
                v = v[np.isfinite(v)]
                if key in ("flux", "peak"):
                    v = np.log10(np.clip(v, 1.0, None))
                per_set.append(v)
            lo, hi = np.percentile(np.concatenate(per_set), [1, 99])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
            for s, v in zip(sets, per_set):
                ax.hist(v, bins=bins, histtype="step", density=True, label=s.name)
            if row == 0:
                ax.set_title(f"log10 {key}" if key in ("flux", "peak") else key, fontsize=9)
            if col == 0:
                ax.set_ylabel(label)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def compare(synth: str | Path, real: str | Path, n: int = 600, seed: int = 0,
            figure: str | Path | None = None) -> dict:
    """Measure a balanced sample of ``n`` images from each set and summarise both.

    Args:
        synth: a synthetic dataset folder (with ``manifest.csv``).
        real: the shared SDSS folder (its ``dev`` subset is used).
        n: images per set (a third per class).
        seed: fixes the samples and the classifier split.
        figure: optional PNG path for per-class histograms (``plot_histograms``).

    Returns:
        ``summary`` as from ``summarise`` plus ``table`` (Markdown).

    Raises:
        FileNotFoundError: a folder or its labels/manifest file is missing.
    """
    real, synth = Path(real), Path(synth)
    if not (real / "labels.csv").is_file():
        raise FileNotFoundError(f"{real}: no labels.csv; expected the shared SDSS DR16 folder")
    sets = [measure("real", balanced_sample(real_images(real), n, seed)),
            measure("synth", balanced_sample(synth_images(synth), n, seed))]
    summary = summarise(sets, seed=seed)
    summary["table"] = markdown_table(summary)
    if figure is not None:
        summary["figure"] = str(plot_histograms(sets, figure))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare synthetic and real SDSS cutouts.")
    parser.add_argument("--synth", required=True, help="synthetic dataset folder")
    parser.add_argument("--real", required=True, help="shared SDSS DR16 folder (dev subset used)")
    parser.add_argument("--n", type=int, default=600, help="images per set, balanced over classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the summary as JSON here")
    parser.add_argument("--figure", help="also write per-class histograms (PNG) here")
    args = parser.parse_args(argv)
    summary = compare(args.synth, args.real, n=args.n, seed=args.seed, figure=args.figure)
    print(summary["table"])
    print()
    for name, acc in summary["accuracy"].items():
        print(f"logistic regression accuracy ({name}, mean of 5 stratified 70/30 splits): "
              f"{acc:.3f} +- {summary['accuracy_std'][name]:.3f}; confusion summed over the splits "
              f"(rows true {'/'.join(LABELS)}): {summary['confusion'][name]}")
    if args.json:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    if args.figure:
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
