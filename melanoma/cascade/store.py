"""The cascade on disk: cascade.pt (versioned payload), cascade.json and the build summary."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from melanoma.cascade.calibration import (
    Calibration,
)
from melanoma.cascade.decisions import TTA_STAGES, tta_summary
from melanoma.cascade.members import Candidate, Choice, make_cascade, member_record
from melanoma.cascade.model import Cascade
from melanoma.cascade.scoring import jaccard_report, official_part, result_auc, result_auc_interval
from melanoma.data.dataset import DataBundle
from melanoma.engine.config import TrainConfig
from melanoma.metrics.paired import describe

FORMAT = "melanoma-cascade"

# Read too: 4 (no calibration). An older reader refuses a newer cascade rather than
# ignore its calibration.
VERSION = 5

READABLE = (4, VERSION)

CASCADE_FILE = "cascade.pt"


def payload_of(choice: Choice, bundle: DataBundle, input_size: int) -> dict:
    """What cascade.pt records of the choice: members, decisions, validation figures."""
    chosen = choice.result
    return {
        "format": FORMAT,
        "version": VERSION,
        "segmenters": [member_record(m, w) for m, w in choice.segmenters],
        "classifiers": [member_record(m, w) for m, w in choice.classifiers],
        "tta": {k: choice.tta_report[k] for k in TTA_STAGES},
        "mask_cleanup": choice.cleanup_report["used"],
        "input_size": input_size,
        "threshold": choice.threshold,
        "threshold_rule": choice.rule,
        "val_auc": result_auc(chosen),
        "val_auc_ci": result_auc_interval(chosen),
        "val_jaccard": jaccard_report(chosen),
        "val_official": official_part(chosen, bundle),
        "selection": choice.selection,
        **choice.extra,
        "tta_check": choice.tta_report,
        "mask_cleanup_check": choice.cleanup_report,
        "dropped_test": bundle.splits.dropped_test,
    }


def write_summary(payload: dict, out: Path) -> dict:
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


def _describe(payload: dict) -> str:
    def names(ms: list[dict]) -> str:
        return " + ".join(
            m["origin"] + (f" x{m['weight']}" if m["weight"] != 1 else "") for m in ms
        )

    tta = f", with {tta_summary(payload['tta'])}" if any(payload["tta"].values()) else ""
    cleanup = ", masks cleaned up" if payload["mask_cleanup"] else ""
    seg, cls = names(payload["segmenters"]), names(payload["classifiers"])
    return f"segmenters [{seg}], classifiers [{cls}]{tta}{cleanup}"


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
