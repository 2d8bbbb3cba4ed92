"""The lesion mask as a fourth input channel (``input.mode: mask_channel``): it starts as
the pretrained RGB network, follows the mask once trained, exports, and trains; and a
mask-using mode on data without masks names the fix."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from melanoma.config import ConfigError
from melanoma.data.transforms import apply_input_mode
from melanoma.engine import Runtime, TrainConfig
from melanoma.models import create_classifier

FAMILIES = [
    ("resnet18", 64),  # torchvision
    ("mobilenet_v3_large", 64),  # torchvision, conv inside a Sequential
    ("googlenet", 64),  # torchvision with transform_input
    ("inception_v3", 75),  # torchvision with transform_input, its smallest input
    ("efficientnet_lite0", 64),  # timm, same-padding convolution
]


def _first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(("name", "size"), FAMILIES)
def test_the_mask_channel_starts_as_the_rgb_network_and_then_follows_the_mask(name, size):
    extra = {"transform_input": True} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    rgb = create_classifier(name, aux=False, **extra).eval()
    torch.manual_seed(0)
    four = create_classifier(name, aux=False, in_channels=4, **extra).eval()
    image = torch.rand(2, 3, size, size)
    lesion = torch.zeros(2, 1, size, size)
    lesion[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1
    first = {}  # the first layer's output (hooks return None: a value would replace it)
    hooks = [
        _first_conv(model.net).register_forward_hook(
            lambda m, a, out, key=key: first.__setitem__(key, out)
        )
        for key, model in (("rgb", rgb), ("four", four))
    ]
    with torch.no_grad():
        expected = rgb(image)
        got = four(torch.cat([image, lesion], dim=1))
    for hook in hooks:
        hook.remove()
    # Zero filters on the new channel (and, for inception and googlenet, their input
    # transform folded into the normalisation): the first layer computes what the RGB
    # network's does, so the whole network does too (random-init inception amplifies
    # float rounding, hence the relative tolerance).
    assert torch.allclose(first["four"], first["rgb"], atol=1e-5), name
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4), name
    conv = _first_conv(four.net)
    assert conv.in_channels == 4 and torch.count_nonzero(conv.weight[:, 3]) == 0
    # Once the channel's filters are learnt, the first layer's output follows the mask (a
    # randomly initialised network's final output barely depends on its input at all).
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append(out) and None)
    with torch.no_grad():
        conv.weight[:, 3] = torch.randn_like(conv.weight[:, 3])
        four(torch.cat([image, lesion], dim=1))
        four(torch.cat([image, torch.zeros_like(lesion)], dim=1))
    assert not torch.allclose(seen[0], seen[1]), name


def test_apply_input_mode_adds_the_mask_at_the_input_size():
    image = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    mask = torch.zeros(2, 1, 48, 48, dtype=torch.uint8)
    # Source rows and columns 13-16: output pixels 4 (source 12-14) and 5 (15-17) each
    # two-thirds lesion. Sampled at pixel centres (3i + 1), as the image is resized, both
    # are lesion; at pixel corners (3i, torch's "nearest") only pixel 5 is: a mask
    # shifted by a third of an output pixel against the image.
    mask[0, :, 13:17, 13:17] = 1  # the second image: no lesion found
    x = apply_input_mode(image, mask, "mask_channel", size=16)
    assert x.shape == (2, 4, 16, 16)
    assert torch.allclose(x[:, :3], apply_input_mode(image, None, "full", size=16))
    expected = torch.zeros(16, 16)
    expected[4:6, 4:6] = 1
    assert torch.equal(x[0, 3], expected)
    assert x[1, 3].sum() == 0
    with pytest.raises(ValueError, match="input mode 'mask_channel' needs a mask"):
        apply_input_mode(image, None, "mask_channel")


def test_a_mask_channel_cascade_exports_and_matches_in_onnx_runtime(tmp_path):
    from melanoma.cascade.model import Cascade, ClassifierSpec, SegmenterSpec
    from melanoma.export import check_programs, write_programs
    from melanoma.models import create_segmenter

    torch.manual_seed(0)
    classifier = create_classifier("resnet18", in_channels=4)
    with torch.no_grad():  # a trained-looking mask channel, so the check sees it used
        _first_conv(classifier.net).weight[:, 3] = 0.1
    cascade = Cascade(
        [create_segmenter("fpn", "resnet18")],
        [classifier],
        input_size=64,
        seg_specs=[SegmenterSpec(64)],
        cls_specs=[ClassifierSpec(64, "mask_channel")],
    ).eval()
    assert cascade.needs_mask
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    write_programs(cascade, images, tmp_path)
    checks = check_programs(cascade, images, tmp_path)
    assert checks["onnxruntime"]["max_probability_difference"] < 1e-4


def test_a_mask_channel_classifier_trains_and_rebuilds(tmp_path):
    from melanoma.data.synth import SynthConfig, write_synthetic
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.run import train
    from melanoma.engine.tasks import rebuild_model

    data = tmp_path / "data"
    write_synthetic(data, SynthConfig(n=24, size=32, seed=0, prevalence=0.4))
    config = TrainConfig.from_dict(
        {
            "task": "cls",
            "epochs": 1,
            "log_images": 2,
            "out": str(tmp_path / "run"),
            "data": {"path": str(data), "image_size": 32, "batch_size": 8, "num_workers": 0},
            "model": {"arch": "resnet18"},
            "input": {"mode": "mask_channel"},
        }
    )
    result = train(config, Runtime(progress=False))
    assert result.history and np.isfinite(result.history[0]["train_loss"])
    state = load_checkpoint(tmp_path / "run")
    model = rebuild_model(TrainConfig.from_dict(state["config"]), state["model"])
    assert _first_conv(model.net).in_channels == 4


def test_a_mask_mode_on_data_without_masks_names_the_fix(tmp_path):
    from PIL import Image

    from melanoma.engine.run import training_data

    for i in range(8):
        Image.new("RGB", (32, 32), (i * 20, 10, 10)).save(tmp_path / f"i{i}.jpg")
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "label"], *[[f"i{i}.jpg", i % 2] for i in range(8)]])
    for mode in ("crop", "masked", "mask_channel", "dual"):
        config = TrainConfig.from_dict(
            {
                "task": "cls",
                "out": str(tmp_path / "run"),
                "data": {"path": str(tmp_path), "image_size": 32, "val_fraction": 0.25},
                "input": {"mode": mode},
            }
        )
        with pytest.raises(ConfigError, match=f"input.mode {mode} needs lesion masks") as err:
            training_data(config, Runtime(progress=False))
        assert "set input.mask_source to a segmenter run" in str(err.value)
    full = config.with_overrides({"input.mode": "full"})
    bundle, masks = training_data(full, Runtime(progress=False))  # whole images need none
    assert masks is None and len(bundle.splits.entries["train"]) > 0


def test_a_dual_classifier_trains_and_logs_both_views(tmp_path):
    from melanoma.data.synth import SynthConfig, write_synthetic
    from melanoma.engine.run import train

    data = tmp_path / "data"
    write_synthetic(data, SynthConfig(n=24, size=64, seed=0, prevalence=0.4))
    config = TrainConfig.from_dict(
        {
            "task": "cls",
            "epochs": 1,
            "log_images": 2,  # the classifier inputs drawn to TensorBoard: image and crop
            "out": str(tmp_path / "run"),
            "data": {"path": str(data), "image_size": 32, "batch_size": 8, "num_workers": 0},
            "model": {"arch": "resnet18"},
            "input": {"mode": "dual", "source_size": 64},
        }
    )
    result = train(config, Runtime(progress=False))
    assert result.history and np.isfinite(result.history[0]["train_loss"])
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))
