"""A cascade's predictions as ISIC Challenge submission files, for the official scorer.

:func:`write_submission` writes what ``isic-challenge-scoring`` (the ISIC Challenge's own
scorer, 5.x) reads, so that any cascade can be scored by it as well as by the project::

    OUT/classification.csv                      image,melanoma,seborrheic_keratosis
    OUT/segmentation/ISIC_0000000_segmentation.png   8-bit greyscale, lesion 255, else 0

and then, against the official ground truth (which the project does not write)::

    isic-challenge-scoring classification TRUTH.csv OUT/classification.csv
    isic-challenge-scoring segmentation TRUTH_MASK_DIR OUT/segmentation

What the scorer requires, and what to read in its output:

- Ground-truth CSV: the scorer reads an ``image`` column; the ISIC 2017 Part3 CSV names
  it ``image_id`` (its header must be renamed to ``image`` first, or the scorer stops
  with a KeyError). The submission must hold exactly the ground truth's images (an extra
  or missing row is an error) and exactly its columns, written as floats in [0, 1].
- Seborrheic keratosis: the cascade has no such output. The 2017 ground truth has the
  column, so by default it is written as 0.0 for every image, an explicit "no
  prediction": the scorer's seborrheic-keratosis figures are then those of a constant
  (AUC 0.5, sensitivity 0) and its macro averages ("overall", "macro_average") and its
  multi-class "aggregate" balanced accuracy mix them in. The melanoma figures are
  per_category["melanoma"]: auc, ap, sensitivity, specificity (balanced accuracy is
  their mean). ``seborrheic_keratosis=False`` leaves the column out, for a ground truth
  holding only ``image,melanoma``.
- Threshold: the scorer calls a melanoma ``probability > 0.5``; the project calls one
  ``probability >= threshold``. With ``threshold`` given, probabilities are written
  through a strictly increasing map that sends ``[threshold, 1]`` onto ``(0.5, 1]`` and
  ``[0, threshold)`` onto ``[0, 0.5)``: the ranking (so AUC and average precision) is
  unchanged and the scorer's sensitivity and specificity are the cascade's at its own
  threshold; the written values are then no longer calibrated probabilities. Without
  it the probabilities are written as they are and the scorer thresholds them at 0.5.
- Mask size: the scorer requires each mask at its ground truth's size (the original
  image's); the cascade's masks are at its input size. ``sizes`` gives each image's
  original (height, width) and the masks are resized with nearest neighbour, as the
  project resizes masks. The scorer's Jaccard at the original size then differs a little
  from the project's, measured at the input size against resized ground truth.
- isic-challenge-scoring 5.6.0 calls ``DataFrame.applymap``, which pandas 3 removed: its
  classification scoring needs pandas < 3.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CLASSIFICATION_FILE = "classification.csv"
SEGMENTATION_DIR = "segmentation"
# The scorer finds each ground-truth mask's image by this pattern, and its prediction
# by the seven digits in the file name.
ISIC_ID = re.compile(r"ISIC_[0-9]{7}")


def write_submission(
    out_dir: str | Path,
    ids: Sequence[str],
    probs=None,
    masks=None,
    *,
    threshold: float | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    seborrheic_keratosis: bool = True,
) -> dict[str, Path]:
    """Write ``out_dir/classification.csv`` from ``probs`` (N melanoma probabilities)
    and/or ``out_dir/segmentation/{id}_segmentation.png`` from ``masks`` (binary 0/1 or
    bool, (N, 1, H, W) or (N, H, W), numpy or a torch tensor, as CascadeOutputs holds
    them), for the N images ``ids``. ``threshold``: the cascade's decision threshold (see
    the module docstring); ``sizes``: {id: (height, width)} to resize each mask to;
    ``seborrheic_keratosis``: write the 2017 task's second column as 0.0. ``out_dir``
    must be new or empty. Returns {"classification": csv, "segmentation": folder} for
    what was written."""
    ids = [str(i) for i in ids]
    if probs is None and masks is None:
        raise ValueError("write_submission got neither probs nor masks: pass one or both")
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"ids must be unique; received {twice[:5]} more than once")
    # Every input is checked before anything is written: no half submission is left.
    p = None if probs is None else _probabilities(probs, len(ids), threshold)
    m = None if masks is None else _binary_masks(masks, len(ids))
    if m is not None:
        _check_mask_ids(ids, sizes)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(
            f"submission folder {out_dir} already exists and is not empty; expected a new or "
            "empty folder (old masks left there would be scored): choose another or delete it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if p is not None:
        written["classification"] = _write_csv(
            out_dir / CLASSIFICATION_FILE, ids, p, seborrheic_keratosis
        )
    if m is not None:
        written["segmentation"] = _write_masks(out_dir / SEGMENTATION_DIR, ids, m, sizes)
    return written


def official_probabilities(probs: np.ndarray, threshold: float) -> np.ndarray:
    """``probs`` through a strictly increasing map under which the scorer's ``> 0.5`` is
    the project's ``>= threshold``: [0, threshold) onto [0, 0.5), [threshold, 1] onto
    (0.5, 1]. Ties stay ties and no two distinct values merge (checked)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; received {threshold}")
    p = np.asarray(probs, dtype=np.float64)
    low = np.nextafter(0.5, 1.0)  # the least value the scorer counts as melanoma
    above = low + (1.0 - low) * (p - threshold) / (1.0 - threshold) if threshold < 1 else 1.0
    below = 0.5 * p / threshold if threshold > 0 else 0.0
    mapped = np.clip(np.where(p >= threshold, above, below), 0.0, 1.0)
    # Each float operation above is monotone, so the order can only merge, never invert.
    if len(np.unique(mapped)) != len(np.unique(p)):
        raise ValueError(
            f"mapping the probabilities for threshold {threshold} would merge distinct values "
            "and change the ranking; write them with threshold=None instead"
        )
    return mapped


def _probabilities(probs, n: int, threshold: float | None) -> np.ndarray:
    p = _numpy(probs).astype(np.float64)
    if p.shape != (n,):
        raise ValueError(
            f"probs must hold one melanoma probability per id: received shape {p.shape}, "
            f"expected ({n},)"
        )
    bad = ~((p >= 0) & (p <= 1))  # NaN included
    if bad.any():
        raise ValueError(
            f"probs must be probabilities in [0, 1] (the scorer refuses others); received "
            f"{p[bad][:5].tolist()}: pass the cascade's probabilities, not logits"
        )
    return p if threshold is None else official_probabilities(p, threshold)


def _write_csv(path: Path, ids: list[str], probs: np.ndarray, sk: bool) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "melanoma", *(["seborrheic_keratosis"] if sk else [])])
        for image_id, p in zip(ids, probs, strict=True):
            # repr: the shortest text that reads back as the same float (never "0", which
            # the scorer rejects as not a float), so the scorer ranks exactly our values.
            writer.writerow([image_id, repr(float(p)), *(["0.0"] if sk else [])])
    return path


def _binary_masks(masks, n: int) -> np.ndarray:
    m = _numpy(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or len(m) != n:
        raise ValueError(
            f"masks must be (N, 1, H, W) or (N, H, W) with N = {n} ids; received shape "
            f"{tuple(_numpy(masks).shape)}"
        )
    bad = (m != 0) & (m != 1)
    if bad.any():
        raise ValueError(
            f"masks must be binary 0/1 or bool; received values {np.unique(m[bad])[:5].tolist()}: "
            "threshold the segmenter's output first (as CascadeOutputs.pred_mask is)"
        )
    return m.astype(np.uint8)


def _check_mask_ids(ids: list[str], sizes: Mapping[str, tuple[int, int]] | None) -> None:
    not_isic = [i for i in ids if not ISIC_ID.fullmatch(i)]
    if not_isic:
        raise ValueError(
            f"the scorer matches masks to ground truth by ISIC id (ISIC_ and 7 digits); "
            f"received ids {not_isic[:5]}: masks can be scored officially only for ISIC images"
        )
    if sizes is not None and (missing := [i for i in ids if i not in sizes]):
        raise ValueError(
            f"sizes has no (height, width) for {len(missing)} ids, e.g. {missing[:5]}: give "
            "every image's original size, or sizes=None to write masks at the cascade's size"
        )


def _write_masks(
    folder: Path, ids: list[str], masks: np.ndarray, sizes: Mapping[str, tuple[int, int]] | None
) -> Path:
    folder.mkdir()
    for image_id, mask in zip(ids, masks, strict=True):
        if sizes is not None:
            height, width = (int(v) for v in sizes[image_id])
            if (height, width) != mask.shape:
                mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
        Image.fromarray(mask * np.uint8(255)).save(  # 2-D uint8: 8-bit greyscale, "L"
            folder / f"{image_id}_segmentation.png"
        )
    return folder


def _numpy(x) -> np.ndarray:
    """A numpy array of ``x``, a torch tensor (on any device) included."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
