"""Segmenters: any segmentation-models-pytorch architecture and encoder, returning logits."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from melanoma.data.transforms import HALF, IMAGENET, Normalization, Preprocess
from melanoma.models.weights import (
    WeightsNotFoundError,
    lite_imagenet_state_dict,
    load_state_dict,
)
from melanoma.names import SEGMENTER_MIN_SIZE, check_segmenter


@dataclass(frozen=True)
class SegmenterArch:
    """One SMP architecture: its class, the smallest input it runs at, an encoder it takes."""

    cls: type[nn.Module]
    min_size: int = 32
    example_encoder: str = "resnet18"


# Our names (lower case, as smp.create_model spells them) to SMP classes.
_CLASSES = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "fpn": smp.FPN,
    "deeplabv3": smp.DeepLabV3,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "pspnet": smp.PSPNet,
    "linknet": smp.Linknet,
    "manet": smp.MAnet,
    "pan": smp.PAN,
    "upernet": smp.UPerNet,
    "segformer": smp.Segformer,
    "dpt": smp.DPT,  # timm ViT encoders only
}
SEGMENTER_ARCHS: dict[str, SegmenterArch] = {
    name: SegmenterArch(
        cls,
        SEGMENTER_MIN_SIZE[name],
        "tu-vit_tiny_patch16_224" if name == "dpt" else "resnet18",
    )
    for name, cls in _CLASSES.items()
}
_LITE = {f"tu-tf_efficientnet_lite{v}": v for v in (0, 1, 2)}


@functools.cache
def smp_encoders() -> tuple[str, ...]:
    return tuple(sorted(smp.encoders.get_encoder_names()))


def validate_encoder(encoder: str) -> None:
    """Raise ValueError naming the valid encoders when ``encoder`` is not one of SMP's."""
    if encoder in smp_encoders():
        return
    if encoder.startswith("tu-"):
        import timm

        if timm.list_models(encoder[3:]) or encoder[3:] in timm.list_models():
            return
        raise ValueError(
            f"unknown timm encoder {encoder!r}: {encoder[3:]!r} is not in timm.list_models()"
        )
    raise ValueError(
        f"unknown encoder {encoder!r}; valid encoders are SMP's: {', '.join(smp_encoders())}, "
        "or any timm model as 'tu-<name>' (for example tu-tf_efficientnet_lite0)"
    )


def validate_arch(arch: str) -> str:
    key = arch.lower()
    if key not in SEGMENTER_ARCHS:
        check_segmenter(arch, "resnet18")  # raises, naming the valid architectures
    return key


def segmenter_normalization(encoder: str) -> Normalization:
    # TF EfficientNet-Lite weights expect [-1, 1] inputs; every other zoo encoder ImageNet's.
    return HALF if encoder in _LITE else IMAGENET


class Segmenter(nn.Module):
    """Normalisation + SMP model: uint8 or [0, 1] images in, one-channel mask logits out."""

    def __init__(self, net: nn.Module, normalization: Normalization):
        super().__init__()
        self.preprocess = Preprocess(normalization)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def create_segmenter(
    arch: str = "fpn",
    encoder: str = "resnet34",
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
) -> Segmenter:
    """Build a segmenter. ``pretrained`` loads ImageNet encoder weights from local files only:
    ``weights_path`` (encoder state_dict), the offline EfficientNet-Lite packages, or the
    Hugging Face cache that SMP downloads into on a machine with internet.
    """
    key = validate_arch(arch)
    validate_encoder(encoder)
    net = SEGMENTER_ARCHS[key].cls(
        encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1
    )
    if pretrained or weights_path:
        net.encoder.load_state_dict(_encoder_weights(net.encoder, encoder, weights_path))
    return Segmenter(net, segmenter_normalization(encoder))


def _encoder_weights(
    module: nn.Module, encoder: str, weights_path: str | Path | None
) -> dict[str, torch.Tensor]:
    target = module.state_dict()
    if weights_path:
        state = load_state_dict(Path(weights_path))
        # Accept a bare encoder state_dict or one from a whole SMP model.
        if not set(target) <= set(state):
            stripped = {k.removeprefix("encoder."): v for k, v in state.items()}
            state = {k: v for k, v in stripped.items() if k in target}
        return state
    if encoder in _LITE:
        # The SMP wrapper keeps the timm model (features only: no head) under "model.".
        inner = {k.removeprefix("model."): v for k, v in target.items()}
        import timm

        full = timm.create_model(encoder[3:], pretrained=False).state_dict()
        converted = lite_imagenet_state_dict(_LITE[encoder], full)
        return {f"model.{k}": v for k, v in converted.items() if k in inner}
    return _smp_cached_weights(encoder)


def _smp_cached_weights(encoder: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors.torch import load_file

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        raise WeightsNotFoundError(
            f"no offline ImageNet weights are known for encoder {encoder!r}; pass "
            "weights_path=FILE (a state_dict of the encoder) or set pretrained: false"
        )
    try:
        path = hf_hub_download(
            settings["repo_id"],
            filename="model.safetensors",
            revision=settings.get("revision"),
            local_files_only=True,
        )
    except LocalEntryNotFoundError as err:
        raise WeightsNotFoundError(
            f"ImageNet weights for encoder {encoder!r} are not in the local Hugging Face cache. "
            f"On a machine with internet run `huggingface-cli download {settings['repo_id']}` "
            "and copy the cache (~/.cache/huggingface) here, or pass weights_path=FILE, or set "
            "pretrained: false. Offline weights ship for tu-tf_efficientnet_lite0/1/2."
        ) from err
    return load_file(path, device="cpu")


def segment_at(model: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    """Lesion probability at the resolution of ``x`` (float images in [0, 1]), the
    segmenter run at ``size`` x ``size``: the one resize-sigmoid-resize of training-time
    masks, out-of-fold masks and the exported cascade."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    same = (h, w) == (size, size)
    if not same:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    prob = torch.sigmoid(model(x).float())
    if not same:
        prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
    return prob
