"""Masks from a trained segmenter for classifier training, out-of-fold on the training split.

A classifier trained on masks that its segmenter predicted for its own training images
learns from masks better than it will ever see at test time. So for ``input.mask_source:
RUN_DIR`` the training split is cut into ``input.oof_folds`` lesion-grouped folds, a
segmenter with the run's config is trained on the other folds, and each fold's masks come
from the segmenter that never saw it. Validation and test masks come from the run itself,
which was trained on the training split only (checked).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from sklearn.model_selection import GroupKFold

from melanoma.config import ConfigError
from melanoma.data.carve import units
from melanoma.data.dataset import DataBundle
from melanoma.data.io import file_sha256
from melanoma.engine.checkpoint import CHECKPOINTS, LAST, load_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.inputs import open_training_data
from melanoma.engine.loop import fit
from melanoma.engine.tasks import rebuild_model
from melanoma.files import read_json, replace_atomically, write_json
from melanoma.models.segmenter import segment_at

OOF_FILE = "oof_masks.npz"


@torch.no_grad()
def predict_masks(model, images: torch.Tensor, size: int, threshold: float = 0.5) -> torch.Tensor:
    """Binary uint8 (N, 1, H, W) masks for uint8 images (N, 3, H, W), the segmenter run at
    ``size`` x ``size`` and its probabilities resized back to H x W before thresholding."""
    return (segment_at(model, images.float() / 255.0, size) > threshold).to(torch.uint8)


def _predict_source(
    model, source, size: int, device, threshold: float, batch: int = 16
) -> dict[str, np.ndarray]:
    model.eval().to(device)
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(source), batch):
        items = [source.get(i) for i in range(start, min(len(source), start + batch))]
        images = torch.stack(
            [torch.from_numpy(np.ascontiguousarray(it.image.transpose(2, 0, 1))) for it in items]
        )
        masks = predict_masks(model, images.to(device), size, threshold)
        for it, m in zip(items, masks.cpu().numpy(), strict=True):
            out[it.id] = m[0]
    return out


class _Subset:
    """Some rows of a source, by position."""

    def __init__(self, source, rows: list[int]):
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, i: int):
        return self.source.get(self.rows[i])


def segmenter_masks(
    config: TrainConfig, bundle: DataBundle, runtime, *, keep_copy: bool = True
) -> dict[str, np.ndarray]:
    """Predicted masks for every classifier image: out-of-fold on train, the run's on val/test.

    They are made once per machine for a segmenter checkpoint, fold count and image set, in
    ``$MELANOMA_CACHE/oof/`` under a file lock, so the trials of a classifier search (and
    the search's driver, which makes them before the first trial) share one set; each run
    keeps its own copy (``oof_masks.npz``) for ``evaluate``."""
    if config.input.mask_search is not None:
        raise ConfigError(
            f"input.mask_source is {config.input.mask_source!r}, a segmenter search: "
            "`melanoma search` and `melanoma cv` resolve it to the search's best checkpoint, "
            "a single run needs that checkpoint or its run directory (`melanoma search "
            f"results {config.input.mask_search}` prints the best checkpoint)"
        )
    state = load_checkpoint(Path(config.input.mask_source))
    # Fold segmenters are reused when the same segmenter checkpoint, fold count and images
    # made them, masks when also the size and threshold match: a retrained segmenter or
    # another split makes them anew; another classifier size only predicts again.
    folds_key = {
        "segmenter": state["path"],
        "segmenter_sha256": file_sha256(Path(state["path"])),
        "folds": config.input.oof_folds,
        # Folds keep lesions and byte copies together (mask_folds): fold segmenters and
        # masks made with lesion-only folds are not reused.
        "fold_grouping": "lesion+bytes",
        "images": sorted(e.sample.id for items in bundle.splits.entries.values() for e in items),
    }
    key = {
        **folds_key,
        "threshold": TrainConfig.from_dict(state["config"]).threshold,
        "size": bundle.size,  # masks are made at the size the classifier loads images at
    }
    own = Path(config.out) / OOF_FILE
    masks = _load_masks(own, key)
    if masks is None:
        shared = oof_cache_dir() / hashlib.sha256(json.dumps(folds_key).encode()).hexdigest()[:16]
        shared.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{shared}.lock"):
            masks_file = shared / f"oof_masks_{bundle.size}.npz"
            masks = _load_masks(masks_file, key)
            if masks is None:
                masks = _make_masks(config, bundle, runtime, state, shared)
                _save_masks(masks_file, key, masks)
        if runtime.is_main and keep_copy:
            _save_masks(own, {**key, "folds_dir": str(shared)}, masks)
    return masks


def oof_cache_dir() -> Path:
    """Where out-of-fold masks and their fold segmenters live on this machine."""
    from melanoma.config import cache_root

    return cache_root() / "oof"


def _load_masks(path: Path, key: dict) -> dict[str, np.ndarray] | None:
    saved_key = read_json(path.with_suffix(".json"))
    if not path.is_file() or not isinstance(saved_key, dict):
        return None  # absent, or a key cut short: the masks are made again
    if {k: v for k, v in saved_key.items() if k != "folds_dir"} != key:
        return None
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def _save_masks(path: Path, key: dict, masks: dict[str, np.ndarray]) -> None:
    replace_atomically(path, lambda tmp: np.savez_compressed(tmp, **masks))
    write_json(path.with_suffix(".json"), key, indent=None)


def mask_folds(entries: list, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held rows) per fold: images of one lesion or of identical bytes (a copy
    under another id) stay in one fold, as in cross-validation, so no image's mask comes
    from a segmenter that trained on its copy."""
    content = {e.sample.id: e.image_sha256 for e in entries}
    unit_of = {
        s.id: n for n, unit in enumerate(units([e.sample for e in entries], content)) for s in unit
    }
    groups = [unit_of[e.sample.id] for e in entries]
    return list(GroupKFold(n_splits=folds).split(entries, groups=groups))


def _make_masks(
    config: TrainConfig, bundle: DataBundle, runtime, state: dict, folds_dir: Path
) -> dict[str, np.ndarray]:
    """Train the fold segmenters into ``folds_dir`` and predict every image's mask."""
    run = Path(config.input.mask_source)
    seg_config = TrainConfig.from_dict(state["config"])
    if seg_config.task != "seg":
        raise ValueError(
            f"input.mask_source {run} is a {seg_config.task} run; it must be a segmenter run"
        )
    seg_bundle = open_training_data(seg_config)
    for split in ("val", "test"):
        ours = {e.sample.id for e in bundle.splits.entries[split]}
        theirs = {e.sample.id for e in seg_bundle.splits.entries[split]}
        if not ours <= theirs:
            raise ValueError(
                f"the segmenter run {run} used a different {split} split than this classifier "
                f"({len(ours - theirs)} of its {split} images are not in the segmenter's {split}); "
                "train both on the same data with the same data.split_seed and fractions"
            )
    device = runtime.device or torch.device("cpu")
    # The segmenter's own decision threshold, as the cascade applies it at test time.
    seg_size, threshold = seg_config.data.image_size, seg_config.threshold
    model = rebuild_model(seg_config, state["model"])
    masks: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        masks.update(_predict_source(model, bundle.source(split), seg_size, device, threshold))

    train_ids = [e.sample.id for e in bundle.splits.entries["train"]]
    seg_train = {e.sample.id: e for e in seg_bundle.splits.entries["train"]}
    missing = [i for i in train_ids if i not in seg_train]
    if missing:
        raise ValueError(
            f"{len(missing)} classifier training images are not in the segmenter's data, "
            f"e.g. {missing[:3]}; train both on the same data set"
        )
    entries = [seg_train[i] for i in train_ids]
    cls_train_source = bundle.source("train")
    index_of = {i: n for n, i in enumerate(train_ids)}
    for k, (fit_idx, held_idx) in enumerate(mask_folds(entries, config.input.oof_folds)):
        fold_splits = replace(
            seg_bundle.splits,
            entries={
                "train": [entries[i] for i in fit_idx],
                "val": [entries[i] for i in held_idx],
                "test": [],
            },
        )
        fold_config = replace(seg_config, out=str(folds_dir / f"fold{k}"), early_stopping=0)
        done = folds_dir / f"fold{k}.done"  # written after the fold finished training
        if not done.is_file():
            if runtime.is_main and runtime.progress:
                print(
                    f"out-of-fold masks: training segmenter fold {k + 1}/{config.input.oof_folds}",
                    flush=True,
                )
            # One process trains the fold segmenters, whatever rank it is in a DDP group:
            # the other ranks wait on the file lock (or make their node's masks) meanwhile,
            # so none of them would join a collective of this training.
            alone = replace(runtime, rank=0, world_size=1, report=None, wrap_model=None)
            fit(fold_config, alone, data=seg_bundle.with_splits(fold_splits))
            done.write_text("trained\n")
        fold_state = load_checkpoint(Path(fold_config.out) / CHECKPOINTS / LAST)
        fold_model = rebuild_model(seg_config, fold_state["model"])

        held = _Subset(cls_train_source, [index_of[entries[i].sample.id] for i in held_idx])
        masks.update(_predict_source(fold_model, held, seg_size, device, threshold))
    return masks
