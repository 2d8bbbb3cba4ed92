"""Shared fixtures: tiny data sets the tests build themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.data.synth import SynthConfig, write_synthetic

# The real ISIC 2017 copy the `real_data` tests read: $MELANOMA_ISIC2017, else the
# project's shared data folder beside the checkout. Those tests skip when it is absent.
SHARED_ISIC2017 = Path(
    os.environ.get("MELANOMA_ISIC2017")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"
)


def write_image(path: Path, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """A small random RGB image (JPEG or PNG by suffix); the seed makes contents distinct."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (40, 32), values=(0, 255)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    mask = np.full((h, w), values[0], dtype=np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = values[1]
    Image.fromarray(mask).save(path)
    return path


def write_official_isic2017(root: Path, n: int, val: int, test: int, seed: int = 0) -> Path:
    """Synthetic data in the official ISIC 2017 layout with Training, Validation and Test_v2
    folders: the last ``val + test`` of ``n`` generated images move to the other splits."""
    import csv
    import shutil

    write_synthetic(root, SynthConfig(n=n, size=64, seed=seed, prevalence=0.35))
    with open(root / "ISIC-2017_Training_Part3_GroundTruth.csv") as fh:
        rows = list(csv.reader(fh))
    header, rows = rows[0], rows[1:]
    parts = {
        "Training": rows[: n - val - test],
        "Validation": rows[n - val - test : n - test],
        "Test_v2": rows[n - test :],
    }
    for tag, part in parts.items():
        images, masks = root / f"ISIC-2017_{tag}_Data", root / f"ISIC-2017_{tag}_Part1_GroundTruth"
        images.mkdir(exist_ok=True)
        masks.mkdir(exist_ok=True)
        if tag != "Training":
            for image_id, *_ in part:
                shutil.move(root / "ISIC-2017_Training_Data" / f"{image_id}.jpg", images)
                shutil.move(
                    root / "ISIC-2017_Training_Part1_GroundTruth" / f"{image_id}_segmentation.png",
                    masks,
                )
        with open(root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([header, *part])
    return root


def add_isic2017_image(root: Path, tag: str, image_id: str, like: Path, label: str) -> None:
    """Copy the image ``like`` (and its mask) into split ``tag`` as ``image_id``."""
    import shutil

    shutil.copy(like, root / f"ISIC-2017_{tag}_Data" / f"{image_id}.jpg")
    mask = like.parent.parent / like.parent.name.replace("_Data", "_Part1_GroundTruth")
    shutil.copy(
        mask / f"{like.stem}_segmentation.png",
        root / f"ISIC-2017_{tag}_Part1_GroundTruth" / f"{image_id}_segmentation.png",
    )
    with open(root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv", "a") as fh:
        fh.write(f"{image_id},{label},0.0\n")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """24 synthetic 64-pixel images in the ISIC 2017 layout (read-only for tests)."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root, SynthConfig(n=24, size=64, seed=3, prevalence=0.3))
    return root


@pytest.fixture
def synth_copy(tmp_path) -> Path:
    """A fresh, writable synthetic data set that a test may damage."""
    write_synthetic(tmp_path, SynthConfig(n=12, size=48, seed=5, prevalence=0.3))
    return tmp_path


@pytest.fixture
def real_isic2017() -> Path:
    if not (SHARED_ISIC2017 / "ISIC-2017_Training_Data").is_dir():
        pytest.skip(f"real ISIC 2017 data not found at {SHARED_ISIC2017}")
    return SHARED_ISIC2017


def train_tiny_pair(root: Path, data: Path, image_size: int, cls_input: dict) -> None:
    """One epoch of an FPN/resnet18 segmenter (``root/seg``) and a resnet18 classifier
    (``root/cls``, input settings ``cls_input``) on ``data``: members for a cascade test."""
    from melanoma.engine import Runtime, TrainConfig
    from melanoma.engine.loop import fit

    data_settings = {"path": str(data), "image_size": image_size, "batch_size": 8}
    data_settings.update(val_fraction=0.25, test_fraction=0.25)
    common = {"epochs": 1, "log_images": 0, "data": {**data_settings, "num_workers": 0}}
    members = {
        "seg": {"task": "seg", "model": {"arch": "fpn", "encoder": "resnet18"}},
        "cls": {"task": "cls", "model": {"arch": "resnet18"}, "input": cls_input},
    }
    for name, settings in members.items():
        fit(TrainConfig.from_dict({**common, **settings, "out": str(root / name)}), Runtime())
