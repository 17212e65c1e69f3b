"""Statistics for the benchmark tables (numpy): medians, percentiles and bootstrap confidence
intervals of ratios, so each ratio says how sure it is.

A ratio ``a ÷ b`` is the ratio of the two tools' median wall times. Its interval is a percentile
bootstrap: resample each tool's runs with replacement (independently: the runs are interleaved,
not paired), take the ratio of the resampled medians, ``n`` times; the interval is the central
95% of those ratios. With 3 runs a side the interval is coarse (a median of 3 resamples to one of
the 3 values), and says so by being wide; more runs narrow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 4000
SEED = 18  # fixed: the same runs give the same interval


@dataclass(frozen=True)
class Dist:
    """Summary of one tool's runs."""

    n: int
    median: float
    p10: float
    p90: float
    lo: float  # 95% bootstrap interval of the median
    hi: float

    def to_json(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("n", "median", "p10", "p90", "lo", "hi")}


@dataclass(frozen=True)
class Ratio:
    value: float  # median(a) / median(b)
    lo: float  # 95% bootstrap interval
    hi: float
    n: int = 2  # the fewer runs of the two sides

    def cell(self) -> str:
        """``0.22x [0.20-0.25]``; no interval from a single run."""
        if self.n < 2:
            return f"{self.value:.2f}x (1 run)"
        return f"{self.value:.2f}x [{self.lo:.2f}-{self.hi:.2f}]"

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}


def _boot_medians(x: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    idx = rng.integers(0, len(x), size=(n, len(x)))
    return np.asarray(np.median(x[idx], axis=1), dtype=float)


def dist(samples: Sequence[float], n: int = BOOTSTRAP) -> Dist:
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("no samples")
    rng = np.random.default_rng(SEED)
    meds = _boot_medians(x, rng, n)
    p10, p90 = np.percentile(x, [10, 90])
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return Dist(int(x.size), float(np.median(x)), float(p10), float(p90), float(lo), float(hi))


def ratio(a: Sequence[float], b: Sequence[float] | float, n: int = BOOTSTRAP) -> Ratio:
    """median(a) / median(b) with a 95% bootstrap interval; ``b`` may be a constant (a floor)."""
    xa = np.asarray(a, dtype=float)
    if xa.size == 0:
        raise ValueError("no samples")
    rng = np.random.default_rng(SEED)
    ma = _boot_medians(xa, rng, n)
    n_runs = int(xa.size)
    if isinstance(b, (int, float)):
        mb: np.ndarray | float = float(b)
        value = float(np.median(xa)) / float(b)
    else:
        xb = np.asarray(b, dtype=float)
        if xb.size == 0:
            raise ValueError("no samples")
        mb = _boot_medians(xb, rng, n)
        value = float(np.median(xa) / np.median(xb))
        n_runs = min(n_runs, int(xb.size))
    r = ma / mb
    lo, hi = np.percentile(r, [2.5, 97.5])
    return Ratio(value, float(lo), float(hi), n_runs)
