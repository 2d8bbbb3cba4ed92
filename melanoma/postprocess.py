"""Lesion-mask clean-up: keep the largest connected region and fill its holes.

A dermoscopy image is taken of one lesion, and every ISIC ground-truth mask is one region
without holes; a segmenter's thresholded output can also hold specks elsewhere (hair,
vignetting, a second mole) and holes (regression areas, glare). The clean-up is a
structural prior, not a learned step: ``cascade build --mask-cleanup auto`` keeps it only
when it raises the validation Jaccard.

NumPy and OpenCV only (no torch), so that ``melanoma predict`` applies it to the exported
model's masks exactly as ``cascade evaluate`` does to the eager cascade's.
"""

from __future__ import annotations

import numpy as np

CLEANUP_CHOICES = ("auto", "on", "off")
CLEANUP_RULE = (
    "the output lesion mask keeps its largest 8-connected region, with every hole "
    "(background not connected to the image border) filled; the classifiers see the "
    "segmenter's thresholded mask as in training"
)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """One (H, W) binary mask: its largest 8-connected foreground region, holes filled
    (background regions, 4-connected, that do not touch the border). Empty stays empty;
    ties between regions of one size keep the first in raster order."""
    import cv2

    fg = (np.asarray(mask) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return fg
    keep = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    # Background components: 4-connected, the dual of 8-connected foreground.
    n_bg, bg = cv2.connectedComponents(1 - keep, connectivity=4)
    outside = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    holes = (keep == 0) & ~np.isin(bg, outside)
    return keep | holes.astype(np.uint8)


def clean_masks(masks: np.ndarray) -> np.ndarray:
    """:func:`largest_region` of every mask in a (N, 1, H, W), (N, H, W) or (H, W) array
    of 0/1 values; the same shape and dtype back."""
    masks = np.asarray(masks)
    if masks.ndim not in (2, 3, 4) or (masks.ndim == 4 and masks.shape[1] != 1):
        raise ValueError(
            f"clean_masks takes binary masks shaped (N, 1, H, W), (N, H, W) or (H, W); got "
            f"an array of shape {masks.shape}"
        )
    flat = masks.reshape(-1, *masks.shape[-2:])
    cleaned = np.stack([largest_region(m) for m in flat]) if len(flat) else flat
    return cleaned.reshape(masks.shape).astype(masks.dtype)
