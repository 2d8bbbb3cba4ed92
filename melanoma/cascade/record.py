"""What a built cascade is, as one typed record: ``cascade.pt`` holds it whole (with the
members' weights), ``cascade.json``, the evaluation report and the model card serialise
it without them. Plain dicts appear only at the file boundary (:meth:`to_payload`,
:meth:`from_payload`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

FORMAT = "melanoma-cascade"
# Read too: 4 (no calibration). An older reader refuses a newer cascade rather than
# ignore its calibration.
VERSION = 5
READABLE = (4, VERSION)
TTA_STAGES = ("segmenter", "classifier")


@dataclass(frozen=True)
class MemberRecord:
    """One segmenter or classifier of the cascade: the config that rebuilds it, its
    weights, where it came from and how often greedy selection chose it."""

    config: dict
    model: dict  # state_dict
    origin: str
    weight: int = 1

    def summary(self) -> dict:
        return {"origin": self.origin, "weight": self.weight}


@dataclass(frozen=True)
class CascadeRecord:
    """The members, every decision of the build and the validation figures behind them."""

    segmenters: tuple[MemberRecord, ...]
    classifiers: tuple[MemberRecord, ...]
    input_size: int  # the images the cascade takes are S x S
    tta: dict  # {"segmenter": bool, "classifier": bool}
    mask_cleanup: bool
    threshold: float
    threshold_rule: str
    val_auc: float
    data: dict  # the data set and split settings it was built on (SplitConfig.to_record)
    splits_sha256: str
    # Which set chose ("validation" or "out-of-fold") and its images.
    selection: dict = field(default_factory=lambda: {"set": "validation"})
    calibration: dict | None = None  # Calibration.to_dict(); None: version 4, none
    calibration_check: dict | None = None
    val_auc_ci: dict | None = None
    val_jaccard: dict | None = None
    val_official: dict | None = None
    best_pair: dict | None = None
    vs_best_pair: dict | None = None
    pairs: list = field(default_factory=list)
    tta_check: dict | None = None
    mask_cleanup_check: dict | None = None
    dropped_val: list = field(default_factory=list)
    dropped_test: list = field(default_factory=list)
    # Chosen on out-of-fold predictions: sensitivity and specificity at the threshold on
    # validation, of the fold models alone (what the threshold was fitted on) and as
    # shipped (their mean, with TTA if on).
    threshold_drift: dict | None = None
    # Members loading images below input_size: their in-graph resize against the images
    # they trained on (decisions.resize_drift).
    resize_check: list = field(default_factory=list)

    def to_payload(self) -> dict:
        """What ``cascade.pt`` holds: the format tag, the version and every field."""
        out = {"format": FORMAT, "version": VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("segmenters", "classifiers"):
                value = [{k.name: getattr(m, k.name) for k in fields(m)} for m in value]
            out[f.name] = value
        return out

    @classmethod
    def from_payload(cls, payload: dict, where: str = "cascade") -> CascadeRecord:
        """The record of a ``cascade.pt`` payload; refuses another format or version."""
        if payload.get("format") != FORMAT:
            raise ValueError(f"{where} is not a melanoma cascade (no {FORMAT!r} format tag)")
        if payload.get("version") not in READABLE:
            raise ValueError(
                f"{where} is a version {payload.get('version')} melanoma cascade; this "
                f"melanoma-search reads versions {READABLE[0]}-{VERSION}: rebuild it with "
                "`melanoma cascade build` (or use the melanoma-search that wrote it)"
            )
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in names}
        for kind in ("segmenters", "classifiers"):
            values[kind] = tuple(MemberRecord(**m) for m in payload[kind])
        return cls(**values)

    def summary(self) -> dict:
        """``cascade.json``: every field, the members without their weights and config."""
        out = self.to_payload()
        del out["format"]
        for kind in ("segmenters", "classifiers"):
            out[kind] = [m.summary() for m in getattr(self, kind)]
        return out
