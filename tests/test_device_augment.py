"""Augmentation on the device (``data.augment_on: device``) draws what the loader's draws:
the same geometry as cv2, the same colour steps as albumentations, the same statistics."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from albumentations.augmentations.pixel import functional as fp

from melanoma.data import device_augment as da
from melanoma.data.device_augment import DeviceAugmentation, warp
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.data.transforms import build_augmentation
from melanoma.engine import Runtime, TrainConfig, fit


def scene(size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Textured skin with a dark elongated lesion off centre (so flips, turns, shifts and
    scales each move a statistic), and its mask."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3)) + (200, 150, 130)
    img += 20 * np.sin(xx / 3.0)[..., None] * np.array([1, 0.5, 0.2])
    img += np.stack([xx, yy, xx + yy], -1) * 0.5
    lesion = ((xx - 0.58 * size) / (0.25 * size)) ** 2 + ((yy - 0.42 * size) / (0.1 * size)) ** 2
    img[lesion <= 1] = (90, 50, 40)
    return np.clip(img, 0, 255).astype(np.uint8), (lesion <= 1).astype(np.uint8)


def as_batch(img: np.ndarray, mask: np.ndarray, n: int = 1):
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    return x, torch.from_numpy(mask)[None, None].repeat(n, 1, 1, 1)


def statistics(img: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    img, m = img.astype(np.float64), mask.astype(bool)
    ys, xs = np.nonzero(m)
    cov = np.cov(np.stack([xs, ys]))
    angle = 0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])
    hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV)
    return {
        "area": m.mean(),
        "x": xs.mean(),
        "y": ys.mean(),
        # Flips and turns about the centre keep it; the shifts spread it.
        "radius": np.hypot(xs.mean() - (m.shape[1] - 1) / 2, ys.mean() - (m.shape[0] - 1) / 2),
        "cos2": np.cos(2 * angle),
        "sin2": np.sin(2 * angle),
        "red": img[..., 0].mean(),
        "green": img[..., 1].mean(),
        "blue": img[..., 2].mean(),
        "contrast": (img @ [0.299, 0.587, 0.114]).std(),
        "chroma": (img.max(-1) - img.min(-1)).mean(),
        "skin_hue": np.median(hsv[..., 0][~m]),
        "lesion_darker": img[m].mean() < img[~m].mean(),
    }


def test_warp_resamples_as_cv2_warp_affine():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((40, 40, 3)) * 255).astype(np.uint8), (7, 7), 2)
    _, mask = scene()
    a = np.deg2rad(17)
    around = np.array([[1, 0, 19.5], [0, 1, 19.5], [0, 0, 1]])
    move = np.array(
        [[1.1 * np.cos(a), 0.9 * np.sin(a), 3], [-1.1 * np.sin(a), 0.9 * np.cos(a), -2], [0, 0, 1]]
    )
    forward = around @ move @ np.linalg.inv(around)
    flags = {"borderMode": cv2.BORDER_REFLECT_101}
    ref = cv2.warpAffine(img, forward[:2], (40, 40), flags=cv2.INTER_LINEAR, **flags)
    ref_mask = cv2.warpAffine(mask, forward[:2], (40, 40), flags=cv2.INTER_NEAREST, **flags)
    x, m = warp(*as_batch(img, mask), torch.from_numpy(forward)[None])
    assert np.abs(x[0].permute(1, 2, 0).numpy() - ref).max() <= 1
    assert (m[0, 0].numpy() != ref_mask).mean() < 0.005
    assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize(
    "step, ours, factor",
    [
        ("brightness", da._brightness, 1.1),
        ("brightness", da._brightness, 0.9),
        ("contrast", da._contrast, 1.1),
        ("contrast", da._contrast, 0.9),
        ("saturation", da._saturation, 1.1),
        ("saturation", da._saturation, 0.9),
    ],
)
def test_colour_steps_equal_albumentations(step, ours, factor):
    img, _ = scene()
    ref = getattr(fp, f"adjust_{step}_torchvision")(img, factor).astype(float)
    x = as_batch(img, img[..., 0])[0].float()
    got = ours(x, torch.tensor([factor])).round().clamp(0, 255)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() <= 1
    assert abs((got - ref).mean()) < 0.05  # no bias: albumentations truncates, so do we


@pytest.mark.parametrize("shift", [0.03, -0.03])
def test_hue_step_is_albumentations_within_cv2_rounding(shift):
    img, _ = scene()
    ref = fp.adjust_hue_torchvision(img, shift).astype(float)
    x = as_batch(img, img[..., 0])[0].float()
    got = da._hue(x, torch.tensor([shift])).round()[0].permute(1, 2, 0).numpy()
    # cv2's uint8 HSV round trip rounds differently from ours by up to a few levels.
    assert np.abs(got - ref).max() <= 4
    assert np.abs(got - ref).mean() < 0.5
    unshifted = da._hue(x, torch.tensor([0.0])).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(got - unshifted).mean() > 2  # the shift did something


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_statistics_equal_the_loaders(strength):
    """2,000 draws of each path from one image: every statistic's mean within a tenth of
    its spread, every spread within 10%. Fixed seeds: the same verdict on every run."""
    img, mask = scene()
    n = 2000
    loader = build_augmentation(strength)
    theirs = []
    for i in range(n):
        loader.set_random_seed(i)
        out = loader(image=img, mask=mask)
        theirs.append(statistics(out["image"], out["mask"]))
    x, m = DeviceAugmentation(strength)(*as_batch(img, mask, n), torch.Generator().manual_seed(0))
    ours = [statistics(a.permute(1, 2, 0).numpy(), b[0].numpy()) for a, b in zip(x, m, strict=True)]
    for key in theirs[0]:
        a = np.array([s[key] for s in theirs], dtype=float)
        b = np.array([s[key] for s in ours], dtype=float)
        spread = np.sqrt((a.var() + b.var()) / 2)
        assert abs(a.mean() - b.mean()) <= 0.1 * spread, (key, a.mean(), b.mean(), spread)
        if key != "lesion_darker":  # always true on both sides (spread 0)
            assert 0.9 <= b.std() / a.std() <= 1.1, (key, a.std(), b.std())
    assert all(s["lesion_darker"] for s in ours)  # image and mask moved together


def test_seeded_and_every_image_its_own_draw():
    img, mask = scene()
    aug = DeviceAugmentation(0.5)
    first = aug(*as_batch(img, mask, 8), torch.Generator().manual_seed(3))
    again = aug(*as_batch(img, mask, 8), torch.Generator().manual_seed(3))
    other = aug(*as_batch(img, mask, 8), torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert len({tuple(im.flatten()[:200].tolist()) for im in first[0]}) == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_device_draws_what_the_cpu_draws():
    img, mask = scene()
    aug = DeviceAugmentation(0.5)
    cpu = aug(*as_batch(img, mask, 16), torch.Generator().manual_seed(5))
    gpu = aug(*(t.cuda() for t in as_batch(img, mask, 16)), torch.Generator().manual_seed(5))
    assert (cpu[0].int() - gpu[0].cpu().int()).abs().max() <= 1
    assert (cpu[1] != gpu[1].cpu()).float().mean() < 0.005


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="zero means no augmentation"):
        DeviceAugmentation(0.0)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        DeviceAugmentation(1.5)
    img, mask = scene()
    x, m = as_batch(img, mask, 2)
    with pytest.raises(ValueError, match=r"need images \(N, 3, H, W\) and masks"):
        DeviceAugmentation(0.5)(x, m[:1], torch.Generator())
    with pytest.raises(ValueError, match=r"need images \(N, 3, H, W\)"):
        DeviceAugmentation(0.5)(x[:, :1], m, torch.Generator())
    with pytest.raises(ValueError, match=r"needs square images .* got 32x\d+; set data"):
        DeviceAugmentation(0.5)(x[..., :32, :], m[..., :32, :], torch.Generator())


def test_training_augments_on_the_device_only_when_asked(tmp_path: Path, monkeypatch):
    root = tmp_path / "data"
    write_synthetic(root, SynthConfig(n=40, size=32, seed=1, prevalence=0.4))
    calls: list[int] = []
    real = DeviceAugmentation.__call__

    def counting(self, image, mask, generator):
        calls.append(image.shape[0])
        return real(self, image, mask, generator)

    monkeypatch.setattr(DeviceAugmentation, "__call__", counting)

    def run(on: str, name: str) -> list[int]:
        config = _config(root, tmp_path / name, "cls", augment_on=on).with_overrides({"epochs": 1})
        batches: list[int] = []
        fit(config, Runtime(progress=False, on_batch=lambda e, b: batches.append(len(b["id"]))))
        return batches

    run("loader", "loader")
    assert calls == []
    trained = run("device", "device")
    assert len(trained) >= 2
    assert calls == trained  # every training batch once, no validation batch


def test_augment_on_is_checked():
    with pytest.raises(Exception, match="augment_on"):
        TrainConfig.from_dict({"data": {"augment_on": "gpu"}})


def _config(root: Path, out: Path, task: str, **data) -> TrainConfig:
    model = {"arch": "fpn", "encoder": "resnet18"} if task == "seg" else {"arch": "resnet18"}
    return TrainConfig.from_dict(
        {
            "task": task,
            "epochs": 2,
            "out": str(out),
            "log_images": 0,
            "data": {
                "path": str(root),
                "image_size": 32,
                "batch_size": 8,
                "num_workers": 0,
                "val_fraction": 0.3,
                "augment_on": "device",
                **data,
            },
            "model": model,
        }
    )


@pytest.mark.parametrize("task", ["cls", "seg"])
def test_the_model_and_the_loss_see_the_augmented_batch(tmp_path: Path, monkeypatch, task):
    """What the augmentation returns is what trains: images into the model and, for the
    segmenter, masks into the loss (not the loader's originals)."""
    import melanoma.engine.training as training

    root = tmp_path / "data"
    write_synthetic(root, SynthConfig(n=24, size=32, seed=2, prevalence=0.5))
    returned: list[torch.Tensor] = []

    def marked(self, image, mask, generator):
        # Images of one value per sample, masks all lesion: neither comes from the loader.
        image = torch.full_like(image, 7).add_(torch.arange(len(image)).view(-1, 1, 1, 1))
        returned.append(image)
        return image, torch.ones_like(mask)

    monkeypatch.setattr(DeviceAugmentation, "__call__", marked)
    seen, targets = [], []
    real_build = training.build_model

    def build_model(config, pretrained):
        model = real_build(config, pretrained=pretrained)
        model.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].detach().clone()) if m.training else None
        )
        return model

    monkeypatch.setattr(training, "build_model", build_model)
    kind = training.SegmentationTask if task == "seg" else training.ClassificationTask
    task_loss = kind.loss

    def loss(self, criterion, outputs, batch, device):
        if torch.is_grad_enabled():  # training steps; validation scores under no_grad
            targets.append(batch["mask"].clone())
        return task_loss(self, criterion, outputs, batch, device)

    monkeypatch.setattr(kind, "loss", loss)
    fit(_config(root, tmp_path / task, task, augment=0.5), Runtime(progress=False))
    assert len(seen) == len(returned) >= 2
    for inputs, image in zip(seen, returned, strict=True):
        # The model's inputs are the marked images, normalised: constant within a sample,
        # different between samples.
        per_sample = inputs.float().flatten(2).std(dim=2)
        assert float(per_sample.max()) < 1e-4 and len(image) == len(inputs)
        assert len({round(float(v), 4) for v in inputs[:, 0, 0, 0]}) == len(inputs)
    if task == "seg":
        assert len(targets) == len(returned) and all(bool((t == 1).all()) for t in targets)


def test_a_resumed_segmenter_draws_what_an_uninterrupted_one_drew(tmp_path: Path, monkeypatch):
    """With augmentation on the device, a segmenter stopped after its first epoch and
    resumed ends with the weights of the run that was never stopped (what a resume must
    give; it does not tell the per-step seeding from the global RNG the checkpoint
    restores)."""
    from dataclasses import replace

    from melanoma.engine import load_checkpoint

    calls: list[int] = []
    real = DeviceAugmentation.__call__

    def counting(self, image, mask, generator):
        calls.append(len(image))
        return real(self, image, mask, generator)

    monkeypatch.setattr(DeviceAugmentation, "__call__", counting)
    root = tmp_path / "data"
    write_synthetic(root, SynthConfig(n=24, size=32, seed=3, prevalence=0.5))
    config = _config(root, tmp_path / "full", "seg", augment=0.5)
    fit(config, Runtime(progress=False))
    uninterrupted = len(calls)

    class Interrupt(Exception):
        pass

    def stop_after_first(metrics, _where):
        if metrics["epoch"] == 1:
            raise Interrupt

    cut = replace(config, out=str(tmp_path / "cut"))
    with pytest.raises(Interrupt):
        fit(cut, Runtime(progress=False, report=stop_after_first))
    fit(cut, Runtime(progress=False), resume=True)
    # Every training batch augmented, in both; the resumed epoch once, not again.
    assert uninterrupted > 0 and len(calls) == 2 * uninterrupted
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
