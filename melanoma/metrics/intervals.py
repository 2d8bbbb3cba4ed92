"""95% bootstrap intervals of the figures selections are made on (a trial's validation
metric, a cascade's validation AUC, a cross-validated score), so a user sees when a
choice between two candidates is a coin toss."""

from __future__ import annotations

import numpy as np

from melanoma.metrics.bootstrap import mean_bootstrap, percentile_interval
from melanoma.metrics.classification import BOOTSTRAP_KEYS, bootstrap_metrics


def classification_interval(
    labels: np.ndarray,
    probs: np.ndarray,
    metric: str = "auc",
    threshold: float = 0.5,
    resamples: int = 1000,
) -> dict | None:
    """{"low", "high"} of ``metric`` over bootstrap resamples (class-stratified where the
    metric is defined within a class, plain where it depends on prevalence; see
    :func:`~melanoma.metrics.classification.bootstrap_metrics`); None when the metric has
    no bootstrap or the labels hold one class."""
    labels = np.asarray(labels)
    if metric not in BOOTSTRAP_KEYS or len(np.unique(labels)) < 2:
        return None
    return percentile_interval(bootstrap_metrics(labels, probs, threshold, resamples)[metric])


def mean_interval(values: np.ndarray, resamples: int = 1000) -> dict | None:
    """{"low", "high"} of the mean of per-image scores (a segmenter's Jaccard) over
    resamples of the images; None without images."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return None
    return percentile_interval(mean_bootstrap(values, resamples))


def format_interval(entry) -> str:
    """``0.812 (0.760-0.861)`` for a ``{"value", "low", "high"}`` figure, ``0.812`` without
    an interval, ``n/a`` for none."""
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    low, high = entry.get("low"), entry.get("high")
    return f"{entry['value']:.3f}" + (f" ({low:.3f}-{high:.3f})" if low is not None else "")
