"""The two tasks the one loop serves: what model, loss, inputs and metrics each needs."""

from __future__ import annotations

import torch
from torch import nn

from melanoma.data.transforms import apply_input_mode
from melanoma.engine.config import TrainConfig
from melanoma.engine.losses import create_loss
from melanoma.metrics import ClassificationMeter, SegmentationMeter
from melanoma.models import create_classifier, create_segmenter
from melanoma.names import DUAL_MODES, MASK_CHANNEL_MODES


def build_model(config: TrainConfig, *, pretrained: bool = True) -> nn.Module:
    """The model a config describes, before training: ImageNet weights as the config asks
    when ``pretrained``, else random weights (for a model whose trained weights follow)."""
    m = config.model
    weights = {"pretrained": m.pretrained, "weights_path": m.weights_path} if pretrained else {}
    if config.task == "seg":
        return create_segmenter(m.arch, m.encoder, **weights)
    return create_classifier(
        m.arch,
        2,
        aux=m.aux_weight > 0,
        transform_input=m.transform_input,
        in_channels=4 if config.input.mode in MASK_CHANNEL_MODES else 3,
        dual=config.input.mode in DUAL_MODES,
        **weights,
    )


def rebuild_model(config: TrainConfig, state_dict: dict) -> nn.Module:
    """A trained model from its checkpoint's config and weights, in eval mode. Never reads
    the ImageNet weights the run started from: the checkpoint holds every weight."""
    model = build_model(config, pretrained=False)
    model.load_state_dict(state_dict)
    return model.eval()


class SegmentationTask:
    name = "seg"

    def __init__(self, config: TrainConfig):
        self.config = config

    def build_loss(self, train_labels) -> nn.Module:
        return create_loss("seg", self.config.loss)

    def inputs(self, batch: dict, device: torch.device) -> torch.Tensor:
        return batch["image"].to(device, non_blocking=True)

    def loss(
        self, criterion: nn.Module, outputs, batch: dict, device: torch.device
    ) -> torch.Tensor:
        keep = batch["has_mask"].to(device)
        target = batch["mask"].to(device, non_blocking=True).float()
        if not keep.any():  # a batch of mask-less images teaches the segmenter nothing
            return outputs.sum() * 0.0
        return criterion(outputs[keep].float(), target[keep])

    def meter(self) -> SegmentationMeter:
        return SegmentationMeter(self.config.threshold)

    def update(self, meter: SegmentationMeter, outputs, batch: dict) -> None:
        meter.update(outputs, batch["mask"].to(outputs.device), batch["has_mask"])


class ClassificationTask:
    name = "cls"

    def __init__(self, config: TrainConfig):
        self.config = config

    def build_loss(self, train_labels) -> nn.Module:
        return create_loss("cls", self.config.loss, train_labels)

    def inputs(self, batch: dict, device: torch.device) -> torch.Tensor:
        c = self.config.input
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True) if c.mode != "full" else None
        return apply_input_mode(image, mask, c.mode, c.crop_margin, self.config.data.image_size)

    def loss(
        self, criterion: nn.Module, outputs, batch: dict, device: torch.device
    ) -> torch.Tensor:
        labels = batch["label"].to(device, non_blocking=True)
        if isinstance(outputs, tuple):  # main logits plus auxiliary heads (inception, googlenet)
            logits, aux = outputs
            main = criterion(logits.float(), labels)
            return main + self.config.model.aux_weight * sum(
                criterion(a.float(), labels) for a in aux
            )
        return criterion(outputs.float(), labels)

    def meter(self) -> ClassificationMeter:
        return ClassificationMeter(self.config.threshold)

    def update(self, meter: ClassificationMeter, outputs, batch: dict) -> None:
        meter.update(outputs, batch["label"])


def make_task(config: TrainConfig) -> SegmentationTask | ClassificationTask:
    return SegmentationTask(config) if config.task == "seg" else ClassificationTask(config)
