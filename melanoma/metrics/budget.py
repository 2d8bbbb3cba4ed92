"""What a search's budget buys: the expected best score of n trials (Dodge et al., "Show
Your Work", EMNLP 2019), from one search's trial table.

A search of N trials is one draw of its order; the expected maximum over n of them is the
mean, over every subset of n trials, of the best validation score in the subset, and the
expected held-out score of the subset's validation pick is the mean of the held-out score
of that best trial. Both have closed forms over the trials sorted by validation score: the
i-th of N (1-based, ascending) is a subset's best in C(i-1, n-1) of the C(N, n) subsets.
"""

from __future__ import annotations

from math import comb

import numpy as np


def pick_weights(n_trials: int, n: int) -> np.ndarray:
    """Probability that the i-th lowest of ``n_trials`` validation scores is the highest in
    a random subset of ``n`` trials (ties broken by the sort order)."""
    if not 1 <= n <= n_trials:
        raise ValueError(f"a subset size must be between 1 and {n_trials} trials, got {n}")
    return np.array([comb(i, n - 1) for i in range(n_trials)], dtype=float) / comb(n_trials, n)


def expected_best(
    validation: np.ndarray, held_out: np.ndarray | None = None
) -> list[dict[str, float]]:
    """For n = 1..N trials: the expected best validation score of n random trials, and
    (``held_out`` given, one per trial) the expected held-out score of their validation
    pick, i.e. what the search hands on at that budget."""
    validation = np.asarray(validation, dtype=float)
    order = np.argsort(validation, kind="stable")
    val_sorted = validation[order]
    out_sorted = None if held_out is None else np.asarray(held_out, dtype=float)[order]
    if out_sorted is not None:
        # Trials tied on validation are picked among at random: each stands for the mean
        # held-out score of its tie (exact, by symmetry), not for its place in the order.
        for value in np.unique(val_sorted):
            tie = val_sorted == value
            out_sorted[tie] = out_sorted[tie].mean()
    rows = []
    for n in range(1, len(validation) + 1):
        w = pick_weights(len(validation), n)
        row = {"trials": n, "validation": float(w @ val_sorted)}
        if out_sorted is not None:
            row["held_out"] = float(w @ out_sorted)
        rows.append(row)
    return rows
