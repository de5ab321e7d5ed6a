"""Latency statistics: percentiles and seeded bootstrap confidence intervals.

Percentiles use numpy's default linear interpolation. The confidence interval of a
percentile is the percentile bootstrap (resample the timings with replacement, take the
percentile of each resample, report the 2.5% and 97.5% points), seeded so a rerun on the
same timings gives the same interval. Beyond ``ORDER_STATISTIC_N`` timings (a fast model
timed for many seconds: a 3 us model gives a million in 10 s, whose bootstrap took about a
minute per percentile) the interval is the distribution-free order-statistic one instead:
the timings ranked ``n*p -+ z*sqrt(n*p*(1-p))`` around the percentile's rank, the normal
approximation of the binomial count below it, exact to a rank at that size.
"""
from __future__ import annotations

import numpy as np

# MLPerf single-stream's minimum for a valid latency figure (bench run --strict)
STRICT_MIN_QUERIES = 1024
STRICT_MIN_SECONDS = 60.0

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
# resample in blocks of at most this many draws so long runs stay small on a Raspberry Pi
_BLOCK_DRAWS = 2_000_000
ORDER_STATISTIC_N = 50_000  # more timings than this: the order-statistic interval (see above)
_Z = {0.95: 1.959963984540054, 0.99: 2.5758293035489004, 0.9: 1.6448536269514722}


def order_statistic_ci(samples, q: float, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the ``q``-th percentile (0..100): the sorted timings at the
    ranks ``n*p -+ z*sqrt(n*p*(1-p))`` (``p = q/100``), for large ``n``; ``(nan, nan)`` for none."""
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    p, z = q / 100.0, _Z[level]
    half = z * np.sqrt(n * p * (1.0 - p))
    low, high = int(np.floor(n * p - half)), int(np.ceil(n * p + half))
    return float(x[min(max(low, 0), n - 1)]), float(x[min(max(high, 0), n - 1)])


def bootstrap_ci(samples, q: float, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the ``q``-th percentile (0..100) of ``samples``.

    Args:
        samples: 1-D timings.
        q: percentile, 0..100 (50 for the median).
        resamples: bootstrap resamples.
        seed: random seed of the resampling.
        level: coverage (0.95 for 95%).

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no samples.
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    block = max(1, _BLOCK_DRAWS // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = np.percentile(x[idx], q, axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def latency_stats(samples_ms, prefix: str = "latency_ms", seed: int = BOOTSTRAP_SEED,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Flat latency summary of timings in milliseconds.

    Returns:
        ``{prefix}_p5``, ``_p50``, ``_p90``, ``_p95``, ``_p99`` (the percentiles LiteRT's
        benchmark tool, ONNX Runtime's perf test and MLPerf report), ``_mean``, ``_std`` (population), ``_min``,
        ``_max`` and 95% intervals ``{prefix}_p50_ci_low``/``_high`` and
        ``{prefix}_p90_ci_low``/``_high`` (bootstrap, or order statistics for more than
        ``ORDER_STATISTIC_N`` timings); every value ``None`` when there are no samples.
    """
    x = np.asarray(samples_ms, dtype=np.float64).ravel()
    keys = ("p5", "p50", "p90", "p95", "p99", "mean", "std", "min", "max",
            "p50_ci_low", "p50_ci_high", "p90_ci_low", "p90_ci_high")
    if x.size == 0:
        return {f"{prefix}_{k}": None for k in keys}
    p5, p50, p90, p95, p99 = np.percentile(x, [5, 50, 90, 95, 99])
    out = {f"{prefix}_p5": float(p5), f"{prefix}_p50": float(p50), f"{prefix}_p90": float(p90),
           f"{prefix}_p95": float(p95), f"{prefix}_p99": float(p99),
           f"{prefix}_mean": float(x.mean()), f"{prefix}_std": float(x.std()),
           f"{prefix}_min": float(x.min()), f"{prefix}_max": float(x.max())}
    for q in (50, 90):
        low, high = (order_statistic_ci(x, q) if x.size > ORDER_STATISTIC_N
                     else bootstrap_ci(x, q, resamples=resamples, seed=seed))
        out[f"{prefix}_p{q}_ci_low"], out[f"{prefix}_p{q}_ci_high"] = low, high
    return out


def median_ms(samples_ns) -> float:
    """Median of nanosecond timings, in milliseconds."""
    x = np.asarray(samples_ns, dtype=np.float64)
    return float(np.median(x)) / 1e6 if x.size else float("nan")
