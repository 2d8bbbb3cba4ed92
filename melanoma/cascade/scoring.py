"""A cascade run over a split, and the figures read off its outputs (AUC, mask Jaccard)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from melanoma.cascade.model import Cascade
from melanoma.data.dataset import DataBundle
from melanoma.metrics.intervals import classification_interval, mean_interval
from melanoma.metrics.segmentation import per_image_counts, scores_from_counts
from melanoma.postprocess import clean_masks


@torch.no_grad()
def run_cascade(
    cascade: Cascade,
    bundle: DataBundle,
    split: str,
    batch_size: int = 16,
    mode: str | None = None,
    gt_masks: bool = False,
) -> dict[str, np.ndarray]:
    """Probabilities (calibrated as the cascade says, and before that as ``raw_prob``),
    labels and masks over a split (labelled images only for the labels); the masks handed
    out are cleaned up when the cascade says so, the classifiers see them as thresholded."""
    dataset = bundle.dataset(split)
    probs, raw_probs, labels, ids, pred_masks, true_masks, has_mask = [], [], [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        images = torch.stack([it["image"] for it in items])
        true = torch.stack([it["mask"] for it in items])
        mask = (cascade.segment(images) > cascade.mask_threshold).to(torch.uint8)
        use = true if gt_masks else mask
        raw = cascade.classify_uncalibrated(images, None if mode == "full" else use, mode)
        raw_probs.append(raw.numpy())
        probs.append(cascade.calibrate(raw).numpy())
        labels += [it["label"] for it in items]
        ids += [it["id"] for it in items]
        pred_masks.append(cleaned(mask) if cascade.mask_cleanup else mask)
        true_masks.append(true)
        has_mask += [it["has_mask"] for it in items]
    return {
        "prob": np.concatenate(probs),
        "raw_prob": np.concatenate(raw_probs),  # before the cascade's calibration
        "label": np.array(labels),
        "id": np.array(ids),
        "pred_mask": torch.cat(pred_masks),
        "true_mask": torch.cat(true_masks),
        "has_mask": np.array(has_mask, dtype=bool),
    }


def cleaned(masks: torch.Tensor) -> torch.Tensor:
    """:func:`melanoma.postprocess.clean_masks` of a (N, 1, H, W) tensor."""
    return torch.from_numpy(clean_masks(masks.numpy()))


def require_both_classes(bundle: DataBundle, split: str) -> None:
    labels = [e.sample.label for e in bundle.splits.entries[split] if e.sample.label is not None]
    if len(set(labels)) < 2:
        have = f"only {'melanoma' if labels and labels[0] else 'benign'}" if labels else "no"
        raise ValueError(
            f"the {split} split has {have} labelled images ({len(labels)}); a cascade needs "
            f"melanoma and benign {split} images to choose the pair and the threshold: add "
            "data, or raise data.val_fraction when the split is carved from training"
        )


def result_auc(result: dict) -> float:
    keep = result["label"] >= 0
    return float(roc_auc_score(result["label"][keep], result["prob"][keep]))


def mask_scores(result: dict) -> dict[str, np.ndarray]:
    """Per-image Jaccard, Dice, thresholded Jaccard and pixel accuracy of a
    :func:`run_cascade` result's masks, over the images that have a ground-truth mask."""
    keep = torch.from_numpy(result["has_mask"])
    return scores_from_counts(
        per_image_counts(result["pred_mask"][keep], result["true_mask"][keep])
    )


def result_jaccard(result: dict) -> float | None:
    """Mean per-image validation Jaccard of the cascade's masks (None without masks)."""
    scores = mask_scores(result)["jaccard"]
    return float(scores.mean()) if len(scores) else None


def jaccard_report(result: dict) -> dict | None:
    """The cascade's validation Jaccard at its input size, with a 95% bootstrap interval
    over the images that have a ground-truth mask."""
    scores = mask_scores(result)["jaccard"]
    if not len(scores):
        return None
    return {"value": float(scores.mean()), "images": int(len(scores))} | mean_interval(scores)


def result_auc_interval(result: dict) -> dict:
    """95% bootstrap interval of a validation AUC: how much a selection on it can mean."""
    keep = result["label"] >= 0
    return classification_interval(result["label"][keep], result["prob"][keep], "auc")


def official_part(result: dict, bundle: DataBundle) -> dict | None:
    """The validation AUC on the official validation images alone, when validation also
    holds images carved from training (``data.val_from_train``); else None."""
    official = {e.sample.id for e in bundle.splits.entries["val"] if e.sample.split == "val"}
    keep = np.isin(result["id"], sorted(official))
    if not official or keep.all():
        return None
    part = {k: v[keep] for k, v in result.items() if k in ("id", "label", "prob")}
    return {"images": int(keep.sum()), "auc": result_auc(part), "ci": result_auc_interval(part)}


def batched(fn, images: torch.Tensor, *more: torch.Tensor, size: int = 16) -> np.ndarray:
    parts = [
        fn(images[i : i + size], *(m[i : i + size] for m in more))
        for i in range(0, len(images), size)
    ]
    return torch.cat(parts).numpy()
