"""Decoding and resizing of images and masks: the one definition every stage uses.

Images are squashed (not cropped) to ``size`` x ``size``: area filtering when shrinking,
cubic when enlarging. Masks use nearest-neighbour sampling and come back as 0/1 uint8.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile

# A truncated JPEG must fail loudly, never decode as a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# cv2 threads fight with DataLoader workers and Ray; parallelism comes from those instead.
cv2.setNumThreads(1)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")  # lower case


class ImageDecodeError(ValueError):
    """An image or mask file that cannot be used: unreadable, truncated or not binary."""


class MaskValueError(ImageDecodeError):
    """A mask file that decodes but is not a binary grey mask."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open_decoded(
    path: Path | io.BytesIO, mode: str, draft_size: int | None = None, name: str | None = None
) -> Image.Image:
    try:
        img = Image.open(path)
        if draft_size is not None and img.format == "JPEG":
            # Let libjpeg decode at a reduced scale (never below the target size): much
            # faster for multi-megapixel originals and exactly reproducible.
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return img.convert(mode)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"cannot decode {name or path}: {err}") from err


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour sampled at pixel centres (cv2's INTER_NEAREST_EXACT, torch's
    ``nearest-exact``), aligned with the resized image: cv2's INTER_NEAREST samples at
    pixel corners and shifts the mask by up to half a pixel against the image."""
    if mask.shape[:2] == (size, size):
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def load_image(path: Path, size: int | None = None) -> np.ndarray:
    """RGB uint8 array (H, W, 3), resized to ``size`` x ``size`` when given."""
    img = _open_decoded(Path(path), "RGB", draft_size=size)
    array = np.asarray(img, dtype=np.uint8)
    return resize_image(array, size) if size else array


def decode_image(data: bytes, size: int | None = None, name: str = "the image") -> np.ndarray:
    """``load_image`` for an encoded image in memory (an upload): the same decoding and
    resize, so a served image reaches the model exactly as a file would."""
    if not data:
        raise ImageDecodeError(f"cannot decode {name}: it is empty")
    img = _open_decoded(io.BytesIO(data), "RGB", draft_size=size, name=name)
    array = np.asarray(img, dtype=np.uint8)
    return resize_image(array, size) if size else array


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as img:
        return img.size


def binarize_mask(raw: np.ndarray, path: Path) -> np.ndarray:
    """0/1 uint8 mask from a 0/255 or 0/1 array; anything else is an ImageDecodeError."""
    values = np.unique(raw)
    if not set(values.tolist()) <= {0, 1, 255}:
        shown = values[:8].tolist()
        raise MaskValueError(
            f"mask {path} is not binary: values {shown}{'...' if len(values) > 8 else ''}; "
            "expected only 0 and 255 (or 0 and 1)"
        )
    return (raw > 0).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """The mask file as 0/1 uint8 (H, W) at its own size: the one mask decoder of
    ``data check`` and of training. A grey mask of 0/255 or 0/1, or a colour file whose
    channels are equal; anything else raises MaskValueError, an undecodable file
    ImageDecodeError."""
    path = Path(path)
    img = _open_decoded(path, "RGB") if _is_colour(path) else _open_decoded(path, "L")
    raw = np.asarray(img)
    if raw.ndim == 3:
        if not (
            np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])
        ):
            raise MaskValueError(
                f"mask {path} has colour channels that differ; expected a grey mask"
            )
        raw = raw[..., 0]
    return binarize_mask(raw, path)


def load_mask(path: Path, size: int | None = None) -> np.ndarray:
    """Binary mask as 0/1 uint8 (H, W), resized with nearest neighbour when ``size`` is given."""
    mask = read_mask(path)
    return resize_mask(mask, size) if size else mask


def _is_colour(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return img.mode in ("RGB", "RGBA", "CMYK", "YCbCr")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"cannot decode {path}: {err}") from err
