"""Run an exported cascade on image files: needs onnxruntime, numpy, Pillow, OpenCV only.

No training code, no torch, no Ray: this module imports only the image reading of
``melanoma.data.io`` (the same resize training used) besides onnxruntime.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from melanoma.data.io import IMAGE_EXTENSIONS, ImageDecodeError, image_size, load_image
from melanoma.postprocess import clean_masks

# The quantised model beside cascade.onnx (``melanoma export --int8``).
INT8_FILE = "cascade.int8.onnx"


def mask_names(paths: list[Path]) -> dict[Path, str]:
    """The mask file name of each input: ``<stem>_mask.png``; where several inputs share a
    stem (two folders holding the same file name), each takes its path relative to their
    common folder instead, ``/`` written ``__`` (``a/ISIC_1.jpg`` -> ``a__ISIC_1.jpg_mask.png``),
    so no mask overwrites another."""
    stems = Counter(p.stem for p in paths)
    clashing = [p.resolve() for p in paths if stems[p.stem] > 1]
    common = Path(os.path.commonpath([p.parent for p in clashing])) if clashing else None
    out = {}
    for p in paths:
        if stems[p.stem] == 1:
            out[p] = f"{p.stem}_mask.png"
        else:
            out[p] = "__".join(p.resolve().relative_to(common).parts) + "_mask.png"
    return out


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and not p.stem.endswith(("_segmentation", "_Segmentation", "_superpixels"))
            )
        else:
            out.append(path)
    return out


FIELDS = ["image", "probability", "melanoma", "threshold", "mask", "error"]


def predict(
    model_dir: Path,
    inputs: Iterable[str],
    out_csv: Path,
    *,
    masks_out: Path | None = None,
    batch_size: int = 16,
    int8: bool = False,
) -> list[dict]:
    """Probability, decision and mask per image (cleaned up where the model card says so);
    unreadable images are reported and skipped. ``int8`` runs the quantised model."""
    session, card = open_exported(Path(model_dir), int8=int8)
    size, threshold = card["input"]["shape"][-1], card["threshold"]
    # Cards written before the clean-up existed hand out the mask as thresholded.
    cleanup = card.get("mask_cleanup", {}).get("on", False)
    paths = list(dict.fromkeys(expand_inputs(inputs)))  # an image named twice: once
    if not paths:
        raise ValueError("no images to predict: give image files or folders that contain images")
    names = mask_names(paths)
    if masks_out:
        Path(masks_out).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if pending:
            batch = np.stack([img.transpose(2, 0, 1) for _, img in pending])
            probs, masks = session.run(None, {"images": batch})
            if cleanup:
                masks = clean_masks(masks)
            for (path, _), p, m in zip(pending, probs, masks, strict=True):
                where = Path(masks_out) / names[path] if masks_out else None
                rows.append(_row(path, threshold, probability=float(p), mask=m, mask_path=where))
            pending.clear()

    for path in paths:
        try:
            pending.append((path, load_image(path, size)))
        except (ImageDecodeError, OSError) as err:
            print(f"warning: skipped {path}: {err}", file=sys.stderr)
            rows.append(_row(path, threshold, error=str(err)))
        if len(pending) >= batch_size:
            flush()
    flush()
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _check_program(model: Path, card: dict) -> None:
    """Refuse a model file that is not the one the card describes (its threshold and
    calibration would be another cascade's)."""
    import hashlib

    recorded = (card.get("programs") or {}).get(model.name)
    if recorded is None:
        return  # exported before cards named their programs
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    if digest != recorded:
        raise ValueError(
            f"{model} (SHA-256 {digest[:12]}...) is not the model its model_card.json "
            f"describes ({recorded[:12]}...): the export was interrupted or the files were "
            "mixed; export the cascade again"
        )


def open_exported(model_dir: Path, *, int8: bool = False, threads: int | None = None):
    """(ONNX Runtime session, model card) of an exported cascade; ``int8``: of its
    quantised model, which ``melanoma export --int8`` writes when it is within tolerance.
    ``threads`` caps ONNX Runtime's threads (default: every core)."""
    import onnxruntime as ort

    card_path = model_dir / "model_card.json"
    if not card_path.is_file() or not (model_dir / "cascade.onnx").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not an exported cascade (no model_card.json / cascade.onnx); "
            "create one with `melanoma export`"
        )
    card = json.loads(card_path.read_text())
    model = model_dir / "cascade.onnx"
    if int8:
        model = model_dir / INT8_FILE
        if not model.is_file():
            q = card.get("int8")
            why = (
                f"its export refused it ({q['refused']})"
                if q and not q["kept"]
                else "it was exported without --int8"
            )
            raise FileNotFoundError(
                f"{model_dir} has no INT8 model ({INT8_FILE}): {why}; use the float model "
                "(leave out --int8) or export again with --int8"
            )
    _check_program(model, card)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session, card


def _row(path: Path, threshold: float, *, probability=None, mask=None, mask_path=None, error=""):
    """One CSV row: the prediction (and the mask written at the image's own size), or the
    error that kept the image out."""
    row = {
        "image": str(path),
        "probability": "" if probability is None else f"{probability:.6f}",
        "melanoma": "" if probability is None else int(probability >= threshold),
        "threshold": threshold,
        "mask": "",
        "error": error,
    }
    if mask_path is not None and mask is not None:
        import cv2
        from PIL import Image

        w, h = image_size(path)
        full = cv2.resize(mask[0] * 255, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        Image.fromarray(full.astype(np.uint8)).save(mask_path)
        row["mask"] = str(mask_path)
    return row
