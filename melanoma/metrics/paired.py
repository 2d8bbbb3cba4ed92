"""Paired comparisons: is model A better than model B on the same images?

Two separate intervals, or "B lies inside A's interval", ignore that both models are
scored on the same images, whose difficulty moves both figures together. The paired
bootstrap resamples the images once per round and scores both models on that resample;
the spread of the difference is what tells a real gain from noise. One implementation,
used wherever the project says that one model beats another.
"""

from __future__ import annotations

import numpy as np

from melanoma.metrics.bootstrap import mean_bootstrap, percentile_interval, resample_rows
from melanoma.metrics.classification import BOOTSTRAP_KEYS, STRATIFIED_KEYS, resampled_metrics


def paired_difference(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: str = "auc",
    *,
    threshold: float = 0.5,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """``metric`` of A minus that of B over the same labelled images: the difference, its
    95% percentile interval over paired resamples (within each class for the metrics
    defined within a class, plain for prevalence-dependent ones), and the share of
    resamples in which A scored higher (``a_better``)."""
    labels = np.asarray(labels)
    probs_a, probs_b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    if not labels.shape == probs_a.shape == probs_b.shape or labels.ndim != 1:
        raise ValueError(
            "a paired comparison needs both models' probabilities on the same images: got "
            f"{len(labels)} labels, {len(probs_a)} and {len(probs_b)} probabilities"
        )
    if metric not in BOOTSTRAP_KEYS:
        raise ValueError(f"no paired bootstrap for {metric!r}; valid: {list(BOOTSTRAP_KEYS)}")
    if len(np.unique(labels)) < 2:
        raise ValueError("a paired comparison of classifiers needs melanoma and benign images")
    everything = np.arange(len(labels))[None]
    point = (
        resampled_metrics(labels, probs_a, threshold, everything)[metric][0]
        - resampled_metrics(labels, probs_b, threshold, everything)[metric][0]
    )
    strata = labels if metric in STRATIFIED_KEYS else None
    rows = resample_rows(len(labels), resamples, seed, strata=strata)
    diff = (
        resampled_metrics(labels, probs_a, threshold, rows)[metric]
        - resampled_metrics(labels, probs_b, threshold, rows)[metric]
    )
    return _summary(float(point), diff[~np.isnan(diff)], len(labels))


def paired_mean_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict:
    """Mean per-image score of A minus B (a segmenter's Jaccard) on the same images, with
    the interval and ``a_better`` of :func:`paired_difference`."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(
            "a paired comparison needs both models' scores on the same images: got "
            f"{a.shape} and {b.shape}"
        )
    per_image = a - b
    return _summary(float(per_image.mean()), mean_bootstrap(per_image, resamples, seed), len(a))


def aligned(ids_a, values_a, ids_b, values_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images both outputs cover, in A's order: (ids, A's values, B's values). Refuses
    outputs of different image sets, which cannot be paired."""
    ids_a, ids_b = [str(i) for i in ids_a], [str(i) for i in ids_b]
    for name, ids in (("A", ids_a), ("B", ids_b)):
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(
                f"model {name}'s outputs name {len(twice)} image(s) more than once (e.g. "
                f"{twice[:3]}); a paired comparison needs each image once: score each image "
                "once (duplicated manifest rows, or folds that overlap)"
            )
    if set(ids_a) != set(ids_b):
        only = sorted(set(ids_a) ^ set(ids_b))
        raise ValueError(
            f"the two models were scored on different images ({len(only)} differ, e.g. "
            f"{only[:3]}); a paired comparison needs the same images"
        )
    where = {i: n for n, i in enumerate(ids_b)}
    order = [where[i] for i in ids_a]
    return np.array(ids_a), np.asarray(values_a), np.asarray(values_b)[order]


def _summary(point: float, diffs: np.ndarray, n: int) -> dict:
    if not len(diffs):
        return {"difference": point, "low": None, "high": None, "a_better": None, "images": n}
    return {
        "difference": point,
        **percentile_interval(diffs),
        "a_better": float((diffs > 0).mean()),
        "images": n,
    }


def in_sample(result: dict, *, keep_interval: bool = False) -> dict:
    """``result`` marked as measured on the images that chose A: a greedy ensemble against
    its own first pick (selection keeps it at or above zero: the point difference only),
    or the best-ranked candidate against the others on the images that ranked them
    (``keep_interval``: the interval still shows the noise). Never called separated."""
    kept = {k: result[k] for k in ("low", "high")} if keep_interval else {}
    return {
        "difference": result["difference"],
        "images": result["images"],
        "in_sample": True,
        **kept,
    }


def describe(result: dict, what: str = "difference") -> str:
    """``+0.012 (95% CI -0.010 to +0.034), separated`` or ``..., not separated``: separated
    when the interval excludes zero; an :func:`in_sample` result says so instead."""
    if result.get("in_sample") and result.get("low") is not None:
        return (
            f"{what} {result['difference']:+.4f} (paired 95% CI {result['low']:+.3f} to "
            f"{result['high']:+.3f}, {result['images']} images; in-sample: these images "
            "ranked them, so it leans in the winner's favour and is not called separated)"
        )
    if result.get("in_sample"):
        return (
            f"{what} {result['difference']:+.4f} (in-sample, on the {result['images']} images "
            "that chose it, which lean it in the chosen one's favour: no interval)"
        )
    if result["low"] is None:
        return f"{what} {result['difference']:+.4f} (no interval)"
    separated = result["low"] > 0 or result["high"] < 0
    return (
        f"{what} {result['difference']:+.4f} (paired 95% CI {result['low']:+.3f} to "
        f"{result['high']:+.3f}, {result['images']} images): "
        + ("separated" if separated else "not separated")
    )
