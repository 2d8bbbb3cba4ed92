"""The members of a cascade: candidates loaded from searches, runs or cross-validations,
checked against the data, and assembled into a Cascade module; the state a build carries."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from melanoma.cascade.calibration import (
    Calibration,
)
from melanoma.cascade.model import Cascade, ClassifierSpec, SegmenterSpec
from melanoma.cascade.scoring import CascadeOutputs
from melanoma.data.dataset import DataBundle, open_data
from melanoma.data.splits import LeakError, SplitConfig, Splits
from melanoma.engine.checkpoint import load_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.cv import fold_runs
from melanoma.engine.tasks import rebuild_model


@dataclass(eq=False)  # by identity: two candidates of one config are still two
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
    the command line: ``search.results.best_checkpoints``.)"""
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
        cls_specs=[classifier_spec(c.config, w) for c, w in zip(clss, cls_weights, strict=True)],
        mask_threshold=segs[0].config.threshold,
        seg_tta=seg_tta,
        cls_tta=cls_tta,
        mask_cleanup=mask_cleanup,
        calibration=calibration,
    ).eval()


def classifier_spec(config: TrainConfig, weight: float = 1.0) -> ClassifierSpec:
    """How the cascade runs a classifier trained with ``config``: as training fed it."""
    load = config.load_size
    return ClassifierSpec(
        config.data.image_size,
        config.input.mode,
        config.input.crop_margin,
        weight,
        load if load != config.data.image_size else None,
    )


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


def check_same_data(seg: Candidate, cls: Candidate) -> None:
    """Refuse a segmenter and a classifier trained on different data or splits, compared
    by content: the split settings, and the test split's images by their SHA-256 as each
    checkpoint recorded them, so the same files under another folder (a moved or
    re-mounted data set, another node's mount) pass. By path only when a checkpoint
    records no splits."""
    a, b = seg.config.data, cls.config.data
    settings = [{"layout": d.layout, **d.split_config().to_record()} for d in (a, b)]
    if settings[0] != settings[1]:
        raise ValueError(
            "the segmenter and the classifier were trained on different data or splits: "
            f"layouts or split settings differ ({settings[0]} vs {settings[1]}); a cascade "
            "needs one test split that neither model saw: train both with the same settings"
        )
    if seg.splits is None or cls.splits is None:
        same, what = a.path == b.path, f"the data folders {a.path} and {b.path}"
    else:
        # (id, SHA-256) pairs: a classifier records its labelled images only, so its test
        # split may be part of the segmenter's (images without a diagnosis), never other.
        tests = [set(m.splits.get("test", {}).items()) for m in (seg, cls)]
        small, large = sorted(tests, key=len)
        same = small <= large
        what = f"their test splits ({len(small - large)} images of one are not in the other)"
    if not same:
        raise ValueError(
            f"the segmenter ({seg.origin}) and the classifier ({cls.origin}) were trained on "
            f"different data or splits: {what}; a cascade needs one test split that neither "
            "model saw: train both on the same data set"
        )


@dataclass(frozen=True)
class BuildContext:
    """What both ways of choosing a cascade work with."""

    input_size: int
    bundle: DataBundle
    data_meta: dict  # the data set the candidates share (reopened at other sizes)
    ensemble_size: int
    tta: str
    mask_cleanup: str
    target_sensitivity: float | None
    cls_weights: str = "greedy"  # or "equal": every classifier candidate, one weight each


@dataclass
class Choice:
    """The chosen members with their weights, the chosen cascade's validation outputs,
    the threshold and what was compared on the way."""

    segmenters: list[tuple[Candidate, int]]
    classifiers: list[tuple[Candidate, int]]
    outputs: CascadeOutputs
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
    # The best single pair's validation outputs, at its own size (validation choice).
    best_pair_outputs: CascadeOutputs | None = None


def as_list(source) -> list:
    return list(source) if isinstance(source, (list, tuple)) else [source]


def candidates_of(source: Source | list[Source], task: str) -> list[Candidate]:
    return [
        c
        for src in as_list(source)
        for c in ([src] if isinstance(src, Candidate) else load_candidates(src, task))
    ]


def data_record(config: TrainConfig, path: str | None) -> dict:
    d = config.data
    return {
        "path": str(path or d.path),
        "layout": d.layout,
        "on_bad": d.on_bad,
        **d.split_config().to_record(),
        "external_paths": d.external_paths,
    }


def weights_line(members: list[Candidate], weights: dict[int, int]) -> str:
    return ", ".join(f"{members[i].origin} x{w}" for i, w in weights.items())
