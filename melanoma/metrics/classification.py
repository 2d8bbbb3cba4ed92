"""Melanoma-vs-benign metrics from predicted melanoma probabilities (scikit-learn inside)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn import metrics as skm


def sensitivity_at_specificity(labels: np.ndarray, probs: np.ndarray, specificity: float) -> float:
    """Highest sensitivity reachable with specificity >= ``specificity`` (from the ROC curve)."""
    fpr, tpr, _ = skm.roc_curve(labels, probs)
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


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
