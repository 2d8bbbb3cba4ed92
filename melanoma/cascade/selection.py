"""Choosing the members: every segmenter-classifier pair scored end to end, greedy
ensembles, on validation or on pooled out-of-fold predictions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from melanoma.cascade.decisions import choose_cleanup, choose_tta
from melanoma.cascade.ensemble import greedy_selection, mask_jaccard, weighted_mean
from melanoma.cascade.members import (
    BuildContext,
    Candidate,
    Choice,
    load_candidates,
    make_cascade,
    open_cascade_data,
    weights_line,
)
from melanoma.cascade.oof_selection import (
    best_segmenter,
    choose_classifiers,
    cv_candidates,
    fold_model_weights,
    mask_source_warnings,
)
from melanoma.cascade.scoring import (
    CascadeOutputs,
    batched,
    in_sample_gain,
    require_both_classes,
    run_cascade,
)
from melanoma.data.dataset import DataBundle
from melanoma.metrics.paired import describe

WEIGHT_CHOICES = ("greedy", "equal")  # how the classifier candidates are weighted


def choose_on_validation(ctx: BuildContext, segs, clss) -> Choice:
    """Pairs, ensemble, TTA, clean-up and threshold, all chosen on the validation split."""
    pairs = _score_pairs(segs, clss, ctx)
    best_pair = max(pairs, key=lambda t: t.val_auc)
    if ctx.ensemble_size > 1 or ctx.cls_weights == "equal":
        seg_w, cls_w = _select_ensemble(segs, clss, ctx, ctx.cls_weights == "equal")
    else:
        seg_w = {segs.index(best_pair.segmenter): 1}
        cls_w = {clss.index(best_pair.classifier): 1}
    members = ([segs[i] for i in seg_w], [clss[i] for i in cls_w])
    weights = {"seg_weights": list(seg_w.values()), "cls_weights": list(cls_w.values())}
    chosen, tta_report = choose_tta(members, weights, ctx.input_size, ctx.bundle, ctx.tta)
    chosen, cleanup_report = choose_cleanup(chosen, ctx.mask_cleanup)
    labelled = chosen.subset(chosen.labelled)
    return Choice(
        [(segs[i], w) for i, w in seg_w.items()],
        [(clss[i], w) for i, w in cls_w.items()],
        chosen,
        tta_report,
        cleanup_report,
        float("nan"),  # the threshold and its rule: chosen after calibration (calibrate_choice)
        "",
        {
            "set": "validation",
            "images": len(labelled.label),
            "melanomas": int(labelled.label.sum()),
            "classifier_weights": ctx.cls_weights,
        },
        {
            "best_pair": best_pair.summary(),
            "vs_best_pair": in_sample_gain(chosen, best_pair.outputs),
            "pairs": [t.summary() for t in pairs],
        },
        "validation",
        labelled.label,
        labelled.prob,
        best_pair.outputs,
    )


def choose_on_oof(ctx: BuildContext, segs, seg_sources: list, cls_cv: list) -> Choice:
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
    for line in mask_source_warnings(cls_cv, [m.origin for m, _ in seg_members]):
        print(f"[cascade] warning: {line}", flush=True)
    choice = choose_classifiers(cls_cv, ctx.ensemble_size, ctx.target_sensitivity)
    per_model = fold_model_weights(
        choice.weights, {i: len(cls_cv[i].checkpoints) for i in choice.weights}
    )
    cls_members = [
        (m, per_model[i])
        for i in choice.weights
        for p in cls_cv[i].checkpoints
        for m in load_candidates(p, "cls")
    ]
    members = ([m for m, _ in seg_members], [m for m, _ in cls_members])
    weights = {
        "seg_weights": [w for _, w in seg_members],
        "cls_weights": [w for _, w in cls_members],
    }
    fixed = "on" if ctx.tta == "on" else "off"
    chosen, tta_report = choose_tta(members, weights, ctx.input_size, ctx.bundle, fixed)
    chosen, cleanup_report = choose_cleanup(chosen, "on" if ctx.mask_cleanup == "on" else "off")
    _print_oof_choice(choice, cls_cv)
    return Choice(
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


def validation_data(data_meta: dict, input_size: int, drop_test_duplicates: bool) -> DataBundle:
    """The candidates' data with an isolated test split (duplicates dropped if asked) and
    a validation split that holds both classes."""
    bundle = open_cascade_data(data_meta, input_size)
    bundle = bundle.with_splits(bundle.splits.isolated(drop_test_duplicates))
    for leak in bundle.splits.dropped_test:
        print(
            f"[cascade] test image {leak['id']} dropped ({leak['reason']} as {leak['twin']})",
            flush=True,
        )
    require_both_classes(bundle, "val")
    return bundle


@dataclass(frozen=True)
class PairScore:
    """One segmenter with one classifier, end to end on validation."""

    segmenter: Candidate
    classifier: Candidate
    outputs: CascadeOutputs
    val_auc: float
    val_auc_ci: dict

    def summary(self) -> dict:
        """What the record keeps of it: the members' origins and the AUC."""
        return {
            "segmenter": self.segmenter.origin,
            "classifier": self.classifier.origin,
            "val_auc": self.val_auc,
            "val_auc_ci": self.val_auc_ci,
        }


def _score_pairs(segs, clss, ctx: BuildContext) -> list[PairScore]:
    """Every segmenter with every classifier, end to end on validation, each pair at the
    size a cascade of it alone would take (the larger of its two load sizes)."""
    bundles = {ctx.input_size: ctx.bundle}
    pairs = []
    for s, c in itertools.product(segs, clss):
        size = max(s.config.load_size, c.config.load_size)
        if size not in bundles:
            bundles[size] = open_cascade_data(ctx.data_meta, size).with_splits(ctx.bundle.splits)
        result = run_cascade(make_cascade([s], [c], size), bundles[size], "val")
        auc, ci = result.auc(), result.auc_interval()
        pairs.append(PairScore(s, c, result, auc, ci))
        print(
            f"[cascade] {s.origin} + {c.origin}: validation AUC {auc:.4f} "
            f"(95% CI {ci['low']:.3f}-{ci['high']:.3f})",
            flush=True,
        )
    return pairs


@torch.no_grad()
def _select_ensemble(segs, clss, ctx: BuildContext, equal: bool):
    """Greedy ensemble selection on validation: segmenters, then classifiers on their masks
    (``equal``: every classifier at one weight, nothing fitted to validation)."""
    input_size, rounds = ctx.input_size, ctx.ensemble_size
    val = ctx.bundle.dataset("val")
    items = [val[i] for i in range(len(val))]
    images = torch.stack([it["image"] for it in items])
    true = torch.stack([it["mask"] for it in items])
    has_mask = np.array([it["has_mask"] for it in items], dtype=bool)
    labels = np.array([it["label"] for it in items])
    seg_probs = [batched(make_cascade([s], clss[:1], input_size).segment, images) for s in segs]
    # The members' masks are scored as the cascade will threshold them (make_cascade).
    threshold = segs[0].config.threshold
    seg_w, jaccard = greedy_selection(seg_probs, mask_jaccard(true, has_mask, threshold), rounds)
    mask = torch.from_numpy(weighted_mean(seg_probs, seg_w) > threshold)
    keep = labels >= 0
    cls_probs = []
    for c in clss:
        model = make_cascade(segs[:1], [c], input_size)
        cls_probs.append(
            batched(lambda x, m, model=model: model.classify(x, m.to(torch.uint8)), images, mask)
        )

    def score(p):
        return float(roc_auc_score(labels[keep], p[keep]))

    if equal:
        cls_w = dict.fromkeys(range(len(clss)), 1)
        auc = score(weighted_mean(cls_probs, cls_w))
    else:
        cls_w, auc = greedy_selection(cls_probs, score, rounds)
    print(
        f"[cascade] ensemble: segmenters {weights_line(segs, seg_w)} (validation Jaccard "
        f"{jaccard:.4f}), classifiers {weights_line(clss, cls_w)} (validation AUC {auc:.4f})",
        flush=True,
    )
    return seg_w, cls_w
