"""What a training run reads: the data set opened as training sees it, the run's splits
and config written beside it, and its loaders."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from melanoma.config import dump_yaml
from melanoma.data.dataset import DataBundle, EpochSampler, open_data
from melanoma.data.splits import Splits
from melanoma.data.transforms import build_augmentation
from melanoma.engine.config import TrainConfig


def make_loader(
    dataset, sampler, batch_size: int, workers: int, device: torch.device, drop_last: bool
):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
    )


def needs_segmenter_masks(config: TrainConfig) -> bool:
    """Whether a classifier trains on a segmenter's predicted masks."""
    return config.task == "cls" and config.input.mode != "full" and config.input.mask_source != "gt"


def labelled(splits: Splits) -> Splits:
    """The same splits without unlabelled images (what a classifier trains and scores on)."""
    entries = {
        s: [e for e in items if e.sample.label is not None] for s, items in splits.entries.items()
    }
    return replace(splits, entries=entries)


def open_training_data(config: TrainConfig) -> DataBundle:
    d = config.data
    if not d.path:
        raise ValueError("no data path: set data.path in the experiment or pass --data DIR")
    return open_data(
        Path(d.path),
        config.load_size,
        layout=d.layout,
        on_bad=d.on_bad,
        split_config=d.split_config(),
        decode_once=d.cache,
        external_paths=d.external_paths,
    )


def open_run(config: TrainConfig, runtime, data, mask_override) -> DataBundle:
    """The run's data (labelled images only for a classifier), its config and splits
    written to the run directory (by rank 0 of the loop's ``Runtime``)."""
    bundle = data or open_training_data(config)
    if config.task == "cls":
        bundle = bundle.with_splits(labelled(bundle.splits))
        if needs_segmenter_masks(config) and mask_override is None:
            raise ValueError(
                f"input.mask_source is {config.input.mask_source}: fit() needs those masks as "
                "mask_override; melanoma.engine.train makes them and calls fit"
            )
    if runtime.is_main:
        run_dir = Path(config.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(config.to_dict(), run_dir / "config.yaml")
        bundle.splits.save(run_dir / "splits.json")
    return bundle


def loaders(config: TrainConfig, runtime, device, bundle: DataBundle, masks):
    """Training loader (this rank's share, reshuffled each epoch) and validation loader
    (all of it on every rank)."""
    # On the device the loop augments each batch (melanoma.engine.loop); here, the loader.
    on_loader = config.data.augment_on == "loader"
    augment = build_augmentation(config.data.augment) if on_loader else None
    train_set = bundle.dataset("train", augment, seed=config.seed, mask_override=masks)
    val_set = bundle.dataset("val", None, seed=config.seed, mask_override=masks)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(
            f"need training and validation images, got {len(train_set)} and {len(val_set)}; "
            "add data or change data.val_fraction"
        )
    _require_scorable_validation(config, val_set.labels())
    bs, workers = config.data.batch_size, config.data.num_workers
    train_sampler = EpochSampler(
        len(train_set), config.seed, True, runtime.rank, runtime.world_size
    )
    return (
        make_loader(
            train_set, train_sampler, bs, workers, device, drop_last=len(train_sampler) > bs
        ),
        make_loader(
            val_set, EpochSampler(len(val_set), 0, False), bs, workers, device, drop_last=False
        ),
    )


# Classifier metrics that need melanoma and benign validation images to be defined.
BOTH_CLASS_METRICS = ("auc", "average_precision", "balanced_accuracy")


def _require_scorable_validation(config: TrainConfig, labels: list[int | None]) -> None:
    """A classifier selected on a figure that one class cannot give would never have a
    best epoch (no best.pt): refuse before training."""
    if config.task != "cls":
        return
    have = sorted({x for x in labels if x is not None})
    needs = (
        {0, 1}
        if config.metric in BOTH_CLASS_METRICS
        else {1}
        if config.metric == "sensitivity"
        else {0}
        if config.metric == "specificity"
        else set()
    )
    if not needs <= set(have):
        kinds = {0: "benign", 1: "melanoma"}
        holds = " and ".join(kinds[x] for x in have) or "no labelled"
        raise ValueError(
            f"the validation split holds {holds} images only ({len(labels)} images), so "
            f"validation {config.metric} is undefined and no epoch could be chosen as the best; "
            "add data, raise data.val_fraction, or select on metric: loss"
        )
