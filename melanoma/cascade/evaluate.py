"""Honest evaluation of a cascade on the test split the search never saw.

Refuses to run when the test split leaks into training or validation data, when the data
on disk differ from the splits the cascade was built on, or when test files changed.
Every metric comes with a bootstrap 95% interval (resampling test images).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from melanoma.cascade.decisions import cleanup_line, tta_line, tta_summary
from melanoma.cascade.members import open_cascade_data
from melanoma.cascade.scoring import mask_scores, run_cascade
from melanoma.cascade.store import CASCADE_FILE, load_cascade
from melanoma.data.io import file_sha256
from melanoma.data.metadata import UNKNOWN, subgroup_fields, value_order
from melanoma.data.splits import DROP_OPTION, LeakError, Splits
from melanoma.metrics import classification_metrics
from melanoma.metrics.bootstrap import mean_bootstrap, percentile_interval
from melanoma.metrics.calibration import CALIBRATION_KEYS, calibration_report, draw_reliability
from melanoma.metrics.classification import BOOTSTRAP_KEYS, metrics_with_intervals
from melanoma.metrics.operating_points import describe_point, operating_points
from melanoma.metrics.paired import describe
from melanoma.metrics.subgroups import MIN_PER_CLASS, SUBGROUP_KEYS, subgroup_report

CLS_KEYS = BOOTSTRAP_KEYS
SEG_KEYS = ("jaccard", "dice", "thresholded_jaccard")


def _cls_report(labels: np.ndarray, probs: np.ndarray, threshold: float, resamples: int) -> dict:
    point = classification_metrics(labels, probs, threshold=threshold)
    # Class-stratified resamples for the figures defined within a class, plain ones for
    # those that depend on prevalence (bootstrap_metrics).
    out = metrics_with_intervals(labels, probs, threshold, CLS_KEYS, resamples)
    out["confusion_matrix"] = point["confusion_matrix"]
    out["n"], out["n_melanoma"], out["threshold"] = point["n"], point["n_melanoma"], threshold
    return out


def _curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from melanoma.metrics.curves import draw_pr, draw_roc

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    for name, (labels, probs) in curves.items():
        draw_roc(roc_ax, labels, probs, name)
        draw_pr(pr_ax, labels, probs, name)
    roc_ax.set(title="ROC, test split")
    pr_ax.set(title="Precision-recall, test split")
    roc_ax.legend(loc="lower right", fontsize=8)
    pr_ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _subgroups(bundle, ids, labels, probs, threshold: float, resamples: int) -> dict:
    """Per age band, sex and site the test images' data set records: see subgroup_report."""
    metadata = {e.sample.id: e.sample.metadata for e in bundle.splits.entries["test"]}
    fields = [subgroup_fields(metadata.get(str(i))) for i in ids]
    names = [n for n in ("age", "sex", "site") if any(n in f for f in fields)]
    groups = {n: [f.get(n, UNKNOWN) for f in fields] for n in names}
    return subgroup_report(labels, probs, groups, threshold, resamples=resamples, order=value_order)


def _reliability(directory: Path, reports: dict[str, dict]) -> None:
    """reliability.png, and the same figure in TensorBoard (``directory/tensorboard``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for name, report in reports.items():
        draw_reliability(ax, report, name)
    binning = next(iter(reports.values()))["binning"]
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed melanoma rate",
        title="Reliability, test split",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.text(0.01, 0.01, binning, fontsize=6)
    fig.tight_layout()
    fig.savefig(directory / "reliability.png", dpi=100)
    with SummaryWriter(str(directory / "tensorboard")) as writer:
        writer.add_figure("test/reliability", fig)
    plt.close(fig)


def evaluate_cascade(
    directory: Path,
    *,
    data: str | None = None,
    resamples: int = 1000,
    drop_test_duplicates: bool = False,
) -> dict:
    """Evaluate on the test split; write report.json, report.md, curves.png,
    reliability.png (also in ``directory/tensorboard``) and test_predictions.csv into
    ``directory``. ``drop_test_duplicates`` evaluates without the
    test images that share bytes, an id or a lesion with train/val (listed in the report)."""
    directory = Path(directory)
    cascade, meta = load_cascade(directory)
    bundle = _test_data(directory, meta, data, drop_test_duplicates)
    result = run_cascade(cascade, bundle, "test")
    labelled = result["label"] >= 0
    labels, probs = result["label"][labelled], result["prob"][labelled]
    raw_probs = result["raw_prob"][labelled]
    threshold = meta["threshold"]
    report = {
        "cascade": str(directory),
        # Binds the report to the cascade it scored: export refuses a report of another.
        "cascade_sha256": file_sha256(directory / CASCADE_FILE),
        "data": str(data or meta["data"]["path"]),
        "threshold": threshold,
        "threshold_rule": meta["threshold_rule"],
        "val_auc": meta["val_auc"],
        "segmenters": [{k: m[k] for k in ("origin", "weight")} for m in meta["segmenters"]],
        "classifiers": [{k: m[k] for k in ("origin", "weight")} for m in meta["classifiers"]],
        "input_mode": cascade.input_mode,
        "tta": meta["tta"],
        "tta_check": meta.get("tta_check"),
        "mask_cleanup": meta["mask_cleanup"],
        "mask_cleanup_check": meta.get("mask_cleanup_check"),
        "val_jaccard": meta.get("val_jaccard"),
        "best_pair": meta.get("best_pair"),
        "vs_best_pair": meta.get("vs_best_pair"),
        "selection": meta.get("selection") or {"set": "validation"},
        "bootstrap_resamples": resamples,
        "test_images": int(len(result["id"])),
        "dropped_test_images": bundle.splits.dropped_test,
        "dropped_validation_images": meta.get("dropped_val") or [],
        "classification": _cls_report(labels, probs, threshold, resamples),
        "operating_points": operating_points(labels, probs, resamples=resamples),
        "subgroups": _subgroups(
            bundle, result["id"][labelled], labels, probs, threshold, resamples
        ),
        "subgroup_min_per_class": MIN_PER_CLASS,
        "calibration": meta.get("calibration") or {"method": "none"},
        "calibration_check": meta.get("calibration_check"),
        "test_calibration": {
            "shipped": calibration_report(labels, probs, resamples=resamples),
            "uncalibrated": calibration_report(labels, raw_probs, resamples=resamples),
        },
    }
    if result["has_mask"].any():
        report["segmentation"] = _seg_report(result, resamples)
    curves = {f"cascade ({cascade.input_mode})": (labels, probs)}
    if cascade.needs_mask:
        report.update(_mask_ablations(cascade, bundle, result, threshold, resamples, curves))
    _curves(directory / "curves.png", curves)
    _reliability(directory, report["test_calibration"])
    _write_predictions(directory / "test_predictions.csv", result, threshold)
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (directory / "report.md").write_text(markdown(report))
    return report


def _test_data(directory: Path, meta: dict, data: str | None, drop_test_duplicates: bool):
    """The data the cascade was built on, refused unless its test split is isolated from
    train/val and every split still holds the images the build recorded."""
    recorded = Splits.load(directory / "splits.json")
    try:
        recorded.assert_test_isolated()
        bundle = open_cascade_data(meta["data"], meta["input_size"], path=data)
        bundle = bundle.with_splits(bundle.splits.isolated(drop_test_duplicates))
    except LeakError as err:
        raise LeakError(f"refusing to evaluate {directory}: {err}") from None
    # Validation copies of training images that the build dropped (check_member_splits).
    dropped_val = {d["id"] for d in meta.get("dropped_val") or []}
    for split in ("train", "val", "test"):
        ours = {
            e.image_sha256
            for e in bundle.splits.entries[split]
            if not (split == "val" and e.sample.id in dropped_val)
        }
        theirs = {e.image_sha256 for e in recorded.entries[split]}
        if ours != theirs:
            hint = ""
            if split == "test" and bool(recorded.dropped_test) != drop_test_duplicates:
                hint = (
                    f" (the cascade was built {'with' if recorded.dropped_test else 'without'} "
                    f"{DROP_OPTION}: evaluate it the same way)"
                )
            raise LeakError(
                f"refusing to evaluate: the {split} split of the data now differs from the one the "
                f"cascade was built on ({len(ours ^ theirs)} images){hint}; the test split would "
                "no longer be one the search never saw"
            )
    return bundle


def _seg_report(result: dict, resamples: int) -> dict:
    """Per-image Jaccard, Dice and thresholded Jaccard of the predicted masks, with intervals."""
    per_image = mask_scores(result)
    seg = {
        k: {
            "value": float(per_image[k].mean()),
            **percentile_interval(mean_bootstrap(per_image[k], resamples)),
        }
        for k in SEG_KEYS
    }
    seg["n_images"] = int(result["has_mask"].sum())
    return seg


def _mask_ablations(cascade, bundle, result: dict, threshold, resamples, curves) -> dict:
    """The same classifier with ground-truth masks where every test image has one: how
    much better its masks could still make it. (Whole images are no comparison for a
    classifier trained on masked or cropped ones: they are out of its distribution, so
    that figure is not reported; compare with a classifier trained on whole images.)"""
    if not result["has_mask"].all():
        return {}
    labelled = result["label"] >= 0
    oracle = run_cascade(cascade, bundle, "test", gt_masks=True)
    curves["ground-truth masks"] = (oracle["label"][labelled], oracle["prob"][labelled])
    return {
        "classifier_with_ground_truth_masks": _cls_report(
            oracle["label"][labelled], oracle["prob"][labelled], threshold, resamples
        )
    }


def _write_predictions(path: Path, result: dict, threshold: float) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "probability", "melanoma"])
        for i, lab, p in zip(result["id"], result["label"], result["prob"], strict=True):
            writer.writerow([i, int(lab), f"{p:.6f}", int(p >= threshold)])


def _fmt(entry: dict) -> str:
    if entry.get("value") is None:
        return "n/a"
    ci = f" ({entry['low']:.3f}-{entry['high']:.3f})" if entry.get("low") is not None else ""
    return f"{entry['value']:.3f}{ci}"


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
        *(f"| {describe_point(k)} | {_fmt(v)} |" for k, v in points.items()),
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
                [_fmt(r[k]) for k in SUBGROUP_KEYS]
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
    from melanoma.cascade.calibration import calibration_line

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
            f"| {k} | {_fmt(test['shipped'][k])} | {_fmt(test['uncalibrated'][k])} |"
            for k in CALIBRATION_KEYS
        ),
        "",
        "![Reliability diagram](reliability.png)",
        "",
    ]
    return lines


def markdown(report: dict) -> str:
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
    for k in CLS_KEYS:
        lines.append(f"| {k} | " + " | ".join(_fmt(col[k]) for _, col in columns) + " |")
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
        lines += [f"| {k} | {_fmt(seg[k])} |" for k in SEG_KEYS]
        lines += [
            "",
            f"{seg['n_images']} test images with a ground-truth mask; per-image means over all "
            "of them (empty prediction and empty truth count 1).",
            "",
        ]
    lines += ["![ROC and PR curves](curves.png)", ""]
    return "\n".join(lines)
