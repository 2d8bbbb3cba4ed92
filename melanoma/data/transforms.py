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
from torchvision.ops import roi_align

from melanoma.names import INPUT_MODES


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
        if x.shape[1] == 4:  # image + lesion mask channel: only the colours are normalised
            return torch.cat([(x[:, :3] - self.mean) / self.std, x[:, 3:]], dim=1)
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


# The input modes' names live in melanoma.names (read without torch).


def lesion_boxes(mask: torch.Tensor, margin: float) -> torch.Tensor:
    """(N, 4) x1, y1, x2, y2 boxes around each mask's lesion, dilated by ``margin`` times
    the box size and clipped to the image; the whole image where a mask is empty.
    Written with tensor ops only, so it exports to ONNX unchanged."""
    n, _, h, w = mask.shape
    m = mask[:, 0] > 0
    rows, cols = m.any(dim=2), m.any(dim=1)
    ys = torch.arange(h, device=mask.device).expand(n, h)
    xs = torch.arange(w, device=mask.device).expand(n, w)
    y1 = torch.where(rows, ys, h).min(dim=1).values.float()
    y2 = torch.where(rows, ys, -1).max(dim=1).values.float() + 1
    x1 = torch.where(cols, xs, w).min(dim=1).values.float()
    x2 = torch.where(cols, xs, -1).max(dim=1).values.float() + 1
    empty = ~rows.any(dim=1)
    dy, dx = (y2 - y1) * margin, (x2 - x1) * margin
    boxes = torch.stack(
        [
            (x1 - dx).clamp(min=0),
            (y1 - dy).clamp(min=0),
            (x2 + dx).clamp(max=w),
            (y2 + dy).clamp(max=h),
        ],
        dim=1,
    )
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=mask.device).expand(n, 4)
    return torch.where(empty[:, None], full, boxes)


def apply_input_mode(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    mode: str,
    margin: float = 0.15,
    size: int | None = None,
) -> torch.Tensor:
    """What the classifier sees, as float in [0, 1], (N, C, size, size): C is 3, 4 for
    ``mask_channel`` and 6 for ``dual``.

    ``image`` and ``mask`` share one resolution, which may be larger than ``size``: a
    lesion crop is then cut from the larger image (source-resolution detail), the other
    views are resized down to ``size``.

    ``full``: the image. ``masked``: background set to zero in pixel space (before
    normalisation, so black means black for every model). ``crop``: the lesion's dilated
    bounding box, resized. ``mask_channel``: the whole image with the binary lesion mask as
    a fourth channel (the classifier keeps the skin around the lesion and learns where the
    lesion is). ``dual``: the whole image (channels 0-2) and the lesion crop (3-5). An
    empty mask (no lesion predicted, no ground truth) gives the whole image in masked and
    crop modes and an empty fourth channel. Training, evaluation, the cascade and the
    export all call this.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input mode {mode!r}; valid: {list(INPUT_MODES)}")
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    size = size or x.shape[-1]
    if mode != "full" and mask is None:
        raise ValueError(f"input mode {mode!r} needs a mask")
    if mask is not None and mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"image {tuple(x.shape[-2:])} and mask {tuple(mask.shape[-2:])} must have one "
            "resolution; resize the mask (nearest) to the image first"
        )
    if mode == "crop":
        return lesion_crop(x, mask, margin, size)
    if mode == "masked":
        keep = mask > 0
        # No lesion found (or no ground-truth mask at all): keep the whole image, as crop
        # mode does, rather than hand the classifier a black square.
        empty = ~keep.flatten(1).any(dim=1)
        x = x * (keep | empty[:, None, None, None]).to(x.dtype)
    whole = _resized(x, size)
    if mode == "mask_channel":
        m = (mask > 0).to(x.dtype)
        if m.shape[-2:] != (size, size):
            m = resize_mask_tensor(m, size)
        return torch.cat([whole, m], dim=1)
    if mode == "dual":
        return torch.cat([whole, lesion_crop(x, mask, margin, size)], dim=1)
    return whole


def lesion_crop(x: torch.Tensor, mask: torch.Tensor, margin: float, size: int) -> torch.Tensor:
    """The lesion's dilated bounding box of float images ``x``, sampled (roi_align) to
    ``size`` x ``size`` from ``x`` at its own resolution."""
    boxes = lesion_boxes(mask, margin)
    index = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)[:, None]
    return roi_align(
        x,
        torch.cat([index, boxes.to(x.dtype)], dim=1),
        (size, size),
        spatial_scale=1.0,
        # Enough samples per output pixel that a crop cut from a much larger image
        # averages over its pixels instead of skipping most of them (aliasing).
        sampling_ratio=max(2, -(-x.shape[-1] // size)),
        aligned=True,
    )


def resize_mask_tensor(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A mask (N, 1, H, W) resized as ``io.resize_mask`` resizes one (nearest neighbour at
    pixel centres, aligned with the image's resize), as float."""
    if mask.shape[-2:] == (size, size):
        return mask.float()
    return torch.nn.functional.interpolate(mask.float(), size=(size, size), mode="nearest-exact")


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
