"""Lesion crops cut from a larger copy of the image (``input.source_size``) and the two-view
classifier (``input.mode: dual``): the detail reaches the classifier in PyTorch and in the
exported graph, training, the cascade and the export share the one path, and bad settings
name the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melanoma.cascade.model import Cascade, ClassifierSpec, SegmenterSpec
from melanoma.config import ConfigError
from melanoma.data.transforms import apply_input_mode
from melanoma.engine import TrainConfig
from melanoma.models import create_classifier
from tests.conftest import train_tiny_pair

SOURCE, SIZE = 128, 32
LESION = slice(48, 80)  # a 32 x 32 lesion in the 128 px source: a 1:1 crop at SIZE


def _striped_lesion(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose lesion (red) carries 2-pixel stripes in green: visible at the
    source size, averaged to flat grey once the image is shrunk 4x to SIZE."""
    image = torch.zeros(n, 3, SOURCE, SOURCE, dtype=torch.uint8)
    image[:, 1] = 128
    image[:, 0, LESION, LESION] = 255
    stripes = (torch.arange(SOURCE) // 2 % 2 * 255).to(torch.uint8)
    image[:, 1, LESION, LESION] = stripes[LESION].expand(32, 32)
    mask = torch.zeros(n, 1, SOURCE, SOURCE, dtype=torch.uint8)
    mask[:, :, LESION, LESION] = 1
    return image, mask


def _stripe_energy(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute horizontal step of the green channel, per image."""
    return (x[:, 1, :, 1:] - x[:, 1, :, :-1]).abs().mean(dim=(1, 2))


class _RedSegmenter(torch.nn.Module):
    """Lesion where the red channel is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - 0.5) * 40.0


class _StripeClassifier(torch.nn.Module):
    """Melanoma logit grows with the stripe energy of its (first) view: the probability
    tells whether the stripes reached the classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = _stripe_energy(x[:, :3])
        return torch.stack([torch.zeros_like(energy), (energy - 0.1) * 30.0], dim=1)


def test_a_crop_from_the_source_size_keeps_detail_the_downsized_image_lost():
    image, mask = _striped_lesion()
    from_source = apply_input_mode(image, mask, "crop", 0.0, SIZE)
    small = torch.nn.functional.interpolate(image.float(), size=SIZE, mode="area").to(torch.uint8)
    small_mask = torch.nn.functional.interpolate(mask.float(), size=SIZE, mode="nearest")
    from_small = apply_input_mode(small, small_mask, "crop", 0.0, SIZE)
    assert from_source.shape == from_small.shape == (2, 3, SIZE, SIZE)
    assert (_stripe_energy(from_source) > 0.3).all()  # the stripes, pixel for pixel
    assert (_stripe_energy(from_small) < 0.05).all()  # grey: they were gone before the crop
    # dual: the whole image (downsized: no stripes) beside the same source-size crop.
    dual = apply_input_mode(image, mask, "dual", 0.0, SIZE)
    assert dual.shape == (2, 6, SIZE, SIZE)
    assert torch.allclose(dual[:, 3:], from_source)
    assert torch.allclose(dual[:, :3], apply_input_mode(image, None, "full", size=SIZE))


def test_image_and_mask_of_two_resolutions_are_refused():
    image, mask = _striped_lesion()
    with pytest.raises(ValueError, match=r"must have one resolution"):
        apply_input_mode(image, mask[..., :64, :64], "crop", 0.1, SIZE)


@pytest.mark.parametrize("source_size", [SOURCE, None])
def test_the_exported_cascade_cuts_the_crop_from_its_full_size_input(tmp_path, source_size):
    import onnxruntime as ort

    from melanoma.export import write_programs

    image, _ = _striped_lesion(3)
    cascade = Cascade(
        [_RedSegmenter()],
        [_StripeClassifier()],
        input_size=SOURCE,
        seg_specs=[SegmenterSpec(SIZE)],  # the segmenter sees the image downsized
        cls_specs=[ClassifierSpec(SIZE, "crop", 0.0, source_size=source_size)],
    ).eval()
    with torch.no_grad():
        prob, mask = cascade(image)
    assert mask[:, :, LESION, LESION].float().mean() > 0.9
    if source_size:  # the stripes reached the classifier
        assert (prob > 0.9).all()
    else:  # cut from the image at the classifier's size: they did not
        assert (prob < 0.1).all()
    write_programs(cascade, image, tmp_path)
    session = ort.InferenceSession(
        str(tmp_path / "cascade.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx_prob, onnx_mask = session.run(None, {"images": image.numpy()})
    assert np.abs(onnx_prob - prob.numpy()).max() < 1e-4
    assert (onnx_mask == mask.numpy()).mean() > 0.999


DUAL_FAMILIES = [("resnet18", 64), ("googlenet", 64), ("efficientnet_lite0", 64)]


@pytest.mark.parametrize(("name", "size"), DUAL_FAMILIES)
def test_a_dual_classifier_joins_both_views_and_trains(name, size):
    torch.manual_seed(0)
    model = create_classifier(name, dual=True)
    assert not model.has_aux  # its auxiliary heads would see one view
    x = torch.rand(4, 6, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 2)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    # Both views reach the loss (a random network's outputs barely move with its input,
    # its gradients do): the whole image and the crop each have one.
    assert x.grad[:, :3].abs().sum() > 0 and x.grad[:, 3:].abs().sum() > 0
    with pytest.raises(ValueError, match="takes 6 channels"):
        model(torch.rand(1, 3, size, size))


def test_a_dual_classifier_refuses_a_mask_channel():
    with pytest.raises(ValueError, match="in_channels=4"):
        create_classifier("resnet18", dual=True, in_channels=4)


def test_a_dual_cascade_from_the_source_size_exports_and_matches_onnx_runtime(tmp_path):
    from melanoma.export import check_programs, write_programs
    from melanoma.models import create_segmenter

    torch.manual_seed(0)
    cascade = Cascade(
        [create_segmenter("fpn", "resnet18")],
        [create_classifier("resnet18", dual=True)],
        input_size=128,
        seg_specs=[SegmenterSpec(64)],
        cls_specs=[ClassifierSpec(64, "dual", 0.2, source_size=128)],
    ).eval()
    images = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    write_programs(cascade, images, tmp_path)
    checks = check_programs(cascade, images, tmp_path)
    assert checks["onnxruntime"]["max_probability_difference"] < 1e-4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "seg", "model": {"arch": "fpn"}, "input": {"source_size": 64}}, "a segmenter"),
        ({"input": {"mode": "crop", "source_size": 16}}, r"between data.image_size \(32\)"),
        ({"input": {"mode": "dual", "source_size": 4096}}, "and 2048, got 4096"),
    ],
)
def test_bad_source_sizes_name_the_fix(settings, message):
    base = {"task": "cls", "data": {"image_size": 32}, "model": {"arch": "resnet18"}}
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**base, **settings})


def test_modes_that_cut_no_crop_load_images_at_the_image_size():
    # One experiment can search crop and full with one source size: full ignores it.
    for mode, load in (("full", 32), ("mask_channel", 32), ("masked", 32), ("crop", 64)):
        config = TrainConfig.from_dict(
            {
                "task": "cls",
                "data": {"image_size": 32},
                "model": {"arch": "resnet18"},
                "input": {"mode": mode, "source_size": 64},
            }
        )
        assert config.load_size == load, mode


def test_dual_mode_lifts_inceptions_auxiliary_head_size_limit():
    def config(mode: str) -> TrainConfig:
        return TrainConfig.from_dict(
            {
                "task": "cls",
                "data": {"image_size": 96},
                "model": {"arch": "inception_v3"},
                "input": {"mode": mode},
            }
        )

    # inception's auxiliary head needs 299 px; dual builds none, so 75 px and up are fine.
    with pytest.raises(ConfigError, match="needs data.image_size >= 299"):
        config("crop")
    assert config("dual").data.image_size == 96


@pytest.mark.slow
def test_source_crops_train_and_the_built_cascade_cuts_them_as_training_did(tmp_path):
    from melanoma.cascade.build import build_cascade
    from melanoma.cascade.store import load_cascade
    from melanoma.data.synth import SynthConfig, write_synthetic
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.tasks import rebuild_model

    data = tmp_path / "data"
    write_synthetic(data, SynthConfig(n=48, size=64, seed=3, prevalence=0.4))
    train_tiny_pair(tmp_path, data, 32, {"mode": "dual", "source_size": 64, "crop_margin": 0.1})
    build_cascade(
        str(tmp_path / "seg"),
        str(tmp_path / "cls"),
        tmp_path / "built",
        tta="off",
        calibration="off",
    )
    cascade, meta = load_cascade(tmp_path / "built")
    assert meta.input_size == 64  # the source size: the crop is cut from it
    assert cascade.cls_specs[0].source_size == 64

    states = {t: load_checkpoint(tmp_path / t) for t in ("seg", "cls")}
    models = {
        t: rebuild_model(TrainConfig.from_dict(s["config"]), s["model"]) for t, s in states.items()
    }
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        small = torch.nn.functional.interpolate(
            images.float() / 255, size=32, mode="bilinear", antialias=True, align_corners=False
        )
        prob = torch.sigmoid(models["seg"](small))
        prob = torch.nn.functional.interpolate(prob, size=64, mode="bilinear", align_corners=False)
        mask = (prob > 0.5).to(torch.uint8)
        x = apply_input_mode(images, mask, "dual", 0.1, 32)  # whole at 32, crop from 64
        expected = torch.softmax(models["cls"](x), dim=1)[:, 1]
        got, cascade_mask = cascade(images)
    assert torch.equal(cascade_mask, mask)
    assert torch.allclose(got, expected, atol=1e-5)

    # Exported, the cascade takes images at the source size, and `predict` feeds it them.
    from PIL import Image

    from melanoma.data.io import load_image
    from melanoma.export import export_cascade
    from melanoma.predict import predict

    card = export_cascade(tmp_path / "built", tmp_path / "export", check_images=4)
    assert card["input"]["shape"][-1] == 64
    files = []
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (96, 80, 3), dtype=np.uint8)
        files.append(tmp_path / f"large{i}.png")
        Image.fromarray(pixels).save(files[-1])
    rows = predict(tmp_path / "export", [str(f) for f in files], tmp_path / "out.csv")
    loaded = torch.stack([torch.from_numpy(load_image(f, 64).transpose(2, 0, 1)) for f in files])
    with torch.no_grad():
        eager, _ = cascade(loaded)
    got = np.array([float(r["probability"]) for r in rows])
    assert np.abs(got - eager.numpy()).max() < 1e-4
