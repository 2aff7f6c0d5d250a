"""The statistics of sweeps/DESIGN.md ("Statistics"), one definition each; every table and rule uses these.

    wilson(k, n)          Wilson 95% score interval of a proportion (scipy's binomtest)
    mcnemar_exact(a, b)   exact McNemar test of two paired boolean outcomes (by seed)
    mean_interval(x)      mean, sample sd (ddof = 1) and t 95% interval of the mean
    paired_t(a, b)        two-sided paired t-test of two metrics indexed by seed
    holm(p)               Holm-adjusted p-values of a family of tests
    bootstrap(x, stat)    a statistic of independent units with its percentile bootstrap 95% interval
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
BOOTSTRAP = 10_000  # resamples


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of k successes in n trials (nan, nan for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_exact(a: pd.Series, b: pd.Series) -> tuple[int, int, float]:
    """Paired outcomes a, b (booleans indexed by seed; only seeds in both count).

    Returns (a only, b only, two-sided exact p): the binomial test of the discordant pairs.
    """
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(bool)
    only_a = int((both["a"] & ~both["b"]).sum())
    only_b = int((~both["a"] & both["b"]).sum())
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def mean_interval(values: Iterable[float]) -> dict[str, float]:
    """n, mean, sample sd and the t 95% interval of the mean of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def paired_t(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Paired by seed (finite in both): n, mean of b - a with its t 95% interval, two-sided p."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(float)
    both = both[np.isfinite(both).all(axis=1)]
    diff = mean_interval(both["b"] - both["a"])
    p = float(sps.ttest_rel(both["b"], both["a"]).pvalue) if len(both) >= 2 else math.nan
    return {**diff, "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of a family of tests (nan stays nan and does not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def bootstrap(values: Iterable[float], statistic=np.mean, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, lo, hi): the statistic of `values` (independent units, e.g. seeds) and its percentile
    bootstrap 95% interval over BOOTSTRAP resamples (a fixed generator seed: the same numbers every time)."""
    x = np.asarray([v for v in values if not (isinstance(v, float) and math.isnan(v))], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = statistic(x[rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))], axis=1)
    lo, hi = np.quantile(resampled, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(statistic(x)), float(lo), float(hi)


def seed_and_sample_interval(errors: np.ndarray, seed: int = 0, chunk: int = 500) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean test error over seeds and test samples, with a percentile 95% interval from a
    two-level bootstrap that resamples the seeds (rows) and, independently, the test samples (columns).

    errors: (seeds, samples), one row per seed's model on the same test set, so a resampled column is the
    same system for every seed: the interval carries the seed-to-seed spread and the test set's own
    sampling error, which averaging over seeds does not remove. BOOTSTRAP resamples, a fixed generator seed.
    """
    x = np.asarray(errors, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"errors must be a non-empty (seeds, samples) array, got shape {x.shape}")
    n_seeds, n_samples = x.shape
    rng = np.random.default_rng(seed)
    resampled = []
    for start in range(0, BOOTSTRAP, chunk):
        b = min(chunk, BOOTSTRAP - start)
        # resample counts: the mean of a resample is (row counts) . x . (column counts) / (n_seeds n_samples)
        rows = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=b)  # (b, seeds)
        cols = rng.multinomial(n_samples, np.full(n_samples, 1 / n_samples), size=b)  # (b, samples)
        resampled.append(np.einsum("bs,st,bt->b", rows, x, cols) / (n_seeds * n_samples))
    lo, hi = np.quantile(np.concatenate(resampled), [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(x.mean()), float(lo), float(hi)
