"""Metrics of a trained run on any split, from its self-describing checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from melanoma.data.dataset import EpochSampler
from melanoma.data.splits import Splits
from melanoma.engine.checkpoint import CHECKPOINTS, load_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.inputs import (
    labelled,
    make_loader,
    needs_segmenter_masks,
    open_training_data,
)
from melanoma.engine.loop import resolve_device, validate
from melanoma.engine.tasks import make_task, rebuild_model


def _run_dir(path: Path) -> Path:
    return (
        path
        if path.is_dir()
        else path.parent.parent
        if path.parent.name == CHECKPOINTS
        else path.parent
    )


def score_split(
    config: TrainConfig,
    weights: dict,
    bundle,
    split: str,
    device: str = "auto",
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[dict, dict]:
    """Metrics of the model ``config`` + ``weights`` on ``split`` of ``bundle``, and its
    outputs (labels and probabilities, or per-image segmentation scores)."""
    dataset = bundle.dataset(split, None, mask_override=masks)
    dev = resolve_device(device)
    config = replace(config, device=str(dev))
    loader = make_loader(
        dataset,
        EpochSampler(len(dataset), 0, False),
        config.data.batch_size,
        config.data.num_workers,
        dev,
        drop_last=False,
    )
    model = rebuild_model(config, weights).to(dev)
    task = make_task(config)
    # A run selected on ``metric: loss`` is scored on the loss it was validated with
    # (class weights from its training labels).
    criterion = None
    if config.metric == "loss":
        criterion = task.build_loss(bundle.source("train").labels()).to(dev)
    return validate(model, loader, task, criterion, dev, config)


def evaluate_run(
    path: Path,
    *,
    task: str | None = None,
    data: str | None = None,
    split: str = "val",
    device: str = "auto",
) -> dict:
    """Load a run's best checkpoint and compute its metrics on ``split`` of ``data``
    (``task``, when given, must be the checkpoint's).

    The split is the one the run recorded in its splits.json (checked by image hash), so a
    run is never evaluated on images it was trained on by accident.
    """
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    if task is not None and config.task != task:
        raise ValueError(
            f"{path} holds a {config.task} model, not {task}; use `melanoma evaluate {path}`"
        )
    if data:
        config = replace(config, data=replace(config.data, path=str(data)))
    bundle = open_training_data(config)
    run_dir = _run_dir(Path(path))
    recorded = run_dir / "splits.json"
    if recorded.is_file():
        theirs = {e.image_sha256 for e in Splits.load(recorded).entries[split]}
        ours = {e.image_sha256 for e in bundle.splits.entries[split]}
        if theirs != ours:
            raise ValueError(
                f"the {split} split of {config.data.path} differs from the one the run recorded "
                f"in {recorded} ({len(ours ^ theirs)} images differ); evaluate on the same data "
                "with the same split settings"
            )
    if config.task == "cls":
        bundle = bundle.with_splits(labelled(bundle.splits))
    masks = None
    if needs_segmenter_masks(config):
        oof = run_dir / "oof_masks.npz"
        if not oof.is_file():
            raise FileNotFoundError(f"{oof} is missing: the run's predicted masks are needed")
        with np.load(oof) as saved:
            masks = {k: saved[k] for k in saved.files}
    metrics, _ = score_split(config, state["model"], bundle, split, device, masks)
    return {
        "task": config.task,
        "data": str(config.data.path),
        "split": split,
        "checkpoint": state["path"],
        "epoch": state.get("epoch"),
        **metrics,
    }
