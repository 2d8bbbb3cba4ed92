"""The cascade on disk: cascade.pt (its CascadeRecord), cascade.json and the build summary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from melanoma.cascade.calibration import Calibration
from melanoma.cascade.members import Candidate, Choice, make_cascade
from melanoma.cascade.model import Cascade
from melanoma.cascade.record import TTA_STAGES, CascadeRecord, MemberRecord
from melanoma.cascade.report import print_choice
from melanoma.cascade.scoring import official_part
from melanoma.data.dataset import DataBundle
from melanoma.data.splits import LeakError
from melanoma.engine.config import TrainConfig
from melanoma.files import replace_atomically, write_json

CASCADE_FILE = "cascade.pt"


def record_of(choice: Choice, bundle: DataBundle, input_size: int, **rest) -> CascadeRecord:
    """The record of a build's choice: members, decisions, validation figures; ``rest``
    gives the fields settled after the choice (data, calibration, splits hash, ...)."""
    chosen = choice.outputs

    def members(chosen_members) -> tuple[MemberRecord, ...]:
        return tuple(
            MemberRecord(m.config.to_dict(), m.state, m.origin, w) for m, w in chosen_members
        )

    return CascadeRecord(
        segmenters=members(choice.segmenters),
        classifiers=members(choice.classifiers),
        input_size=input_size,
        tta={k: choice.tta_report[k] for k in TTA_STAGES},
        mask_cleanup=choice.cleanup_report["used"],
        threshold=choice.threshold,
        threshold_rule=choice.rule,
        val_auc=chosen.auc(),
        val_auc_ci=chosen.auc_interval(),
        val_jaccard=chosen.jaccard_report(),
        val_official=official_part(chosen, bundle),
        selection=choice.selection,
        **choice.extra,
        tta_check=choice.tta_report,
        mask_cleanup_check=choice.cleanup_report,
        dropped_test=bundle.splits.dropped_test,
        **rest,
    )


def save_cascade(record: CascadeRecord, out: Path) -> dict:
    """cascade.pt, cascade.json (the record without weights) and the lines that say what
    was chosen; returns the summary."""
    payload = record.to_payload()
    replace_atomically(out / CASCADE_FILE, lambda tmp: torch.save(payload, tmp))
    summary = record.summary()
    write_json(out / "cascade.json", summary)
    print_choice(record, out)
    return summary


def recorded_splits(directory: Path, record: CascadeRecord, command: str) -> Path:
    """``directory/splits.json``, refused unless it is the file the build wrote beside
    ``cascade.pt`` (its SHA-256 is in the record): a splits file replaced or edited since
    would make ``command`` score or describe another test split than the cascade's."""
    path = Path(directory) / "splits.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: `melanoma cascade build` writes it beside {CASCADE_FILE}; "
            "rebuild the cascade into this folder"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record.splits_sha256:
        raise LeakError(
            f"refusing to {command} {directory}: {path} (SHA-256 {digest[:12]}...) is not the "
            f"splits file {CASCADE_FILE} was built with ({record.splits_sha256[:12]}...); it "
            "was replaced or edited after the build. Restore it, or rebuild the cascade "
            f"(`melanoma cascade build ... --out {directory}`)"
        )
    return path


def load_cascade(directory: Path) -> tuple[Cascade, CascadeRecord]:
    """The Cascade module and its record from a ``cascade build`` directory."""
    path = Path(directory) / CASCADE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with `melanoma cascade build`")
    record = CascadeRecord.from_payload(
        torch.load(path, map_location="cpu", weights_only=True), str(path)
    )

    def members(entries: tuple[MemberRecord, ...]) -> list[Candidate]:
        return [
            Candidate(TrainConfig.from_dict(m.config), m.model, m.origin, None) for m in entries
        ]

    cascade = make_cascade(
        members(record.segmenters),
        members(record.classifiers),
        record.input_size,
        seg_weights=[m.weight for m in record.segmenters],
        cls_weights=[m.weight for m in record.classifiers],
        seg_tta=record.tta["segmenter"],
        cls_tta=record.tta["classifier"],
        mask_cleanup=record.mask_cleanup,
        calibration=Calibration.from_dict(record.calibration),
    )
    return cascade, record
