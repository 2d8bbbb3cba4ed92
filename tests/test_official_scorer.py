"""The project's figures against the ISIC Challenge's own scorer (isic-challenge-scoring),
and melanoma.cascade.submission, which writes files that scorer reads.

Each fixture is built so that a known mistake changes a figure: probabilities exactly at
the threshold (``>`` vs ``>=``), a Jaccard of exactly 0.65, empty masks, lesions of very
different sizes (a mean of per-image ratios vs one ratio of summed pixels) and images
without ground truth (which must not count)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from melanoma.cascade.scoring import CascadeOutputs
from melanoma.cascade.submission import official_probabilities, write_submission
from melanoma.metrics.classification import classification_metrics, resampled_metrics
from melanoma.metrics.segmentation import per_image_counts

isic = pytest.importorskip("isic_challenge_scoring", reason="in the dev extra")
from isic_challenge_scoring import ClassificationMetric, ScoreError  # noqa: E402

# The scorer's own pandas deprecations, and the constant seborrheic-keratosis prediction.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The inplace keyword"),
    pytest.mark.filterwarnings("ignore:The 'verify_integrity' keyword"),
    pytest.mark.filterwarnings("ignore:A single label was found"),
]
TOL = 1e-12
H, W = 24, 32  # not square: a transposed mask would not fit the ground truth


@pytest.fixture(autouse=True)
def _scorer_on_pandas_3(monkeypatch):
    # isic-challenge-scoring 5.6.0 calls DataFrame.applymap, which pandas 3 removed (map).
    if not hasattr(pd.DataFrame, "applymap"):
        monkeypatch.setattr(pd.DataFrame, "applymap", pd.DataFrame.map, raising=False)


def _ids(n: int) -> np.ndarray:
    return np.array([f"ISIC_{i:07d}" for i in range(1, n + 1)])


def _labels_and_probs(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities on a 0.05 grid: ties within and across classes, and
    values exactly 0.5 and 0.35 in both classes."""
    rng = np.random.default_rng(0)
    labels = (np.arange(n) % 3 == 0).astype(int)
    probs = np.where(labels == 1, rng.integers(6, 21, n), rng.integers(0, 15, n)) / 20
    probs[[0, 3, 1, 2]] = 0.5
    probs[[6, 9, 4, 5]] = 0.35
    return labels, probs


def _write_truth_csv(path, ids, labels, sk: bool = True, id_column: str = "image") -> None:
    """Ground truth as the scorer reads it (the 2017 Part3 columns; ``image`` for id)."""
    rows = [f"{id_column},melanoma" + (",seborrheic_keratosis" if sk else "")]
    for k, (i, y) in enumerate(zip(ids, labels, strict=True)):
        keratosis = float(y == 0 and k % 4 == 1)
        rows.append(f"{i},{float(y)}" + (f",{keratosis}" if sk else ""))
    path.write_text("\n".join(rows) + "\n")


def _official_melanoma(truth, prediction) -> pd.Series:
    score = isic.ClassificationScore.from_file(truth, prediction, ClassificationMetric.AUC)
    return score.per_category.loc["melanoma"]


def _masks(n: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, truth, has_mask): 0/1 (n, H, W) with the edge cases first, then rectangles
    of very different sizes; the last two images have no ground truth."""
    rng = np.random.default_rng(1)
    pred, true = np.zeros((2, n, H, W), np.uint8)
    true[1, 5:9, 5:9] = 1  # 1: prediction empty, ground truth not -> 0
    pred[2, 3:7, 3:7] = 1  # 2: ground truth empty, prediction not -> 0
    true[3].flat[:20], pred[3].flat[:13] = 1, 1  # 3: Jaccard exactly 13/20 = 0.65
    true[4].flat[:20], pred[4].flat[:12] = 1, 1  # 4: 0.6, below the 0.65 cut
    for i in range(5, n):  # 0 stays empty in both -> 1
        side = int(rng.integers(2, 20))
        y, x = rng.integers(0, H - min(side, H - 1)), rng.integers(0, W - side)
        true[i, y : y + side, x : x + side] = 1
        dy, dx = rng.integers(-3, 4, 2)
        pred[i, max(0, y + dy) : y + dy + side, max(0, x + dx) : x + dx + side] = 1
    pred[n - 2 :], true[n - 2 :] = 1, 0  # no ground truth (zeros, as the data set gives)
    has_mask = np.arange(n) < n - 2
    return pred, true, has_mask


def _outputs(n: int = 30) -> CascadeOutputs:
    labels, probs = _labels_and_probs(n)
    pred, true, has_mask = _masks(n)
    return CascadeOutputs(
        id=_ids(n),
        label=labels,
        prob=probs,
        raw_prob=probs,
        pred_mask=torch.from_numpy(pred)[:, None],
        true_mask=torch.from_numpy(true)[:, None],
        has_mask=has_mask,
    )


def _write_truth_masks(folder, ids, masks) -> None:
    folder.mkdir()
    for i, m in zip(ids, masks, strict=True):
        Image.fromarray((m * 255).astype(np.uint8)).save(folder / f"{i}_segmentation.png")


def test_classification_figures_equal_the_official_scorer(tmp_path):
    labels, probs = _labels_and_probs()
    ids = _ids(len(labels))
    _write_truth_csv(tmp_path / "truth.csv", ids, labels)
    files = write_submission(tmp_path / "sub", ids, probs)
    official = _official_melanoma(tmp_path / "truth.csv", files["classification"])

    # The scorer cuts at "> 0.5": the project's ">= threshold" at the next float above 0.5.
    ours = classification_metrics(labels, probs, threshold=np.nextafter(0.5, 1))
    official_ba = (official["sensitivity"] + official["specificity"]) / 2
    assert ours["auc"] == pytest.approx(official["auc"], abs=TOL)
    assert ours["average_precision"] == pytest.approx(official["ap"], abs=TOL)
    assert ours["sensitivity"] == pytest.approx(official["sensitivity"], abs=TOL)
    assert ours["specificity"] == pytest.approx(official["specificity"], abs=TOL)
    assert ours["balanced_accuracy"] == pytest.approx(official_ba, abs=TOL)
    assert ours["accuracy"] == pytest.approx(official["accuracy"], abs=TOL)
    # Equal while some image is called melanoma (else the scorer's PPV is 1, ours 0).
    assert ours["precision"] == pytest.approx(official["ppv"], abs=TOL)
    assert ours["f1"] == pytest.approx(official["dice"], abs=TOL)
    # The vectorised bootstrap path, on the sample itself (ties ranked as the scorer does).
    same = resampled_metrics(labels, probs, np.nextafter(0.5, 1), np.arange(len(labels))[None])
    assert same["auc"][0] == pytest.approx(official["auc"], abs=TOL)
    assert same["average_precision"][0] == pytest.approx(official["ap"], abs=TOL)
    assert same["balanced_accuracy"][0] == pytest.approx(official_ba, abs=TOL)
    # The fixture tells ">=" from ">": at 0.5 itself the project's figure is another one.
    at_half = classification_metrics(labels, probs, threshold=0.5)["balanced_accuracy"]
    assert abs(at_half - official_ba) > 0.01


@pytest.mark.parametrize("threshold", [0.35, 0.5, 0.0, 1.0])
def test_threshold_makes_the_official_cut_the_cascades(tmp_path, threshold):
    labels, probs = _labels_and_probs()
    ids = _ids(len(labels))
    _write_truth_csv(tmp_path / "truth.csv", ids, labels)
    files = write_submission(tmp_path / "sub", ids, probs, threshold=threshold)
    official = _official_melanoma(tmp_path / "truth.csv", files["classification"])
    ours = classification_metrics(labels, probs, threshold=threshold)
    for key, theirs in [("sensitivity", "sensitivity"), ("specificity", "specificity")]:
        assert ours[key] == pytest.approx(official[theirs], abs=TOL), key
    assert ours["auc"] == pytest.approx(official["auc"], abs=TOL)  # the ranking is kept
    assert ours["average_precision"] == pytest.approx(official["ap"], abs=TOL)


def test_official_probabilities_keeps_order_and_moves_the_cut():
    grid = np.arange(101) / 100  # k / 100: 0.35 is the literal 0.35, no near-duplicate
    for t in (0.0, 0.2, 0.35, 0.5, 0.9, 1.0):
        # float32-resolution neighbours of the threshold probe the cut
        p = np.unique(np.clip(np.r_[grid, t, t - 1e-7, t + 1e-7], 0, 1))
        mapped = official_probabilities(p, t)
        assert np.all(np.diff(mapped) > 0)  # p is sorted and distinct: the order is kept
        assert np.array_equal(mapped > 0.5, p >= t)
        assert mapped.min() >= 0 and mapped.max() <= 1
    # Adjacent float64 values above a threshold under 0.5 would merge: refused, not hidden.
    with pytest.raises(ValueError, match="merge distinct values"):
        official_probabilities(np.array([0.35, np.nextafter(0.35, 1)]), 0.35)


def test_segmentation_figures_equal_the_official_scorer(tmp_path):
    outputs = _outputs()
    keep = outputs.has_mask
    _write_truth_masks(tmp_path / "truth", outputs.id[keep], outputs.true_mask[keep, 0].numpy())
    files = write_submission(tmp_path / "sub", outputs.id, outputs.prob, outputs.pred_mask)
    official = isic.SegmentationScore.from_dir(tmp_path / "truth", files["segmentation"])
    official = official.macro_average

    ours = {k: float(v.mean()) for k, v in outputs.mask_scores().items()}
    assert outputs.jaccard() == pytest.approx(official["jaccard"], abs=TOL)
    assert ours["jaccard"] == pytest.approx(official["jaccard"], abs=TOL)
    assert ours["thresholded_jaccard"] == pytest.approx(official["threshold_jaccard"], abs=TOL)
    assert ours["dice"] == pytest.approx(official["dice"], abs=TOL)
    assert ours["pixel_accuracy"] == pytest.approx(official["accuracy"], abs=TOL)

    # The fixture tells the mistakes apart from the right figure.
    c = per_image_counts(outputs.pred_mask[torch.from_numpy(keep)], outputs.true_mask[keep])
    pooled = c["intersection"].sum() / c["union"].sum()
    assert abs(pooled - official["jaccard"]) > 0.01
    jaccard = outputs.mask_scores()["jaccard"]
    strict = np.where(jaccard > 0.65, jaccard, 0.0).mean()
    assert abs(strict - official["threshold_jaccard"]) > 1e-3
    every_image = dataclasses.replace(outputs, has_mask=np.ones_like(keep))
    assert abs(every_image.jaccard() - official["jaccard"]) > 0.01


def test_edge_cases_image_by_image(tmp_path):
    """Both masks empty, one empty, a Jaccard of exactly 0.65 and one below: the project's
    per-image figures are the scorer's, one image at a time."""
    outputs = _outputs()
    ours = outputs.mask_scores()
    expected_jaccard = [1.0, 0.0, 0.0, 0.65, 0.6]
    for k, want in enumerate(expected_jaccard):
        one = tmp_path / str(k)
        one.mkdir()
        _write_truth_masks(
            one / "truth", outputs.id[k : k + 1], outputs.true_mask[k : k + 1, 0].numpy()
        )
        files = write_submission(
            one / "sub", outputs.id[k : k + 1], masks=outputs.pred_mask[k : k + 1]
        )
        official = isic.SegmentationScore.from_dir(one / "truth", files["segmentation"])
        official = official.macro_average
        assert ours["jaccard"][k] == want == official["jaccard"]
        assert ours["thresholded_jaccard"][k] == official["threshold_jaccard"]
        assert ours["dice"][k] == pytest.approx(official["dice"], abs=TOL)
    assert ours["thresholded_jaccard"][3] == 0.65 and ours["thresholded_jaccard"][4] == 0.0


def test_masks_resized_to_the_original_size(tmp_path):
    """The scorer wants each mask at its ground truth's size: without ``sizes`` it refuses
    masks at the cascade's size; with them (here twice the size) the figures match."""
    outputs = _outputs(12)
    keep = outputs.has_mask
    big_truth = np.kron(outputs.true_mask[keep, 0].numpy(), np.ones((2, 2), np.uint8))
    _write_truth_masks(tmp_path / "truth", outputs.id[keep], big_truth)
    small = write_submission(tmp_path / "small", outputs.id, masks=outputs.pred_mask)
    with pytest.raises(ScoreError, match="dimensions"):
        isic.SegmentationScore.from_dir(tmp_path / "truth", small["segmentation"])
    sizes = {i: (2 * H, 2 * W) for i in outputs.id}
    files = write_submission(tmp_path / "sub", outputs.id, masks=outputs.pred_mask, sizes=sizes)
    official = isic.SegmentationScore.from_dir(tmp_path / "truth", files["segmentation"])
    assert outputs.jaccard() == pytest.approx(official.macro_average["jaccard"], abs=TOL)


def test_seborrheic_keratosis_column_and_truth_header(tmp_path):
    """The scorer needs exactly the ground truth's columns, and an ``image`` column in it
    (the 2017 CSV's ``image_id`` must be renamed)."""
    labels, probs = _labels_and_probs()
    ids = _ids(len(labels))
    _write_truth_csv(tmp_path / "2017.csv", ids, labels)
    _write_truth_csv(tmp_path / "melanoma.csv", ids, labels, sk=False)
    _write_truth_csv(tmp_path / "image_id.csv", ids, labels, id_column="image_id")
    both = write_submission(tmp_path / "both", ids, probs)["classification"]
    mel = write_submission(tmp_path / "mel", ids, probs, seborrheic_keratosis=False)
    mel = mel["classification"]
    assert both.read_text().splitlines()[0] == "image,melanoma,seborrheic_keratosis"
    with pytest.raises(ScoreError, match="Missing columns"):
        _official_melanoma(tmp_path / "2017.csv", mel)
    with pytest.raises(ScoreError, match="Extra columns"):
        _official_melanoma(tmp_path / "melanoma.csv", both)
    with pytest.raises(KeyError, match="image"):
        _official_melanoma(tmp_path / "image_id.csv", both)
    a = _official_melanoma(tmp_path / "2017.csv", both)
    b = _official_melanoma(tmp_path / "melanoma.csv", mel)
    assert a.equals(b)  # the constant column changes no melanoma figure


def test_bad_inputs_are_named(tmp_path):
    probs = _labels_and_probs()[1][:6]
    ids = _ids(6)
    masks = np.zeros((6, 1, H, W), np.uint8)
    cases = [
        (dict(ids=ids, probs=probs[:5]), "expected \\(6,\\)"),
        (dict(ids=ids, probs=probs * 10), "not logits"),
        (dict(ids=[*ids[:5], ids[0]], probs=probs), "unique"),
        (dict(ids=ids), "neither"),
        (dict(ids=ids, masks=masks + 2), "binary 0/1"),
        (dict(ids=ids, masks=masks[:4]), "N = 6"),
        (dict(ids=[f"img{i}" for i in range(6)], masks=masks), "ISIC id"),
        (dict(ids=ids, masks=masks, sizes={ids[0]: (H, W)}), "no \\(height, width\\) for 5"),
        (dict(ids=ids, probs=probs, threshold=1.5), "threshold must be in"),
    ]
    for k, (kwargs, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            write_submission(tmp_path / str(k), **kwargs)
        assert not (tmp_path / str(k)).exists()  # checked before anything is written
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        write_submission(tmp_path / "used", ids, probs)
