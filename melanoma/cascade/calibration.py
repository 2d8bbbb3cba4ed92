"""Recalibration of the cascade's melanoma probability, fitted on the selection set.

A network's softmax is not a risk: an ensemble of them, trained with class weights, reads
0.3 where melanomas are 10% of such images. ``cascade build`` fits a monotone map from the
cascade's probability to the observed melanoma rate on the set that chose the cascade
(validation, or pooled out-of-fold predictions), and the map becomes the last step of the
cascade, so the exported graph and ``predict`` emit calibrated probabilities.

Whether to keep it is decided out of sample: the map is fitted on all but one of K folds
of the selection set and scored on the fold left out, and ``auto`` keeps it when that
cross-fitted log-loss is below the uncalibrated one (fitted and scored on the same images,
a Platt map can only lower the log-loss: no evidence at all).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from melanoma.metrics.calibration import calibration_metrics

CALIBRATION_CHOICES = ("auto", "platt", "temperature", "isotonic", "off")
METHODS = ("none", "platt", "temperature", "isotonic")
CROSS_FIT_FOLDS = 5
# The exported graph evaluates the isotonic map as one clamped ramp per pair of knots;
# pool-adjacent-violators on a few thousand images can leave hundreds of them.
MAX_KNOTS = 64
# The map clips probabilities to [CLIP, 1 - CLIP] before the logit: both bounds exact in
# float32, so the exported graph and NumPy clip alike (1 - 1e-7 is not a float32).
CLIP = 2.0**-20


@dataclass(frozen=True)
class Calibration:
    """A monotone map of the melanoma probability: ``platt`` and ``temperature`` are
    sigmoid(a * logit(p) + b) (temperature: b = 0, a = 1/T), ``isotonic`` interpolates
    linearly between knots ``x`` -> ``y``, ``none`` is the identity."""

    method: str = "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = field(default_factory=tuple)
    y: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r}: expected one of {METHODS}")
        if self.method in ("platt", "temperature") and not self.a > 0:
            raise ValueError(f"a {self.method} calibration needs a > 0 (monotone), got {self.a}")
        if self.method == "isotonic" and (len(self.x) < 2 or len(self.x) != len(self.y)):
            raise ValueError("an isotonic calibration needs at least two knots x -> y")

    def apply(self, probs) -> np.ndarray:
        """The calibrated probabilities (NumPy; the cascade applies the same map in torch)."""
        p = np.asarray(probs, dtype=float)
        if self.method == "none":
            return p
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        q = np.clip(p, CLIP, 1 - CLIP)
        return 1.0 / (1.0 + np.exp(-(self.a * np.log(q / (1 - q)) + self.b)))

    def to_dict(self) -> dict:
        return {**asdict(self), "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        if not data:
            return cls()
        return cls(data["method"], data["a"], data["b"], tuple(data["x"]), tuple(data["y"]))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), CLIP, 1 - CLIP)
    return np.log(q / (1 - q))


def fit_calibration(labels, probs, method: str) -> Calibration:
    """The ``method`` map of ``probs`` to ``labels`` by maximum likelihood: scikit-learn's
    unpenalised logistic regression on the logit (platt: slope and intercept;
    temperature: slope only), or its IsotonicRegression (pool-adjacent-violators), kept to
    at most ``MAX_KNOTS`` knots."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if method == "none":
        return Calibration()
    if method == "isotonic":
        return _isotonic(labels, probs)
    from sklearn.linear_model import LogisticRegression

    a = 0.0
    if len(np.unique(labels)) == 2:
        z = _logit(probs)[:, None]
        # C this large is no penalty (penalty=None is deprecated from scikit-learn 1.8).
        fit = LogisticRegression(C=1e12, fit_intercept=method == "platt", tol=1e-10)
        fit.fit(z, labels)
        a = float(fit.coef_[0, 0])
        b = float(fit.intercept_[0]) if method == "platt" else 0.0
    if a <= 0:
        # One class only, or probabilities that rank melanomas no better than chance: the
        # monotone maximum-likelihood map is then flat, at the melanoma rate (platt) or
        # at one half (temperature, which has no intercept).
        a = 1e-6
        rate = float(np.clip(labels.mean(), CLIP, 1 - CLIP)) if len(labels) else 0.5
        b = float(np.log(rate / (1 - rate))) if method == "platt" else 0.0
    return Calibration(method, a=a, b=b)


def _isotonic(labels: np.ndarray, probs: np.ndarray) -> Calibration:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs, labels)
    x, y = iso.X_thresholds_, iso.y_thresholds_
    if len(x) < 2:  # one distinct probability: a constant map
        x, y = np.array([0.0, 1.0]), np.array([y[0], y[0]])
    if len(x) > MAX_KNOTS:
        # Knots evenly spaced in rank, ends kept: the map through them is still monotone,
        # and it is the map that is scored and shipped.
        keep = np.unique(np.linspace(0, len(x) - 1, MAX_KNOTS).round().astype(int))
        x, y = x[keep], y[keep]
    return Calibration("isotonic", x=tuple(map(float, x)), y=tuple(map(float, y)))


def _estimator(method: str):
    """A calibration method as a scikit-learn classifier of the probability, for
    ``cross_val_predict`` (built here: scikit-learn loads only when a map is fitted)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class CalibrationMap(ClassifierMixin, BaseEstimator):
        def __init__(self, method: str = "platt"):
            self.method = method

        def fit(self, x: np.ndarray, y: np.ndarray):
            self.calibration_ = fit_calibration(y, x[:, 0], self.method)
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            p = self.calibration_.apply(x[:, 0])
            return np.stack([1 - p, p], axis=1)

        def predict(self, x: np.ndarray) -> np.ndarray:
            return (self.predict_proba(x)[:, 1] >= 0.5).astype(int)

    return CalibrationMap(method)


def cross_fitted(labels, probs, method: str, folds: int = CROSS_FIT_FOLDS, seed: int = 0):
    """Each image's probability as calibrated by a map fitted without its fold (stratified
    folds; fewer when a class has fewer images than ``folds``). None when a class has
    fewer than two images."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    k = min(folds, int(np.bincount(labels, minlength=2).min()))
    if k < 2:
        return None
    cut = StratifiedKFold(k, shuffle=True, random_state=seed)
    x = probs[:, None]
    return cross_val_predict(_estimator(method), x, labels, cv=cut, method="predict_proba")[:, 1]


def choose_calibration(labels, probs, mode: str, on: str) -> tuple[Calibration, dict]:
    """The calibration to ship and what decided it. ``mode``: ``off``; ``platt``,
    ``temperature`` or ``isotonic`` (fitted and kept); ``auto``: Platt, kept when its
    cross-fitted log-loss on the selection set ``on`` is lower than the uncalibrated one."""
    if mode not in CALIBRATION_CHOICES:
        raise ValueError(f"--calibration {mode!r}: expected one of {CALIBRATION_CHOICES}")
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    report = {"mode": mode, "set": on, "before": calibration_metrics(labels, probs)}
    if mode == "off":
        return Calibration(), {**report, "used": "none", "reason": "--calibration off"}
    method = "platt" if mode == "auto" else mode
    check = cross_fitted(labels, probs, method)
    report["method"] = method
    report["cross_fitted_folds"] = CROSS_FIT_FOLDS
    if check is not None:
        report["cross_fitted"] = calibration_metrics(labels, check)
    fitted = fit_calibration(labels, probs, method)
    if mode != "auto":
        return fitted, {**report, "used": method, "reason": f"--calibration {mode}"}
    if check is None:
        reason = f"the {on} set has fewer than two images of a class: nothing to check it on"
        return Calibration(), {**report, "used": "none", "reason": reason}
    before, after = report["before"]["log_loss"], report["cross_fitted"]["log_loss"]
    if after < before:
        reason = f"cross-fitted {on} log-loss {after:.4f} < {before:.4f} uncalibrated"
        return fitted, {**report, "used": method, "reason": reason}
    reason = f"cross-fitted {on} log-loss {after:.4f} >= {before:.4f} uncalibrated"
    return Calibration(), {**report, "used": "none", "reason": reason}


def calibration_line(report: dict) -> str:
    """What the build decided about calibration, in one line."""
    if report["used"] == "none":
        return f"probabilities not recalibrated ({report['reason']})"
    before = report["before"]
    after = report.get("cross_fitted")
    figures = (
        f"; {report['set']} ECE {before['ece']:.3f} -> {after['ece']:.3f}, log-loss "
        f"{before['log_loss']:.3f} -> {after['log_loss']:.3f} (cross-fitted)"
        if after
        else ""
    )
    return f"probabilities recalibrated ({report['used']}: {report['reason']}){figures}"
