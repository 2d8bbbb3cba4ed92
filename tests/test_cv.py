"""K-fold cross-validation: lesion-grouped stratified folds of the training split, each
image held out once, scored by the fold's last epoch, pooled with an interval."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from melanoma.data.carve import fold_splits
from melanoma.data.records import Sample
from melanoma.data.splits import SplitConfig, SplitEntry, Splits
from melanoma.engine.config import TrainConfig
from melanoma.engine.cv import FoldScores, summarise_folds


def splits_of(n: int, groups: int) -> Splits:
    def entry(i: int, split: str) -> SplitEntry:
        sample = Sample(
            f"{split}{i:03d}",
            Path(f"{i}.jpg"),
            label=int(i % 4 == 0),
            group=f"{split}-g{i % groups}",
        )
        return SplitEntry(sample, f"sha-{split}-{i}", None)

    entries = {
        "train": [entry(i, "train") for i in range(n)],
        "val": [entry(i, "val") for i in range(10)],
        "test": [entry(i, "test") for i in range(12)],
    }
    return Splits(Path("."), "flat", SplitConfig(), entries, [], [])


def test_every_training_image_is_held_out_once_and_lesions_stay_together():
    splits = splits_of(120, groups=60)
    folds = fold_splits(splits, 4, seed=0)
    assert len(folds) == 4
    held = Counter(e.sample.id for f in folds for e in f.entries["val"])
    assert set(held) == {e.sample.id for e in splits.entries["train"]}
    assert set(held.values()) == {1}
    for f in folds:
        fit_groups = {e.sample.group for e in f.entries["train"]}
        held_groups = {e.sample.group for e in f.entries["val"]}
        assert not fit_groups & held_groups
        assert f.entries["test"] == splits.entries["test"]  # the test split is untouched
        # The official validation images are in no fold: they stay for the cascade.
        assert not any(e.sample.id.startswith("val") for s in f.entries.values() for e in s)
        melanomas = sum(e.sample.label for e in f.entries["val"])
        assert 30 / 4 - 3 <= melanomas <= 30 / 4 + 3  # stratified
    assert [e.sample.id for e in fold_splits(splits, 4, seed=0)[0].entries["val"]] == [
        e.sample.id for e in folds[0].entries["val"]
    ]


def test_identical_images_share_a_fold():
    splits = splits_of(40, groups=40)
    twin = splits.entries["train"][5]
    splits.entries["train"][30] = SplitEntry(
        splits.entries["train"][30].sample, twin.image_sha256, None
    )
    for f in fold_splits(splits, 5, seed=1):
        ids = {e.sample.id for e in f.entries["val"]}
        assert ("train005" in ids) == ("train030" in ids)


def test_bad_fold_counts_are_refused():
    from melanoma.engine.cv import cross_validate

    with pytest.raises(ValueError, match="at least 5 lesions"):
        fold_splits(splits_of(20, groups=3), 5, seed=0)
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validate({"x": TrainConfig(task="cls", out="x")}, 1, Path("x"))


def test_pooled_classifier_score_and_interval():
    config = TrainConfig(task="cls", out="x")
    rng = np.random.default_rng(0)
    scores = []
    for k in range(3):
        labels = np.array([0, 1] * 20)
        probs = np.clip(labels * 0.3 + rng.random(40) * 0.7, 0, 1)
        metrics = {"auc": roc_auc_score(labels, probs)}
        scores.append(FoldScores(k, Path(f"f{k}"), metrics, {"labels": labels, "probs": probs}))
    summary = summarise_folds(config, scores, resamples=200)
    labels = np.concatenate([s.outputs["labels"] for s in scores])
    probs = np.concatenate([s.outputs["probs"] for s in scores])
    assert summary["value"] == pytest.approx(roc_auc_score(labels, probs))
    assert summary["ci"]["low"] < summary["value"] < summary["ci"]["high"]
    assert summary["images"] == 120 and summary["folds"] == 3
    assert summary["per_fold"] == [s.metrics["auc"] for s in scores]


def test_pooled_segmenter_score_is_the_mean_over_every_held_out_image():
    config = TrainConfig(task="seg", out="x")
    parts = [np.array([0.5, 0.7]), np.array([0.9, 0.1, 0.4])]
    scores = [
        FoldScores(k, Path(f"f{k}"), {"jaccard": float(p.mean())}, {"per_image": {"jaccard": p}})
        for k, p in enumerate(parts)
    ]
    summary = summarise_folds(config, scores, resamples=100)
    assert summary["value"] == pytest.approx(np.concatenate(parts).mean())
    assert summary["images"] == 5


def test_cv_compares_candidates_paired_on_the_same_training_images(tmp_path, capsys):
    """`melanoma cv` of several candidates ends with the best one minus each other one on
    the pooled out-of-fold predictions of the same images (paired bootstrap)."""
    from melanoma.engine.cv import OOF_OUTPUTS
    from melanoma.metrics.paired import paired_difference
    from melanoma_cli.train import _print_cv_paired

    rng = np.random.default_rng(2)
    ids = np.array([f"img{i}" for i in range(80)])
    labels = np.array([0, 0, 0, 1] * 20)
    probs = {
        "strong": np.clip(labels * 0.6 + rng.random(80) * 0.4, 0, 1),
        "weak": np.clip(labels * 0.1 + rng.random(80) * 0.9, 0, 1),
    }
    for name, p in probs.items():
        (tmp_path / name).mkdir()
        order = rng.permutation(80)  # each candidate's folds pool the images in its order
        np.savez(tmp_path / name / OOF_OUTPUTS, id=ids[order], label=labels[order], prob=p[order])
    rows = [
        (name, None, {"metric": "auc", "value": roc_auc_score(labels, p)})
        for name, p in probs.items()
    ]
    _print_cv_paired(tmp_path, rows[::-1], "cls")
    out = capsys.readouterr().out
    expected = paired_difference(labels, probs["strong"], probs["weak"], "auc")
    assert "strong minus each other candidate, pooled out-of-fold auc" in out
    assert f"weak: difference {expected['difference']:+.4f}" in out and "in-sample" in out
    assert "separated" not in out.replace("not called separated", "")
