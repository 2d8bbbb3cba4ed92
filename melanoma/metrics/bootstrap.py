"""The project's one bootstrap: how resamples are drawn and how an interval is read off.

Means of per-image scores (a segmenter's Jaccard, a paired per-image difference) go
through ``scipy.stats.bootstrap`` (percentile method). Classification figures need what
scipy does not offer: resamples drawn within each class (AUC, sensitivity and specificity
are defined within a class, and a resample without melanomas has no AUC), and a dozen
metrics scored on one index matrix at once, which is 100x faster than one scipy call per
metric. Those draw their indices from :func:`resample_rows`. Every interval is the
percentile 95% interval of :func:`percentile_interval`.
"""

from __future__ import annotations

import numpy as np


def resample_rows(
    n: int, resamples: int, seed: int = 0, strata: np.ndarray | None = None
) -> np.ndarray:
    """(resamples, n) bootstrap indices: drawn from all ``n`` items alike, or, given
    ``strata`` (one label per item), within each stratum so every resample keeps its
    counts (the stratified indices come grouped by stratum)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, (resamples, n))
    strata = np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"resample_rows: {len(strata)} strata labels for {n} items")
    groups = [np.nonzero(strata == s)[0] for s in np.unique(strata)]
    rows = [
        np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        for _ in range(resamples)
    ]
    return np.array(rows, dtype=int).reshape(resamples, n)


def percentile_interval(samples) -> dict:
    """{"low", "high"}: the 2.5th and 97.5th percentiles of the resampled figures that
    are defined (NaN dropped); both None when none is."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return {"low": None, "high": None}
    return {
        "low": float(np.percentile(samples, 2.5)),
        "high": float(np.percentile(samples, 97.5)),
    }


def mean_bootstrap(values, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The means of ``resamples`` bootstrap resamples of ``values`` (scipy.stats.bootstrap;
    its draws are those of :func:`resample_rows` without strata)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) < 2:  # scipy refuses one value; every resample of it is that value
        return np.full(resamples, values.mean() if len(values) else np.nan)
    result = bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return np.asarray(result.bootstrap_distribution, dtype=float)
