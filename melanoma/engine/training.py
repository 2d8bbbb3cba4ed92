"""What a run trains with: the model and its loss, optimizer, schedule and scaler, built
once from a train config and shared by the loop and the checkpoint saver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from melanoma.data.device_augment import DeviceAugmentation
from melanoma.engine.config import TrainConfig
from melanoma.engine.optim import create_lr_schedule, create_optimizer
from melanoma.engine.tasks import ClassificationTask, SegmentationTask, build_model, make_task


@dataclass
class Training:
    """What a run trains with: the model and its loss, optimizer, schedule and scaler."""

    config: TrainConfig
    device: torch.device
    task: SegmentationTask | ClassificationTask
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler | None
    # data.augment_on: device (and a non-zero data.augment): each batch augmented here.
    augment: DeviceAugmentation | None = None

    def augmented(self, batch: dict, epoch: int, step: int, rank: int = 0) -> dict:
        """The training batch with images and masks moved to the device and, when the
        config says so, augmented there; seeded by (seed, epoch, step, rank), so a resumed
        run draws what it would have drawn."""
        if self.augment is None:
            return batch
        seed = ((self.config.seed * 1_000_003 + epoch) * 1_000_033 + step) * 1_009 + rank
        generator = torch.Generator().manual_seed(seed % 2**63)
        image = batch["image"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device, non_blocking=True)
        image, mask = self.augment(image, mask, generator)
        return {**batch, "image": image, "mask": mask}


def build_training(
    config: TrainConfig, device: torch.device, train_labels, steps_per_epoch: int, pretrained: bool
) -> Training:
    """Model, loss (class weights from ``train_labels``), optimizer, schedule and scaler."""
    task = make_task(config)
    model = build_model(config, pretrained=pretrained).to(device)
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(config.optimizer, model)
    schedule = create_lr_schedule(
        config.scheduler, optimizer, config.epochs, steps_per_epoch, config.mode
    )
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    return Training(
        config,
        device,
        task,
        model,
        task.build_loss(train_labels).to(device),
        optimizer,
        schedule,
        torch.amp.GradScaler("cuda") if use_scaler else None,
        _device_augmentation(config),
    )


def _device_augmentation(config: TrainConfig) -> DeviceAugmentation | None:
    on_device = config.data.augment_on == "device" and config.data.augment > 0
    return DeviceAugmentation(config.data.augment) if on_device else None
