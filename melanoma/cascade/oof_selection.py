"""Choosing a cascade on pooled out-of-fold predictions instead of the validation split.

A cross-validation folder (``melanoma cv``) holds a candidate's fold models and their
predictions on the training images each fold held out: on ISIC 2017 about 1,700 images
with some 300 melanomas, against 150 and 30 in the official validation split. Choosing the
classifiers, their weights and the threshold there leaves the validation split untouched,
a second check that nothing was chosen on. A candidate enters the cascade as all of its
fold models, averaged: what its pooled out-of-fold predictions estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from melanoma.cascade.ensemble import greedy_selection, weighted_mean
from melanoma.engine.cv import CV_FILE, fold_runs, load_oof_outputs
from melanoma.metrics.intervals import classification_interval
from melanoma.metrics.paired import aligned, in_sample, paired_difference
from melanoma.metrics.threshold import choose_threshold

SELECT_CHOICES = ("auto", "oof", "val")


@dataclass(frozen=True)
class CvCandidate:
    """A cross-validated candidate: its folder, its fold models' checkpoints, its pooled
    out-of-fold outputs (``id`` with ``label`` and ``prob``, or per-image scores) and the
    configuration its folds trained (cv.json's)."""

    folder: Path
    checkpoints: list[Path]
    oof: dict[str, np.ndarray]
    config: dict | None = None


def refuse_oracle_masks(candidates: list[CvCandidate]) -> None:
    """Refuse to choose on out-of-fold predictions that a mask-using classifier made on
    ground-truth masks: the shipped cascade gives it predicted masks, so members,
    threshold and calibration would be chosen on better inputs than it will ever see."""
    oracle = [
        c.folder
        for c in candidates
        if c.config
        and c.config.get("task") == "cls"
        and c.config.get("input", {}).get("mode", "full") != "full"
        and c.config.get("input", {}).get("mask_source", "gt") == "gt"
    ]
    if oracle:
        raise ValueError(
            f"{', '.join(map(str, oracle))}: a mask-using classifier cross-validated on "
            "ground-truth masks (input.mask_source: gt); its out-of-fold predictions are "
            "scored on masks the cascade will not have. Cross-validate a classifier trained "
            "with input.mask_source: SEGMENTER_RUN (its folds are then scored on that "
            "segmenter's out-of-fold masks), or choose on the validation split, where the "
            "cascade's own masks are used: --select-on val"
        )


@dataclass(frozen=True)
class OofChoice:
    """What the out-of-fold predictions chose: candidate index -> weight, the threshold,
    the figures shown beside the validation check, and the pooled labels and ensemble
    probabilities it chose on (what a calibration is then fitted on)."""

    weights: dict[int, int]
    threshold: float
    rule: str
    report: dict
    labels: np.ndarray
    probs: np.ndarray


def cv_candidates(sources: list) -> list[CvCandidate] | None:
    """The cross-validation folders among ``sources``, or None unless every source is one
    (with its out-of-fold outputs)."""
    out = []
    for source in sources:
        if not isinstance(source, (str, Path)):
            return None
        checkpoints = fold_runs(Path(source))
        oof = load_oof_outputs(Path(source))
        if checkpoints is None or oof is None:
            return None
        config = json.loads((Path(source) / CV_FILE).read_text()).get("config")
        out.append(CvCandidate(Path(source), checkpoints, oof, config))
    return out or None


def choose_classifiers(
    candidates: list[CvCandidate], rounds: int, target_sensitivity: float | None
) -> OofChoice:
    """Greedy ensemble selection (``rounds``; 1: the best single candidate) and the
    threshold on the candidates' pooled out-of-fold predictions of the same images."""
    first = candidates[0].oof
    ids, labels = first["id"], first["label"]
    probs = [aligned(ids, first["prob"], c.oof["id"], c.oof["prob"])[2] for c in candidates]
    for c in candidates[1:]:
        if not np.array_equal(aligned(ids, labels, c.oof["id"], c.oof["label"])[2], labels):
            raise ValueError(f"{c.folder} labels the training images otherwise than {ids[0]}")

    def auc(p: np.ndarray) -> float:
        return float(roc_auc_score(labels, p))

    weights, value = greedy_selection(probs, auc, rounds)
    chosen = weighted_mean(probs, weights)
    threshold, rule = choose_threshold(labels, chosen, target_sensitivity, "out-of-fold")
    best = int(np.argmax([auc(p) for p in probs]))
    report = {
        "set": "out-of-fold",
        "images": int(len(labels)),
        "melanomas": int(labels.sum()),
        "auc": value,
        "auc_ci": classification_interval(labels, chosen, "auc"),
        "candidates": [
            {"folder": str(c.folder), "oof_auc": auc(p)}
            for c, p in zip(candidates, probs, strict=True)
        ],
        # In-sample: the pooled predictions that chose the ensemble score it.
        "vs_best_single": in_sample(paired_difference(labels, chosen, probs[best], resamples=1)),
    }
    return OofChoice(weights, threshold, rule, report, labels, chosen)


def fold_model_weights(weights: dict[int, int], fold_counts: dict[int, int]) -> dict[int, int]:
    """The integer weight of each fold model of each chosen candidate such that every
    candidate's fold models together carry the weight chosen for it: a 5-fold candidate's
    models each get 3/5 of what a 3-fold one's get, not the same (which would ship it
    with 5/3 of the weight chosen)."""
    common = math.lcm(*(fold_counts[i] for i in weights))
    return {i: w * common // fold_counts[i] for i, w in weights.items()}


def best_segmenter(candidates: list[CvCandidate]) -> int:
    """The cross-validated segmenter of the highest pooled out-of-fold Jaccard."""
    return int(np.argmax([float(np.mean(c.oof["jaccard"])) for c in candidates]))


def mask_source_warnings(candidates: list[CvCandidate], segmenter_origins: list[str]) -> list[str]:
    """A line for each mask-using candidate whose out-of-fold predictions were made on the
    masks of another segmenter than the one the cascade ships (its figures then describe
    masks the cascade will not give it)."""
    from melanoma.engine.checkpoint import load_checkpoint

    lines = []
    for c in candidates:
        source = ((c.config or {}).get("input") or {}).get("mask_source", "gt")
        if (c.config or {}).get("input", {}).get("mode", "full") == "full" or source == "gt":
            continue
        try:
            made_by = str(load_checkpoint(Path(source))["path"])
        except (FileNotFoundError, OSError, KeyError):
            made_by = str(source)
        # The same file under a relative and an absolute path is one segmenter.
        if [str(Path(o).resolve()) for o in segmenter_origins] != [str(Path(made_by).resolve())]:
            lines.append(
                f"{c.folder}: its out-of-fold predictions were made on masks of the segmenter "
                f"{made_by} (out of fold), and the cascade ships {', '.join(segmenter_origins)}; "
                "the out-of-fold figures describe other masks than the shipped cascade's. "
                f"Build with --seg {source} to ship the segmenter that made them"
            )
    return lines
