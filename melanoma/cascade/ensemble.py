"""Ensemble selection on validation (Caruana et al. 2004): greedy, with replacement.

Each round adds the candidate whose addition scores best; a candidate picked twice counts
twice (its weight). The ensemble kept is the best-scoring prefix of the rounds, so it is
never worse on validation than the best single candidate. Segmenters are chosen by
validation Jaccard of the averaged mask probability; classifiers by validation AUC of
the averaged melanoma probability, computed on the chosen segmenters' masks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from melanoma.metrics.segmentation import per_image_counts, scores_from_counts


def greedy_selection(
    predictions: Sequence[np.ndarray], score: Callable[[np.ndarray], float], rounds: int
) -> tuple[dict[int, int], float]:
    """Candidate index to weight (times chosen), and the validation score of their mean."""
    if rounds < 1:
        raise ValueError(f"an ensemble needs at least one round, got {rounds}")
    chosen: list[int] = []
    total = 0.0  # running sum of the chosen predictions; their mean is what is scored
    best: tuple[float, list[int]] = (-np.inf, [])
    for _ in range(rounds):
        n = len(chosen) + 1
        scores = [score((total + p) / n) for p in predictions]
        pick = int(np.argmax(scores))
        chosen.append(pick)
        total = total + predictions[pick]
        if scores[pick] > best[0]:
            best = (scores[pick], list(chosen))
    return dict(Counter(best[1])), float(best[0])


def mask_jaccard(true: torch.Tensor, has_mask: np.ndarray, threshold: float):
    """A score function: mean per-image Jaccard of thresholded probabilities against
    ``true`` over the images that have a ground-truth mask."""
    keep = torch.from_numpy(has_mask)

    def score(prob: np.ndarray) -> float:
        pred = torch.from_numpy(prob)[keep] > threshold
        return float(scores_from_counts(per_image_counts(pred, true[keep]))["jaccard"].mean())

    return score


def weighted_mean(predictions: Sequence[np.ndarray], weights: dict[int, int]) -> np.ndarray:
    total = sum(predictions[i] * w for i, w in weights.items())
    return total / sum(weights.values())
