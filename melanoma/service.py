"""What the served cascade does with a request, without the server: read and check the
upload, run the exported model over a batch, shape the answer.

Like ``melanoma.predict`` it needs only ONNX Runtime, NumPy, Pillow and OpenCV (no torch,
no Ray): ``serving.app`` wraps it in a Ray Serve deployment, and the tests call it
directly too. Every way a request can be wrong is a :class:`BadRequest` with the HTTP
status and a message that says what was received and what is expected.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melanoma.data.io import ImageDecodeError, decode_image
from melanoma.errors import MelanomaError
from melanoma.postprocess import clean_masks
from melanoma.predict import open_exported

IMAGE_TYPES = ("image/", "application/octet-stream")


class BadRequest(MelanomaError):
    """A request the service refuses, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_image_bytes: int = 20 * 2**20
    max_images: int = 32
    # Read from the header before decoding: a 1 MB flat PNG can claim 13000 x 13000 pixels
    # (0.5 GB decoded). 50 Mpx holds the largest ISIC 2020 images (6000 x 4000) twice.
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.max_image_bytes < 1 or self.max_images < 1 or self.max_pixels < 1:
            raise ValueError(
                f"limits must be positive, got max_image_bytes={self.max_image_bytes}, "
                f"max_images={self.max_images}, max_pixels={self.max_pixels}"
            )

    @property
    def max_batch_body(self) -> int:
        """The largest JSON body of a many-image request (base64 grows bytes by 4/3)."""
        # Line-wrapped base64 adds an escaped newline every 76 characters (+2.6%).
        return self.max_images * (self.max_image_bytes * 4 // 3 * 103 // 100 + 1024)


@dataclass(frozen=True)
class Upload:
    """One decoded image: what the model takes, and the size to give its mask back at."""

    image: np.ndarray  # uint8 (S, S, 3)
    width: int
    height: int


class CascadeModel:
    """An exported cascade (float or INT8) loaded for serving."""

    def __init__(self, model_dir: Path, *, int8: bool = False, threads: int | None = None):
        self.session, self.card = open_exported(Path(model_dir), int8=int8, threads=threads)
        self.kind = "int8" if int8 else "float"
        self.size = int(self.card["input"]["shape"][-1])
        self.threshold = float(self.card["threshold"])
        self.cleanup = self.card.get("mask_cleanup", {}).get("on", False)

    def run(self, uploads: list[Upload]) -> list[tuple[float, np.ndarray]]:
        """(probability, mask (1, S, S)) per upload, as one batch through the model."""
        batch = np.stack([u.image.transpose(2, 0, 1) for u in uploads])
        probs, masks = self.session.run(None, {"images": batch})
        if self.cleanup:
            masks = clean_masks(masks)
        return [(float(p), m) for p, m in zip(probs, masks, strict=True)]

    def answer(self, upload: Upload, prob: float, mask: np.ndarray, with_mask: bool) -> dict:
        """The JSON answer for one image: probability, decision at the card's threshold,
        and optionally the lesion mask as a PNG at the image's own size."""
        out = {
            "probability": prob,
            "melanoma": prob >= self.threshold,
            "threshold": self.threshold,
            "model": self.kind,
        }
        if with_mask:
            out["mask_png"] = mask_png(mask, upload.width, upload.height)
        return out


def mask_png(mask: np.ndarray, width: int, height: int) -> str:
    """A (1, S, S) 0/1 mask as a base64 PNG at width x height (0 or 255)."""
    import cv2
    from PIL import Image

    full = cv2.resize(
        mask[0].astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_NEAREST_EXACT
    )
    buffer = io.BytesIO()
    Image.fromarray(full).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_upload(data: bytes, size: int, limits: Limits, name: str = "the image") -> Upload:
    """One uploaded image, checked against the limits and decoded as training decodes."""
    if not data:
        raise BadRequest(400, f"{name} is empty: send the image file's bytes as the body")
    if len(data) > limits.max_image_bytes:
        raise BadRequest(
            413,
            f"{name} is {len(data)} bytes, over this service's limit of "
            f"{limits.max_image_bytes} bytes; send a smaller image",
        )
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as probe:  # the header only, nothing decoded
            width, height = probe.size
    except Image.DecompressionBombError as err:
        raise BadRequest(
            413, f"{name} claims too many pixels ({err}); send a smaller image"
        ) from err
    except (OSError, ValueError) as err:
        raise BadRequest(
            400, f"{name} is not a readable image ({err}); send a JPEG, PNG, BMP or TIFF file"
        ) from err
    if width * height > limits.max_pixels:
        raise BadRequest(
            413,
            f"{name} is {width} x {height} = {width * height} pixels, over this service's "
            f"limit of {limits.max_pixels}; send a smaller image",
        )
    try:
        image = decode_image(data, size, name=name)
    except (ImageDecodeError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise BadRequest(
            400, f"{name} is not a readable image ({err}); send a JPEG, PNG, BMP or TIFF file"
        ) from err
    return Upload(image, width, height)


def check_content_type(content_type: str | None, expected: tuple[str, ...]) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if not any(kind.startswith(e) for e in expected):
        raise BadRequest(
            415,
            f"content type {content_type or '(none)'!r} is not accepted here; send "
            + " or ".join(repr(e + ("*" if e.endswith("/") else "")) for e in expected),
        )


def parse_many(body: bytes, size: int, limits: Limits) -> list[Upload]:
    """The images of a many-image request: JSON ``{"images": [base64, ...]}``."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(
            400, f'the body is not JSON ({err}); send {{"images": ["<base64 image>", ...]}}'
        ) from err
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list) or not images:
        raise BadRequest(
            400,
            'expected {"images": ["<base64 image>", ...]} with at least one image, got '
            f"{type(images).__name__ if images is not None else 'no images key'}",
        )
    if len(images) > limits.max_images:
        raise BadRequest(
            413,
            f"{len(images)} images in one request, over this service's limit of "
            f"{limits.max_images}; split them over several requests",
        )
    uploads = []
    for i, item in enumerate(images):
        if not isinstance(item, str):
            raise BadRequest(400, f"images[{i}] is a {type(item).__name__}, not a base64 string")
        try:
            # Line-wrapped base64 (what the `base64` tool writes) is base64 too.
            data = base64.b64decode("".join(item.split()), validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadRequest(400, f"images[{i}] is not valid base64 ({err})") from err
        uploads.append(decode_upload(data, size, limits, name=f"images[{i}]"))
    return uploads


def public_card(card):
    """The model card as ``/model-card`` serves it: every local path cut to its file name
    (absolute data and run paths say where the model was trained to anyone who asks)."""
    if isinstance(card, dict):
        return {k: public_card(v) for k, v in card.items()}
    if isinstance(card, list):
        return [public_card(v) for v in card]
    if isinstance(card, str):
        return _LOCAL_PATH.sub(lambda m: m.group("name") or m.group("wname"), card)
    return card


# An absolute POSIX or home path of at least one folder (``/data/isic``, ``~/runs/a``,
# ``file:///x/y``), or a Windows one (``C:\\data\\set.csv``); alone or inside a sentence.
# Not a URL's path, a fraction, ``km/h`` or a route (``/model-card``: no folder).
_LOCAL_PATH = re.compile(
    r"(?:(?<![\w./])|(?<=file://))~?/(?:[^\s/'\"]+/)+(?P<name>[^\s/'\"]+)"
    r"|(?<![\w])[A-Za-z]:\\(?:[^\s\\'\"]+\\)*(?P<wname>[^\s\\'\"]+)"
)
