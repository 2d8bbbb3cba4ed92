"""The service's hostile-input checks, without a server: a pixel bomb refused from its
header before anything decodes, line-wrapped base64 read, no local path in the card."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import melanoma.service as service
from melanoma.service import BadRequest, Limits, decode_upload, parse_many, public_card


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims ``width`` x ``height``: kilobytes that would decode
    to gigabytes."""
    data = bytearray(_png(1, 1))
    ihdr = data[12:29]  # b"IHDR" and its 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_a_pixel_bomb_is_refused_from_its_header_before_decoding(monkeypatch):
    def decode(*args, **kwargs):
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(service, "decode_image", decode)
    bomb = _claiming(8000, 8000)  # 64 Mpx, under Pillow's own refusal, over ours
    assert len(bomb) < 200
    with pytest.raises(BadRequest) as err:
        decode_upload(bomb, 32, Limits())
    assert err.value.status == 413 and "8000 x 8000 = 64000000 pixels" in err.value.message
    assert "limit of 50000000" in err.value.message
    with pytest.raises(BadRequest) as err:  # beyond Pillow's own limit: still 413
        decode_upload(_claiming(30000, 30000), 32, Limits())
    assert err.value.status == 413 and "too many pixels" in err.value.message
    with pytest.raises(BadRequest) as err:
        decode_upload(_png(200, 100), 32, Limits(max_pixels=10_000))
    assert err.value.status == 413 and "200 x 100 = 20000 pixels" in err.value.message
    with pytest.raises(ValueError, match="max_pixels=0"):
        Limits(max_pixels=0)


def test_line_wrapped_base64_is_read_as_the_base64_tool_writes_it():
    png = _png(30, 20)
    wrapped = base64.encodebytes(png).decode()  # 76 characters a line, as `base64` writes
    assert "\n" in wrapped.strip()
    (upload,) = parse_many(json.dumps({"images": [wrapped]}).encode(), 32, Limits())
    assert (upload.width, upload.height) == (30, 20)
    with pytest.raises(BadRequest, match=r"images\[0\] is not valid base64"):
        parse_many(json.dumps({"images": ["not*base64"]}).encode(), 32, Limits())


def test_the_served_card_holds_no_local_path():
    card = {
        "data": {"path": "/home/ana/isic2017", "manifest": "C:\\data\\set\\manifest.csv"},
        "classifiers": [{"origin": "cls_search/trial_3", "run": "~/runs/cls"}],
        "note": "trained on /srv/data/isic2017/train today; see https://example.org/a/b",
        "threshold": 0.41,
        "ratio": "3/5 of the folds",
        "kept": ["GET /model-card", "km/h", "2026/12/07", "(n=5)/fold", "md \\* star"],
        "cut": ["path:/home/u/x", "file:///home/u/x", "~/runs/a/b"],
    }
    served = public_card(card)
    text = json.dumps(served)
    for local in ("/home", "ana", "C:", "\\\\data", "~/", "/srv"):
        assert local not in text, local
    assert served["data"]["path"] == "isic2017" and served["classifiers"][0]["run"] == "cls"
    assert served["data"]["manifest"] == "manifest.csv"
    assert served["note"] == "trained on train today; see https://example.org/a/b"
    assert served["classifiers"][0]["origin"] == "cls_search/trial_3"
    assert served["threshold"] == 0.41 and served["ratio"] == "3/5 of the folds"
    assert served["kept"] == card["kept"]
    assert served["cut"] == ["path:x", "file://x", "b"]
