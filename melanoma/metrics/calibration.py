"""How far predicted melanoma probabilities are from observed frequencies: expected
calibration error, Brier score, log-loss and the reliability diagram's bins.

The point figures come from scikit-learn (``brier_score_loss``, ``log_loss``,
``calibration_curve``'s uniform bins); the bootstrap computes the same figures for a
thousand resamples at once in NumPy (``_ece_rows``, ``_log_loss_rows``), tested equal to
the library's."""

from __future__ import annotations

import numpy as np

from melanoma.metrics.bootstrap import percentile_interval, resample_rows

ECE_BINS = 10
# Log-loss of a probability of exactly 0 or 1 on the wrong class is infinite: probabilities
# are clipped to [EPS, 1 - EPS] for it before scikit-learn's log_loss (whose own clip is
# the float epsilon, 1e-16: one wrong certainty would then outweigh 37 images of 1/e).
EPS = 1e-7
CALIBRATION_KEYS = ("ece", "brier", "log_loss")


def binning(bins: int = ECE_BINS) -> str:
    """The binning, in words, for reports."""
    return (
        f"{bins} equal-width bins of the predicted probability on [0, 1] (scikit-learn's "
        "calibration_curve bins: a probability on an edge falls in the lower bin); each "
        "bin weighted by its share of the images"
    )


def _bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    """Each probability's bin, as ``sklearn.calibration.calibration_curve`` bins them."""
    edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.searchsorted(edges, np.asarray(probs, dtype=float))


def expected_calibration_error(labels, probs, bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of (share of images) x |mean probability - melanoma rate|."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    return float(_ece_rows(labels[None, :], probs[None, :], bins)[0])


def _ece_rows(labels: np.ndarray, probs: np.ndarray, bins: int) -> np.ndarray:
    """ECE of each row of (resamples, n) labels and probabilities at once."""
    index = _bin_index(probs, bins)
    n = labels.shape[1]
    total = np.zeros(len(labels))
    for b in range(bins):
        inside = index == b
        count = inside.sum(1)
        gap = np.abs((probs * inside).sum(1) - (labels * inside).sum(1))
        total += np.where(count > 0, gap, 0.0) / n
    return total


def brier_score(labels, probs) -> float:
    """Mean squared difference between probability and outcome (0 is perfect)."""
    from sklearn.metrics import brier_score_loss

    labels, probs = np.asarray(labels, dtype=int), _unit(probs)
    return float(brier_score_loss(labels, probs)) if len(labels) else float("nan")


def log_loss(labels, probs) -> float:
    """Mean negative log-likelihood of the outcomes, probabilities clipped to [EPS, 1-EPS]."""
    from sklearn.metrics import log_loss as sk_log_loss

    labels, p = np.asarray(labels, dtype=int), np.clip(_unit(probs), EPS, 1 - EPS)
    return float(sk_log_loss(labels, p, labels=[0, 1])) if len(labels) else float("nan")


def _unit(probs) -> np.ndarray:
    """Probabilities as float64 in [0, 1]: float32 rounding may step past either end,
    which scikit-learn refuses."""
    return np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)


def _brier_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return np.mean((probs - labels) ** 2, axis=1)


def _log_loss_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, EPS, 1 - EPS)
    return -np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p), axis=1)


def calibration_metrics(labels, probs, bins: int = ECE_BINS) -> dict[str, float]:
    return {
        "ece": expected_calibration_error(labels, probs, bins),
        "brier": brier_score(labels, probs),
        "log_loss": log_loss(labels, probs),
    }


def calibration_report(
    labels, probs, *, resamples: int = 1000, seed: int = 0, bins: int = ECE_BINS
) -> dict:
    """ECE, Brier score and log-loss with percentile 95% intervals (plain bootstrap: all
    three depend on prevalence), the reliability bins and the binning in words. ECE grows
    with sampling noise (a resample's duplicated images make its bins noisier), so its
    resampled range can lie above the point estimate: read it as how large the error
    could be, not as an interval centred on it (bias-corrected intervals miss on the other
    side; we checked)."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    point = calibration_metrics(labels, probs, bins)
    rows = resample_rows(len(labels), resamples, seed)
    y, p = labels[rows], probs[rows]
    samples = {
        "ece": _ece_rows(y, p, bins),
        "brier": _brier_rows(y, p),
        "log_loss": _log_loss_rows(y, p),
    }
    out = {k: {"value": point[k], **percentile_interval(samples[k])} for k in CALIBRATION_KEYS}
    out["bins"] = reliability_bins(labels, probs, bins)
    out["binning"] = binning(bins)
    out["n"] = int(len(labels))
    return out


def reliability_bins(labels, probs, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin: its range, image count, mean probability and melanoma rate
    (None for an empty bin): the points of a reliability diagram (scikit-learn's
    ``calibration_curve``, which leaves the empty bins out)."""
    from sklearn.calibration import calibration_curve

    labels, probs = np.asarray(labels, dtype=int), _unit(probs)
    counts = np.bincount(_bin_index(probs, bins), minlength=bins)
    rate, mean = iter([]), iter([])
    if len(labels):
        # calibration_curve needs a positive class to name; pos_label=1 holds for one class.
        rates, means = calibration_curve(labels, probs, n_bins=bins, pos_label=1)
        rate, mean = iter(rates), iter(means)
    return [
        {
            "low": b / bins,
            "high": (b + 1) / bins,
            "count": int(counts[b]),
            "mean_probability": float(next(mean)) if counts[b] else None,
            "melanoma_rate": float(next(rate)) if counts[b] else None,
        }
        for b in range(bins)
    ]


def draw_reliability(ax, report: dict, name: str) -> None:
    """One reliability curve (mean probability against melanoma rate per non-empty bin)."""
    points = [b for b in report["bins"] if b["count"]]
    ax.plot(
        [b["mean_probability"] for b in points],
        [b["melanoma_rate"] for b in points],
        marker="o",
        label=f"{name} (ECE {report['ece']['value']:.3f})",
    )
