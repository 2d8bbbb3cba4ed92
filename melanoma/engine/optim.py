"""Optimizer and learning-rate schedule factories, over timm's parameter groups and
cosine schedule and torch's step and plateau schedules."""

from __future__ import annotations

import torch
from torch import nn

from melanoma.names import OPTIMIZERS

__all__ = ["OPTIMIZERS", "create_optimizer", "create_lr_schedule"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's groups: weight decay on weights only. Decaying norm scales and biases hurts
    (and wrecks pretrained BatchNorm)."""
    from timm.optim import param_groups_weight_decay

    return param_groups_weight_decay(model, weight_decay)


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
        self.updates = 0  # optimizer steps taken: the per-step schedules' clock
        if config.name == "cosine":
            from timm.scheduler import CosineLRScheduler

            # Linear warmup from lr / warmup steps to lr, then a cosine to min_lr_ratio * lr
            # over the remaining steps (timm's warmup_prefix), held there afterwards.
            base = optimizer.param_groups[0]["lr"]
            self.inner = CosineLRScheduler(
                optimizer,
                t_initial=max(1, total - warmup),
                lr_min=config.min_lr_ratio * base,
                warmup_t=warmup,
                warmup_lr_init=base / max(1, warmup),
                warmup_prefix=True,
                t_in_epochs=False,
            )
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
        self.updates += 1
        if self.config.name == "cosine":
            self.inner.step_update(self.updates)
        elif self.config.name == "constant":
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
        return {"updates": self.updates, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "updates" not in state:
            raise ValueError(
                "the checkpoint's learning-rate schedule was saved by an older melanoma-search "
                "(before the timm schedule); its weights still load for evaluation, cascades "
                "and export, but the run cannot be resumed: start it again"
            )
        self.updates = state["updates"]
        if self.config.name == "cosine":
            # The cosine is a function of the step count and this run's epochs: placed
            # anew, so a run resumed with fewer epochs (melanoma run re-planning a lane
            # that ran long) anneals over its new length instead of the saved one.
            self.inner.step_update(self.updates)
        else:
            self.inner.load_state_dict(state["inner"])


def create_lr_schedule(
    config, optimizer, epochs: int, steps_per_epoch: int, mode: str = "max"
) -> LRSchedule:
    return LRSchedule(config, optimizer, epochs, steps_per_epoch, mode)
