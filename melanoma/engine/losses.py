"""Loss factory: segmentation on mask logits, classification on class logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from melanoma.names import check_loss


class DiceBCELoss(nn.Module):
    """BCE on logits plus a weighted soft Dice, the default segmentation loss."""

    def __init__(self, dice_weight: float = 1.0):
        super().__init__()
        self.dice = smp.losses.DiceLoss("binary", from_logits=True)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target) + self.dice_weight * self.dice(
            logits, target
        )


class FocalCrossEntropy(nn.Module):
    """Multi-class focal loss with optional class weights (alpha)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


SEG_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice_bce": lambda cfg: DiceBCELoss(cfg.dice_weight),
    "bce": lambda cfg: nn.BCEWithLogitsLoss(),
    "dice": lambda cfg: smp.losses.DiceLoss("binary", from_logits=True),
    "focal": lambda cfg: smp.losses.FocalLoss("binary", gamma=cfg.focal_gamma),
    "lovasz": lambda cfg: smp.losses.LovaszLoss("binary", from_logits=True),
}
CLS_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": lambda cfg, weight: nn.CrossEntropyLoss(weight=weight),
    "focal": lambda cfg, weight: FocalCrossEntropy(cfg.focal_gamma, weight),
}


def validate_loss(task: str, name: str) -> None:
    check_loss(task, name)


def class_weights(labels: Sequence[int], class_weight: float = 1.0) -> torch.Tensor:
    """Balanced weights (n / (2 n_c)) from the training labels; the minority class's weight
    is then multiplied by ``class_weight``."""
    labels = [y for y in labels if y in (0, 1)]
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=2).float()
    if (counts == 0).any():
        raise ValueError(
            f"the training split needs both classes for class weights, got counts {counts.tolist()}"
        )
    weights = counts.sum() / (2 * counts)
    weights[int(counts.argmin())] *= class_weight
    return weights


def create_loss(task: str, config, train_labels: Sequence[int] | None = None) -> nn.Module:
    """The loss named by ``config.name`` for ``task`` ("seg" or "cls")."""
    validate_loss(task, config.name)
    if task == "seg":
        return SEG_LOSSES[config.name](config)
    weight = class_weights(train_labels, config.class_weight) if train_labels is not None else None
    return CLS_LOSSES[config.name](config, weight)
