"""The report's figures: accuracy against a cost (p50 latency, model size) per device, with
the Pareto front, the latency budgets and labels placed where they overlap nothing.

matplotlib is imported only when a figure is drawn (Figure and the Agg canvas, no pyplot).
"""
from __future__ import annotations

import io
import math

import numpy as np

from bench.verdict import Point

FIGSIZE = (8.0, 5.6)
DPI = 120

STYLE = {True: ("o", "tab:blue", "mobile backbone"), False: ("s", "tab:red", "non-mobile backbone"),
         None: ("^", "tab:gray", "backbone of unknown family")}


def plot_front(points: list[Point], front: list[Point], cost, xlabel: str, title: str, budgets=(),
               floors: dict | None = None) -> bytes:
    """Accuracy against ``cost`` (log scale): one point per model with its interval, the Pareto
    front, the latency budgets, and the floors on the same images as horizontal lines
    (``floors``: ``{"majority": share, "features": share or None}``)."""
    # Figure + the Agg canvas directly rather than pyplot, as train.summary does: no global
    # backend switch, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    shown = [p for p in points if cost(p) is not None and cost(p) > 0]
    handles = []
    for family, (marker, colour, name) in STYLE.items():
        members = [p for p in shown if p.mobile is family]
        if not members:
            continue
        x = np.array([cost(p) for p in members])
        y = np.array([100 * p.accuracy for p in members])
        err = np.clip(np.array([[100 * (p.accuracy - p.ci_low) for p in members],
                                [100 * (p.ci_high - p.accuracy) for p in members]]), 0, None)
        ax.errorbar(x, y, yerr=err, fmt=marker, color=colour, capsize=3, markersize=7, linestyle="none", zorder=3)
        handles.append(Line2D([], [], marker=marker, color=colour, linestyle="none", markersize=7, label=name))
    steps: tuple[list, list] = ([], [])
    if front:
        xs = [cost(p) for p in front]
        ys = [100 * p.accuracy for p in front]
        # The best accuracy stays on offer at any higher cost: carry the last step to the
        # costliest point, so a front of one model still shows as a line.
        right = max(cost(p) for p in shown)
        if right > xs[-1]:
            xs, ys = xs + [right], ys + [ys[-1]]
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1.2, zorder=2)
        steps = (xs, ys)
        ax.scatter([cost(p) for p in front], [100 * p.accuracy for p in front], s=170, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=4)
        handles.append(Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
                              markersize=10, label="Pareto front"))
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)
    _annotate(ax, shown, cost, front, steps)
    lo, hi = ax.get_xlim()
    inside = [b for b in budgets if lo <= b <= hi]
    for budget in inside:
        ax.axvline(budget, color="tab:green", linestyle=":", linewidth=1, zorder=1)
        ax.text(budget, 1.0, f" {budget:g} ms", transform=ax.get_xaxis_transform(), fontsize=8,
                color="tab:green", va="bottom", ha="center")
    if inside:
        handles.append(Line2D([], [], color="tab:green", linestyle=":", label="p50 latency budget"))
    for key, colour, name in (("features", "tab:red", "feature floor"), ("majority", "0.45", "majority class")):
        value = (floors or {}).get(key)
        if value is not None:
            ax.axhline(100 * value, color=colour, linestyle="-." if key == "features" else ":", linewidth=1.1, zorder=1)
            handles.append(Line2D([], [], color=colour, linestyle="-." if key == "features" else ":",
                                  label=f"{name} {100 * value:.1f}%"))
    # Plain numbers read better than powers of ten for milliseconds and megabytes.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Over a decade or two the few major ticks do not give a value away: label the minor ticks
    # at 2, 3 and 5 times a power of ten as well; over more decades they would crowd.
    decades = math.log10(max(cost(p) for p in shown) / min(cost(p) for p in shown)) if shown else 3.0
    ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label) if decades < 2.0 else NullFormatter())
    ax.set_xlabel(xlabel)
    splits = {str(p.line.get("split") or "validation") for p in shown}
    split = splits.pop() if len(splits) == 1 else None
    ax.set_ylabel(f"accuracy on the {'validation' if split == 'val' else split} images (%)" if split else "accuracy (%)")
    ax.set_title(title, pad=18 if inside else 6)
    ax.grid(True, which="both", alpha=0.25)
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(handles),
                  fontsize="small", frameon=False)
    fig.text(0.99, 0.01, "error bars: Wilson 95% interval of accuracy", ha="right", va="bottom", fontsize=7,
             color="dimgray")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _minor_label(value: float, _position) -> str:
    # 2, 3 and 5 times a power of ten: enough to read a value off, sparse enough not to collide.
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
    return f"{value:g}" if mantissa in (2.0, 3.0, 5.0) else ""


def _annotate(ax, points: list[Point], cost, front: list[Point] = (), steps: tuple[list, list] = ([], [])) -> None:
    # Each label takes the first of a few positions around its point that overlaps nothing:
    # no label placed before it, no marker or error bar, and stays inside the axes. When every
    # position overlaps something, it takes the least bad one (another label counts most, then
    # leaving the axes, then a marker or error bar), so clusters of models with similar latency
    # and accuracy stay readable.
    from matplotlib.transforms import Bbox

    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = ax.figure.canvas.get_renderer()
    pixels = ax.figure.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    obstacles = []
    for p in points:
        x, y = ax.transData.transform((cost(p), 100 * p.accuracy))
        low = ax.transData.transform((cost(p), 100 * p.ci_low))[1]
        high = ax.transData.transform((cost(p), 100 * p.ci_high))[1]
        half = 4 * pixels  # the marker (7 pt) and the error bar's caps (3 pt)
        ring = 7 * pixels if any(p is q for q in front) else half  # the Pareto front's circle
        obstacles += [Bbox([[x - ring, y - ring], [x + ring, y + ring]]),
                      Bbox([[x - half, min(low, high)], [x + half, max(low, high)]])]
    # the front's dashed step line: each horizontal and vertical piece as a thin box
    xs, ys = steps
    for i in range(len(xs) - 1):
        (x0, y0), (x1, y1) = ax.transData.transform((xs[i], ys[i])), ax.transData.transform((xs[i + 1], ys[i + 1]))
        obstacles += [Bbox([[x0, y0 - pixels], [x1, y0 + pixels]]),
                      Bbox([[x1 - pixels, min(y0, y1)], [x1 + pixels, max(y0, y1)]])]
    # beside the point first, then above or below it, then further away
    offsets = ((9, 0), (6, 7), (6, -7), (-9, 0), (-6, 7), (-6, -7), (6, 17), (6, -17), (-6, 17), (-6, -17),
               (6, 27), (6, -27), (-6, 27), (-6, -27))
    placed = []
    for p in sorted(points, key=lambda q: (cost(q), q.accuracy)):
        text = f"{p.backbone} {p.variant} ({p.format})"
        best = None
        for dx, dy in offsets:
            label = ax.annotate(text, (cost(p), 100 * p.accuracy), xytext=(dx, dy), textcoords="offset points",
                                fontsize=7.5, ha="left" if dx > 0 else "right",
                                va="center" if dy == 0 else "bottom" if dy > 0 else "top")
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            badness = (100 * sum(box.overlaps(other) for other in placed) + 10 * (not inside)
                       + sum(box.overlaps(other) for other in obstacles))
            if best is None or badness < best[0]:
                if best is not None:
                    best[1].remove()
                best = (badness, label, box, dx, dy)
            else:
                label.remove()
            if badness == 0:
                break
        _, _, box, dx, dy = best
        placed.append(box)
        if abs(dy) > 7:  # a label set apart from its point gets a thin leader line
            ax.annotate("", (cost(p), 100 * p.accuracy), xytext=(dx, dy), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 5})
