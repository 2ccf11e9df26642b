"""95 % bootstrap confidence intervals for the metrics' means (docs/evaluation.md).

The unit of resampling is what was drawn at random: a grid for localisation (its cells share one
image and one attribution pass), a test image for pixel removal.  Differences between two methods
are paired -- the same resampled units for both -- so "method A beats CoDA" is claimed only where
the interval of the mean difference excludes 0.
"""
from __future__ import annotations

import numpy as np


def bootstrap_interval(values, reps: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile interval [low, high] of the mean of `values` (one number per unit)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty 1-d array of per-unit values, got shape {v.shape}")
    rng = np.random.RandomState(seed)
    means = v[rng.randint(0, len(v), size=(reps, len(v)))].mean(1)            # (reps,)
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def with_intervals(units: dict[str, list[float]], reference: str = "CoDA", reps: int = 2000,
                   seed: int = 0) -> dict[str, dict]:
    """Per method: mean and interval of its per-unit values and, for every method but
    `reference`, the paired difference (method - reference) with its interval and whether that
    interval excludes 0 (`significant`).  All methods must be scored on the same units."""
    sizes = {len(v) for v in units.values()}
    if len(sizes) > 1:
        raise ValueError(f"paired intervals need every method scored on the same units, got sizes {sorted(sizes)}")
    out = {}
    for name, values in units.items():
        row: dict = dict(mean=float(np.mean(values)), ci95=bootstrap_interval(values, reps, seed=seed))
        if reference in units and name != reference:
            diff = np.asarray(values) - np.asarray(units[reference])
            low, high = bootstrap_interval(diff, reps, seed=seed)
            row["difference_to_" + reference] = dict(mean=float(diff.mean()), ci95=[low, high],
                                                     significant=bool(low > 0 or high < 0))
        out[name] = row
    return out
