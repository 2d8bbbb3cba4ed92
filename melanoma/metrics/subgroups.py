"""Does the cascade work as well for every age band, sex and body site? Per subgroup:
counts, prevalence, and AUC, sensitivity and specificity at the shipped threshold with
bootstrap intervals. A group too small to say anything is reported as such, not dropped."""

from __future__ import annotations

import numpy as np

from melanoma.metrics.classification import metrics_with_intervals

# Below this many melanomas or benign images in a group, its AUC, sensitivity and
# specificity would rest on a handful of images: the group is listed as too small.
MIN_PER_CLASS = 5
SUBGROUP_KEYS = ("auc", "sensitivity", "specificity")


def subgroup_report(
    labels,
    probs,
    groups: dict[str, list[str]],
    threshold: float,
    *,
    resamples: int = 1000,
    min_per_class: int = MIN_PER_CLASS,
    order=None,
) -> dict[str, list[dict]]:
    """For each field (``age``, ``sex``, ``site``) of ``groups`` (the group of each image,
    in the order of ``labels``), one row per group (sorted by ``order``, a key function):
    images, melanomas, prevalence and, when the group holds at least
    ``min_per_class`` of each class, the metrics with 95% intervals (resampled within each
    class)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    out = {}
    for field, per_image in groups.items():
        per_image = np.asarray(per_image)
        if len(per_image) != len(labels):
            raise ValueError(
                f"subgroup field {field!r} names {len(per_image)} images, the labels {len(labels)}"
            )
        rows = []
        for group in sorted(set(per_image.tolist()), key=order):
            inside = per_image == group
            y, p = labels[inside], probs[inside]
            melanomas = int(y.sum())
            row = {
                "group": group,
                "images": int(inside.sum()),
                "melanomas": melanomas,
                "prevalence": melanomas / int(inside.sum()),
            }
            if min(melanomas, len(y) - melanomas) < min_per_class:
                row["too_small"] = (
                    f"fewer than {min_per_class} melanomas or benign images: no metrics"
                )
            else:
                row.update(metrics_with_intervals(y, p, threshold, SUBGROUP_KEYS, resamples))
            rows.append(row)
        out[field] = rows
    return out
