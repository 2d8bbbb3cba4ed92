"""Model factories: segmenters (SMP) and classifiers (torchvision, timm)."""

from melanoma.models.classifier import CLASSIFIERS, Classifier, classifier_arch, create_classifier
from melanoma.models.segmenter import SEGMENTER_ARCHS, Segmenter, create_segmenter
from melanoma.models.weights import WeightsNotFoundError

__all__ = [
    "CLASSIFIERS",
    "SEGMENTER_ARCHS",
    "Classifier",
    "Segmenter",
    "WeightsNotFoundError",
    "classifier_arch",
    "create_classifier",
    "create_segmenter",
]
