"""Sharing a sweep among processes by backbone, balanced by planned cost.

Frozen-feature caching shares one frozen pass among a backbone's levels (train.cache), so a
shard should hold whole backbones: dealing runs out in turn would make every shard repeat
every backbone's frozen pass. Backbones differ in cost by an order of magnitude, so they are
placed by their planned arithmetic, not by count:

- a layer costs about ``kernel parameters x output height x output width`` multiply-adds per
  image (exact for convolutions and depthwise convolutions, the bulk of every backbone);
- a backbone's frozen pass costs the whole base once; each run costs ``epochs x 3 x`` its
  trainable layers (forward and backward), or the whole base forward plus that when features
  are not cached.

Groups are placed largest first on the least-loaded shard (LPT). When there are fewer
backbones than shards, the costliest group is halved (its levels dealt alternately) until
every shard has work, each half paying its own frozen pass. Every process computes the same
plan from the same inputs, so shards agree without talking to each other.
"""
from __future__ import annotations

from dataclasses import dataclass


def layer_macs(base) -> list[float]:
    """Approximate multiply-adds per image of each layer of a Keras model, in layer order."""
    macs = []
    for layer in base.layers:
        kernel = sum(int(w.shape.num_elements()) for w in layer.weights if "bias" not in w.name
                     and "moving" not in w.name and "gamma" not in w.name and "beta" not in w.name)
        outputs = layer.output if isinstance(layer.output, list) else [layer.output]
        shape = outputs[0].shape
        spatial = int(shape[1]) * int(shape[2]) if len(shape) == 4 and shape[1] and shape[2] else 1
        macs.append(float(kernel * spatial))
    return macs


def run_cost(macs: list[float], level: int, epochs: int, cached: bool) -> float:
    """Planned arithmetic of one run at ``level`` (the last ``level`` layers trainable)."""
    trainable = sum(macs[len(macs) - level:]) if level else 0.0
    forward_frozen = 0.0 if cached else sum(macs) - trainable
    return epochs * (3.0 * trainable + forward_frozen)


@dataclass(frozen=True)
class Group:
    """Runs that share one frozen pass: one backbone's (or half a backbone's) runs."""

    name: str
    runs: tuple  # the RunPlan objects, in plan order
    cost: float


def groups(runs: list, macs_by_backbone: dict[str, list[float]], epochs: int, cached: bool) -> list[Group]:
    """One group per backbone: its frozen pass plus every run's own cost."""
    by_backbone: dict[str, list] = {}
    for run in runs:
        by_backbone.setdefault(run.backbone.name, []).append(run)
    return [_group(name, members, macs_by_backbone[name], epochs, cached) for name, members in by_backbone.items()]


def _group(name: str, members: list, macs: list[float], epochs: int, cached: bool) -> Group:
    frozen = sum(macs) if cached else 0.0
    return Group(name, tuple(members), frozen + sum(run_cost(macs, r.level, epochs, cached) for r in members))


def assign(groups_: list[Group], count: int, macs_by_backbone: dict[str, list[float]], epochs: int,
           cached: bool) -> list[list[Group]]:
    """Place groups on ``count`` shards: halve the costliest until there are enough, then LPT."""
    work = list(groups_)
    while len(work) < count:
        splittable = [g for g in work if len(g.runs) > 1]
        if not splittable:
            break
        big = max(splittable, key=lambda g: (g.cost, g.name))
        work.remove(big)
        # deal runs sorted by level alternately, so each half gets deep and shallow levels
        ordered = sorted(big.runs, key=lambda r: (-r.level, r.seed))
        macs = macs_by_backbone[big.runs[0].backbone.name]
        work += [_group(f"{big.name}/{half}", ordered[half::2], macs, epochs, cached) for half in (0, 1)]
    shards: list[list[Group]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for group in sorted(work, key=lambda g: (-g.cost, g.name)):
        target = min(range(count), key=lambda i: (loads[i], i))
        shards[target].append(group)
        loads[target] += group.cost
    return shards
