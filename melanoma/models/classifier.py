"""Classifiers: torchvision ImageNet architectures and timm's TF EfficientNet-Lite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from melanoma.data.transforms import HALF, IMAGENET, Normalization, Preprocess
from melanoma.models.weights import from_hub_cache, lite_imagenet_state_dict, load_state_dict
from melanoma.names import CLASSIFIER_SIZES, check_classifier


@dataclass(frozen=True)
class ClassifierArch:
    """How to build one classifier and what it expects."""

    build: Callable[[bool], nn.Module]  # argument: with auxiliary heads
    input_size: int
    normalization: Normalization = IMAGENET
    min_size: int = 32
    has_aux: bool = False
    min_size_aux: int = 32  # the auxiliary head of inception_v3 needs its full 299 input


def _tv(name: str, **kwargs) -> Callable[[bool], nn.Module]:
    def build(aux: bool) -> nn.Module:
        extra = (
            {"aux_logits": aux, "init_weights": True}
            if name in ("inception_v3", "googlenet")
            else {}
        )
        return torchvision.models.get_model(name, weights=None, **extra, **kwargs)

    return build


def _lite(variant: int) -> Callable[[bool], nn.Module]:
    def build(aux: bool) -> nn.Module:
        import timm

        return timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)

    return build


_BUILDERS: dict[str, tuple[Callable[[bool], nn.Module], Normalization]] = {
    **{
        name: (_tv(name), IMAGENET)
        for name in (
            "resnet18",
            "resnet34",
            "resnet50",
            "googlenet",
            "inception_v3",
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
            "mobilenet_v3_large",
            "convnext_tiny",
        )
    },
    **{f"efficientnet_lite{v}": (_lite(v), HALF) for v in (0, 1, 2)},
}
# Sizes from the plain table that config validation reads (melanoma.names).
CLASSIFIERS: dict[str, ClassifierArch] = {
    name: ClassifierArch(build, s.input_size, normalization, s.min_size, s.has_aux, s.min_size_aux)
    for name, (build, normalization) in _BUILDERS.items()
    for s in [CLASSIFIER_SIZES[name]]
}


def classifier_arch(name: str) -> ClassifierArch:
    check_classifier(name)  # raises, naming the valid classifiers
    return CLASSIFIERS[name]


class Classifier(nn.Module):
    """Normalisation + network. Returns logits; while training a model with auxiliary
    heads it returns ``(logits, [aux_logits, ...])`` so the loss can weight them."""

    def __init__(self, net: nn.Module, normalization: Normalization, has_aux: bool):
        super().__init__()
        self.preprocess = Preprocess(normalization)
        self.net = net
        self.has_aux = has_aux

    def forward(self, x: torch.Tensor):
        out = self.net(self.preprocess(x))
        if isinstance(out, tuple):  # InceptionOutputs / GoogLeNetOutputs in training mode
            logits, *aux = out
            aux = [a for a in aux if a is not None]
            return (logits, aux) if self.training else logits
        return out


class DualViewClassifier(Classifier):
    """Two views through one network (``input.mode: dual``): channels 0-2 are the whole
    image, 3-5 the lesion crop. Both pass through the shared backbone in one batch; their
    pooled features are joined before one linear head, so the head weighs the lesion's
    detail against its surroundings."""

    def __init__(self, net: nn.Module, normalization: Normalization, head: nn.Linear):
        super().__init__(net, normalization, has_aux=False)
        self.head = head

    def forward(self, x: torch.Tensor):
        if x.shape[1] != 6:
            raise ValueError(
                f"a dual-view classifier takes 6 channels (image, lesion crop), got {x.shape[1]}"
            )
        n = x.shape[0]
        features = self.net(self.preprocess(torch.cat([x[:, :3], x[:, 3:]], dim=0)))
        whole, crop = features[:n], features[n:]
        return self.head(torch.cat([whole, crop], dim=1))


def _replace_head(net: nn.Module, name: str, num_classes: int) -> int:
    """Give ``net`` a ``num_classes``-way head; 0 removes it (the network then returns its
    pooled features). Returns the width of those features."""

    def linear(old: nn.Linear) -> nn.Module:
        return nn.Linear(old.in_features, num_classes) if num_classes else nn.Identity()

    if name.startswith("efficientnet_lite"):
        net.reset_classifier(num_classes)  # timm: 0 leaves the pooled features
        return net.num_features
    if name.startswith(("resnet", "googlenet", "inception")):
        width = net.fc.in_features
        net.fc = linear(net.fc)
        if name == "googlenet" and net.aux1 is not None:
            net.aux1.fc2 = linear(net.aux1.fc2)
            net.aux2.fc2 = linear(net.aux2.fc2)
        if name == "inception_v3" and net.AuxLogits is not None:
            net.AuxLogits.fc = linear(net.AuxLogits.fc)
        return width
    if name.startswith("efficientnet") or name == "convnext_tiny" or name.startswith("mobilenet"):
        width = net.classifier[-1].in_features
        net.classifier[-1] = linear(net.classifier[-1])
        return width
    raise AssertionError(f"no head rule for {name}")  # every table entry is handled above


def create_classifier(
    name: str,
    num_classes: int = 2,
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    aux: bool = True,
    transform_input: bool | None = None,
    in_channels: int = 3,
    dual: bool = False,
) -> Classifier:
    """Build a classifier. ``aux`` builds the auxiliary heads of inception_v3/googlenet
    (train them with a weighted aux loss) or leaves them out entirely. ``in_channels`` 4
    takes the lesion mask as a fourth input channel (``input.mode: mask_channel``): the
    first convolution gains one input channel whose filters start at zero, so the network
    starts as the pretrained RGB one and learns how much to use the mask. ``dual`` builds a
    :class:`DualViewClassifier` (six channels: image and lesion crop; no auxiliary heads).

    ``pretrained`` loads ImageNet weights before the head is replaced: from ``weights_path``,
    the offline EfficientNet-Lite packages, or the torch hub cache; nothing is downloaded.
    ``transform_input`` (inception_v3/googlenet) overrides what the weights imply.
    """
    spec = classifier_arch(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if dual and in_channels != 3:
        raise ValueError(
            f"a dual-view classifier takes two RGB views, not in_channels={in_channels}; "
            "use dual=True with in_channels=3, or one of them"
        )
    with_aux = aux and spec.has_aux and not dual
    net = spec.build(with_aux)
    if pretrained or weights_path:
        target = net.state_dict()
        if weights_path:
            state = load_state_dict(Path(weights_path))
        elif name.startswith("efficientnet_lite"):
            state = lite_imagenet_state_dict(int(name[-1]), target)
        else:
            url = torchvision.models.get_model_weights(name).DEFAULT.url
            state = from_hub_cache(url, f"classifier {name}")
        if not with_aux:  # ImageNet files carry aux heads; a model built without them drops them
            state = {
                k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "aux1.", "aux2."))
            }
        net.load_state_dict(state, strict=True)
        if name in ("inception_v3", "googlenet"):
            # torchvision's ports of these weights expect its transform_input re-normalisation.
            net.transform_input = True
    if transform_input is not None and name in ("inception_v3", "googlenet"):
        net.transform_input = transform_input
    normalization = spec.normalization
    if dual:
        width = _replace_head(net, name, 0)
        return DualViewClassifier(net, normalization, nn.Linear(2 * width, num_classes))
    _replace_head(net, name, num_classes)
    if in_channels not in (3, 4):
        raise ValueError(f"in_channels must be 3 (RGB) or 4 (RGB + mask), got {in_channels}")
    if in_channels == 4:
        if getattr(net, "transform_input", False):
            # torchvision's transform_input rebuilds three channels (dropping a fourth); it
            # re-normalises ImageNet statistics to mean 0.5 / std 0.5, which is the same as
            # normalising with those directly.
            net.transform_input, normalization = False, HALF
        widen_first_conv(net, 1)
    return Classifier(net, normalization, with_aux)


def widen_first_conv(net: nn.Module, extra: int) -> None:
    """Give the network's first convolution (the first Conv2d taking 3 channels) ``extra``
    more input channels with zero filters: its output is unchanged until they are trained.
    Changed in place, so a subclass (timm's same-padding convolution) keeps its forward."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if conv is None or conv.groups != 1:
        raise AssertionError(f"{type(net).__name__} has no plain 3-channel convolution to widen")
    old = conv.weight
    wider = torch.zeros(old.shape[0], 3 + extra, *old.shape[2:], dtype=old.dtype)
    wider[:, :3] = old.detach()
    conv.weight = nn.Parameter(wider)
    conv.in_channels = 3 + extra
