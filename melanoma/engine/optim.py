"""Optimizer and learning-rate schedule factories."""

from __future__ import annotations

import math

import torch
from torch import nn

from melanoma.names import OPTIMIZERS

__all__ = ["OPTIMIZERS", "create_optimizer", "create_scheduler"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decaying norm scales and biases hurts (and wrecks pretrained BN); decay weights only.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def create_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """sgd (momentum, nesterov), adam or adamw, weight decay on weights only."""
    groups = param_groups(model, config.weight_decay)
    if config.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
        )
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.name!r}; valid: {list(OPTIMIZERS)}")


class LRSchedule:
    """One object for per-step (cosine with warmup) and per-epoch (step, plateau) schedules."""

    def __init__(
        self,
        config,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        steps_per_epoch: int,
        mode: str = "max",
    ):
        self.config = config
        self.optimizer = optimizer
        total = max(1, epochs * steps_per_epoch)
        warmup = int(config.warmup_epochs * steps_per_epoch)
        if config.name == "cosine":

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
                    1 + math.cos(math.pi * progress)
                )

            self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        elif config.name == "step":
            self.inner = torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
        elif config.name == "plateau":
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=config.gamma, patience=config.patience
            )
        elif config.name == "constant":
            self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        else:
            raise ValueError(
                f"unknown scheduler {config.name!r}; valid: cosine, step, plateau, constant"
            )

    def step_batch(self) -> None:
        if self.config.name in ("cosine", "constant"):
            self.inner.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.config.name == "step":
            self.inner.step()
        elif self.config.name == "plateau" and metric is not None:
            self.inner.step(metric)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def create_scheduler(
    config, optimizer, epochs: int, steps_per_epoch: int, mode: str = "max"
) -> LRSchedule:
    return LRSchedule(config, optimizer, epochs, steps_per_epoch, mode)
