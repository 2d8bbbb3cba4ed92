"""Every name a training config may use, as plain tables.

Validating a ``TrainConfig`` reads only these: no torch, torchvision, timm or
segmentation-models-pytorch import, so the Ray processes that build configs (a trial's
driver, Train's controller) stay light. The modules that build the models key their own
tables by the same names; ``tests/test_models.py`` checks the two agree, including the
encoder list against the installed segmentation-models-pytorch.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_MODES = ("full", "masked", "crop", "mask_channel", "dual")
# Input modes whose classifier takes a fourth channel, the lesion mask.
MASK_CHANNEL_MODES = ("mask_channel",)
# Input modes whose classifier sees two views, the whole image and the lesion crop, as six
# channels through one shared backbone.
DUAL_MODES = ("dual",)
# Input modes that cut a lesion crop, which can come from a larger copy of the image
# (``input.source_size``) than the classifier's input.
CROP_MODES = ("crop", "dual")

# Segmenter architecture (lower case, as smp.create_model spells it) -> smallest input.
SEGMENTER_MIN_SIZE = {
    "unet": 32,
    "unetplusplus": 32,
    "fpn": 32,
    "deeplabv3": 32,
    "deeplabv3plus": 32,
    "pspnet": 32,
    "linknet": 32,
    "manet": 32,
    "pan": 128,
    "upernet": 32,
    "segformer": 32,
    "dpt": 224,  # timm ViT encoders only, at their pretraining resolution
}


@dataclass(frozen=True)
class ClassifierSize:
    """A classifier's natural input size and the smallest it runs at."""

    input_size: int
    min_size: int = 32
    has_aux: bool = False
    min_size_aux: int = 32  # the auxiliary head of inception_v3 needs its full 299 input


CLASSIFIER_SIZES = {
    "resnet18": ClassifierSize(224),
    "resnet34": ClassifierSize(224),
    "resnet50": ClassifierSize(224),
    "googlenet": ClassifierSize(224, has_aux=True),
    "inception_v3": ClassifierSize(299, min_size=75, has_aux=True, min_size_aux=299),
    "efficientnet_b0": ClassifierSize(224),
    "efficientnet_b1": ClassifierSize(240),
    "efficientnet_b2": ClassifierSize(260),
    "efficientnet_b3": ClassifierSize(300),
    "mobilenet_v3_large": ClassifierSize(224),
    "convnext_tiny": ClassifierSize(224),
    "efficientnet_lite0": ClassifierSize(224),
    "efficientnet_lite1": ClassifierSize(240),
    "efficientnet_lite2": ClassifierSize(260),
}

LOSSES = {
    "seg": ("dice_bce", "bce", "dice", "focal", "lovasz"),
    "cls": ("ce", "focal"),
}

OPTIMIZERS = ("sgd", "adam", "adamw")

# segmentation-models-pytorch 0.6.0's own encoders; any timm model also works as
# "tu-<name>" (checked against timm where a search loads: melanoma.models.validate_encoder).
SMP_ENCODERS = (
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "dpn107",
    "dpn131",
    "dpn68",
    "dpn68b",
    "dpn92",
    "dpn98",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
    "efficientnet-b4",
    "efficientnet-b5",
    "efficientnet-b6",
    "efficientnet-b7",
    "inceptionresnetv2",
    "inceptionv4",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "mobilenet_v2",
    "mobileone_s0",
    "mobileone_s1",
    "mobileone_s2",
    "mobileone_s3",
    "mobileone_s4",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x16d",
    "resnext101_32x32d",
    "resnext101_32x48d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext50_32x4d",
    "se_resnet101",
    "se_resnet152",
    "se_resnet50",
    "se_resnext101_32x4d",
    "se_resnext50_32x4d",
    "senet154",
    "timm-efficientnet-b0",
    "timm-efficientnet-b1",
    "timm-efficientnet-b2",
    "timm-efficientnet-b3",
    "timm-efficientnet-b4",
    "timm-efficientnet-b5",
    "timm-efficientnet-b6",
    "timm-efficientnet-b7",
    "timm-efficientnet-b8",
    "timm-efficientnet-l2",
    "timm-skresnet18",
    "timm-skresnet34",
    "timm-skresnext50_32x4d",
    "timm-tf_efficientnet_lite0",
    "timm-tf_efficientnet_lite1",
    "timm-tf_efficientnet_lite2",
    "timm-tf_efficientnet_lite3",
    "timm-tf_efficientnet_lite4",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "xception",
)


def _unknown(kind: str, name: str, valid) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def check_segmenter(arch: str, encoder: str) -> int:
    """The smallest input of ``arch``; ValueError naming the valid names otherwise."""
    key = arch.lower()
    if key not in SEGMENTER_MIN_SIZE:
        raise _unknown("segmenter architecture", arch, SEGMENTER_MIN_SIZE)
    if encoder not in SMP_ENCODERS and not (encoder.startswith("tu-") and len(encoder) > 3):
        raise ValueError(
            f"unknown encoder {encoder!r}; valid encoders are SMP's: {', '.join(SMP_ENCODERS)}, "
            "or any timm model as 'tu-<name>' (for example tu-tf_efficientnet_lite0)"
        )
    return SEGMENTER_MIN_SIZE[key]


def check_classifier(name: str) -> ClassifierSize:
    if name not in CLASSIFIER_SIZES:
        raise ValueError(
            f"unknown classifier {name!r}; valid classifiers: {', '.join(CLASSIFIER_SIZES)}"
        )
    return CLASSIFIER_SIZES[name]


def check_loss(task: str, name: str) -> None:
    if name not in LOSSES[task]:
        raise ValueError(f"unknown {task} loss {name!r}; valid: {list(LOSSES[task])}")
