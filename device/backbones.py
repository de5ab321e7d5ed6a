"""The backbone registry: one frozen record per supported Keras application.

The table itself is ``backbones.csv`` beside this module (one row per backbone, a column per
field of ``Backbone``). Importable without TensorFlow, so the device and the benchmark can look up a backbone's
preprocessing and input size. Everything else (training, levels, export) looks backbones
up here, by their lower-case command-line name.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Backbone:
    """One Keras application backbone.

    Attributes:
        name: command-line name (``mobilenetv2``).
        keras_name: constructor in ``tf_keras.applications`` (``MobileNetV2``).
        keras_module: module whose ``preprocess_input`` Keras documents for it.
        preprocess: numpy preprocess mode (``caffe``, ``tf``, ``torch``, ``none``).
        default_size: ImageNet input size of the published weights, pixels. Used only by
            ``python -m train.levels`` when no ``--img-size`` is given; the sweep trains every
            backbone at one common ``--img-size``, as the study compared them.
        min_size: smallest input Keras accepts with ``include_top=False``.
        feature_dim: width of the pooled feature vector.
        paper_levels: the study's level schedule (ours for backbones it did not use).
        block_pattern: regex whose first group names the block/stage of a layer.
        mobile: designed for mobile/edge devices.
        in_paper: one of the study's seven backbones.
        weights_file: file name of Keras's ImageNet no-top weights (what ``--weights
            imagenet`` downloads into ``~/.keras/models``).
    """

    name: str
    keras_name: str
    keras_module: str
    preprocess: str
    default_size: int
    min_size: int
    feature_dim: int
    paper_levels: tuple[int, ...]
    block_pattern: str
    mobile: bool
    in_paper: bool
    weights_file: str


def _load(path: Path) -> tuple[Backbone, ...]:
    """The registry table: one CSV row per backbone, columns named as ``Backbone``'s fields;
    ``paper_levels`` space-separated, ``mobile`` and ``in_paper`` yes or no."""
    types = {f.name: f.type for f in fields(Backbone)}
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not rows or set(rows[0]) != set(types):
        raise RuntimeError(f"{path}: expected the columns {', '.join(types)}; the installed package is damaged")

    def value(name: str, text: str):
        if name == "paper_levels":
            return tuple(int(v) for v in text.split())
        if types[name] == "bool":
            return text == "yes"
        return int(text) if types[name] == "int" else text

    return tuple(Backbone(**{name: value(name, text) for name, text in row.items()}) for row in rows)


BACKBONES: tuple[Backbone, ...] = _load(Path(__file__).with_name("backbones.csv"))
_BY_NAME = {b.name: b for b in BACKBONES}
GROUPS: dict[str, tuple[str, ...]] = {
    "paper": tuple(b.name for b in BACKBONES if b.in_paper),
    "mobile": tuple(b.name for b in BACKBONES if b.mobile),
    "all": tuple(b.name for b in BACKBONES),
}


def get(name: str) -> Backbone:
    """The backbone called ``name`` (case-insensitive; ``MobileNetV2`` works too).

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    key = name.strip().lower().replace("_", "").replace("-", "")
    if key not in _BY_NAME:
        raise KeyError(f"unknown backbone {name!r}; expected one of {', '.join(_BY_NAME)} "
                       f"or a group ({', '.join(GROUPS)})")
    return _BY_NAME[key]


def resolve(spec: str | list[str]) -> list[Backbone]:
    """Backbones named by a comma-separated list of names and groups, in order, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Backbone] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        for name in GROUPS.get(item.lower(), (item,)):
            backbone = get(name)
            if backbone not in out:
                out.append(backbone)
    if not out:
        raise KeyError(f"no backbone named in {spec!r}; expected names or groups ({', '.join(GROUPS)})")
    return out
