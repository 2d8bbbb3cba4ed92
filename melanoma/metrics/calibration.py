"""How far predicted melanoma probabilities are from observed frequencies: expected
calibration error, Brier score, log-loss and the reliability diagram's bins."""

from __future__ import annotations

import numpy as np

from melanoma.metrics.bootstrap import percentile_interval, resample_rows

ECE_BINS = 10
# Log-loss of a probability of exactly 0 or 1 on the wrong class is infinite: probabilities
# are clipped to [EPS, 1 - EPS] for it (scikit-learn's log_loss clips the same way).
EPS = 1e-7
CALIBRATION_KEYS = ("ece", "brier", "log_loss")


def binning(bins: int = ECE_BINS) -> str:
    """The binning, in words, for reports."""
    return (
        f"{bins} equal-width bins of the predicted probability on [0, 1]; each bin weighted "
        "by its share of the images"
    )


def _bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    # A probability of exactly 1 belongs to the last bin, not to an eleventh.
    return np.minimum((np.asarray(probs, dtype=float) * bins).astype(int), bins - 1)


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
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    return float(np.mean((probs - labels) ** 2))


def log_loss(labels, probs) -> float:
    """Mean negative log-likelihood of the outcomes, probabilities clipped to [EPS, 1-EPS]."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    return float(_log_loss_rows(labels[None, :], probs[None, :])[0])


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
        "brier": np.mean((p - y) ** 2, axis=1),
        "log_loss": _log_loss_rows(y, p),
    }
    out = {k: {"value": point[k], **percentile_interval(samples[k])} for k in CALIBRATION_KEYS}
    out["bins"] = reliability_bins(labels, probs, bins)
    out["binning"] = binning(bins)
    out["n"] = int(len(labels))
    return out


def reliability_bins(labels, probs, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin: its range, image count, mean probability and melanoma rate
    (None for an empty bin): the points of a reliability diagram."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    index = _bin_index(probs, bins)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": count,
                "mean_probability": float(probs[inside].mean()) if count else None,
                "melanoma_rate": float(labels[inside].mean()) if count else None,
            }
        )
    return out


def draw_reliability(ax, report: dict, name: str) -> None:
    """One reliability curve (mean probability against melanoma rate per non-empty bin)."""
    points = [b for b in report["bins"] if b["count"]]
    ax.plot(
        [b["mean_probability"] for b in points],
        [b["melanoma_rate"] for b in points],
        marker="o",
        label=f"{name} (ECE {report['ece']['value']:.3f})",
    )
