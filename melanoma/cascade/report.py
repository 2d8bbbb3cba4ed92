"""The words a cascade is reported in: the build's console lines, the decisions' lines
(test-time augmentation, mask clean-up) and the test report as Markdown."""

from __future__ import annotations

from pathlib import Path

from melanoma.cascade.calibration import calibration_line
from melanoma.cascade.record import TTA_STAGES, CascadeRecord, MemberRecord
from melanoma.cascade.scoring import SEG_KEYS
from melanoma.data.splits import DROP_OPTION
from melanoma.metrics.calibration import CALIBRATION_KEYS
from melanoma.metrics.classification import BOOTSTRAP_KEYS
from melanoma.metrics.intervals import format_interval
from melanoma.metrics.operating_points import describe_point
from melanoma.metrics.paired import describe
from melanoma.metrics.subgroups import SUBGROUP_KEYS


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


def print_choice(r: CascadeRecord, out: Path) -> None:
    """The lines a build ends with: what was chosen, on what, and how it scored."""
    ci = r.val_auc_ci
    on_val = r.selection["set"] == "validation"
    pair = f"; best single pair {r.best_pair['val_auc']:.4f}" if on_val else ""
    second = "" if on_val else " (chosen on out-of-fold predictions: a second check)"
    print(
        f"[cascade] chose {_members_line(r)}: validation AUC {r.val_auc:.4f} "
        f"(95% CI {ci['low']:.3f}-{ci['high']:.3f}){second}{pair}; threshold "
        f"{r.threshold:.4f} ({r.threshold_rule}); written to {out}",
        flush=True,
    )
    if on_val:
        gain = describe(r.vs_best_pair, "chosen minus best single pair, validation AUC")
        print(f"[cascade] {gain}", flush=True)
    if r.val_jaccard:
        jac = r.val_jaccard
        print(
            f"[cascade] its lesion masks at {r.input_size} px: validation Jaccard "
            f"{jac['value']:.4f} (95% CI {jac['low']:.3f}-{jac['high']:.3f}, "
            f"{jac['images']} images)",
            flush=True,
        )
    if r.val_official:
        part = r.val_official
        print(
            f"[cascade] of which the {part['images']} official validation images: AUC "
            f"{part['auc']:.4f} (95% CI {part['ci']['low']:.3f}-{part['ci']['high']:.3f})",
            flush=True,
        )


def _members_line(r: CascadeRecord) -> str:
    def names(ms: tuple[MemberRecord, ...]) -> str:
        return " + ".join(m.origin + (f" x{m.weight}" if m.weight != 1 else "") for m in ms)

    tta = f", with {tta_summary(r.tta)}" if any(r.tta.values()) else ""
    cleanup = ", masks cleaned up" if r.mask_cleanup else ""
    return f"segmenters [{names(r.segmenters)}], classifiers [{names(r.classifiers)}]{tta}{cleanup}"


def _members(members: list[dict]) -> str:
    return ", ".join(
        f"`{m['origin']}`" + (f" x{m['weight']}" if m["weight"] != 1 else "") for m in members
    )


def _selection_lines(report: dict) -> list[str]:
    """How validation chose: the best single pair beside the chosen cascade, TTA or not."""
    lines = []
    pair, tta = report.get("best_pair"), report.get("tta_check")
    if pair:
        ci = pair.get("val_auc_ci") or {}
        lines.append(
            f"- best single pair on validation: `{pair['segmenter']}` + `{pair['classifier']}`, "
            f"AUC {pair['val_auc']:.3f}"
            + (f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})" if ci else "")
        )
    chosen_on = report.get("selection") or {}
    if chosen_on.get("set") == "out-of-fold":
        lines.append(
            f"- chosen on out-of-fold predictions of {chosen_on['images']} training images "
            f"({chosen_on['melanomas']} melanomas): AUC {chosen_on['auc']:.3f}; "
            + describe(chosen_on["vs_best_single"], "chosen minus best single candidate")
            + "; nothing was chosen on the validation split"
        )
    if report.get("vs_best_pair"):
        lines.append(
            "- " + describe(report["vs_best_pair"], "chosen minus best single pair, validation AUC")
        )
    if tta and "val_auc_with" in tta:
        lines.append(f"- {tta_line(tta)}")
    if report.get("mask_cleanup_check"):
        lines.append(f"- {cleanup_line(report['mask_cleanup_check'])}")
    jac = report.get("val_jaccard")
    if jac:
        lines.append(
            f"- lesion masks on validation: Jaccard {jac['value']:.3f} "
            f"(95% CI {jac['low']:.3f}-{jac['high']:.3f}, {jac['images']} images)"
        )
    return lines


def _operating_point_lines(report: dict) -> list[str]:
    points = report.get("operating_points")
    if not points:
        return []
    return [
        "## Operating points",
        "",
        "Read off the test ROC curve (a threshold that reaches them on the test images; "
        "ship one with `cascade build --target-sensitivity`, chosen on the selection set):",
        "",
        "| operating point | value (95% CI) |",
        "|---|---|",
        *(f"| {describe_point(k)} | {format_interval(v)} |" for k, v in points.items()),
        "",
    ]


def _subgroup_lines(report: dict) -> list[str]:
    subgroups = report.get("subgroups")
    if subgroups is None:
        return []
    if not subgroups:
        return ["## Subgroups", "", "The data set records no age, sex or site.", ""]
    lines = [
        "## Subgroups",
        "",
        f"At the shipped threshold; a group with fewer than {report['subgroup_min_per_class']} "
        "melanomas or benign images is listed as too small. Intervals resample within each "
        "class of the group.",
        "",
    ]
    for field, rows in subgroups.items():
        lines += [
            f"| {field} | images | melanomas | prevalence | " + " | ".join(SUBGROUP_KEYS) + " |",
            "|---|---|---|---|" + "---|" * len(SUBGROUP_KEYS),
        ]
        for r in rows:
            figures = (
                [format_interval(r[k]) for k in SUBGROUP_KEYS]
                if "too_small" not in r
                else ["too small"] * len(SUBGROUP_KEYS)
            )
            lines.append(
                f"| {r['group']} | {r['images']} | {r['melanomas']} | {r['prevalence']:.1%} | "
                + " | ".join(figures)
                + " |"
            )
        lines.append("")
    return lines


def _calibration_lines(report: dict) -> list[str]:
    test = report.get("test_calibration")
    if not test:
        return []
    method = (report.get("calibration") or {}).get("method", "none")
    check = report.get("calibration_check")
    lines = [
        "## Calibration",
        "",
        f"- shipped map: `{method}`" + (f"; {calibration_line(check)}" if check else ""),
        f"- ECE: {test['shipped']['binning']}; 95% intervals: plain bootstrap of the test "
        "images (all three depend on prevalence). ECE grows with sampling noise, so its "
        "resampled range can lie above the point figure: read it as how large the "
        "calibration error could be",
        "",
        "| metric | shipped | before calibration |",
        "|---|---|---|",
        *(
            f"| {k} | {format_interval(test['shipped'][k])} | "
            f"{format_interval(test['uncalibrated'][k])} |"
            for k in CALIBRATION_KEYS
        ),
        "",
        "![Reliability diagram](reliability.png)",
        "",
    ]
    return lines


def markdown(report: dict) -> str:
    """report.md: the test report of ``melanoma cascade evaluate`` as a page."""
    lines = [
        "# Cascade evaluation on the held-out test split",
        "",
        f"- cascade: `{report['cascade']}`; data: `{report['data']}`; "
        f"{report['test_images']} test images evaluated",
        f"- segmenters: {_members(report['segmenters'])}; classifiers: "
        f"{_members(report['classifiers'])} (input mode `{report['input_mode']}`); "
        f"{tta_summary(report['tta'])}; lesion masks "
        + (
            "cleaned up (largest region, holes filled)"
            if report.get("mask_cleanup")
            else "as thresholded"
        ),
        *_selection_lines(report),
        f"- melanoma threshold {report['threshold']:.4f}: {report['threshold_rule']} "
        f"(validation AUC {report['val_auc']:.3f})",
        *([f"- {drift_line(report['threshold_drift'])}"] if report.get("threshold_drift") else []),
        *(f"- {resize_line(r, report['input_size'])}" for r in report.get("resize_check") or []),
        f"- 95% intervals: percentile bootstrap over {report['bootstrap_resamples']} "
        "resamples of the test images (within each class for AUC, balanced accuracy, "
        "sensitivity, specificity and recall; plain for precision, F1, accuracy and average "
        "precision, which depend on prevalence)",
        "",
    ]
    for d in report.get("dropped_validation_images") or []:
        lines.insert(
            -1,
            f"- validation image {d['id']} left out of every choice ({d['reason']} "
            f"{d['twin']}, which the members trained on)",
        )
    dropped = report.get("dropped_test_images") or []
    if dropped:
        lines += [
            f"## {len(dropped)} test image(s) dropped ({DROP_OPTION})",
            "",
            f"They share bytes, an id or a lesion with a train/val image; the "
            f"{report['test_images']} others were evaluated.",
            "",
            "| test image | reason | twin |",
            "|---|---|---|",
            *(f"| {x['id']} | {x['reason']} | {x['twin']} |" for x in dropped),
            "",
        ]
    columns = [("cascade", report["classification"])]
    if "classifier_with_ground_truth_masks" in report:
        columns.append(("ground-truth masks", report["classifier_with_ground_truth_masks"]))
    lines += [
        "## Classification (melanoma vs benign)",
        "",
        "| metric | " + " | ".join(c for c, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for k in BOOTSTRAP_KEYS:
        lines.append(f"| {k} | " + " | ".join(format_interval(col[k]) for _, col in columns) + " |")
    cm = report["classification"]["confusion_matrix"]
    lines += [
        "",
        f"Confusion matrix (cascade; rows true benign/melanoma, columns predicted): "
        f"TN {cm[0][0]}, FP {cm[0][1]}, FN {cm[1][0]}, TP {cm[1][1]}",
        "",
    ]
    lines += _operating_point_lines(report) + _calibration_lines(report)
    lines += _subgroup_lines(report)
    if "segmentation" in report:
        seg = report["segmentation"]
        lines += ["## Segmentation", "", "| metric | value (95% CI) |", "|---|---|"]
        lines += [f"| {k} | {format_interval(seg[k])} |" for k in SEG_KEYS]
        lines += [
            "",
            f"{seg['n_images']} test images with a ground-truth mask; per-image means over all "
            "of them (empty prediction and empty truth count 1).",
            "",
        ]
    lines += ["![ROC and PR curves](curves.png)", ""]
    return "\n".join(lines)


def drift_line(drift: dict) -> str:
    """The console and report line for :func:`threshold_drift`."""
    fold, shipped = drift["fold_models_on_val"], drift["shipped_on_val"]
    return (
        f"threshold {drift['threshold']:.4f} fitted on single fold models' out-of-fold "
        f"probabilities (sensitivity {drift['out_of_fold']['sensitivity']:.3f} there); on "
        f"{drift['images']} validation images ({drift['melanomas']} melanomas) the "
        f"{drift['fold_models']} fold models alone give sensitivity {fold['sensitivity']:.3f}, "
        f"specificity {fold['specificity']:.3f}; the shipped mean gives "
        f"{shipped['sensitivity']:.3f} and {shipped['specificity']:.3f} (drift "
        f"{drift['sensitivity_drift']:+.3f} and {drift['specificity_drift']:+.3f})"
    )


def resize_line(check: dict, input_size: int) -> str:
    """The console and report line for one entry of ``decisions.resize_drift``."""
    return (
        f"members at {check['size']} px trained on each file loaded at {check['size']} px; the "
        f"cascade resizes its {input_size} px input in the graph instead: on "
        f"{check['images']} validation images they differ by {check['mean_abs_difference']:.2f} "
        f"on average (at most {check['max_abs_difference']:.0f}) in 0-255 units"
    )
