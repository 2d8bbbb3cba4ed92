"""Metrics for segmentation (per-image, empty masks included) and melanoma classification."""

from melanoma.metrics.classification import (
    ClassificationMeter,
    classification_metrics,
    sensitivity_at_specificity,
)
from melanoma.metrics.segmentation import (
    ISIC_JACCARD_THRESHOLD,
    SegmentationMeter,
    segmentation_metrics,
)

__all__ = [
    "ISIC_JACCARD_THRESHOLD",
    "ClassificationMeter",
    "SegmentationMeter",
    "classification_metrics",
    "segmentation_metrics",
    "sensitivity_at_specificity",
]
