"""One training run as the command line and the trainables start it."""

from __future__ import annotations

from pathlib import Path

from melanoma.engine.config import TrainConfig
from melanoma.engine.loop import (
    FitResult,
    Runtime,
    fit,
    labelled,
    needs_segmenter_masks,
    open_training_data,
)
from melanoma.engine.oof import segmenter_masks


def train(
    config: TrainConfig, runtime: Runtime | None = None, *, resume: bool | Path = False
) -> FitResult:
    """Open the data, make a classifier's out-of-fold segmenter masks when it asks for
    them (``input.mask_source``), then ``fit``."""
    runtime = runtime or Runtime()
    bundle = open_training_data(config)
    masks = None
    if config.task == "cls":
        bundle = bundle.with_splits(labelled(bundle.splits))
        if needs_segmenter_masks(config):
            masks = segmenter_masks(config, bundle, runtime)
    return fit(config, runtime, resume=resume, data=bundle, mask_override=masks)
