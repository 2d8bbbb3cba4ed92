"""Every number is what the shipped cascade would score (issue 33): choices made on the
inputs the cascade will see, weights and sizes as chosen, records that cannot go stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melanoma.data.records import Sample
from melanoma.data.splits import SplitEntry


def _entry(i: int, sha: str, group: str | None = None) -> SplitEntry:
    return SplitEntry(Sample(f"ISIC_{i:07d}", Path(f"/x/{i}.jpg"), group=group), sha, None)


def test_out_of_fold_mask_folds_keep_byte_copies_together():
    """A byte copy under another id and lesion id gets its mask from a segmenter that
    trained on neither copy (the cross-validation folds already group so)."""
    from melanoma.engine.oof import mask_folds

    entries = [_entry(i, f"sha{i}", group=f"lesion{i}") for i in range(12)]
    entries.append(_entry(99, "sha3", group="lesion99"))  # the bytes of image 3, other lesion
    entries.append(_entry(98, "sha98", group="lesion5"))  # another image of lesion 5
    folds = mask_folds(entries, 3)
    position = {e.sample.id: n for n, e in enumerate(entries)}
    for fit, held in folds:
        held_ids = {entries[i].sample.id for i in held}
        fit_ids = {entries[i].sample.id for i in fit}
        for a, b in (("ISIC_0000003", "ISIC_0000099"), ("ISIC_0000005", "ISIC_0000098")):
            assert (a in held_ids) == (b in held_ids), (a, b, held_ids)
            assert not ({a, b} & held_ids and {a, b} & fit_ids)
    assert sorted(np.concatenate([h for _, h in folds]).tolist()) == sorted(position.values())


def test_fold_models_carry_the_weight_chosen_for_their_candidate():
    """A 5-fold and a 3-fold candidate chosen with equal weight ship with equal weight."""
    from melanoma.cascade.oof_selection import fold_model_weights

    for weights, folds in (({0: 1, 1: 1}, {0: 5, 1: 3}), ({0: 2, 1: 1}, {0: 2, 1: 3})):
        per_model = fold_model_weights(weights, folds)
        shipped = {i: per_model[i] * folds[i] for i in weights}
        total, chosen = sum(shipped.values()), sum(weights.values())
        assert {i: shipped[i] / total for i in weights} == {
            i: w / chosen for i, w in weights.items()
        }
        assert all(isinstance(w, int) and w > 0 for w in per_model.values())
    assert fold_model_weights({3: 2}, {3: 4}) == {3: 2}  # one candidate: its own weight
