"""The melanoma decision threshold, chosen on a selection set (validation or pooled
out-of-fold predictions), never on the images that score the cascade."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def choose_threshold(
    labels: np.ndarray,
    probs: np.ndarray,
    target_sensitivity: float | None,
    on: str = "validation",
) -> tuple[float, str]:
    """On the selection set only (``on`` names it in the rule): the threshold of maximum
    balanced accuracy (Youden's J), or the highest threshold whose sensitivity reaches
    ``target_sensitivity``; and the rule, in words."""
    keep = labels >= 0
    labels, probs = labels[keep], probs[keep]
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the {on} split needs melanoma and benign images to choose a threshold")
    # Every distinct score is a candidate threshold: the default drops the points that lie
    # on a straight stretch of the ROC curve, and the threshold of a target sensitivity
    # can be one of them.
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if target_sensitivity is not None:
        ok = np.nonzero(tpr >= target_sensitivity)[0]
        rule = f"highest threshold with {on} sensitivity >= {target_sensitivity}"
        return float(thresholds[ok[0]]), rule
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]), f"maximum {on} balanced accuracy (Youden's J)"
