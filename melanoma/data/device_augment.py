"""The training augmentation of ``transforms.build_augmentation``, for a batch on the device.

A loader that cannot feed a GPU spends its time in per-image augmentation (albumentations
on the loader's CPUs). ``data.augment_on: device`` hands the loader's images over as they
are and augments each batch here, after it reaches the model's device: the same
transforms, the same probabilities and parameter ranges, drawn per image:

- horizontal and vertical flips (p 0.5 each) and a rotation by k * 90 degrees (k uniform);
- with p 0.7 an affine map about the centre: x and y scales each uniform in
  1 +- 0.25 * strength, a rotation uniform in +-45 * strength degrees, a shift of
  +-10% * strength of the side in each direction (whole pixels, as albumentations cuts
  it), reflect-101 borders; bilinear for the image, nearest for the mask;
- with p 0.8 brightness, contrast and saturation factors each uniform in 1 +- 0.25 *
  strength and a hue shift uniform in +-0.04 * strength turns, in an order drawn per
  image, each step clipped and rounded to 0-255 as on uint8 images.

Every geometric step is folded into one map per image, so the image is resampled once,
as the loader's affine step resamples it (its flips and quarter turns move whole pixels;
so do these at their exact positions). ``tests/test_device_augment.py`` checks that the
outputs' statistics equal the loader path's on a fixed batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AFFINE_P, COLOUR_P = 0.7, 0.8


@dataclass(frozen=True)
class DeviceAugmentation:
    """``build_augmentation(strength)`` on (N, 3, H, W) images and (N, 1, H, W) masks."""

    strength: float

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(
                f"device augmentation strength must be in (0, 1], got {self.strength}; "
                "zero means no augmentation: do not build one"
            )

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented uint8 image and mask; parameters drawn from ``generator`` (a CPU
        generator, so a seed gives the same batch on any device)."""
        expected_mask = (image.shape[0], 1, *image.shape[2:])
        if image.ndim != 4 or image.shape[1] != 3 or tuple(mask.shape) != expected_mask:
            raise ValueError(
                f"need images (N, 3, H, W) and masks (N, 1, H, W), got {tuple(image.shape)} "
                f"and {tuple(mask.shape)}"
            )
        n, _, h, w = image.shape
        if h != w:
            raise ValueError(
                f"device augmentation needs square images (a quarter turn of {h}x{w} would "
                f"not fit its frame), got {h}x{w}; set data.augment_on: loader"
            )
        x, m = warp(image, mask, self._forward_maps(n, h, w, generator))
        x = self._colour(x, generator)
        return x.round().clamp(0, 255).to(torch.uint8), m

    def _forward_maps(self, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        """(N, 3, 3) float64: source pixel (x, y, 1) to where it lands."""
        s = self.strength

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)

        hflip = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
        vflip = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
        quarter = torch.randint(0, 4, (n,), generator=g)
        affine = torch.rand(n, generator=g, dtype=torch.float64) < AFFINE_P
        sx, sy = uniform(1 - 0.25 * s, 1 + 0.25 * s), uniform(1 - 0.25 * s, 1 + 0.25 * s)
        angle = torch.deg2rad(uniform(-45 * s, 45 * s))
        # albumentations truncates the shift to whole pixels (int(fraction * side)).
        tx = torch.trunc(uniform(-0.1 * s, 0.1 * s) * w)
        ty = torch.trunc(uniform(-0.1 * s, 0.1 * s) * h)

        eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        flip = eye.clone()
        flip[:, 0, 0] = torch.where(hflip, -1.0, 1.0)
        flip[:, 1, 1] = torch.where(vflip, -1.0, 1.0)
        turn = _rotation(quarter.double() * (math.pi / 2))
        aff = _rotation(angle) @ _diag(sx, sy)
        aff[:, :2, 2] = torch.stack([tx, ty], dim=1)
        aff = torch.where(affine[:, None, None], aff, eye)
        # Forward map about the centre: flips, then the quarter turn, then the affine map.
        return _shift(cx, cy, n) @ aff @ turn @ flip @ _shift(-cx, -cy, n)

    def _colour(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, s = x.shape[0], self.strength
        # Drawn and indexed on the CPU: which images take which step is known there, so
        # the loop asks the device nothing (a .nonzero() on it would wait for the batch).
        applied = torch.rand(n, generator=g) < COLOUR_P
        factors = [1 + 0.25 * s * (2 * torch.rand(n, generator=g) - 1) for _ in range(3)] + [
            0.04 * s * (2 * torch.rand(n, generator=g) - 1)
        ]
        order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
        steps = (_brightness, _contrast, _saturation, _hue)
        x = x.clone()
        for position in range(4):
            for op, (step, factor) in enumerate(zip(steps, factors, strict=True)):
                chosen = (applied & (order[:, position] == op)).nonzero()[:, 0]
                if len(chosen):
                    on = chosen.to(x.device, non_blocking=True)
                    f = factor[chosen].to(x.device, non_blocking=True)
                    x[on] = step(x[on], f).round().clamp(0, 255)
        return x


def warp(
    image: torch.Tensor, mask: torch.Tensor, forward: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resampled as ``cv2.warpAffine(image, forward[:2], INTER_LINEAR,
    BORDER_REFLECT_101)`` would (float, rounded to 0-255), masks as with INTER_NEAREST
    (uint8 0/1); ``forward`` (N, 3, 3) maps source pixels to output pixels."""
    h, w = image.shape[-2:]
    inverse = torch.linalg.inv(forward.double()).float().to(image.device)
    grid = _source_grid(inverse, h, w)
    x = F.grid_sample(image.float(), grid, mode="bilinear", align_corners=True)
    m = F.grid_sample(mask.float(), grid, mode="nearest", align_corners=True)
    return x.round().clamp(0, 255), (m > 0.5).to(torch.uint8)


def _diag(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    out = torch.eye(3, dtype=torch.float64).expand(len(sx), 3, 3).clone()
    out[:, 0, 0], out[:, 1, 1] = sx, sy
    return out


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    """albumentations' rotation matrix [[cos, sin], [-sin, cos]] (image y points down)."""
    out = torch.eye(3, dtype=torch.float64).expand(len(angle), 3, 3).clone()
    c, s = torch.cos(angle), torch.sin(angle)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, s, -s, c
    return out


def _shift(dx: float, dy: float, n: int) -> torch.Tensor:
    out = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
    out[:, 0, 2], out[:, 1, 2] = dx, dy
    return out


def _source_grid(inverse: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """grid_sample's (N, H, W, 2) grid for ``inverse`` maps, with reflect-101 borders
    (cv2.BORDER_REFLECT_101: the edge pixel is not repeated) folded into the coordinates."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=inverse.device),
        torch.arange(w, dtype=torch.float32, device=inverse.device),
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)
    source = (inverse @ points.T).transpose(1, 2)[..., :2]  # (N, H*W, 2)
    x = _reflect101(source[..., 0], w)
    y = _reflect101(source[..., 1], h)
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    return grid.reshape(-1, h, w, 2)


def _reflect101(x: torch.Tensor, size: int) -> torch.Tensor:
    if size == 1:
        return torch.zeros_like(x)
    period = 2 * (size - 1)
    x = torch.remainder(x, period)
    return torch.where(x > size - 1, period - x, x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """cv2's RGB-to-grey weights, rounded as on uint8, (N, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).round()


# albumentations' uint8 lookup tables truncate (brightness, contrast, the hue shift) where
# cv2 rounds (saturation, the HSV conversion); copied, so the two paths train alike.


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.floor((x * f[:, None, None, None]).clamp(0, 255))


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    f = f[:, None, None, None]
    return torch.floor((x * f + mean * (1 - f)).clamp(0, 255))


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f[:, None, None, None]
    return x * f + _grey(x) * (1 - f)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The hue turned by ``shift`` of a full turn (HSV), value and saturation kept."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    value, _ = x.max(dim=1)
    low, _ = x.min(dim=1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    # As cv2's uint8 HSV holds it: hue in 180 steps of 2 degrees, saturation in 256 steps;
    # the shift through albumentations' truncating table.
    steps = torch.round(hue * 30) % 180
    steps = torch.floor((steps + 180 * shift[:, None, None]) % 180)
    hue = steps / 30
    saturation = torch.round(255 * chroma / torch.where(value > 0, value, torch.ones_like(value)))
    chroma = saturation / 255 * value
    # HSV to RGB: each channel from its offset on the hue circle.
    out = []
    for k in (5, 3, 1):
        t = (k + hue) % 6
        out.append(value - chroma * torch.clamp(torch.minimum(t, 4 - t), 0, 1))
    return torch.stack(out, dim=1)
