"""Assemble a cascade from searches, runs or cross-validations: members, weights, TTA and
threshold chosen on validation, or on pooled out-of-fold predictions (oof_selection)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from melanoma.cascade.calibration import (
    CALIBRATION_CHOICES,
    calibration_line,
)
from melanoma.cascade.decisions import (
    TTA_CHOICES,
    at_input_size,
    calibrate_choice,
    resize_drift,
    threshold_drift,
)
from melanoma.cascade.members import (
    BuildContext,
    Source,
    as_list,
    candidates_of,
    check_member_splits,
    check_same_data,
    data_record,
    open_cascade_data,
)
from melanoma.cascade.oof_selection import (
    SELECT_CHOICES,
    cv_candidates,
    refuse_oracle_masks,
)
from melanoma.cascade.report import drift_line, resize_line
from melanoma.cascade.selection import (
    WEIGHT_CHOICES,
    choose_on_oof,
    choose_on_validation,
    validation_data,
)
from melanoma.cascade.store import record_of, save_cascade
from melanoma.postprocess import CLEANUP_CHOICES


def build_cascade(
    seg_source: Source | list[Source],
    cls_source: Source | list[Source],
    out: Path,
    *,
    ensemble_size: int = 1,
    tta: str = "auto",
    target_sensitivity: float | None = None,
    data: str | None = None,
    drop_test_duplicates: bool = False,
    mask_cleanup: str = "auto",
    select_on: str = "auto",
    calibration: str = "auto",
    cls_weights: str = "greedy",
) -> dict:
    """Choose the cascade and write ``out/cascade.pt`` with the splits.

    ``select_on``: ``val`` chooses on the validation split (below); ``oof`` on the pooled
    out-of-fold predictions of cross-validation folders (every classifier source one; see
    :mod:`melanoma.cascade.oof_selection`), the validation split then a second check;
    ``auto``: ``oof`` when every classifier source is a cross-validation folder.

    Each source is a :class:`Candidate`, a run directory, a checkpoint or a
    cross-validation folder; several sources pool their models. They are paired end to
    end (best validation AUC wins); with ``ensemble_size`` > 1 the members are chosen
    greedily instead (segmenters by validation Jaccard, then classifiers by validation AUC
    on those masks); ``cls_weights="equal"`` keeps every classifier candidate at one
    weight each (weights fitted on a few dozen validation melanomas are mostly noise: the
    budget curve, docs/results.md), segmenters still chosen as above; ``tta`` (auto, on,
    off) averages over flips and rotations, ``auto``
    per stage: the segmenters' when it raises the validation Jaccard, the classifiers'
    when it raises the AUC; ``mask_cleanup`` (auto, on, off) keeps the largest region of
    each mask, holes filled, ``auto`` when it raises the validation Jaccard. The threshold
    comes from validation. ``calibration`` (auto, platt, temperature, isotonic, off) maps
    the probability to the observed melanoma rate on the selection set, ``auto`` when that
    lowers its cross-fitted log-loss (:mod:`melanoma.cascade.calibration`); the threshold is
    chosen on the calibrated probabilities. ``drop_test_duplicates`` removes test images
    that share bytes, an id or a lesion with train/val (else refused)."""
    _check_build_args(ensemble_size, tta, target_sensitivity, mask_cleanup, select_on, calibration)
    _check_weights(cls_weights, None)  # before anything loads
    segs, clss = candidates_of(seg_source, "seg"), candidates_of(cls_source, "cls")
    for s, c in itertools.product(segs, clss):
        check_same_data(s, c)
    # The largest size any candidate loads its images at (a classifier that cuts its lesion
    # crop from a larger copy, input.source_size, loads it larger): candidates are compared
    # at that size; the cascade then takes the largest size of the members chosen.
    input_size = max(x.config.load_size for x in [*segs, *clss])
    data_meta = data_record(clss[0].config, data)
    bundle, dropped_val = _members_data([*segs, *clss], data_meta, input_size, drop_test_duplicates)
    cls_cv = _cv_sources(cls_source, select_on)
    _check_weights(cls_weights, cls_cv)
    choices = (ensemble_size, tta, mask_cleanup, target_sensitivity, cls_weights)
    ctx = BuildContext(input_size, bundle, data_meta, *choices)
    if cls_cv:
        choice = choose_on_oof(ctx, segs, as_list(seg_source), cls_cv)
    else:
        choice = choose_on_validation(ctx, segs, clss)
    choice, input_size, bundle = _at_members_size(choice, input_size, bundle, data_meta)
    choice, calibrated, calibration_report = calibrate_choice(
        choice, calibration, target_sensitivity
    )
    print(f"[cascade] {calibration_line(calibration_report)}", flush=True)
    drift, resized = _drifts(choice, calibrated, input_size, data_meta, bundle)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle.splits.save(out / "splits.json")
    record = record_of(
        choice,
        bundle,
        input_size,
        calibration=calibrated.to_dict(),
        calibration_check=calibration_report,
        dropped_val=dropped_val,
        threshold_drift=drift,
        resize_check=resized,
        data=data_meta,
        splits_sha256=hashlib.sha256((out / "splits.json").read_bytes()).hexdigest(),
    )
    return save_cascade(record, out)


def _cv_sources(cls_source, select_on: str):
    """The cross-validation folders to choose on out-of-fold (None: choose on validation);
    refuses ``oof`` without them, and out-of-fold predictions made on true masks."""
    cls_cv = None if select_on == "val" else cv_candidates(as_list(cls_source))
    if select_on == "oof" and cls_cv is None:
        raise ValueError(
            "--select-on oof chooses on out-of-fold predictions: every --cls source must be "
            "a `melanoma cv` folder (with cv.json and oof_outputs.npz); use --select-on val "
            "to choose on the validation split"
        )
    if cls_cv:
        refuse_oracle_masks(cls_cv)
    return cls_cv


def _at_members_size(choice, input_size: int, bundle, data_meta: dict):
    """The choice, size and data of the cascade as it ships: at the largest size its
    chosen members load images at (an unchosen larger candidate must not set it), its
    validation outputs re-run there when that differs from the size it was chosen at."""
    size = max(m.config.load_size for m, _ in [*choice.segmenters, *choice.classifiers])
    if size == input_size:
        return choice, input_size, bundle
    print(
        f"[cascade] the chosen members load images at up to {size} px (the candidates at up "
        f"to {input_size} px): the cascade takes {size} px; its validation outputs are re-run "
        "at that size",
        flush=True,
    )
    bundle = open_cascade_data(data_meta, size).with_splits(bundle.splits)
    return at_input_size(choice, size, bundle), size, bundle


def _drifts(choice, calibration, input_size: int, data_meta: dict, bundle):
    """What the shipped cascade does otherwise than what was fitted or trained on, measured
    and said: the threshold's drift (chosen on out-of-fold predictions) and the in-graph
    resize of members smaller than the cascade's input."""
    drift = threshold_drift(choice, calibration, input_size, bundle)
    if drift:
        print(f"[cascade] {drift_line(drift)}", flush=True)
    resized = resize_drift(choice, input_size, data_meta, bundle)
    for r in resized:
        print(f"[cascade] {resize_line(r, input_size)}", flush=True)
    return drift, resized


def _members_data(members, data_meta: dict, input_size: int, drop_test_duplicates: bool):
    """The data to choose on, without the validation copies of images the members trained
    on (those dropped are returned, to be recorded)."""
    bundle = validation_data(data_meta, input_size, drop_test_duplicates)
    splits, dropped_val = check_member_splits(members, bundle.splits)
    for d in dropped_val:
        print(
            f"[cascade] validation image {d['id']} dropped ({d['reason']} {d['twin']}, which "
            "the members trained on)",
            flush=True,
        )
    return bundle.with_splits(splits), dropped_val


def _check_build_args(
    ensemble_size, tta, target_sensitivity, mask_cleanup, select_on, calibration
) -> None:
    if calibration not in CALIBRATION_CHOICES:
        raise ValueError(
            f"--calibration must be one of {list(CALIBRATION_CHOICES)}, got {calibration!r}"
        )
    if select_on not in SELECT_CHOICES:
        raise ValueError(f"--select-on must be one of {list(SELECT_CHOICES)}, got {select_on!r}")
    if ensemble_size < 1:
        raise ValueError(f"--ensemble-size must be at least 1, got {ensemble_size}")
    if tta not in TTA_CHOICES:
        raise ValueError(f"--tta must be one of {list(TTA_CHOICES)}, got {tta!r}")
    if mask_cleanup not in CLEANUP_CHOICES:
        raise ValueError(
            f"--mask-cleanup must be one of {list(CLEANUP_CHOICES)}, got {mask_cleanup!r}"
        )
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")


def _check_weights(cls_weights: str, cls_cv) -> None:
    if cls_weights not in WEIGHT_CHOICES:
        raise ValueError(
            f"classifier weights must be one of {list(WEIGHT_CHOICES)}, got {cls_weights!r}"
        )
    if cls_cv and cls_weights == "equal":
        raise ValueError(
            "equal weights are for classifiers chosen on validation, but these are "
            "cross-validation folders chosen on their out-of-fold predictions; pass "
            "--ensemble-size N (greedy on out-of-fold) or --select-on val"
        )
