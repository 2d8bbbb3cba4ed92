"""Assemble a cascade from searches, runs or cross-validations: members, weights, TTA and
threshold chosen on validation, or on pooled out-of-fold predictions (oof_selection)."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from melanoma.cascade.calibration import (
    CALIBRATION_CHOICES,
    Calibration,
    calibration_line,
    choose_calibration,
)
from melanoma.cascade.ensemble import greedy_selection, mask_jaccard, weighted_mean
from melanoma.cascade.model import Cascade, ClassifierSpec, ProbabilityMap, SegmenterSpec
from melanoma.cascade.oof_selection import (
    SELECT_CHOICES,
    best_segmenter,
    choose_classifiers,
    cv_candidates,
)
from melanoma.data.dataset import DataBundle, open_data
from melanoma.data.splits import LeakError, SplitConfig, Splits
from melanoma.engine.checkpoint import load_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.cv import fold_runs
from melanoma.engine.tasks import rebuild_model
from melanoma.metrics.intervals import classification_interval, mean_interval
from melanoma.metrics.paired import aligned, describe, paired_difference
from melanoma.metrics.segmentation import per_image_counts, scores_from_counts
from melanoma.metrics.threshold import choose_threshold
from melanoma.postprocess import CLEANUP_CHOICES, clean_masks

FORMAT = "melanoma-cascade"
# Read too: 4 (no calibration). An older reader refuses a newer cascade rather than
# ignore its calibration.
VERSION = 5
READABLE = (4, VERSION)
CASCADE_FILE = "cascade.pt"
TTA_CHOICES = ("auto", "on", "off")
TTA_STAGES = ("segmenter", "classifier")


@dataclass
class Candidate:
    """A trained model on offer: its config and weights, where it came from (a search
    trial, a run), and the validation figure it was selected on."""

    config: TrainConfig
    state: dict
    origin: str
    val_metric: float | None
    # split -> {image id: SHA-256} the model was trained, validated and tested on, as its
    # checkpoint recorded them (None: not recorded, so its test split cannot be proven).
    splits: dict[str, dict[str, str]] | None = None


Source = Candidate | str | Path


def load_candidates(
    source: str | Path, task: str, origin: str | None = None, val_metric: float | None = None
) -> list[Candidate]:
    """The model of a checkpoint or run directory, or every fold model of a
    cross-validation directory. (A search name is turned into its trials' checkpoints by
    the command line: ``search.runner.best_checkpoints``.)"""
    path = Path(source)
    folds = fold_runs(path)
    if folds is not None:
        return [c for run in folds for c in load_candidates(run, task)]
    if not path.exists():
        raise FileNotFoundError(
            f"{source} is not a checkpoint, a run directory or a cross-validation folder; "
            "`melanoma cascade build` and `melanoma cv` also take search names"
        )
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    if config.task != task:
        raise ValueError(f"{source} holds a {config.task} model where a {task} model was expected")
    value = val_metric if val_metric is not None else state.get("best_value")
    splits = state.get("splits") or _run_splits(Path(state["path"]))
    return [Candidate(config, state["model"], origin or state["path"], value, splits)]


def _run_splits(checkpoint: Path) -> dict[str, dict[str, str]] | None:
    """The splits.json of the run a checkpoint lies in (checkpoints written before they
    recorded their splits themselves), or None."""
    for run_dir in (checkpoint.parent, checkpoint.parent.parent):
        if (run_dir / "splits.json").is_file():
            return Splits.load(run_dir / "splits.json").hashes()
    return None


def check_member_splits(members: list[Candidate], splits: Splits) -> tuple[Splits, list[dict]]:
    """Refuse a cascade whose test split holds an image any member trained or was
    validated on, or whose validation split holds one a member trained on (its selection
    would score the member on its own training images). Compared by image bytes, so the
    same picture under another id counts too. One exception, which the data set's own
    official splits make: a validation image that is a byte copy, under another id, of an
    image the members trained on (ISIC 2017's ISIC_0012127 is ISIC_0012970) is dropped
    from the validation split rather than refused; the splits without it and the dropped
    images (id, reason, twin) are returned."""
    test = {e.image_sha256: e.sample.id for e in splits.entries["test"]}
    val = {e.image_sha256: e.sample.id for e in splits.entries["val"]}
    copies: dict[str, str] = {}  # val id -> the training id it copies
    for m in members:
        if m.splits is None:
            raise LeakError(
                f"{m.origin} records no splits, so the cascade cannot prove that its test "
                "images are ones this model never saw; retrain it with this version of "
                "melanoma-search (checkpoints now record their splits)"
            )
        seen = {**m.splits.get("val", {}), **m.splits.get("train", {})}
        trained = m.splits.get("train", {})
        by_hash = {h: i for i, h in trained.items()}
        hit = sorted(test[h] for h in set(test) & set(seen.values()))
        # The same id in the member's training split: the splits were carved otherwise.
        recarved = sorted(val[h] for h in set(val) & set(trained.values()) if val[h] in trained)
        for h in set(val) & set(trained.values()):
            if val[h] not in trained:
                copies[val[h]] = by_hash[h]
        for split, ids, used in (
            ("test", hit, "trained or validated"),
            ("val", recarved, "trained"),
        ):
            if ids:
                raise LeakError(
                    f"refusing to build: {len(ids)} image(s) of the cascade's {split} split were "
                    f"{used} on by {m.origin}: {', '.join(ids[:10])}"
                    f"{', ...' if len(ids) > 10 else ''}. The data or split settings differ from "
                    "the ones the model was trained with (another --data, or a data set that "
                    "changed since, re-carves every split); build from the same data"
                )
    dropped = [
        {"id": i, "reason": "same bytes as a training image", "twin": twin}
        for i, twin in sorted(copies.items())
    ]
    kept = [e for e in splits.entries["val"] if e.sample.id not in copies]
    return replace(splits, entries={**splits.entries, "val": kept}), dropped


def make_cascade(
    segs: list[Candidate],
    clss: list[Candidate],
    input_size: int,
    *,
    seg_weights: list[float] | None = None,
    cls_weights: list[float] | None = None,
    seg_tta: bool = False,
    cls_tta: bool = False,
    mask_cleanup: bool = False,
    calibration: Calibration | None = None,
) -> Cascade:
    """A cascade of the given members (an ensemble when there are several of a kind)."""
    seg_weights = seg_weights or [1.0] * len(segs)
    cls_weights = cls_weights or [1.0] * len(clss)
    return Cascade(
        [rebuild_model(s.config, s.state) for s in segs],
        [rebuild_model(c.config, c.state) for c in clss],
        input_size=input_size,
        seg_specs=[
            SegmenterSpec(s.config.data.image_size, w)
            for s, w in zip(segs, seg_weights, strict=True)
        ],
        cls_specs=[
            ClassifierSpec(
                c.config.data.image_size,
                c.config.input.mode,
                c.config.input.crop_margin,
                w,
                c.config.load_size if c.config.load_size != c.config.data.image_size else None,
            )
            for c, w in zip(clss, cls_weights, strict=True)
        ],
        mask_threshold=segs[0].config.threshold,
        seg_tta=seg_tta,
        cls_tta=cls_tta,
        mask_cleanup=mask_cleanup,
        calibration=calibration,
    ).eval()


def open_cascade_data(
    data: dict, size: int, *, path: str | None = None, on_bad: str | None = None
) -> DataBundle:
    """The data set a cascade records (``payload["data"]``), split as it was built;
    ``path`` and ``on_bad`` replace the recorded ones."""
    return open_data(
        path or data["path"],
        size,
        layout=data["layout"],
        on_bad=on_bad or data["on_bad"],
        split_config=SplitConfig.from_record(data),
        external_paths=data.get("external_paths", False),
    )


def check_same_data(seg: TrainConfig, cls: TrainConfig) -> None:
    a = {"path": seg.data.path, "layout": seg.data.layout, **seg.data.split_config().to_record()}
    b = {"path": cls.data.path, "layout": cls.data.layout, **cls.data.split_config().to_record()}
    if a != b:
        raise ValueError(
            "the segmenter and the classifier were trained on different data or splits "
            f"({a} vs {b}); "
            "a cascade needs one test split that neither model saw"
        )


@torch.no_grad()
def run_cascade(
    cascade: Cascade,
    bundle: DataBundle,
    split: str,
    batch_size: int = 16,
    mode: str | None = None,
    gt_masks: bool = False,
) -> dict[str, np.ndarray]:
    """Probabilities (calibrated as the cascade says, and before that as ``raw_prob``),
    labels and masks over a split (labelled images only for the labels); the masks handed
    out are cleaned up when the cascade says so, the classifiers see them as thresholded."""
    dataset = bundle.dataset(split)
    probs, raw_probs, labels, ids, pred_masks, true_masks, has_mask = [], [], [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        images = torch.stack([it["image"] for it in items])
        true = torch.stack([it["mask"] for it in items])
        mask = (cascade.segment(images) > cascade.mask_threshold).to(torch.uint8)
        use = true if gt_masks else mask
        raw = cascade.classify_uncalibrated(images, None if mode == "full" else use, mode)
        raw_probs.append(raw.numpy())
        probs.append(cascade.calibrate(raw).numpy())
        labels += [it["label"] for it in items]
        ids += [it["id"] for it in items]
        pred_masks.append(cleaned(mask) if cascade.mask_cleanup else mask)
        true_masks.append(true)
        has_mask += [it["has_mask"] for it in items]
    return {
        "prob": np.concatenate(probs),
        "raw_prob": np.concatenate(raw_probs),  # before the cascade's calibration
        "label": np.array(labels),
        "id": np.array(ids),
        "pred_mask": torch.cat(pred_masks),
        "true_mask": torch.cat(true_masks),
        "has_mask": np.array(has_mask, dtype=bool),
    }


def cleaned(masks: torch.Tensor) -> torch.Tensor:
    """:func:`melanoma.postprocess.clean_masks` of a (N, 1, H, W) tensor."""
    return torch.from_numpy(clean_masks(masks.numpy()))


def _require_both_classes(bundle: DataBundle, split: str) -> None:
    labels = [e.sample.label for e in bundle.splits.entries[split] if e.sample.label is not None]
    if len(set(labels)) < 2:
        have = f"only {'melanoma' if labels and labels[0] else 'benign'}" if labels else "no"
        raise ValueError(
            f"the {split} split has {have} labelled images ({len(labels)}); a cascade needs "
            f"melanoma and benign {split} images to choose the pair and the threshold: add "
            "data, or raise data.val_fraction when the split is carved from training"
        )


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
    on those masks); ``tta`` (auto, on, off) averages over flips and rotations, ``auto``
    per stage: the segmenters' when it raises the validation Jaccard, the classifiers'
    when it raises the AUC; ``mask_cleanup`` (auto, on, off) keeps the largest region of
    each mask, holes filled, ``auto`` when it raises the validation Jaccard. The threshold
    comes from validation. ``calibration`` (auto, platt, temperature, isotonic, off) maps
    the probability to the observed melanoma rate on the selection set, ``auto`` when that
    lowers its cross-fitted log-loss (:mod:`melanoma.cascade.calibration`); the threshold is
    chosen on the calibrated probabilities. ``drop_test_duplicates`` removes test images
    that share bytes, an id or a lesion with train/val (else refused)."""
    _check_build_args(ensemble_size, tta, target_sensitivity, mask_cleanup, select_on, calibration)
    segs, clss = _candidates(seg_source, "seg"), _candidates(cls_source, "cls")
    for s, c in itertools.product(segs, clss):
        check_same_data(s.config, c.config)
    # The largest size any member loads its images at: a classifier that cuts its lesion
    # crop from a larger copy (input.source_size) makes the cascade take that size.
    input_size = max(x.config.load_size for x in [*segs, *clss])
    data_meta = _data_meta(clss[0].config, data)
    bundle = _validation_data(data_meta, input_size, drop_test_duplicates)
    splits, dropped_val = check_member_splits([*segs, *clss], bundle.splits)
    bundle = bundle.with_splits(splits)
    for d in dropped_val:
        print(
            f"[cascade] validation image {d['id']} dropped ({d['reason']} {d['twin']}, which "
            "the members trained on)",
            flush=True,
        )
    cls_cv = None if select_on == "val" else cv_candidates(_as_list(cls_source))
    if select_on == "oof" and cls_cv is None:
        raise ValueError(
            "--select-on oof chooses on out-of-fold predictions: every --cls source must be "
            "a `melanoma cv` folder (with cv.json and oof_outputs.npz); use --select-on val "
            "to choose on the validation split"
        )
    ctx = _Context(input_size, bundle, ensemble_size, tta, mask_cleanup, target_sensitivity)
    if cls_cv:
        choice = _choose_on_oof(ctx, segs, _as_list(seg_source), cls_cv)
    else:
        choice = _choose_on_validation(ctx, segs, clss)
    choice, calibrated, calibration_report = _calibrate(choice, calibration, target_sensitivity)
    print(f"[cascade] {calibration_line(calibration_report)}", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle.splits.save(out / "splits.json")
    payload = {
        **_payload(choice, bundle, input_size),
        "calibration": calibrated.to_dict(),
        "calibration_check": calibration_report,
        "dropped_val": dropped_val,
        "data": data_meta,
        "splits_sha256": hashlib.sha256((out / "splits.json").read_bytes()).hexdigest(),
    }
    torch.save(payload, out / CASCADE_FILE)
    return _write_summary(payload, out)


def _payload(choice: _Choice, bundle: DataBundle, input_size: int) -> dict:
    """What cascade.pt records of the choice: members, decisions, validation figures."""
    chosen = choice.result
    return {
        "format": FORMAT,
        "version": VERSION,
        "segmenters": [_member(m, w) for m, w in choice.segmenters],
        "classifiers": [_member(m, w) for m, w in choice.classifiers],
        "tta": {k: choice.tta_report[k] for k in TTA_STAGES},
        "mask_cleanup": choice.cleanup_report["used"],
        "input_size": input_size,
        "threshold": choice.threshold,
        "threshold_rule": choice.rule,
        "val_auc": _auc(chosen),
        "val_auc_ci": _auc_interval(chosen),
        "val_jaccard": _jaccard_report(chosen),
        "val_official": _official_part(chosen, bundle),
        "selection": choice.selection,
        **choice.extra,
        "tta_check": choice.tta_report,
        "mask_cleanup_check": choice.cleanup_report,
        "dropped_test": bundle.splits.dropped_test,
    }


@dataclass(frozen=True)
class _Context:
    """What both ways of choosing a cascade work with."""

    input_size: int
    bundle: DataBundle
    ensemble_size: int
    tta: str
    mask_cleanup: str
    target_sensitivity: float | None


@dataclass
class _Choice:
    """The chosen members with their weights, the chosen cascade's validation outputs,
    the threshold and what was compared on the way."""

    segmenters: list[tuple[Candidate, int]]
    classifiers: list[tuple[Candidate, int]]
    result: dict
    tta_report: dict
    cleanup_report: dict
    threshold: float
    rule: str
    selection: dict
    extra: dict
    # The set that chose (validation, or pooled out-of-fold) as labels and probabilities.
    on: str
    labels: np.ndarray
    probs: np.ndarray


def _calibrate(
    choice: _Choice, mode: str, target_sensitivity: float | None
) -> tuple[_Choice, Calibration, dict]:
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


def _choose_on_validation(ctx: _Context, segs, clss) -> _Choice:
    """Pairs, ensemble, TTA, clean-up and threshold, all chosen on the validation split."""
    pairs = _score_pairs(segs, clss, ctx.input_size, ctx.bundle)
    best_pair = max(pairs, key=lambda t: t["val_auc"])
    if ctx.ensemble_size > 1:
        seg_w, cls_w = _select_ensemble(segs, clss, ctx.input_size, ctx.bundle, ctx.ensemble_size)
    else:
        seg_w, cls_w = {segs.index(best_pair["_seg"]): 1}, {clss.index(best_pair["_cls"]): 1}
    members = ([segs[i] for i in seg_w], [clss[i] for i in cls_w])
    weights = {"seg_weights": list(seg_w.values()), "cls_weights": list(cls_w.values())}
    chosen, tta_report = _choose_tta(members, weights, ctx.input_size, ctx.bundle, ctx.tta)
    chosen, cleanup_report = _choose_cleanup(chosen, ctx.mask_cleanup)
    keep = chosen["label"] >= 0
    return _Choice(
        [(segs[i], w) for i, w in seg_w.items()],
        [(clss[i], w) for i, w in cls_w.items()],
        chosen,
        tta_report,
        cleanup_report,
        float("nan"),  # the threshold and its rule: chosen after calibration (_calibrate)
        "",
        {
            "set": "validation",
            "images": int(keep.sum()),
            "melanomas": int(chosen["label"][keep].sum()),
        },
        {
            "best_pair": {k: v for k, v in best_pair.items() if not k.startswith("_")},
            "vs_best_pair": _vs_best_pair(chosen, best_pair["_result"]),
            "pairs": [{k: v for k, v in t.items() if not k.startswith("_")} for t in pairs],
        },
        "validation",
        chosen["label"][keep],
        chosen["prob"][keep],
    )


def _choose_on_oof(ctx: _Context, segs, seg_sources: list, cls_cv: list) -> _Choice:
    """Classifiers, their weights and the threshold chosen on pooled out-of-fold
    predictions; the segmenter too when several come cross-validated. Nothing is chosen
    on validation: ``auto`` leaves TTA and the clean-up off (``on`` keeps them), and the
    validation figures are a second check."""
    seg_cv = cv_candidates(seg_sources)
    if seg_cv:
        pick = seg_cv[best_segmenter(seg_cv)] if len(seg_cv) > 1 else seg_cv[0]
        seg_members = [(m, 1) for p in pick.checkpoints for m in load_candidates(p, "seg")]
    elif len(segs) == 1:
        seg_members = [(segs[0], 1)]
    else:
        raise ValueError(
            f"choosing among {len(segs)} segmenters without the validation split needs them "
            "cross-validated (`melanoma cv seg ...`, then --seg CV_DIR ...), or give one --seg"
        )
    choice = choose_classifiers(cls_cv, ctx.ensemble_size, ctx.target_sensitivity)
    cls_members = [
        (m, w)
        for i, w in choice.weights.items()
        for p in cls_cv[i].checkpoints
        for m in load_candidates(p, "cls")
    ]
    members = ([m for m, _ in seg_members], [m for m, _ in cls_members])
    weights = {
        "seg_weights": [w for _, w in seg_members],
        "cls_weights": [w for _, w in cls_members],
    }
    fixed = "on" if ctx.tta == "on" else "off"
    chosen, tta_report = _choose_tta(members, weights, ctx.input_size, ctx.bundle, fixed)
    chosen, cleanup_report = _choose_cleanup(chosen, "on" if ctx.mask_cleanup == "on" else "off")
    _print_oof_choice(choice, cls_cv)
    return _Choice(
        seg_members,
        cls_members,
        chosen,
        tta_report,
        cleanup_report,
        choice.threshold,
        choice.rule,
        choice.report,
        {"best_pair": None, "vs_best_pair": None, "pairs": []},
        "out-of-fold",
        choice.labels,
        choice.probs,
    )


def _print_oof_choice(choice, cls_cv: list) -> None:
    r = choice.report
    chosen = ", ".join(f"{cls_cv[i].folder} x{w}" for i, w in choice.weights.items())
    print(
        f"[cascade] chosen on out-of-fold predictions of {r['images']} training images "
        f"({r['melanomas']} melanomas): classifiers {chosen}, AUC {r['auc']:.4f}",
        flush=True,
    )
    what = "chosen minus best single candidate, out-of-fold AUC"
    print(f"[cascade] {describe(r['vs_best_single'], what)}", flush=True)


def _as_list(source) -> list:
    return list(source) if isinstance(source, (list, tuple)) else [source]


def _vs_best_pair(chosen: dict, pair: dict) -> dict:
    """The chosen cascade's validation AUC minus the best single pair's, paired bootstrap
    on the same validation images (zero when the chosen cascade is that pair)."""
    keep = chosen["label"] >= 0
    _, a, b = aligned(chosen["id"][keep], chosen["prob"][keep], pair["id"], pair["prob"])
    return paired_difference(chosen["label"][keep], a, b)


def _validation_data(data_meta: dict, input_size: int, drop_test_duplicates: bool) -> DataBundle:
    """The candidates' data with an isolated test split (duplicates dropped if asked) and
    a validation split that holds both classes."""
    bundle = open_cascade_data(data_meta, input_size)
    bundle = bundle.with_splits(bundle.splits.isolated(drop_test_duplicates))
    for leak in bundle.splits.dropped_test:
        print(
            f"[cascade] test image {leak['id']} dropped ({leak['reason']} as {leak['twin']})",
            flush=True,
        )
    _require_both_classes(bundle, "val")
    return bundle


def _choose_tta(members, weights: dict, input_size: int, bundle, tta: str) -> tuple[dict, dict]:
    """Validation outputs of the chosen members with or without test-time augmentation,
    and what was compared. ``auto`` decides per stage, in the cascade's order: the
    segmenters' TTA when it raises the validation Jaccard, then the classifiers' when it
    raises the validation AUC on the masks chosen."""

    def run(seg_tta: bool, cls_tta: bool) -> dict:
        cascade = make_cascade(*members, input_size, **weights, seg_tta=seg_tta, cls_tta=cls_tta)
        return run_cascade(cascade, bundle, "val")

    plain = run(False, False)
    report = {"mode": tta, "val_auc_without": _auc(plain)}
    report["val_jaccard_without"] = _jaccard(plain)
    if tta == "off":
        return plain, report | {"segmenter": False, "classifier": False}
    seg_on = run(True, False)
    report["val_jaccard_with"] = _jaccard(seg_on)
    use_seg = _keep(tta, report)
    base = seg_on if use_seg else plain
    both = run(use_seg, True)
    report["val_auc_with"] = _auc(both)
    report["val_auc_before"] = _auc(base)  # classifier TTA compared on the masks chosen
    use_cls = tta == "on" or report["val_auc_with"] > report["val_auc_before"]
    report |= {"segmenter": use_seg, "classifier": use_cls}
    print(f"[cascade] {tta_line(report)}", flush=True)
    return (both if use_cls else base), report


def _keep(mode: str, report: dict) -> bool:
    """``on``, or ``auto`` where the validation Jaccard with the step beats the one
    without (never without ground-truth masks to tell)."""
    with_, without = report["val_jaccard_with"], report["val_jaccard_without"]
    return mode == "on" or (with_ is not None and with_ > without)


def _choose_cleanup(result: dict, mode: str) -> tuple[dict, dict]:
    """The validation result with or without the mask clean-up, and what was compared:
    ``auto`` keeps it when it raises the validation Jaccard (off without ground-truth
    masks to tell)."""
    report = {"mode": mode, "val_jaccard_without": _jaccard(result)}
    if mode == "off":
        return result, report | {"used": False}
    clean = result | {"pred_mask": cleaned(result["pred_mask"])}
    report["val_jaccard_with"] = _jaccard(clean)
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


def _write_summary(payload: dict, out: Path) -> dict:
    """cascade.json (the payload without weights) and the lines that say what was chosen."""
    summary = {k: v for k, v in payload.items() if k not in ("segmenters", "classifiers", "format")}
    for kind in ("segmenters", "classifiers"):
        summary[kind] = [{k: m[k] for k in ("origin", "weight")} for m in payload[kind]]
    (out / "cascade.json").write_text(json.dumps(summary, indent=1) + "\n")
    ci = payload["val_auc_ci"]
    on_val = payload["selection"]["set"] == "validation"
    pair = f"; best single pair {payload['best_pair']['val_auc']:.4f}" if on_val else ""
    second = "" if on_val else " (chosen on out-of-fold predictions: a second check)"
    print(
        f"[cascade] chose {_describe(payload)}: validation AUC {payload['val_auc']:.4f} "
        f"(95% CI {ci['low']:.3f}-{ci['high']:.3f}){second}{pair}; threshold "
        f"{payload['threshold']:.4f} ({payload['threshold_rule']}); written to {out}",
        flush=True,
    )
    if on_val:
        gain = describe(payload["vs_best_pair"], "chosen minus best single pair, validation AUC")
        print(f"[cascade] {gain}", flush=True)
    if payload["val_jaccard"]:
        jac = payload["val_jaccard"]
        print(
            f"[cascade] its lesion masks at {payload['input_size']} px: validation Jaccard "
            f"{jac['value']:.4f} (95% CI {jac['low']:.3f}-{jac['high']:.3f}, "
            f"{jac['images']} images)",
            flush=True,
        )
    if payload["val_official"]:
        part = payload["val_official"]
        print(
            f"[cascade] of which the {part['images']} official validation images: AUC "
            f"{part['auc']:.4f} (95% CI {part['ci']['low']:.3f}-{part['ci']['high']:.3f})",
            flush=True,
        )
    return summary


def _candidates(source: Source | list[Source], task: str) -> list[Candidate]:
    return [
        c
        for src in _as_list(source)
        for c in ([src] if isinstance(src, Candidate) else load_candidates(src, task))
    ]


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


def _data_meta(config: TrainConfig, path: str | None) -> dict:
    d = config.data
    return {
        "path": str(path or d.path),
        "layout": d.layout,
        "on_bad": d.on_bad,
        **d.split_config().to_record(),
        "external_paths": d.external_paths,
    }


def _auc(result: dict) -> float:
    keep = result["label"] >= 0
    return float(roc_auc_score(result["label"][keep], result["prob"][keep]))


def mask_scores(result: dict) -> dict[str, np.ndarray]:
    """Per-image Jaccard, Dice, thresholded Jaccard and pixel accuracy of a
    :func:`run_cascade` result's masks, over the images that have a ground-truth mask."""
    keep = torch.from_numpy(result["has_mask"])
    return scores_from_counts(
        per_image_counts(result["pred_mask"][keep], result["true_mask"][keep])
    )


def _jaccard(result: dict) -> float | None:
    """Mean per-image validation Jaccard of the cascade's masks (None without masks)."""
    scores = mask_scores(result)["jaccard"]
    return float(scores.mean()) if len(scores) else None


def _jaccard_report(result: dict) -> dict | None:
    """The cascade's validation Jaccard at its input size, with a 95% bootstrap interval
    over the images that have a ground-truth mask."""
    scores = mask_scores(result)["jaccard"]
    if not len(scores):
        return None
    return {"value": float(scores.mean()), "images": int(len(scores))} | mean_interval(scores)


def _auc_interval(result: dict) -> dict:
    """95% bootstrap interval of a validation AUC: how much a selection on it can mean."""
    keep = result["label"] >= 0
    return classification_interval(result["label"][keep], result["prob"][keep], "auc")


def _official_part(result: dict, bundle: DataBundle) -> dict | None:
    """The validation AUC on the official validation images alone, when validation also
    holds images carved from training (``data.val_from_train``); else None."""
    official = {e.sample.id for e in bundle.splits.entries["val"] if e.sample.split == "val"}
    keep = np.isin(result["id"], sorted(official))
    if not official or keep.all():
        return None
    part = {k: v[keep] for k, v in result.items() if k in ("id", "label", "prob")}
    return {"images": int(keep.sum()), "auc": _auc(part), "ci": _auc_interval(part)}


def _score_pairs(segs, clss, input_size: int, bundle: DataBundle) -> list[dict]:
    """Every segmenter with every classifier, end to end on validation."""
    pairs = []
    for s, c in itertools.product(segs, clss):
        result = run_cascade(make_cascade([s], [c], input_size), bundle, "val")
        auc, ci = _auc(result), _auc_interval(result)
        pairs.append(
            {"segmenter": s.origin, "classifier": c.origin, "val_auc": auc, "val_auc_ci": ci}
            | {"_seg": s, "_cls": c, "_result": result}
        )
        print(
            f"[cascade] {s.origin} + {c.origin}: validation AUC {auc:.4f} "
            f"(95% CI {ci['low']:.3f}-{ci['high']:.3f})",
            flush=True,
        )
    return pairs


@torch.no_grad()
def _select_ensemble(segs, clss, input_size: int, bundle: DataBundle, rounds: int):
    """Greedy ensemble selection on validation: segmenters, then classifiers on their masks."""
    val = bundle.dataset("val")
    items = [val[i] for i in range(len(val))]
    images = torch.stack([it["image"] for it in items])
    true = torch.stack([it["mask"] for it in items])
    has_mask = np.array([it["has_mask"] for it in items], dtype=bool)
    labels = np.array([it["label"] for it in items])
    seg_probs = [_batched(make_cascade([s], clss[:1], input_size).segment, images) for s in segs]
    # The members' masks are scored as the cascade will threshold them (make_cascade).
    threshold = segs[0].config.threshold
    seg_w, jaccard = greedy_selection(seg_probs, mask_jaccard(true, has_mask, threshold), rounds)
    mask = torch.from_numpy(weighted_mean(seg_probs, seg_w) > threshold)
    keep = labels >= 0
    cls_probs = []
    for c in clss:
        model = make_cascade(segs[:1], [c], input_size)
        cls_probs.append(
            _batched(lambda x, m, model=model: model.classify(x, m.to(torch.uint8)), images, mask)
        )
    cls_w, auc = greedy_selection(
        cls_probs, lambda p: float(roc_auc_score(labels[keep], p[keep])), rounds
    )
    print(
        f"[cascade] ensemble: segmenters {_weights(segs, seg_w)} (validation Jaccard "
        f"{jaccard:.4f}), classifiers {_weights(clss, cls_w)} (validation AUC {auc:.4f})",
        flush=True,
    )
    return seg_w, cls_w


def _batched(fn, images: torch.Tensor, *more: torch.Tensor, size: int = 16) -> np.ndarray:
    parts = [
        fn(images[i : i + size], *(m[i : i + size] for m in more))
        for i in range(0, len(images), size)
    ]
    return torch.cat(parts).numpy()


def _weights(members: list[Candidate], weights: dict[int, int]) -> str:
    return ", ".join(f"{members[i].origin} x{w}" for i, w in weights.items())


def _member(c: Candidate, weight: int) -> dict:
    return {"config": c.config.to_dict(), "model": c.state, "origin": c.origin, "weight": weight}


def _describe(payload: dict) -> str:
    def names(ms: list[dict]) -> str:
        return " + ".join(
            m["origin"] + (f" x{m['weight']}" if m["weight"] != 1 else "") for m in ms
        )

    tta = f", with {tta_summary(payload['tta'])}" if any(payload["tta"].values()) else ""
    cleanup = ", masks cleaned up" if payload["mask_cleanup"] else ""
    seg, cls = names(payload["segmenters"]), names(payload["classifiers"])
    return f"segmenters [{seg}], classifiers [{cls}]{tta}{cleanup}"


def tta_summary(stages: dict[str, bool]) -> str:
    """``test-time augmentation on (segmenters and classifiers)``, ``... off`` and so on."""
    on = [f"{stage}s" for stage in TTA_STAGES if stages[stage]]
    if not on:
        return "test-time augmentation off"
    return f"test-time augmentation on ({' and '.join(on)})"


def load_cascade(directory: Path) -> tuple[Cascade, dict]:
    """The Cascade module and its metadata from a ``cascade build`` directory."""
    path = Path(directory) / CASCADE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with `melanoma cascade build`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a melanoma cascade (no {FORMAT!r} format tag)")
    if payload.get("version") not in READABLE:
        raise ValueError(
            f"{path} is a version {payload.get('version')} melanoma cascade; this "
            f"melanoma-search reads versions {READABLE[0]}-{VERSION}: rebuild it with "
            "`melanoma cascade build` (or use the melanoma-search that wrote it)"
        )
    payload.setdefault("calibration", None)  # version 4: the classifiers' own probability

    def members(entries: list[dict]) -> list[Candidate]:
        return [
            Candidate(TrainConfig.from_dict(m["config"]), m["model"], m["origin"], None)
            for m in entries
        ]

    cascade = make_cascade(
        members(payload["segmenters"]),
        members(payload["classifiers"]),
        payload["input_size"],
        seg_weights=[m["weight"] for m in payload["segmenters"]],
        cls_weights=[m["weight"] for m in payload["classifiers"]],
        seg_tta=payload["tta"]["segmenter"],
        cls_tta=payload["tta"]["classifier"],
        mask_cleanup=payload["mask_cleanup"],
        calibration=Calibration.from_dict(payload["calibration"]),
    )
    return cascade, payload
