"""One training run as the command line and the trainables start it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melanoma.config import ConfigError
from melanoma.data.carve import fold_splits
from melanoma.data.dataset import DataBundle
from melanoma.engine.config import TrainConfig
from melanoma.engine.inputs import labelled, needs_segmenter_masks, open_training_data
from melanoma.engine.loop import FitResult, Runtime, fit
from melanoma.engine.oof import segmenter_masks


def train(
    config: TrainConfig, runtime: Runtime | None = None, *, resume: bool | Path = False
) -> FitResult:
    """Open the data, make a classifier's out-of-fold segmenter masks when it asks for
    them (``input.mask_source``), then ``fit``."""
    runtime = runtime or Runtime()
    bundle, masks = training_data(config, runtime)
    return fit(config, runtime, resume=resume, data=bundle, mask_override=masks)


def training_data(
    config: TrainConfig, runtime: Runtime, *, keep_copy: bool = True
) -> tuple[DataBundle, dict[str, np.ndarray] | None]:
    """The run's data (labelled images only, for a classifier) and the out-of-fold
    segmenter masks it asks for (made once per machine; ``keep_copy``: also in the run)."""
    bundle = open_training_data(config)
    masks = None
    if config.task == "cls":
        bundle = bundle.with_splits(labelled(bundle.splits))
        _require_masks(config, bundle)
        if needs_segmenter_masks(config):
            # Over every training image: a fold's held-out masks come from segmenters that
            # never saw those images either.
            masks = segmenter_masks(config, bundle, runtime, keep_copy=keep_copy)
    if config.data.folds:
        d = config.data
        bundle = bundle.with_splits(fold_splits(bundle.splits, d.folds, d.split_seed)[d.fold])
    return bundle, masks


def _require_masks(config: TrainConfig, bundle: DataBundle) -> None:
    """A mask-using classifier on ground-truth masks needs a data set that has them: on
    one without (ISIC 2019, 2020, 2018 Task 3) every mask would be empty, and the
    classifier would silently train on whole images."""
    c = config.input
    if c.mode == "full" or c.mask_source != "gt":
        return
    if not any(e.sample.mask_path for e in bundle.splits.entries["train"]):
        raise ConfigError(
            f"input.mode {c.mode} needs lesion masks, but {config.data.path} has no "
            "ground-truth masks for its training images (input.mask_source: gt): set "
            "input.mask_source to a segmenter run (or search:NAME in a search), or use "
            "input.mode full"
        )
