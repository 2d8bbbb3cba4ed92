"""ROC and precision-recall curves drawn on matplotlib axes: TensorBoard's per-epoch
figures and the test report's curves.png share them."""

from __future__ import annotations

import numpy as np


def draw_roc(ax, labels: np.ndarray, probs: np.ndarray, name: str | None = None) -> None:
    """The ROC curve with its AUC in the label, and the chance diagonal."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(labels, probs)
    label = f"AUC {auc(fpr, tpr):.3f}"
    ax.plot(fpr, tpr, label=f"{name} ({label})" if name else label)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity")


def draw_pr(ax, labels: np.ndarray, probs: np.ndarray, name: str | None = None) -> None:
    """The precision-recall curve and the prevalence (a classifier without skill)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, probs)
    ax.plot(recall, precision, label=name)
    ax.axhline(np.mean(labels), ls="--", color="grey")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision")
