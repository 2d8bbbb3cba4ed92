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

from melanoma.cascade.members import open_cascade_data
from melanoma.cascade.record import CascadeRecord
from melanoma.cascade.report import markdown
from melanoma.cascade.scoring import SEG_KEYS, CascadeOutputs, run_cascade
from melanoma.cascade.store import CASCADE_FILE, load_cascade, recorded_splits
from melanoma.data.io import file_sha256
from melanoma.data.metadata import UNKNOWN, subgroup_fields, value_order
from melanoma.data.splits import DROP_OPTION, LeakError, Splits
from melanoma.metrics import classification_metrics
from melanoma.metrics.bootstrap import mean_bootstrap, percentile_interval
from melanoma.metrics.calibration import calibration_report, draw_reliability
from melanoma.metrics.classification import BOOTSTRAP_KEYS, metrics_with_intervals
from melanoma.metrics.operating_points import operating_points
from melanoma.metrics.subgroups import MIN_PER_CLASS, subgroup_report


def _cls_report(labels: np.ndarray, probs: np.ndarray, threshold: float, resamples: int) -> dict:
    point = classification_metrics(labels, probs, threshold=threshold)
    # Class-stratified resamples for the figures defined within a class, plain ones for
    # those that depend on prevalence (bootstrap_metrics).
    out = metrics_with_intervals(labels, probs, threshold, BOOTSTRAP_KEYS, resamples)
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
    submission: Path | None = None,
) -> dict:
    """Evaluate on the test split; write report.json, report.md, curves.png,
    reliability.png (also in ``directory/tensorboard``) and test_predictions.csv into
    ``directory``. ``drop_test_duplicates`` evaluates without the
    test images that share bytes, an id or a lesion with train/val (listed in the report).
    ``submission``: also write the test predictions as ISIC Challenge submission files
    there (``melanoma.cascade.submission``), for the official scorer."""
    directory = Path(directory)
    cascade, record = load_cascade(directory)
    bundle = checked_test_data(directory, record, data, drop_test_duplicates)
    result = run_cascade(cascade, bundle, "test")
    if submission is not None:
        _write_submission(Path(submission), result, bundle, record.threshold)
    labelled = result.subset(result.labelled)
    labels, probs, raw_probs = labelled.label, labelled.prob, labelled.raw_prob
    threshold = record.threshold
    report = {
        "cascade": str(directory),
        # Binds the report to the cascade it scored: export refuses a report of another.
        "cascade_sha256": file_sha256(directory / CASCADE_FILE),
        "data": str(data or record.data["path"]),
        "threshold": threshold,
        "threshold_rule": record.threshold_rule,
        "val_auc": record.val_auc,
        "segmenters": [m.summary() for m in record.segmenters],
        "classifiers": [m.summary() for m in record.classifiers],
        "input_mode": cascade.input_mode,
        "tta": record.tta,
        "tta_check": record.tta_check,
        "mask_cleanup": record.mask_cleanup,
        "mask_cleanup_check": record.mask_cleanup_check,
        "val_jaccard": record.val_jaccard,
        "best_pair": record.best_pair,
        "vs_best_pair": record.vs_best_pair,
        "selection": record.selection,
        "threshold_drift": record.threshold_drift,
        "resize_check": record.resize_check,
        "input_size": record.input_size,
        "bootstrap_resamples": resamples,
        "test_images": len(result.id),
        "dropped_test_images": bundle.splits.dropped_test,
        "dropped_validation_images": record.dropped_val,
        "classification": _cls_report(labels, probs, threshold, resamples),
        "operating_points": operating_points(labels, probs, resamples=resamples),
        "subgroups": _subgroups(bundle, labelled.id, labels, probs, threshold, resamples),
        "subgroup_min_per_class": MIN_PER_CLASS,
        "calibration": record.calibration or {"method": "none"},
        "calibration_check": record.calibration_check,
        "test_calibration": {
            "shipped": calibration_report(labels, probs, resamples=resamples),
            "uncalibrated": calibration_report(labels, raw_probs, resamples=resamples),
        },
    }
    if result.has_mask.any():
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


def _write_submission(out: Path, result: CascadeOutputs, bundle, threshold: float) -> None:
    """Every test image's probability and mask, the masks at each image's own size."""
    from melanoma.cascade.submission import write_submission
    from melanoma.data.io import image_size

    paths = {e.sample.id: e.sample.image_path for e in bundle.splits.entries["test"]}
    sizes = {str(i): image_size(paths[str(i)])[::-1] for i in result.id}  # (height, width)
    written = write_submission(
        out, result.id, result.prob, result.pred_mask, threshold=threshold, sizes=sizes
    )
    print(
        f"ISIC Challenge submission files: {', '.join(str(p) for p in written.values())} "
        "(score them with `isic-challenge-scoring`; see docs/cascade.md)",
        flush=True,
    )


def checked_test_data(
    directory: Path, record: CascadeRecord, data: str | None, drop_test_duplicates: bool
):
    """The data the cascade was built on, refused unless its test split is isolated from
    train/val and every split still holds the images the build recorded."""
    recorded = Splits.load(recorded_splits(directory, record, "evaluate"))
    try:
        recorded.assert_test_isolated()
        bundle = open_cascade_data(record.data, record.input_size, path=data)
        bundle = bundle.with_splits(bundle.splits.isolated(drop_test_duplicates))
    except LeakError as err:
        raise LeakError(f"refusing to evaluate {directory}: {err}") from None
    # Validation copies of training images that the build dropped (check_member_splits).
    dropped_val = {d["id"] for d in record.dropped_val}
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


def _seg_report(result: CascadeOutputs, resamples: int) -> dict:
    """Per-image Jaccard, Dice and thresholded Jaccard of the predicted masks, with intervals."""
    per_image = result.mask_scores()
    seg = {
        k: {
            "value": float(per_image[k].mean()),
            **percentile_interval(mean_bootstrap(per_image[k], resamples)),
        }
        for k in SEG_KEYS
    }
    seg["n_images"] = int(result.has_mask.sum())
    return seg


def _mask_ablations(cascade, bundle, result: CascadeOutputs, threshold, resamples, curves) -> dict:
    """The same classifier with ground-truth masks where every test image has one: how
    much better its masks could still make it. (Whole images are no comparison for a
    classifier trained on masked or cropped ones: they are out of its distribution, so
    that figure is not reported; compare with a classifier trained on whole images.)"""
    if not result.has_mask.all():
        return {}
    oracle = run_cascade(cascade, bundle, "test", gt_masks=True)
    oracle = oracle.subset(oracle.labelled)
    curves["ground-truth masks"] = (oracle.label, oracle.prob)
    return {
        "classifier_with_ground_truth_masks": _cls_report(
            oracle.label, oracle.prob, threshold, resamples
        )
    }


def _write_predictions(path: Path, result: CascadeOutputs, threshold: float) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "probability", "melanoma"])
        for i, lab, p in zip(result.id, result.label, result.prob, strict=True):
            writer.writerow([i, int(lab), f"{p:.6f}", int(p >= threshold)])
