"""Segmentation metrics, per image and then averaged over *all* images.

Rule for empty masks: when an image's ground truth and prediction are both empty, its
Jaccard and Dice are 1 (nothing to find, nothing found); when only one of them is empty,
they are 0. No image is ever dropped from the mean (the old system dropped every image
with IoU 0, which flattered its mIoU).
The ISIC 2018 thresholded Jaccard counts a per-image Jaccard below 0.65 as 0.
"""

from __future__ import annotations

import numpy as np
import torch

ISIC_JACCARD_THRESHOLD = 0.65


def per_image_counts(pred: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    """Intersection, union, sizes and pixel agreement per image for binary (N, 1, H, W) maps."""
    pred = pred.bool().flatten(1)
    target = target.bool().flatten(1)
    inter = (pred & target).sum(1)
    return {
        "intersection": inter.cpu().numpy().astype(np.int64),
        "union": (pred | target).sum(1).cpu().numpy().astype(np.int64),
        "pred": pred.sum(1).cpu().numpy().astype(np.int64),
        "target": target.sum(1).cpu().numpy().astype(np.int64),
        "correct": (pred == target).sum(1).cpu().numpy().astype(np.int64),
        "pixels": np.full(pred.shape[0], pred.shape[1], dtype=np.int64),
    }


def scores_from_counts(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    union, inter = c["union"], c["intersection"]
    sizes = c["pred"] + c["target"]
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    dice = np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0)
    return {
        "jaccard": jaccard,
        "dice": dice,
        "thresholded_jaccard": np.where(jaccard >= ISIC_JACCARD_THRESHOLD, jaccard, 0.0),
        "pixel_accuracy": c["correct"] / c["pixels"],
    }


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean per-image Jaccard, Dice, thresholded Jaccard and pixel accuracy."""
    scores = scores_from_counts(per_image_counts(pred, target))
    return {k: float(v.mean()) for k, v in scores.items()}


class SegmentationMeter:
    """Accumulates per-image scores over batches of logits (only images that have a mask)."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.parts: list[dict[str, np.ndarray]] = []

    def update(self, logits: torch.Tensor, masks: torch.Tensor, has_mask: torch.Tensor) -> None:
        keep = has_mask.bool().to(logits.device)
        if not keep.any():
            return
        pred = torch.sigmoid(logits[keep].float()) > self.threshold
        self.parts.append(scores_from_counts(per_image_counts(pred, masks[keep].to(pred.device))))

    def per_image(self) -> dict[str, np.ndarray]:
        if not self.parts:
            return {}
        return {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}

    def compute(self) -> dict[str, float]:
        scores = self.per_image()
        if not scores:
            return {"n_images": 0}
        out = {k: float(v.mean()) for k, v in scores.items()}
        out["n_images"] = int(len(scores["jaccard"]))
        return out
