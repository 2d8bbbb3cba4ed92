"""Calibration metrics, recalibration maps and operating points, against hand computations
and a synthetic set of known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melanoma.cascade.calibration import (
    Calibration,
    choose_calibration,
    cross_fitted,
    fit_calibration,
)
from melanoma.cascade.model import ProbabilityMap
from melanoma.metrics.calibration import (
    brier_score,
    calibration_report,
    expected_calibration_error,
    log_loss,
    reliability_bins,
)
from melanoma.metrics.operating_points import describe_point, operating_points


def overconfident(n: int, seed: int, push: float = 4.0):
    """Outcomes drawn from true risks, and probabilities pushed towards 0 or 1:
    sigmoid(push * logit(risk))."""
    rng = np.random.default_rng(seed)
    risk = rng.uniform(0.02, 0.98, n)
    labels = (rng.uniform(0, 1, n) < risk).astype(int)
    z = np.log(risk / (1 - risk))
    return labels, 1 / (1 + np.exp(-push * z)), risk


def test_calibration_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    # Bins of 0.1: [0, 0.1) holds 0.05 (rate 0); [0.1, 0.2) holds 0.15 and 0.12 (rate 1/2);
    # [0.9, 1.0] holds 0.95 and 1.0 (rate 1; 1.0 belongs to the last bin).
    expected = (1 * abs(0.05 - 0) + 2 * abs(0.135 - 0.5) + 2 * abs(0.975 - 1)) / 5
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    assert brier_score(labels, probs) == pytest.approx(np.mean((probs - labels) ** 2))
    # log-loss clips 1.0 to 1 - 1e-7 rather than taking log(0) for a wrong class
    assert log_loss([0], [1.0]) == pytest.approx(-np.log(1e-7), rel=1e-6)
    bins = reliability_bins(labels, probs)
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[1]["melanoma_rate"] == 0.5 and bins[2]["mean_probability"] is None
    report = calibration_report(labels, probs, resamples=200)
    assert report["ece"]["value"] == pytest.approx(expected)
    assert report["ece"]["low"] <= report["ece"]["value"] <= report["ece"]["high"]
    assert "10 equal-width bins" in report["binning"] and report["n"] == 5


@pytest.mark.parametrize("method", ["platt", "temperature", "isotonic"])
def test_recalibration_lowers_ece_and_log_loss_on_new_images(method):
    labels, probs, _ = overconfident(4000, seed=0)
    new_labels, new_probs, _ = overconfident(4000, seed=1)
    calibration = fit_calibration(labels, probs, method)
    mapped = calibration.apply(new_probs)
    assert expected_calibration_error(new_labels, mapped) < 0.5 * expected_calibration_error(
        new_labels, new_probs
    )
    assert log_loss(new_labels, mapped) < log_loss(new_labels, new_probs) - 0.05
    # A monotone map keeps the ranking: the AUC does not move (isotonic may tie some).
    order = np.argsort(new_probs)
    assert np.all(np.diff(mapped[order]) >= -1e-12)
    if method == "temperature":  # overconfident: T > 1, a = 1/T close to 1/4
        assert calibration.b == 0 and calibration.a == pytest.approx(0.25, abs=0.05)


def test_the_map_is_the_same_in_torch_numpy_and_onnx_runtime(tmp_path):
    import onnxruntime as ort

    labels, probs, _ = overconfident(500, seed=2)
    p = np.linspace(0, 1, 101).astype(np.float32)
    for method in ("none", "platt", "temperature", "isotonic"):
        calibration = fit_calibration(labels, probs, method)
        layer = ProbabilityMap(calibration).eval()
        with torch.no_grad():
            eager = layer(torch.from_numpy(p)).numpy()
        assert np.abs(eager - calibration.apply(p)).max() < 1e-5, method
        if method == "none":
            continue
        path = tmp_path / f"{method}.onnx"
        torch.onnx.export(layer, (torch.from_numpy(p),), str(path), input_names=["p"], dynamo=True)
        onnx_out = ort.InferenceSession(str(path)).run(None, {"p": p})[0]
        assert np.abs(onnx_out - eager).max() < 1e-5, method
        assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_auto_keeps_platt_only_when_it_lowers_the_cross_fitted_log_loss():
    labels, probs, risk = overconfident(600, seed=3)
    calibration, report = choose_calibration(labels, probs, "auto", "validation")
    assert calibration.method == "platt" and report["used"] == "platt"
    assert report["cross_fitted"]["log_loss"] < report["before"]["log_loss"]
    assert "cross-fitted validation log-loss" in report["reason"]
    # Probabilities that are the true risks leave nothing to gain out of sample.
    calibration, report = choose_calibration(labels, risk, "auto", "validation")
    assert calibration.method == "none" and report["used"] == "none"
    assert ">=" in report["reason"]
    # Asked for, a method is fitted whatever the check says; off fits nothing.
    assert choose_calibration(labels, risk, "isotonic", "validation")[0].method == "isotonic"
    assert choose_calibration(labels, probs, "off", "validation")[0] == Calibration()
    with pytest.raises(ValueError, match="--calibration 'logistic': expected one of"):
        choose_calibration(labels, probs, "logistic", "validation")


def test_cross_fitting_holds_each_fold_out_and_needs_two_of_each_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 1])
    probs = np.linspace(0.05, 0.95, 10)
    out = cross_fitted(labels, probs, "platt", folds=5)
    assert out.shape == probs.shape and np.all((out > 0) & (out < 1))
    assert cross_fitted(np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.9]), "platt") is None
    _, report = choose_calibration(
        np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.9]), "auto", "x"
    )
    assert report["used"] == "none" and "fewer than two images of a class" in report["reason"]


def test_cross_fitted_images_are_scored_by_a_map_fitted_without_their_fold():
    """Each image's cross-fitted probability is what the map fitted on the other folds
    gives it (the same folds, by hand)."""
    from sklearn.model_selection import StratifiedKFold

    labels, probs, _ = overconfident(300, seed=4)
    out = cross_fitted(labels, probs, "platt", folds=5, seed=2)
    by_hand = np.empty_like(probs)
    for fit, held in StratifiedKFold(5, shuffle=True, random_state=2).split(probs, labels):
        by_hand[held] = fit_calibration(labels[fit], probs[fit], "platt").apply(probs[held])
    np.testing.assert_allclose(out, by_hand)
    assert not np.allclose(out, fit_calibration(labels, probs, "platt").apply(probs))


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_sigmoid_maps_are_the_maximum_likelihood_fit(method):
    """The score equations hold at the fitted map: sum (y - p) z = 0, and for Platt
    sum (y - p) = 0 too (z the clipped logit of the input)."""
    from melanoma.cascade.calibration import _logit

    labels, probs, _ = overconfident(2000, seed=5)
    c = fit_calibration(labels, probs, method)
    residual = labels - c.apply(probs)
    assert abs(np.mean(residual * _logit(probs))) < 1e-6
    if method == "platt":
        assert abs(np.mean(residual)) < 1e-6
    assert c.a == pytest.approx(0.25, abs=0.05)  # the push of 4 undone


def test_a_map_of_uninformative_probabilities_is_flat_at_the_rate():
    """Ranked backwards (or one class only): Platt is flat at the melanoma rate (here a
    quarter, so a wrong intercept shows), temperature flat at one half."""
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.1, 0.2, 0.8, 0.9, 0.75, 0.7, 0.85, 0.95])  # ranked backwards
    platt = fit_calibration(labels, probs, "platt")
    assert platt.a > 0 and np.allclose(platt.apply(probs), 0.25, atol=1e-4)
    temperature = fit_calibration(labels, probs, "temperature")
    assert temperature.a > 0 and np.allclose(temperature.apply(probs), 0.5, atol=1e-4)
    one_class = fit_calibration(np.ones(4), np.array([0.2, 0.4, 0.6, 0.8]), "platt")
    assert np.all(one_class.apply([0.3]) > 0.99)
    _, report = choose_calibration(np.zeros(5), np.linspace(0.1, 0.5, 5), "auto", "val")
    assert report["used"] == "none" and "fewer than two images of a class" in report["reason"]


def test_isotonic_map_keeps_at_most_max_knots_and_the_graph_agrees():
    from melanoma.cascade.calibration import MAX_KNOTS

    rng = np.random.default_rng(6)
    probs = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, 20000) < probs).astype(int)
    c = fit_calibration(labels, probs, "isotonic")
    assert 2 <= len(c.x) <= MAX_KNOTS
    assert np.all(np.diff(c.x) > 0) and np.all(np.diff(c.y) >= 0)
    assert c.x[0] == pytest.approx(probs.min()) and c.x[-1] == pytest.approx(probs.max())
    assert np.max(np.abs(c.apply(probs) - probs)) < 0.1  # still the identity, roughly
    graph = ProbabilityMap(c)(torch.tensor(probs, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(graph, c.apply(probs), atol=1e-5)


def test_bad_calibrations_are_refused():
    with pytest.raises(ValueError, match="needs a > 0"):
        Calibration("platt", a=-1.0)
    with pytest.raises(ValueError, match="expected one of"):
        Calibration("spline")
    with pytest.raises(ValueError, match="at least two knots"):
        Calibration("isotonic", x=(0.5,), y=(0.5,))


def test_operating_points_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.8, 0.7, 0.9])
    points = operating_points(labels, probs, resamples=100)
    # 90% (and 95%) sensitivity needs both melanomas: threshold <= 0.7 lets 0.8 through,
    # one false positive of four benign images: specificity 0.75.
    assert points["specificity_at_90"]["value"] == 0.75
    assert points["specificity_at_95"]["value"] == 0.75
    # 90% specificity allows no false positive: threshold above 0.8 keeps only 0.9.
    assert points["sensitivity_at_90"]["value"] == 0.5
    for point in points.values():
        assert point["low"] <= point["value"] <= point["high"]
    assert describe_point("specificity_at_95") == "specificity at 95% sensitivity"
    with pytest.raises(ValueError, match="need melanoma and benign images"):
        operating_points(np.array([1, 1]), np.array([0.2, 0.4]))


def test_bad_build_and_model_arguments_name_the_allowed_values(tmp_path):
    from melanoma.cascade.build import build_cascade
    from melanoma.models import create_classifier

    with pytest.raises(ValueError, match=r"--calibration must be one of \['auto', 'platt'"):
        build_cascade("seg", "cls", tmp_path, calibration="spline")
    with pytest.raises(
        ValueError, match="in_channels must be 3 \\(RGB\\) or 4 \\(RGB \\+ mask\\), got 5"
    ):
        create_classifier("resnet18", in_channels=5)


def test_bootstrap_rows_equal_scikit_learns_figures():
    """The vectorised rows the bootstrap uses give, row by row, scikit-learn's log-loss and
    Brier score and the ECE of calibration_curve's bins; the reliability bins equal a count
    by hand with scikit-learn's edge rule (a probability on an edge is in the lower bin:
    0.1 and 0.2 here, and 0.0 and 1.0 at the ends)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss
    from sklearn.metrics import log_loss as sk_log_loss

    from melanoma.metrics.calibration import EPS, _brier_rows, _ece_rows, _log_loss_rows

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (6, 50))
    probs = rng.uniform(0, 1, (6, 50))
    probs[:, :4] = [0.1, 0.2, 1.0, 0.0]
    eces, losses = _ece_rows(labels, probs, 10), _log_loss_rows(labels, probs)
    briers = _brier_rows(labels, probs)
    for y, p, ece, loss, brier in zip(labels, probs, eces, losses, briers, strict=True):
        inside = [(p <= 0.1) if b == 0 else (p > b / 10) & (p <= (b + 1) / 10) for b in range(10)]
        counts = [int(m.sum()) for m in inside]
        rates = [y[m].mean() for m in inside if m.any()]
        rate, mean = calibration_curve(y, p, n_bins=10)
        filled = [c for c in counts if c]
        expected = sum(c * abs(mp - r) for c, mp, r in zip(filled, mean, rate, strict=True))
        assert ece == pytest.approx(expected / len(y))
        assert expected_calibration_error(y, p) == pytest.approx(expected / len(y))
        assert loss == pytest.approx(sk_log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1]))
        assert brier == pytest.approx(brier_score_loss(y, p))
        assert brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))
        bins = reliability_bins(y, p)
        assert [b["count"] for b in bins] == counts
        assert [b["melanoma_rate"] for b in bins if b["count"]] == pytest.approx(rates)


def test_calibration_figures_of_no_images_are_nan_and_of_rounded_probabilities_finite():
    assert np.isnan(brier_score([], [])) and np.isnan(log_loss([], []))
    assert [b["count"] for b in reliability_bins([], [])] == [0] * 10
    # float32 rounding may step just past 1: scored as 1, not refused
    assert brier_score([1], np.float32([1.0000001])) == 0.0
