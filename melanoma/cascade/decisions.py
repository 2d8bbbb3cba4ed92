"""What a build decides on the chosen members: test-time augmentation, mask clean-up and
calibration, each kept only when the selection set gains; and the lines that report them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from melanoma.cascade.calibration import (
    Calibration,
    choose_calibration,
)
from melanoma.cascade.members import Choice, make_cascade
from melanoma.cascade.model import ProbabilityMap
from melanoma.cascade.scoring import cleaned, result_auc, result_jaccard, run_cascade
from melanoma.metrics.threshold import choose_threshold

TTA_CHOICES = ("auto", "on", "off")

TTA_STAGES = ("segmenter", "classifier")


def calibrate_choice(
    choice: Choice, mode: str, target_sensitivity: float | None
) -> tuple[Choice, Calibration, dict]:
    """The calibration chosen on the selection set, the threshold chosen on the
    probabilities the calibrated cascade emits there (float32, through the same map), and
    the validation outputs as it gives them (uncalibrated ones kept as ``raw_prob``)."""
    calibration, report = choose_calibration(choice.labels, choice.probs, mode, choice.on)
    emitted = _emitted(calibration, choice.probs)
    merged = len(np.unique(choice.probs)) - len(np.unique(emitted))
    if merged > 0 and calibration.method != "none":
        # A map of slope near 0 (classifiers that barely rank the selection set) makes
        # distinct probabilities equal in float32: the cascade would lose its ranking.
        note = f"the map merges {merged} distinct {choice.on} probabilities in float32"
        if mode == "auto":
            calibration = Calibration()
            report = {**report, "used": "none", "reason": f"{note}: not kept"}
            emitted = choice.probs
        else:
            report = {**report, "warning": note}
            print(f"[cascade] warning: {note}", flush=True)
    threshold, rule = choose_threshold(choice.labels, emitted, target_sensitivity, choice.on)
    result = {
        **choice.result,
        "raw_prob": choice.result["prob"],
        "prob": _emitted(calibration, choice.result["prob"]),
    }
    return replace(choice, threshold=threshold, rule=rule, result=result), calibration, report


def _emitted(calibration: Calibration, probs: np.ndarray) -> np.ndarray:
    """``probs`` through the cascade's own float32 map, as the exported graph emits them."""
    with torch.no_grad():
        return ProbabilityMap(calibration)(torch.as_tensor(probs, dtype=torch.float32)).numpy()


def choose_tta(members, weights: dict, input_size: int, bundle, tta: str) -> tuple[dict, dict]:
    """Validation outputs of the chosen members with or without test-time augmentation,
    and what was compared. ``auto`` decides per stage, in the cascade's order: the
    segmenters' TTA when it raises the validation Jaccard, then the classifiers' when it
    raises the validation AUC on the masks chosen."""

    def run(seg_tta: bool, cls_tta: bool) -> dict:
        cascade = make_cascade(*members, input_size, **weights, seg_tta=seg_tta, cls_tta=cls_tta)
        return run_cascade(cascade, bundle, "val")

    plain = run(False, False)
    report = {"mode": tta, "val_auc_without": result_auc(plain)}
    report["val_jaccard_without"] = result_jaccard(plain)
    if tta == "off":
        return plain, report | {"segmenter": False, "classifier": False}
    seg_on = run(True, False)
    report["val_jaccard_with"] = result_jaccard(seg_on)
    use_seg = _keep(tta, report)
    base = seg_on if use_seg else plain
    both = run(use_seg, True)
    report["val_auc_with"] = result_auc(both)
    report["val_auc_before"] = result_auc(base)  # classifier TTA compared on the masks chosen
    use_cls = tta == "on" or report["val_auc_with"] > report["val_auc_before"]
    report |= {"segmenter": use_seg, "classifier": use_cls}
    print(f"[cascade] {tta_line(report)}", flush=True)
    return (both if use_cls else base), report


def _keep(mode: str, report: dict) -> bool:
    """``on``, or ``auto`` where the validation Jaccard with the step beats the one
    without (never without ground-truth masks to tell)."""
    with_, without = report["val_jaccard_with"], report["val_jaccard_without"]
    return mode == "on" or (with_ is not None and with_ > without)


def choose_cleanup(result: dict, mode: str) -> tuple[dict, dict]:
    """The validation result with or without the mask clean-up, and what was compared:
    ``auto`` keeps it when it raises the validation Jaccard (off without ground-truth
    masks to tell)."""
    report = {"mode": mode, "val_jaccard_without": result_jaccard(result)}
    if mode == "off":
        return result, report | {"used": False}
    clean = result | {"pred_mask": cleaned(result["pred_mask"])}
    report["val_jaccard_with"] = result_jaccard(clean)
    used = report["used"] = _keep(mode, report)
    print(f"[cascade] {cleanup_line(report)}", flush=True)
    return (clean if used else result), report


def cleanup_line(report: dict) -> str:
    """What the mask clean-up check compared on validation, and what it chose."""
    line = f"mask clean-up, largest region with holes filled ({report['mode']}): "
    line += "used" if report["used"] else "not used"
    if report.get("val_jaccard_with") is not None:
        line += (
            f" (validation Jaccard {report['val_jaccard_with']:.4f} with, "
            f"{report['val_jaccard_without']:.4f} without)"
        )
    return line


def tta_line(report: dict) -> str:
    """What the test-time augmentation check compared on validation, and what it chose."""

    def word(on: bool) -> str:
        return "on" if on else "off"

    seg = f"segmenters {word(report['segmenter'])}"
    if report.get("val_jaccard_with") is not None:
        seg += (
            f" (validation Jaccard {report['val_jaccard_with']:.3f} with, "
            f"{report['val_jaccard_without']:.3f} without)"
        )
    return (
        f"test-time augmentation ({report['mode']}): {seg}; classifiers "
        f"{word(report['classifier'])} (validation AUC {report['val_auc_with']:.3f} with, "
        f"{report['val_auc_before']:.3f} without)"
    )


def tta_summary(stages: dict[str, bool]) -> str:
    """``test-time augmentation on (segmenters and classifiers)``, ``... off`` and so on."""
    on = [f"{stage}s" for stage in TTA_STAGES if stages[stage]]
    if not on:
        return "test-time augmentation off"
    return f"test-time augmentation on ({' and '.join(on)})"
