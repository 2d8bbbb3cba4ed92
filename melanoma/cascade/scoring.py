"""A cascade run over a split (:class:`CascadeOutputs`) and the figures read off it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from melanoma.cascade.model import Cascade
from melanoma.data.dataset import DataBundle
from melanoma.metrics.intervals import classification_interval, mean_interval
from melanoma.metrics.segmentation import per_image_counts, scores_from_counts
from melanoma.postprocess import clean_masks

# The per-image mask figures a report gives with intervals (mask_scores has them all).
SEG_KEYS = ("jaccard", "dice", "thresholded_jaccard")


@dataclass(frozen=True)
class CascadeOutputs:
    """What a cascade gives over one split, image by image: ``label`` is -1 where the
    diagnosis is unknown, ``has_mask`` says which images have a ground-truth mask."""

    id: np.ndarray
    label: np.ndarray
    prob: np.ndarray  # as the cascade emits it: calibrated when the cascade says so
    raw_prob: np.ndarray  # before the cascade's calibration
    pred_mask: torch.Tensor  # (N, 1, H, W) uint8, cleaned up when the cascade says so
    true_mask: torch.Tensor
    has_mask: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        return self.label >= 0

    def subset(self, keep: np.ndarray) -> CascadeOutputs:
        """The outputs of the images where ``keep`` (a boolean array) is true."""
        rows = torch.from_numpy(np.asarray(keep, dtype=bool))
        return CascadeOutputs(
            self.id[keep],
            self.label[keep],
            self.prob[keep],
            self.raw_prob[keep],
            self.pred_mask[rows],
            self.true_mask[rows],
            self.has_mask[keep],
        )

    def auc(self) -> float:
        """AUC of ``prob`` over the labelled images."""
        keep = self.labelled
        return float(roc_auc_score(self.label[keep], self.prob[keep]))

    def auc_interval(self) -> dict:
        """95% bootstrap interval of that AUC: how much a selection on it can mean."""
        keep = self.labelled
        return classification_interval(self.label[keep], self.prob[keep], "auc")

    def mask_scores(self) -> dict[str, np.ndarray]:
        """Per-image Jaccard, Dice, thresholded Jaccard and pixel accuracy of the
        predicted masks, over the images that have a ground-truth mask."""
        keep = torch.from_numpy(self.has_mask)
        return scores_from_counts(per_image_counts(self.pred_mask[keep], self.true_mask[keep]))

    def jaccard(self) -> float | None:
        """Mean per-image Jaccard of the predicted masks (None without ground truth)."""
        scores = self.mask_scores()["jaccard"]
        return float(scores.mean()) if len(scores) else None

    def jaccard_report(self) -> dict | None:
        """That Jaccard with a 95% bootstrap interval and the number of images."""
        scores = self.mask_scores()["jaccard"]
        if not len(scores):
            return None
        return {"value": float(scores.mean()), "images": int(len(scores))} | mean_interval(scores)


@torch.no_grad()
def run_cascade(
    cascade: Cascade,
    bundle: DataBundle,
    split: str,
    batch_size: int = 16,
    mode: str | None = None,
    gt_masks: bool = False,
) -> CascadeOutputs:
    """The cascade over a split: probabilities (calibrated as the cascade says, and before
    that as ``raw_prob``), labels and masks; the masks handed out are cleaned up when the
    cascade says so, the classifiers see them as thresholded. ``gt_masks`` hands the
    classifiers the ground-truth masks instead (the oracle ablation)."""
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
    return CascadeOutputs(
        id=np.array(ids),
        label=np.array(labels),
        prob=np.concatenate(probs),
        raw_prob=np.concatenate(raw_probs),
        pred_mask=torch.cat(pred_masks),
        true_mask=torch.cat(true_masks),
        has_mask=np.array(has_mask, dtype=bool),
    )


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


def official_part(outputs: CascadeOutputs, bundle: DataBundle) -> dict | None:
    """The validation AUC on the official validation images alone, when validation also
    holds images carved from training (``data.val_from_train``); else None."""
    official = {e.sample.id for e in bundle.splits.entries["val"] if e.sample.split == "val"}
    keep = np.isin(outputs.id, sorted(official))
    if not official or keep.all():
        return None
    part = outputs.subset(keep)
    return {"images": int(keep.sum()), "auc": part.auc(), "ci": part.auc_interval()}


def batched(fn, images: torch.Tensor, *more: torch.Tensor, size: int = 16) -> np.ndarray:
    parts = [
        fn(images[i : i + size], *(m[i : i + size] for m in more))
        for i in range(0, len(images), size)
    ]
    return torch.cat(parts).numpy()


def in_sample_gain(chosen: CascadeOutputs, pair: CascadeOutputs) -> dict:
    """The chosen cascade's validation AUC minus the best single pair's on the labelled
    validation images that chose both (zero when the chosen cascade is that pair):
    in-sample, so without an interval."""
    from melanoma.metrics.paired import aligned, in_sample, paired_difference

    chosen, pair = chosen.subset(chosen.labelled), pair.subset(pair.labelled)
    _, a, b = aligned(chosen.id, chosen.prob, pair.id, pair.prob)
    return in_sample(paired_difference(chosen.label, a, b, resamples=1))
