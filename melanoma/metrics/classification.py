"""Melanoma-vs-benign metrics from predicted melanoma probabilities (scikit-learn inside)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm

from melanoma.metrics.bootstrap import percentile_interval, resample_rows
from melanoma.metrics.operating_points import sensitivity_at_specificity


def classification_metrics(
    labels, probs, *, threshold: float = 0.5, specificity: float = 0.9
) -> dict:
    """All classification metrics for melanoma (class 1).

    Threshold-free metrics (AUC, average precision, sensitivity at a fixed specificity) are
    None when the labels hold only one class; thresholded ones use ``probs >= threshold``.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(
            f"labels and probs must be 1-D of equal length, got {labels.shape} and {probs.shape}"
        )
    if len(labels) == 0:
        raise ValueError("no samples to compute classification metrics on")
    if not set(np.unique(labels)) <= {0, 1}:
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(labels.tolist()))}")
    pred = (probs >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    both = len(np.unique(labels)) == 2
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, pred, labels=[1], average=None, zero_division=0
    )
    return {
        "auc": float(skm.roc_auc_score(labels, probs)) if both else None,
        "average_precision": float(skm.average_precision_score(labels, probs)) if both else None,
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, pred)) if both else None,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "f1": float(f1[0]),
        "accuracy": float(skm.accuracy_score(labels, pred)),
        f"sensitivity_at_specificity_{specificity:g}": (
            sensitivity_at_specificity(labels, probs, specificity) if both else None
        ),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "threshold": threshold,
        "n": int(len(labels)),
        "n_melanoma": int(labels.sum()),
    }


BOOTSTRAP_KEYS = (
    "auc",
    "average_precision",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "recall",
    "f1",
    "accuracy",
)


def _average_precision(labels: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's average precision (step-wise, one step per distinct score)."""
    order = np.argsort(-probs, kind="mergesort")
    scores, hits = probs[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(hits)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# Figures defined within one class (the fraction of melanomas found, of benign lesions
# cleared, and their ranking) are resampled within each class: prevalence does not move
# them, and every resample keeps both classes. Precision, F1, accuracy and average
# precision change with prevalence, so their intervals resample the images as drawn, the
# prevalence varying from resample to resample as it would in another sample of patients.
STRATIFIED_KEYS = ("auc", "balanced_accuracy", "sensitivity", "specificity", "recall")
PREVALENCE_KEYS = ("average_precision", "precision", "f1", "accuracy")


def bootstrap_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float, resamples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every metric of BOOTSTRAP_KEYS over ``resamples`` bootstrap resamples: stratified by
    class for STRATIFIED_KEYS, plain for PREVALENCE_KEYS (NaN where undefined)."""
    labels = np.asarray(labels)
    n = len(labels)
    stratified = resampled_metrics(
        labels, probs, threshold, resample_rows(n, resamples, seed, strata=labels)
    )
    plain = resampled_metrics(labels, probs, threshold, resample_rows(n, resamples, seed))
    return {k: (stratified if k in STRATIFIED_KEYS else plain)[k] for k in BOOTSTRAP_KEYS}


def metrics_with_intervals(
    labels, probs, threshold: float, keys=BOOTSTRAP_KEYS, resamples: int = 1000
) -> dict[str, dict]:
    """``{metric: {"value", "low", "high"}}`` for ``keys`` of BOOTSTRAP_KEYS: the point
    figure and its percentile 95% interval from :func:`bootstrap_metrics` (None where no
    resample defines it)."""
    labels = np.asarray(labels)
    point = classification_metrics(labels, probs, threshold=threshold)
    samples = bootstrap_metrics(labels, probs, threshold, resamples)
    return {k: {"value": point[k], **percentile_interval(samples[k])} for k in keys}


def resampled_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The metrics of ``classification_metrics`` named in BOOTSTRAP_KEYS, for each row of
    ``rows`` (resamples, n) of indices at once: a bootstrap of 1000 resamples in
    milliseconds instead of 1000 scikit-learn calls. NaN where a metric is undefined."""
    from scipy.stats import rankdata

    y, p = np.asarray(labels)[rows].astype(bool), np.asarray(probs, dtype=float)[rows]
    pred = p >= threshold
    tp, fp = (pred & y).sum(1), (pred & ~y).sum(1)
    fn, tn = (~pred & y).sum(1), (~pred & ~y).sum(1)
    pos, neg = tp + fn, tn + fp

    def ratio(a, b, empty=np.nan):
        return np.where(b > 0, a / np.maximum(b, 1), empty)

    sensitivity, specificity = ratio(tp, pos), ratio(tn, neg)
    both = (pos > 0) & (neg > 0)
    ranks = rankdata(p, axis=1)  # ties share their mean rank, as the Mann-Whitney AUC needs
    auc = ratio((ranks * y).sum(1) - pos * (pos + 1) / 2, pos * neg)
    ap = np.array(
        [_average_precision(yi, pi) if b else np.nan for yi, pi, b in zip(y, p, both, strict=True)]
    )
    return {
        "auc": np.where(both, auc, np.nan),
        "average_precision": ap,
        "balanced_accuracy": np.where(both, (sensitivity + specificity) / 2, np.nan),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": ratio(tp, tp + fp, 0.0),
        "recall": ratio(tp, pos, 0.0),
        "f1": ratio(2 * tp, 2 * tp + fp + fn, 0.0),
        "accuracy": (tp + tn) / y.shape[1],
    }


class ClassificationMeter:
    """Collects melanoma probabilities and labels over batches."""

    def __init__(self, threshold: float = 0.5, specificity: float = 0.9):
        self.threshold = threshold
        self.specificity = specificity
        self.probs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        keep = labels >= 0
        if not keep.any():
            return
        probs = torch.softmax(logits[keep.to(logits.device)].float(), dim=1)[:, 1]
        self.probs.append(probs.detach().cpu().numpy())
        self.labels.append(labels[keep].cpu().numpy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.probs:
            return np.zeros(0, int), np.zeros(0)
        return np.concatenate(self.labels), np.concatenate(self.probs)

    def compute(self) -> dict:
        labels, probs = self.arrays()
        if len(labels) == 0:
            return {"n": 0}
        return classification_metrics(
            labels, probs, threshold=self.threshold, specificity=self.specificity
        )
