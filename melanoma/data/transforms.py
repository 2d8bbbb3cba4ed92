"""Normalisation and augmentation: defined here once, used by training, evaluation and export.

Datasets hand out uint8 images; normalisation is the first layer of every model
(``Preprocess``), so a segmenter, a classifier and the exported cascade can never
disagree about it: each model carries the statistics its weights were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import torch
from torch import nn


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std for images scaled to [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# TF EfficientNet-Lite weights were trained on inputs scaled to [-1, 1].
HALF = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
NORMALIZATIONS = {"imagenet": IMAGENET, "half": HALF}


class Preprocess(nn.Module):
    """uint8 (or [0, 1] float) NCHW images to normalised float, as a model's first layer."""

    def __init__(self, normalization: Normalization = IMAGENET):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(normalization.mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(normalization.std).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


def build_augmentation(strength: float) -> A.Compose | None:
    """Joint image+mask augmentation; ``strength`` in [0, 1] scales every magnitude.

    Dermoscopy has no up or down, so flips and 90-degree rotations are always on;
    geometry and colour jitter grow with ``strength``. Zero means no augmentation.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return None
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=1.0),
            A.Affine(
                scale=(1 - 0.25 * strength, 1 + 0.25 * strength),
                translate_percent=(-0.1 * strength, 0.1 * strength),
                rotate=(-45 * strength, 45 * strength),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.ColorJitter(
                brightness=0.25 * strength,
                contrast=0.25 * strength,
                saturation=0.25 * strength,
                hue=0.04 * strength,
                p=0.8,
            ),
        ]
    )
