"""Metrics against hand-computed cases, empty masks included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melanoma.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    classification_metrics,
    segmentation_metrics,
)


def masks(*arrays):
    return torch.tensor(np.array(arrays), dtype=torch.uint8)[:, None]


def test_jaccard_dice_by_hand():
    pred = masks([[1, 1, 0, 0]], [[1, 0, 0, 0]])
    true = masks([[1, 0, 0, 0]], [[1, 0, 0, 0]])
    m = segmentation_metrics(pred, true)
    # image 1: I=1, U=2 -> J=0.5, D=2/3; image 2: perfect.
    assert m["jaccard"] == pytest.approx((0.5 + 1) / 2)
    assert m["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["thresholded_jaccard"] == pytest.approx((0 + 1) / 2)  # 0.5 < 0.65 counts as 0
    assert m["pixel_accuracy"] == pytest.approx((3 / 4 + 1) / 2)


def test_empty_masks_rule_and_zero_iou_images_are_kept():
    pred = masks([[0, 0]], [[1, 0]], [[0, 1]])
    true = masks([[0, 0]], [[0, 0]], [[1, 0]])
    m = segmentation_metrics(pred, true)
    # both empty -> 1; false positive on empty truth -> 0; disjoint -> 0 (not dropped).
    assert m["jaccard"] == pytest.approx(1 / 3)
    assert m["dice"] == pytest.approx(1 / 3)


def test_segmentation_meter_uses_only_images_with_masks():
    meter = SegmentationMeter()
    logits = torch.tensor([[[[5.0, -5.0]]], [[[5.0, 5.0]]]])
    true = masks([[1, 0]], [[0, 0]])
    meter.update(logits, true, torch.tensor([True, False]))
    out = meter.compute()
    assert out["n_images"] == 1 and out["jaccard"] == 1.0
    assert SegmentationMeter().compute() == {"n_images": 0}


def test_classification_by_hand():
    labels = [1, 1, 0, 0, 0]
    probs = [0.9, 0.4, 0.6, 0.2, 0.1]
    m = classification_metrics(labels, probs, threshold=0.5, specificity=0.6)
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["sensitivity"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    # Pairs (pos, neg): 0.9 beats all 3; 0.4 beats 0.2 and 0.1 -> 5 of 6.
    assert m["auc"] == pytest.approx(5 / 6)
    # Specificity >= 0.6 allows one false positive: threshold 0.6 keeps sensitivity 0.5;
    # threshold 0.4 gives FPR 1/3 <= 0.4 and sensitivity 1.
    assert m["sensitivity_at_specificity_0.6"] == pytest.approx(1.0)


def test_sensitivity_at_specificity_reads_every_threshold_of_the_curve():
    """Four tied (melanoma, benign) pairs put (FPR 0.5, TPR 0.5) on the straight line from
    (0, 0) to (1, 1): the point a specificity of 0.5 lands on, which scikit-learn's
    thinned curve (``drop_intermediate``) loses (it read 0.25 here before)."""
    from melanoma.metrics.operating_points import operating_points

    labels, probs = [1, 0] * 4, [0.9, 0.9, 0.7, 0.7, 0.5, 0.5, 0.3, 0.3]
    m = classification_metrics(labels, probs, specificity=0.5)
    assert m["sensitivity_at_specificity_0.5"] == pytest.approx(0.5)
    points = operating_points(labels, probs, targets=(0.5,), resamples=10)
    assert points["sensitivity_at_50"]["value"] == pytest.approx(0.5)


def test_one_class_leaves_auc_undefined_not_wrong():
    m = classification_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert m["auc"] is None and m["average_precision"] is None
    assert m["specificity"] == pytest.approx(2 / 3) and m["sensitivity"] is None


@pytest.mark.parametrize(
    "labels, probs, message",
    [
        ([0, 1], [0.5], "equal length"),
        ([], [], "no samples"),
        ([0, 2], [0.1, 0.2], "must be 0 or 1"),
    ],
)
def test_bad_inputs(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, probs)


def test_classification_meter_skips_unlabelled():
    meter = ClassificationMeter()
    logits = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
    meter.update(logits, torch.tensor([1, 0, -1]))
    labels, probs = meter.arrays()
    assert labels.tolist() == [1, 0] and probs[0] > 0.8 > 0.2 > probs[1]
    assert meter.compute()["auc"] == 1.0


def test_resampled_metrics_equal_scikit_learn_on_every_resample():
    """The vectorised bootstrap computes exactly what classification_metrics does, ties,
    one-class resamples and empty predictions included."""
    from melanoma.metrics.classification import (
        BOOTSTRAP_KEYS,
        classification_metrics,
        resampled_metrics,
    )

    rng = np.random.default_rng(0)
    for _ in range(10):
        n = int(rng.integers(4, 40))
        labels = (rng.random(n) < 0.3).astype(int)
        labels[:2] = [1, 0]
        probs = np.round(rng.random(n), 1)  # many ties
        rows = rng.integers(0, n, (30, n))
        fast = resampled_metrics(labels, probs, 0.5, rows)
        for i, r in enumerate(rows):
            slow = classification_metrics(labels[r], probs[r], threshold=0.5)
            for k in BOOTSTRAP_KEYS:
                if slow[k] is None:
                    assert np.isnan(fast[k][i]), k
                else:
                    assert fast[k][i] == pytest.approx(slow[k], abs=1e-12), k


def test_selection_intervals():
    from melanoma.metrics.intervals import classification_interval, mean_interval

    rng = np.random.default_rng(0)
    labels = np.array([0] * 120 + [1] * 30)
    probs = np.clip(labels * 0.3 + rng.random(150) * 0.7, 0, 1)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(labels, probs)
    ci = classification_interval(labels, probs, "auc")
    assert ci["low"] < auc < ci["high"]
    # 30 melanomas: the interval is wide, about +-0.08 as the ISIC 2017 validation shows.
    assert 0.08 < ci["high"] - ci["low"] < 0.3
    wider = classification_interval(labels[::3], probs[::3], "auc")
    assert wider["high"] - wider["low"] > ci["high"] - ci["low"]
    assert classification_interval(np.zeros(10), rng.random(10), "auc") is None  # one class
    assert classification_interval(labels, probs, "loss") is None  # no bootstrap for it
    scores = rng.random(200)
    m = mean_interval(scores)
    assert m["low"] < scores.mean() < m["high"]
    assert mean_interval(np.array([])) is None


def test_prevalence_dependent_intervals_resample_images_as_drawn():
    """Precision, F1, accuracy and average precision change with prevalence: their
    intervals come from plain resamples (prevalence varying), computed here directly with
    scikit-learn; AUC, sensitivity and specificity keep class-stratified resamples."""
    from sklearn import metrics as skm

    from melanoma.metrics.classification import bootstrap_metrics
    from melanoma.metrics.intervals import classification_interval

    rng = np.random.default_rng(1)
    labels = np.array([0] * 60 + [1] * 20)
    probs = np.clip(labels * 0.35 + rng.random(80) * 0.65, 0, 1)
    resamples, threshold = 300, 0.5
    rows = np.random.default_rng(0).integers(0, len(labels), (resamples, len(labels)))
    pred = (probs >= threshold).astype(int)
    direct = {
        "precision": [skm.precision_score(labels[r], pred[r], zero_division=0) for r in rows],
        "f1": [skm.f1_score(labels[r], pred[r], zero_division=0) for r in rows],
        "accuracy": [skm.accuracy_score(labels[r], pred[r]) for r in rows],
    }
    # The resampled prevalence varies: that is what makes these intervals honest.
    assert np.ptp(labels[rows].mean(axis=1)) > 0.1
    samples = bootstrap_metrics(labels, probs, threshold, resamples)
    for key, values in direct.items():
        assert np.allclose(samples[key], values), key
        ci = classification_interval(labels, probs, key, threshold, resamples)
        assert ci["low"] == pytest.approx(np.percentile(values, 2.5)), key
        assert ci["high"] == pytest.approx(np.percentile(values, 97.5)), key
    # Sensitivity stays within the melanomas: every stratified resample keeps 20 of them.
    strata = [np.nonzero(labels == c)[0] for c in (0, 1)]
    gen = np.random.default_rng(0)
    stratified = [
        np.concatenate([gen.choice(g, size=len(g), replace=True) for g in strata])
        for _ in range(resamples)
    ]
    sens = [skm.recall_score(labels[r], pred[r]) for r in stratified]
    assert np.allclose(samples["sensitivity"], sens)


def test_paired_bootstrap_equals_a_direct_computation():
    """The paired difference resamples the images once per round for both models: the
    same figures as scikit-learn on each resample, one resample at a time."""
    from sklearn.metrics import roc_auc_score

    from melanoma.metrics.paired import aligned, describe, paired_difference
    from melanoma.metrics.paired import paired_mean_difference as mean_difference

    rng = np.random.default_rng(4)
    labels = np.array([0] * 50 + [1] * 25)
    a = np.clip(labels * 0.4 + rng.random(75) * 0.6, 0, 1)
    b = np.clip(labels * 0.25 + rng.random(75) * 0.75, 0, 1)
    result = paired_difference(labels, a, b, "auc", resamples=300, seed=0)
    gen = np.random.default_rng(0)
    strata = [np.nonzero(labels == c)[0] for c in (0, 1)]
    diffs = []
    for _ in range(300):
        r = np.concatenate([gen.choice(g, size=len(g), replace=True) for g in strata])
        diffs.append(roc_auc_score(labels[r], a[r]) - roc_auc_score(labels[r], b[r]))
    assert result["difference"] == pytest.approx(
        roc_auc_score(labels, a) - roc_auc_score(labels, b)
    )
    assert result["low"] == pytest.approx(np.percentile(diffs, 2.5))
    assert result["high"] == pytest.approx(np.percentile(diffs, 97.5))
    assert result["a_better"] == pytest.approx(np.mean(np.array(diffs) > 0))
    # Pairing removes what the images share: the paired interval of A against a copy of
    # A shifted by a constant is a point, two separate intervals would overlap widely.
    same = paired_difference(labels, a, np.clip(a * 0.5, 0, 1), "auc", resamples=100)
    assert same["low"] == same["high"] == pytest.approx(0.0)
    assert "not separated" in describe(same) and "separated" in describe(result)

    x, y = rng.random(40), rng.random(40)
    m = mean_difference(x, y, resamples=200, seed=0)
    rows = np.random.default_rng(0).integers(0, 40, (200, 40))
    direct = [(x[r] - y[r]).mean() for r in rows]
    assert m["difference"] == pytest.approx((x - y).mean())
    assert m["low"] == pytest.approx(np.percentile(direct, 2.5))

    ids, va, vb = aligned(["p", "q", "r"], [1, 2, 3], ["r", "p", "q"], [30, 10, 20])
    assert list(ids) == ["p", "q", "r"] and list(vb) == [10, 20, 30]
    with pytest.raises(ValueError, match="different images"):
        aligned(["p"], [1], ["q"], [1])
    with pytest.raises(ValueError, match="same images"):
        paired_difference(labels, a, b[:-1])


def test_one_bootstrap_draws_plain_and_stratified_rows_and_reads_percentiles():
    """resample_rows keeps each stratum's count; mean_bootstrap (scipy) draws the same
    resamples as the plain rows; a figure no resample defines has no interval."""
    from melanoma.metrics.bootstrap import mean_bootstrap, percentile_interval, resample_rows

    labels = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    rows = resample_rows(len(labels), 50, seed=3, strata=labels)
    assert rows.shape == (50, 8) and (labels[rows].sum(axis=1) == 3).all()
    plain = resample_rows(8, 400, seed=3)
    assert np.ptp(labels[plain].sum(axis=1)) > 0  # plain resamples let the counts vary
    values = np.random.default_rng(2).random(30)
    direct = values[resample_rows(30, 200, seed=5)].mean(axis=1)
    assert np.allclose(mean_bootstrap(values, 200, seed=5), direct)
    assert np.allclose(mean_bootstrap(np.array([0.4]), 10), 0.4)  # one image: its value
    assert percentile_interval([np.nan, np.nan]) == {"low": None, "high": None}
    ci = percentile_interval(np.r_[np.arange(101.0), np.nan])
    assert ci == {"low": 2.5, "high": 97.5}
    with pytest.raises(ValueError, match="3 strata labels for 8 items"):
        resample_rows(8, 5, strata=[0, 1, 0])
