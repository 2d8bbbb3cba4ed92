"""Synthetic dermoscopy-like images with lesion masks, written in the ISIC 2017 layout.

The class signal is real but not trivial: melanoma-like lesions are on average larger,
more asymmetric, more irregular at the border and have more colours, and the two class
distributions overlap. Each image depends only on (seed, index), so the same seed with a
larger ``n`` gives a superset of the same images.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from melanoma.config import cache_root

_SKIN = np.array([[236, 200, 178], [222, 178, 150], [200, 150, 118], [172, 122, 92]], float)
_BROWNS = np.array([[150, 100, 70], [128, 84, 58], [170, 120, 85]], float)
_MELANOMA_COLOURS = np.array(
    [[45, 32, 30], [92, 100, 122], [165, 72, 62], [110, 66, 44], [200, 170, 150]], float
)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a synthetic data set."""

    n: int = 200
    size: int = 256
    seed: int = 0
    prevalence: float = 0.2

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if not 32 <= self.size <= 4096:
            raise ValueError(f"size must be between 32 and 4096 pixels, got {self.size}")
        if not 0.0 < self.prevalence < 1.0:
            raise ValueError(f"prevalence must be strictly between 0 and 1, got {self.prevalence}")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    grid = rng.normal(0.0, 1.0, (cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def generate_sample(
    rng: np.random.Generator, size: int, melanoma: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, 0/255 uint8 mask) pair: skin, a lesion outline, its colours,
    the dermoscope's vignette and hairs (the random draws in this order, so a seed keeps
    its data set)."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    image = _skin(rng, s)
    mask, (cx, cy, radius) = _lesion_outline(rng, s, melanoma, xx, yy)
    lesion = _lesion_colours(rng, s, melanoma, xx, yy, cx, cy, radius)
    edge = max(1.0, s * (0.012 if melanoma else 0.006))
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), edge)[..., None]
    image = image * (1 - 0.92 * alpha) + lesion * 0.92 * alpha
    image = _vignette(rng, image, s, xx, yy)
    image = np.clip(image, 0, 255).astype(np.uint8)
    _hairs(rng, image, s)
    return image, mask.astype(np.uint8) * 255


def _skin(rng: np.random.Generator, s: int) -> np.ndarray:
    skin = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3)
    # Mostly brightness texture: independent per-channel noise looks like rainbow skin.
    return (
        skin
        + 10.0 * _smooth_noise(rng, s, 6, 1)
        + 3.0 * _smooth_noise(rng, s, 4, 3)
        + rng.normal(0, 3, (s, s, 3))
    )


def _lesion_outline(rng: np.random.Generator, s: int, melanoma: bool, xx, yy):
    """The lesion mask, and its centre and radius.

    A radius that varies with angle. Melanoma-like lesions get larger radii, more and
    stronger harmonics (irregular border) and more elongation/offset (asymmetry); the
    ranges overlap so the task is learnable but not trivial."""
    if melanoma:
        radius = rng.uniform(0.17, 0.33) * s
        harmonics = int(rng.integers(5, 13))
        roughness = rng.uniform(0.05, 0.12)
        elongation = rng.uniform(0.1, 0.5)
        skew = rng.uniform(0.05, 0.2)
    else:
        radius = rng.uniform(0.11, 0.26) * s
        harmonics = int(rng.integers(2, 6))
        roughness = rng.uniform(0.01, 0.06)
        elongation = rng.uniform(0.0, 0.25)
        skew = rng.uniform(0.0, 0.08)
    cx, cy = s / 2 + rng.normal(0, 0.06 * s, 2)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    u = u / (1.0 + elongation)
    theta = np.arctan2(v, u)
    rho = np.hypot(u, v)
    r_theta = np.ones_like(theta) + skew * np.cos(theta + rng.uniform(0, 2 * np.pi))
    for k in range(2, harmonics + 1):
        r_theta += roughness / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rho < radius * r_theta, (cx, cy, radius)


def _lesion_colours(rng, s: int, melanoma: bool, xx, yy, cx, cy, radius) -> np.ndarray:
    """Benign lesions mostly one brown; melanomas several colours in blobs."""
    lesion = np.broadcast_to(
        _BROWNS[rng.integers(len(_BROWNS))] + rng.normal(0, 10, 3), (s, s, 3)
    ).copy()
    n_colours = int(rng.integers(2, 5)) if melanoma else int(rng.random() < 0.2) + 1
    for _ in range(n_colours - 1):
        colour = _MELANOMA_COLOURS[rng.integers(len(_MELANOMA_COLOURS))]
        bx, by = cx + rng.normal(0, radius * 0.4), cy + rng.normal(0, radius * 0.4)
        spread = radius * rng.uniform(0.2, 0.5)
        weight = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * spread**2))[..., None]
        lesion = lesion * (1 - weight) + colour * weight
    return lesion + 12.0 * _smooth_noise(rng, s, 16, 1) + rng.normal(0, 4, (s, s, 1))


def _vignette(rng: np.random.Generator, image: np.ndarray, s: int, xx, yy) -> np.ndarray:
    """Darker corners, sometimes the dark rim of the dermoscope's field of view."""
    r_norm = np.hypot(xx - s / 2, yy - s / 2) / (s / np.sqrt(2))
    image = image * (1.0 - rng.uniform(0.1, 0.45) * r_norm**2)[..., None]
    if rng.random() < 0.25:
        rim = (r_norm > rng.uniform(0.62, 0.72)).astype(np.float32)
        rim = cv2.GaussianBlur(rim, (0, 0), s * 0.01)[..., None]
        image = image * (1 - rim) + 12.0 * rim
    return image


def _hairs(rng: np.random.Generator, image: np.ndarray, s: int) -> None:
    """A few dark curved hairs drawn over the uint8 image, in place."""
    for _ in range(int(rng.poisson(2.0))):
        pts = rng.uniform(-0.1 * s, 1.1 * s, (3, 2))
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t**2 * pts[2]
        shade = int(rng.integers(25, 75))
        cv2.polylines(
            image,
            [curve.astype(np.int32)],
            False,
            (shade, shade - 5, shade - 10),
            thickness=int(rng.integers(1, 3)),
            lineType=cv2.LINE_AA,
        )


def _synthetic_metadata(rng: np.random.Generator) -> tuple[str, str]:
    """Age (5-year steps, as ISIC writes it) and sex, one in ten of each unknown, from a
    stream of its own so that adding metadata changed no image."""
    age = "unknown" if rng.random() < 0.1 else str(int(rng.integers(2, 18)) * 5)
    sex = "unknown" if rng.random() < 0.1 else ("female" if rng.random() < 0.5 else "male")
    return age, sex


def write_synthetic(out: Path, config: SynthConfig) -> dict:
    """Write ``config.n`` images, masks, labels and metadata (age, sex) under ``out`` in the
    ISIC 2017 layout."""
    out = Path(out)
    images_dir = out / "ISIC-2017_Training_Data"
    masks_dir = out / "ISIC-2017_Training_Part1_GroundTruth"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    rows, metadata = [], []
    for i in range(config.n):
        rng = np.random.default_rng([config.seed, i])
        melanoma = bool(rng.random() < config.prevalence)
        keratosis = (not melanoma) and rng.random() < 0.2
        image, mask = generate_sample(rng, config.size, melanoma)
        image_id = f"ISIC_{i:07d}"
        Image.fromarray(image).save(images_dir / f"{image_id}.jpg", quality=92)
        Image.fromarray(mask).save(masks_dir / f"{image_id}_segmentation.png")
        rows.append((image_id, f"{float(melanoma):.1f}", f"{float(keratosis):.1f}"))
        metadata.append(
            (image_id, *_synthetic_metadata(np.random.default_rng([config.seed, i, 1])))
        )
    with open(out / "ISIC-2017_Training_Part3_GroundTruth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image_id", "melanoma", "seborrheic_keratosis"))
        writer.writerows(rows)
    with open(out / "ISIC-2017_Training_Data_metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image_id", "age_approximate", "sex"))
        writer.writerows(metadata)
    summary = {**asdict(config), "melanoma": sum(r[1] == "1.0" for r in rows), "layout": "isic2017"}
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


SYNTHETIC_PREFIX = "synthetic:"


def parse_synthetic(spec: str) -> SynthConfig:
    """``synthetic:N[:SIZE[:SEED]]`` as a data path: a generated data set, made once."""
    parts = spec[len(SYNTHETIC_PREFIX) :].split(":")
    try:
        values = [int(p) for p in parts if p != ""]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3:
        raise ValueError(
            f"bad synthetic data path {spec!r}; expected synthetic:N[:SIZE[:SEED]], "
            "e.g. synthetic:200:128:0"
        )
    n, size, seed = (values + [256, 0][len(values) - 1 :])[:3]
    return SynthConfig(n=n, size=size, seed=seed)


def materialize_synthetic(spec: str) -> Path:
    """Generate the data set ``spec`` names under the cache dir, once per machine.

    Concurrent trials may ask at the same moment: one writes (under a file lock, into a
    temporary directory renamed when complete) while the others wait, so nobody reads a
    half-written data set and nobody writes it twice.
    """
    import os
    import shutil
    import tempfile

    from filelock import FileLock

    config = parse_synthetic(spec)
    root = cache_root()
    target = root / f"synthetic-n{config.n}-s{config.size}-seed{config.seed}"
    if (target / "synthetic.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{target.name}.lock"):
        if (target / "synthetic.json").is_file():  # made while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-synth-"))
        try:
            write_synthetic(tmp, config)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
