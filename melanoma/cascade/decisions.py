"""What a build decides on the chosen members: test-time augmentation, mask clean-up and
calibration, each kept only when the selection set gains."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from melanoma.cascade.calibration import (
    Calibration,
    choose_calibration,
)
from melanoma.cascade.members import Choice, make_cascade
from melanoma.cascade.model import Cascade, ProbabilityMap
from melanoma.cascade.report import cleanup_line, tta_line
from melanoma.cascade.scoring import CascadeOutputs, cleaned, in_sample_gain, run_cascade
from melanoma.metrics.threshold import choose_threshold

TTA_CHOICES = ("auto", "on", "off")


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
    outputs = replace(
        choice.outputs,
        raw_prob=choice.outputs.prob,
        prob=_emitted(calibration, choice.outputs.prob),
    )
    return replace(choice, threshold=threshold, rule=rule, outputs=outputs), calibration, report


def resize_drift(choice: Choice, input_size: int, data_meta: dict, bundle) -> list[dict]:
    """For each load size of the chosen members below the cascade's: how far the
    images the cascade gives them (its input resized in the graph) are from the images
    they trained on (each file loaded at that size: JPEG draft and area resize), on the
    validation images, in 0-255 units. One graph input cannot give both exactly; the
    record says how far apart they are."""
    from melanoma.cascade.members import open_cascade_data

    members = [m for m, _ in [*choice.segmenters, *choice.classifiers]]
    sizes = sorted({m.config.load_size for m in members})
    val = bundle.dataset("val")
    full = torch.stack([val[i]["image"] for i in range(len(val))]).float() / 255.0
    out = []
    for size in (s for s in sizes if s < input_size):
        small = open_cascade_data(data_meta, size).with_splits(bundle.splits).dataset("val")
        trained = torch.stack([small[i]["image"] for i in range(len(small))]).float()
        given = Cascade._resize(full, size) * 255.0
        diff = (given - trained).abs()
        out.append(
            {
                "size": size,
                "images": len(val),
                "mean_abs_difference": float(diff.mean()),
                "max_abs_difference": float(diff.max()),
            }
        )
    return out


def threshold_drift(choice: Choice, calibration: Calibration, input_size: int, bundle) -> dict:
    """For a choice made on out-of-fold predictions (None otherwise): the threshold and
    calibration were fitted on single fold models' probabilities, and ship on their
    weighted mean (with classifier TTA if on). On the validation images, which chose
    nothing, the sensitivity and specificity at the shipped threshold of each fold model
    alone (mean over them) against the shipped cascade's, with the same masks: the drift
    that averaging and TTA cause."""
    if choice.on != "out-of-fold":
        return None
    threshold = choice.threshold

    def rates(labels: np.ndarray, probs: np.ndarray) -> dict:
        flagged = probs >= threshold
        return {
            "sensitivity": float(flagged[labels == 1].mean()),
            "specificity": float((~flagged[labels == 0]).mean()),
        }

    segs = [m for m, _ in choice.segmenters]
    singles = []
    for member, _ in choice.classifiers:
        cascade = make_cascade(
            segs,
            [member],
            input_size,
            seg_weights=[w for _, w in choice.segmenters],
            seg_tta=choice.tta_report["segmenter"],
            calibration=calibration,
        )
        alone = run_cascade(cascade, bundle, "val")
        alone = alone.subset(alone.labelled)
        singles.append(rates(alone.label, alone.prob))
    shipped = choice.outputs.subset(choice.outputs.labelled)
    fold = {k: float(np.mean([s[k] for s in singles])) for k in ("sensitivity", "specificity")}
    out = {
        "threshold": threshold,
        "images": int(len(shipped.label)),
        "melanomas": int(shipped.label.sum()),
        "out_of_fold": rates(choice.labels, _emitted(calibration, choice.probs)),
        "fold_models_on_val": fold,
        "fold_models": len(singles),
        "shipped_on_val": rates(shipped.label, shipped.prob),
    }
    for k in ("sensitivity", "specificity"):
        out[f"{k}_drift"] = out["shipped_on_val"][k] - fold[k]
    return out


def _emitted(calibration: Calibration, probs: np.ndarray) -> np.ndarray:
    """``probs`` through the cascade's own float32 map, as the exported graph emits them."""
    with torch.no_grad():
        return ProbabilityMap(calibration)(torch.as_tensor(probs, dtype=torch.float32)).numpy()


def at_input_size(choice: Choice, input_size: int, bundle) -> Choice:
    """The choice's validation outputs re-run with its members and decisions (weights,
    TTA per stage, clean-up) at ``input_size``, the size the shipped cascade takes: the
    threshold and calibration are then fitted on what it emits."""
    members = ([m for m, _ in choice.segmenters], [m for m, _ in choice.classifiers])
    cascade = make_cascade(
        *members,
        input_size,
        seg_weights=[w for _, w in choice.segmenters],
        cls_weights=[w for _, w in choice.classifiers],
        seg_tta=choice.tta_report["segmenter"],
        cls_tta=choice.tta_report["classifier"],
    )
    outputs = run_cascade(cascade, bundle, "val")
    if choice.cleanup_report["used"]:
        outputs = replace(outputs, pred_mask=cleaned(outputs.pred_mask))
    if choice.on != "validation":  # chosen on out-of-fold predictions: those stay
        return replace(choice, outputs=outputs)
    labelled = outputs.subset(outputs.labelled)
    # The gain over the best pair, both as they would ship (each at its own size).
    extra = {**choice.extra, "vs_best_pair": in_sample_gain(outputs, choice.best_pair_outputs)}
    return replace(choice, outputs=outputs, labels=labelled.label, probs=labelled.prob, extra=extra)


def choose_tta(
    members, weights: dict, input_size: int, bundle, tta: str
) -> tuple[CascadeOutputs, dict]:
    """Validation outputs of the chosen members with or without test-time augmentation,
    and what was compared. ``auto`` decides per stage, in the cascade's order: the
    segmenters' TTA when it raises the validation Jaccard, then the classifiers' when it
    raises the validation AUC on the masks chosen."""

    def run(seg_tta: bool, cls_tta: bool) -> CascadeOutputs:
        cascade = make_cascade(*members, input_size, **weights, seg_tta=seg_tta, cls_tta=cls_tta)
        return run_cascade(cascade, bundle, "val")

    plain = run(False, False)
    report = {"mode": tta, "val_auc_without": plain.auc()}
    report["val_jaccard_without"] = plain.jaccard()
    if tta == "off":
        return plain, report | {"segmenter": False, "classifier": False}
    seg_on = run(True, False)
    report["val_jaccard_with"] = seg_on.jaccard()
    use_seg = _keep(tta, report)
    base = seg_on if use_seg else plain
    both = run(use_seg, True)
    report["val_auc_with"] = both.auc()
    report["val_auc_before"] = base.auc()  # classifier TTA compared on the masks chosen
    use_cls = tta == "on" or report["val_auc_with"] > report["val_auc_before"]
    report |= {"segmenter": use_seg, "classifier": use_cls}
    print(f"[cascade] {tta_line(report)}", flush=True)
    return (both if use_cls else base), report


def _keep(mode: str, report: dict) -> bool:
    """``on``, or ``auto`` where the validation Jaccard with the step beats the one
    without (never without ground-truth masks to tell)."""
    with_, without = report["val_jaccard_with"], report["val_jaccard_without"]
    return mode == "on" or (with_ is not None and with_ > without)


def choose_cleanup(outputs: CascadeOutputs, mode: str) -> tuple[CascadeOutputs, dict]:
    """The validation outputs with or without the mask clean-up, and what was compared:
    ``auto`` keeps it when it raises the validation Jaccard (off without ground-truth
    masks to tell)."""
    report = {"mode": mode, "val_jaccard_without": outputs.jaccard()}
    if mode == "off":
        return outputs, report | {"used": False}
    clean = replace(outputs, pred_mask=cleaned(outputs.pred_mask))
    report["val_jaccard_with"] = clean.jaccard()
    used = report["used"] = _keep(mode, report)
    print(f"[cascade] {cleanup_line(report)}", flush=True)
    return (clean if used else outputs), report
