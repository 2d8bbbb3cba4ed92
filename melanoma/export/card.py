"""The exported cascade's model card: what it is for and not for, what it was trained,
chosen and tested on, how well it did (every figure with its interval), how calibrated it
is, how it does per subgroup, and what is known to limit it. JSON for programs
(``model_card.json``, which ``melanoma predict`` reads) and Markdown for people
(``MODEL_CARD.md``), in the spirit of TRIPOD+AI, CLAIM and the CLEAR Derm checklist."""

from __future__ import annotations

import hashlib
import platform
from importlib.metadata import PackageNotFoundError, version

from melanoma.cascade.record import CascadeRecord, MemberRecord
from melanoma.export.int8 import int8_card_lines
from melanoma.metrics.intervals import format_interval
from melanoma.metrics.operating_points import describe_point
from melanoma.names import CROP_MODES
from melanoma.postprocess import CLEANUP_RULE

PROB_TOLERANCE = 1e-4  # max |p_onnx - p_eager| over the check images
MASK_TOLERANCE = 1e-3  # max fraction of mask pixels allowed to flip (ties at the threshold)

INTENDED_USE = (
    "Research on melanoma detection in dermoscopy images: comparing segmentation and "
    "classification models, studying their errors. A second reader for researchers, with "
    "the lesion mask it based its decision on."
)
NOT_INTENDED_USE = [
    "diagnosis or triage of patients, or any decision about a person's care: it is not a "
    "medical device and no regulator has assessed it",
    "clinical (non-dermoscopic) photographs, histopathology or any image other than a "
    "dermoscopy image of one lesion",
    "populations, skin types, body sites or devices not represented in its training data "
    "(see limitations)",
    "lesions other than melanoma vs. benign: the probability says nothing about other "
    "malignancies (basal or squamous cell carcinoma are 'benign' here unless trained so)",
]

INPUT_MODE_RULES = {
    "full": "the classifier sees the whole image",
    "masked": "pixels outside the predicted lesion mask are set to black; where the mask is "
    "empty the classifier sees the whole image",
    "mask_channel": "the whole image with the predicted lesion mask as a fourth input "
    "channel (1 inside the lesion, 0 outside; all 0 where no lesion was found)",
    "crop": "the predicted lesion's bounding box, dilated by the crop margin, resized; where "
    "the mask is empty the classifier sees the whole image",
    "dual": "two views through one network, the whole image and the predicted lesion's "
    "bounding box (dilated by the crop margin), their features joined before the head; "
    "where the mask is empty both views are the whole image",
}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in (
        "melanoma-search",
        "torch",
        "torchvision",
        "segmentation-models-pytorch",
        "timm",
        "onnx",
        "onnxruntime",
        "numpy",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _card_member(member: MemberRecord) -> dict:
    """One ensemble member as the model card lists it."""
    cfg = member.config
    out = {**member.summary(), "arch": cfg["model"]["arch"]}
    if cfg["task"] == "seg":
        out["encoder"] = cfg["model"]["encoder"]
    else:
        mode = cfg["input"]["mode"]
        out.update(input_mode=mode, input_mode_rule=INPUT_MODE_RULES[mode])
        if mode in CROP_MODES:
            out["crop_margin"] = cfg["input"]["crop_margin"]
            # The crop is cut from a copy at this size (the cascade's input), not from the
            # image_size copy the whole-image view sees.
            out["crop_source_size"] = cfg["input"].get("source_size") or cfg["data"]["image_size"]
    out["image_size"] = cfg["data"]["image_size"]
    out["hyperparameters"] = {k: cfg[k] for k in ("optimizer", "scheduler", "loss", "epochs")}
    return out


CARD_TEST_KEYS = (
    "test_images",
    "dropped_test_images",
    "dropped_validation_images",
    "classification",
    "segmentation",
    "classifier_with_ground_truth_masks",
    "operating_points",
    "test_calibration",
)


def model_card(
    record: CascadeRecord, report: dict, checks: dict, splits: dict | None = None
) -> dict:
    """What the exported cascade is, expects, decides and scored, and how it was checked;
    ``splits``: the cascade's splits.json (its data's splits, counted and hashed)."""
    size = record.input_size
    training_data = _training_data(record, splits)
    return {
        "name": "melanoma-search cascade",
        "intended_use": INTENDED_USE,
        "not_intended_use": NOT_INTENDED_USE,
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": ["N", 3, size, size],
            "layout": "RGB, channels first",
            "preprocessing": (
                "decode, then squash (no crop) to the square size with area filtering when "
                "shrinking and cubic when enlarging: melanoma.data.io.load_image; "
                "normalisation happens inside the model"
            ),
        },
        "outputs": {
            "probability": "melanoma probability (N,), after the calibration below",
            "mask": "binary lesion mask (N, 1, S, S), uint8, as thresholded; see mask_cleanup",
        },
        # Connected components have no ONNX operator: `melanoma predict` applies the
        # clean-up to the graph's mask (melanoma.postprocess), as evaluation did.
        "mask_cleanup": {
            "on": bool(record.mask_cleanup),
            "rule": CLEANUP_RULE if record.mask_cleanup else "none: the mask as thresholded",
        },
        "calibration": {
            **(record.calibration or {"method": "none"}),
            "applied": "inside the graph, to the ensemble's probability",
            "check": record.calibration_check,
        },
        "threshold": record.threshold,
        "threshold_rule": record.threshold_rule,
        "segmenters": [_card_member(m) for m in record.segmenters],
        "classifiers": [_card_member(m) for m in record.classifiers],
        "ensemble": "mask probability and melanoma probability are the weighted means of the "
        "members' (weight: times chosen by the greedy selection on the selection set, or 1 "
        "each where selection.classifier_weights is equal; the "
        "fold models of a cross-validated candidate share its weight, each in proportion "
        "to 1 / its fold count)",
        "test_time_augmentation": {
            f"{stage}s": "on: averaged over the 8 flips and 90-degree rotations" if on else "off"
            for stage, on in record.tta.items()
        },
        "selection": record.selection,
        "validation_auc": record.val_auc,
        "test_metrics": {k: report[k] for k in CARD_TEST_KEYS if k in report}
        or "not evaluated: run `melanoma cascade evaluate` before export",
        "data": record.data,
        "training_data": training_data,
        "dropped_validation_images": record.dropped_val,
        "splits_sha256": record.splits_sha256,
        "subgroups": report.get("subgroups", "not evaluated"),
        "limitations": limitations(record, report, training_data),
        "export_check": {
            **checks,
            "probability_tolerance": PROB_TOLERANCE,
            "mask_tolerance": MASK_TOLERANCE,
        },
        "versions": versions(),
    }


def _training_data(record: CascadeRecord, splits: dict | None) -> dict:
    """Per split: images, melanomas, and a SHA-256 over its sorted ``id:image_sha256``
    lines (two cards with the same hash trained, chose and tested on the same bytes)."""
    # The layout as detected (the build records None when it was not named).
    layout = (splits or {}).get("dataset", {}).get("layout") or record.data["layout"]
    out = {"dataset": record.data["path"], "layout": layout or "detected"}
    if not splits:
        return out
    for name, entries in splits["splits"].items():
        lines = sorted(f"{e['id']}:{e['image_sha256']}" for e in entries)
        out[name] = {
            "images": len(entries),
            "melanomas": sum(1 for e in entries if e["label"] == 1),
            "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        }
    out["official_test_split"] = any(
        e.get("official_split") == "test" for e in splits["splits"].get("test", [])
    )
    return out


def limitations(record: CascadeRecord, report: dict, training_data: dict) -> list[str]:
    """What is known to limit the cascade, from what the build and evaluation recorded."""
    size = record.input_size
    out = [
        f"Images are squashed to {size}x{size} pixels (aspect ratio not kept): detail finer "
        "than that, which dermatologists use, is invisible to it.",
        f"Trained and chosen on one data set only ({training_data['layout']} layout at "
        f"{training_data['dataset']}); images from other clinics, dermoscopes or acquisition "
        "protocols may score differently.",
        "The data record no skin type (Fitzpatrick); public dermoscopy archives hold few "
        "images of dark skin, so performance on darker skin is unknown.",
    ]
    if "synthetic" in str(training_data["dataset"]):
        out.insert(
            0,
            "Trained on generated synthetic images: a demonstration that says "
            "nothing about real lesions.",
        )
    if "test" in training_data and not training_data.get("official_test_split"):
        t = training_data["test"]
        out.append(
            f"The test split ({t['images']} images, {t['melanomas']} melanomas) was carved "
            "from the training images, lesion-grouped: not an independent test set from "
            "another source or time."
        )
    subgroups = report.get("subgroups")
    if isinstance(subgroups, dict):
        for name in ("age", "sex", "site"):
            if name not in subgroups:
                out.append(f"Not analysed by {name}: the data record none.")
        small = [
            f"{name} {row['group']} ({row['images']} images, {row['melanomas']} melanomas)"
            for name, rows in subgroups.items()
            for row in rows
            if "too_small" in row
        ]
        if small:
            out.append("Subgroups too small for figures: " + "; ".join(small) + ".")
    check = record.calibration_check or {}
    if check.get("before"):
        sel = record.selection
        out.append(
            f"Probabilities were calibrated (or checked) on the {check.get('set')} set only"
            + (f" ({sel['images']} images)" if sel.get("images") else "")
            + "; a population of another melanoma prevalence needs recalibration."
        )
    return out


def render_markdown(card: dict) -> str:
    """MODEL_CARD.md: the card for people."""
    lines = [f"# Model card: {card['name']}", "", "## Intended use", "", card["intended_use"], ""]
    lines += ["## Not intended for", "", *(f"- {x}" for x in card["not_intended_use"]), ""]
    lines += _model_lines(card) + _data_lines(card) + _result_lines(card)
    lines += ["## Known limitations", "", *(f"- {x}" for x in card["limitations"]), ""]
    check = card["export_check"]
    lines += [
        "## Export check",
        "",
        f"ONNX Runtime and torch.export against eager PyTorch on {check['images_used']}: max "
        f"probability difference {check['onnxruntime']['max_probability_difference']:.1e} "
        f"(tolerance {check['probability_tolerance']:.0e}).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v),
        "",
    ]
    return "\n".join(lines + int8_card_lines(card.get("int8")))


def _model_lines(card: dict) -> list[str]:
    lines = ["## Model", "", "| stage | member | weight | architecture | image size |"]
    lines.append("|---|---|---|---|---|")
    for stage, members in (("segmenter", card["segmenters"]), ("classifier", card["classifiers"])):
        for m in members:
            arch = m["arch"] + (f" / {m['encoder']}" if "encoder" in m else "")
            arch += f", {m['input_mode']}" if "input_mode" in m else ""
            lines.append(
                f"| {stage} | `{m['origin']}` | {m['weight']} | {arch} | {m['image_size']} |"
            )
    cal = card["calibration"]
    lines += [
        "",
        f"- input: uint8 RGB {card['input']['shape']}; {card['input']['preprocessing']}",
        f"- output probability: {card['outputs']['probability']}; calibration "
        f"`{cal['method']}`" + (f" ({cal['check']['reason']})" if cal.get("check") else ""),
        f"- decision threshold {card['threshold']:.4f}: {card['threshold_rule']}",
        f"- chosen on: {card['selection'].get('set', 'validation')}",
        "",
    ]
    return lines


def _data_lines(card: dict) -> list[str]:
    data = card["training_data"]
    lines = ["## Data", "", f"`{data['dataset']}` ({data['layout']} layout).", ""]
    splits = [s for s in ("train", "val", "test") if s in data]
    if splits:
        lines += ["| split | images | melanomas | SHA-256 of its images |", "|---|---|---|---|"]
        lines += [
            f"| {s} | {data[s]['images']} | {data[s]['melanomas']} | `{data[s]['sha256'][:16]}` |"
            for s in splits
        ]
        lines.append("")
    dropped = (
        (card["test_metrics"] or {}).get("dropped_test_images")
        if isinstance(card["test_metrics"], dict)
        else None
    )
    if dropped:
        lines += [f"{len(dropped)} test image(s) dropped as duplicates of train/val images:"]
        lines += [f"- {d['id']} ({d['reason']} as {d['twin']})" for d in dropped] + [""]
    for d in card.get("dropped_validation_images") or []:
        lines += [
            f"Validation image {d['id']} left out of every choice ({d['reason']} {d['twin']}).",
            "",
        ]
    return lines


def _result_lines(card: dict) -> list[str]:
    test = card["test_metrics"]
    if not isinstance(test, dict):
        return ["## Test results", "", str(test), ""]
    c = test["classification"]
    lines = [
        "## Test results",
        "",
        f"{test['test_images']} held-out test images ({c['n_melanoma']} melanomas), 95% "
        "bootstrap intervals.",
        "",
        "| metric | value (95% CI) |",
        "|---|---|",
        *(f"| {k} | {format_interval(v)} |" for k, v in c.items() if isinstance(v, dict)),
    ]
    points = test.get("operating_points") or {}
    for k, v in points.items():
        label = f"{describe_point(k)}, read off the test ROC curve*"
        lines.append(f"| {label} | {format_interval(v)} |")
    if test.get("segmentation"):
        lines += [
            f"| lesion {k} | {format_interval(v)} |"
            for k, v in test["segmentation"].items()
            if isinstance(v, dict)
        ]
    lines.append("")
    if points:
        lines += [
            "\\* At a threshold that reaches it on the test images themselves, so not a "
            "figure the shipped threshold promises; ship an operating point with "
            "`cascade build --target-sensitivity`, chosen on the selection set.",
            "",
        ]
    cal = test.get("test_calibration")
    if cal:
        lines += [
            "### Calibration",
            "",
            f"{cal['shipped']['binning']}.",
            "",
            "| metric | shipped | before calibration |",
            "|---|---|---|",
            *(
                f"| {k} | {format_interval(cal['shipped'][k])} | "
                f"{format_interval(cal['uncalibrated'][k])} |"
                for k in ("ece", "brier", "log_loss")
            ),
            "",
        ]
    subgroups = card.get("subgroups")
    if isinstance(subgroups, dict) and subgroups:
        lines += [
            "### Subgroups",
            "",
            "At the shipped threshold; too small: fewer than the "
            "minimum of melanomas or benign images.",
            "",
        ]
        for name, rows in subgroups.items():
            lines += [
                f"| {name} | images | melanomas | AUC | sensitivity | specificity |",
                "|---|---|---|---|---|---|",
            ]
            for r in rows:
                cells = (
                    ["too small"] * 3
                    if "too_small" in r
                    else [format_interval(r[k]) for k in ("auc", "sensitivity", "specificity")]
                )
                lines.append(
                    f"| {r['group']} | {r['images']} | {r['melanomas']} | "
                    + " | ".join(cells)
                    + " |"
                )
            lines.append("")
    return lines
