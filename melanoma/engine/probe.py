"""What a training epoch costs on this machine, measured before anything trains: a few
optimiser steps of the run's own model at each candidate size, and the decoding of a few
of its files. ``melanoma run`` plans its budget from these figures."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from melanoma.engine.config import TrainConfig
from melanoma.engine.optim import create_optimizer
from melanoma.engine.tasks import build_model

STEPS = 3  # timed steps after one warm-up; the median is kept


@dataclass(frozen=True)
class StepCost:
    """Seconds per image of one training step and of one inference pass, at one size."""

    size: int
    train_s: float
    infer_s: float


def step_cost(
    config: TrainConfig, size: int, batch: int | None = None, device: str = "cpu"
) -> StepCost:
    """Time ``config``'s model at ``size`` px on ``device``: training steps (forward,
    backward, update) and inference passes on random images of the run's batch size
    (content does not change the cost). Weights are not loaded: the cost is the
    architecture's."""
    batch = batch or config.data.batch_size
    dev = torch.device(device)
    model = build_model(config, pretrained=False).to(dev)
    optimizer = create_optimizer(config.optimizer, model)
    x = torch.rand(batch, _channels(config), size, size, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_step() -> None:
        _step(model, optimizer, x)
        sync()

    def infer_step() -> None:
        with torch.inference_mode():
            model(x)
        sync()

    model.train()
    train_s = _median_time(train_step) / batch
    model.eval()
    infer_s = _median_time(infer_step) / batch
    return StepCost(size, train_s, infer_s)


def loader_cost(config: TrainConfig, size: int, images: int = 16) -> float:
    """Seconds per image of the training loader's work after decoding: augmentation as
    ``config`` sets it, tensors and collation (with ``num_workers: 0`` the lane pays it
    between its steps; the step timing above does not see it)."""
    import numpy as np
    from torch.utils.data import default_collate

    from melanoma.data.dataset import Item, LesionDataset
    from melanoma.data.transforms import build_augmentation

    rng = np.random.default_rng(0)
    items = [
        Item(
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            (rng.random((size, size)) > 0.5).astype(np.uint8),
            0,
            f"probe-{i}",
        )
        for i in range(images)
    ]

    class _Source:
        def __len__(self) -> int:
            return len(items)

        def get(self, i: int) -> Item:
            return items[i]

    augment = (
        build_augmentation(config.data.augment) if config.data.augment_on == "loader" else None
    )
    dataset = LesionDataset(_Source(), augment, seed=config.seed)
    default_collate([dataset[i] for i in range(2)])  # warm-up: first calls build caches
    started = time.perf_counter()
    default_collate([dataset[i] for i in range(images)])
    return (time.perf_counter() - started) / images


def decode_cost(files: list[Path], size: int) -> float:
    """Seconds per file to read and resize one image as training loads it."""
    from melanoma.data.io import load_image

    if not files:
        return 0.0
    started = time.perf_counter()
    for path in files:
        load_image(path, size)
    return (time.perf_counter() - started) / len(files)


def keep_training(
    config: TrainConfig, size: int, until, batch: int | None = None, device: str = "cpu"
) -> None:
    """Training steps of ``config``'s model at ``size`` and its batch until ``until()``:
    the load a lane puts on the machine while the other lane's probe is still timing."""
    dev = torch.device(device)
    model = build_model(config, pretrained=False).to(dev).train()
    optimizer = create_optimizer(config.optimizer, model)
    x = torch.rand(batch or config.data.batch_size, _channels(config), size, size, device=dev)
    while not until():
        _step(model, optimizer, x)


def _step(model, optimizer, x: torch.Tensor) -> None:
    """One training step on ``x``: forward, a loss of the model's own cost, backward, update."""
    optimizer.zero_grad(set_to_none=True)
    out = model(x)
    (out[0] if isinstance(out, tuple) else out).float().mean().backward()
    optimizer.step()


def _channels(config: TrainConfig) -> int:
    """The channels the model takes: image, image + mask, or image + lesion crop."""
    mode = config.input.mode if config.task == "cls" else "full"
    return {"mask_channel": 4, "dual": 6}.get(mode, 3)


def _median_time(step) -> float:
    step()  # warm-up: allocator, kernels chosen
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]
