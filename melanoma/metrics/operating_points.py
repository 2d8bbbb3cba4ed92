"""Operating points of a screening tool: the specificity kept at a high sensitivity and the
sensitivity kept at a high specificity, read off the ROC curve, with bootstrap intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from melanoma.metrics.bootstrap import percentile_interval, resample_rows

TARGETS = (0.90, 0.95)


def specificity_at_sensitivity(labels, probs, sensitivity: float) -> float:
    """The highest specificity of any threshold whose sensitivity reaches ``sensitivity``."""
    return _specificity_at(*_roc(labels, probs), sensitivity)


def sensitivity_at_specificity(labels, probs, specificity: float) -> float:
    """The highest sensitivity of any threshold whose specificity reaches ``specificity``."""
    return _sensitivity_at(*_roc(labels, probs), specificity)


def _roc(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    # Every threshold: dropping "intermediate" points on a straight stretch of the curve
    # would lose the one a target lands on.
    fpr, tpr, _ = roc_curve(labels, probs, drop_intermediate=False)
    return fpr, tpr


def _specificity_at(fpr: np.ndarray, tpr: np.ndarray, sensitivity: float) -> float:
    return float(1.0 - fpr[tpr >= sensitivity - 1e-12].min())


def _sensitivity_at(fpr: np.ndarray, tpr: np.ndarray, specificity: float) -> float:
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())


def _name(kind: str, target: float) -> str:
    return f"{kind}_at_{round(target * 100)}"


def _points(labels: np.ndarray, probs: np.ndarray, targets) -> list[float]:
    """Specificity at each target sensitivity, then sensitivity at each target
    specificity, from one ROC curve."""
    fpr, tpr = _roc(labels, probs)
    return [_specificity_at(fpr, tpr, t) for t in targets] + [
        _sensitivity_at(fpr, tpr, t) for t in targets
    ]


def operating_points(
    labels, probs, *, targets=TARGETS, resamples: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """``specificity_at_90`` (specificity at 90% sensitivity), ``specificity_at_95``,
    ``sensitivity_at_90`` (sensitivity at 90% specificity), ``sensitivity_at_95``: each
    with its value and a percentile 95% interval over resamples drawn within each class
    (both figures are defined within a class)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"operating points need melanoma and benign images; got {len(labels)} images of "
            "one class"
        )
    names = [_name("specificity", t) for t in targets] + [_name("sensitivity", t) for t in targets]
    point = _points(labels, probs, targets)
    rows = resample_rows(len(labels), resamples, seed, strata=labels)
    samples = np.array([_points(labels[r], probs[r], targets) for r in rows])
    return {
        name: {
            "value": point[i],
            **percentile_interval(samples[:, i]),
            "target": targets[i % len(targets)],
        }
        for i, name in enumerate(names)
    }


def describe_point(key: str) -> str:
    """``specificity_at_90`` -> 'specificity at 90% sensitivity'."""
    kind, target = key.split("_at_")
    other = "sensitivity" if kind == "specificity" else "specificity"
    return f"{kind} at {target}% {other}"
