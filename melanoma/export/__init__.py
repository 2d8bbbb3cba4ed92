"""Export a built cascade as one self-contained artifact, checked against eager PyTorch.

EXPORT_DIR/
  cascade.onnx       the whole cascade: uint8 (N, 3, S, S) -> probability (N,), mask (N, 1, S, S)
                     (the mask as thresholded: the card says whether to clean it up after)
  cascade.pt2        the same as a torch.export program (torch.export.load)
  model_card.json    architectures, hyperparameters, threshold, input spec, test metrics with
                     intervals, data and split hashes, library versions, tolerances
  checksums.sha256   SHA-256 of every file above
"""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from melanoma.cascade.build import CASCADE_FILE, load_cascade
from melanoma.data.io import file_sha256
from melanoma.errors import MelanomaError
from melanoma.postprocess import CLEANUP_RULE

PROB_TOLERANCE = 1e-4  # max |p_onnx - p_eager| over the check images
MASK_TOLERANCE = 1e-3  # max fraction of mask pixels allowed to flip (ties at the threshold)


INPUT_MODE_RULES = {
    "full": "the classifier sees the whole image",
    "masked": "pixels outside the predicted lesion mask are set to black; where the mask is "
    "empty the classifier sees the whole image",
    "crop": "the predicted lesion's bounding box, dilated by the crop margin, resized; where "
    "the mask is empty the classifier sees the whole image",
}


class ExportMismatchError(MelanomaError):
    """The exported model's outputs differ from eager PyTorch beyond the stated tolerance."""


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in (
        "melanoma-search",
        "torch",
        "torchvision",
        "segmentation-models-pytorch",
        "timm",
        "onnx",
        "onnxruntime",
        "numpy",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _sample_images(meta: dict, n: int, data: str | None) -> tuple[torch.Tensor, str]:
    """Images for the parity check and what they are: the cascade's test images when its
    data are reachable (``data`` replaces the recorded path), else seeded random images,
    said loudly."""
    from melanoma.cascade.build import open_cascade_data

    path = data or meta["data"]["path"]
    try:
        bundle = open_cascade_data(meta["data"], meta["input_size"], path=data, on_bad="skip")
        dataset = bundle.dataset("test")
        if len(dataset):
            k = min(n, len(dataset))
            images = torch.stack([dataset[i]["image"] for i in range(k)])
            return images, f"{k} test images of {path}"
        reason = "its test split is empty"
    except (FileNotFoundError, ValueError) as err:
        reason = str(err)
    print(
        f"warning: the cascade's data ({path}) cannot be read ({reason}); the export is "
        "checked on random images only, which says little about real ones. Pass --data DIR "
        "to check it on the test images; the model card records which were used.",
        file=sys.stderr,
        flush=True,
    )
    g = torch.Generator().manual_seed(0)
    s = meta["input_size"]
    images = torch.randint(0, 256, (n, 3, s, s), generator=g, dtype=torch.uint8)
    return images, f"{n} seeded random images (the data were unreachable: {reason})"


def compare(
    eager: tuple[torch.Tensor, torch.Tensor], other: tuple[np.ndarray, np.ndarray], what: str
) -> dict:
    prob_diff = float(np.abs(eager[0].numpy() - other[0]).max())
    flipped = float((eager[1].numpy() != other[1]).mean())
    if prob_diff > PROB_TOLERANCE or flipped > MASK_TOLERANCE:
        raise ExportMismatchError(
            f"{what} differs from eager PyTorch: max probability difference {prob_diff:.2e} "
            f"(tolerance {PROB_TOLERANCE:.0e}), mask pixels flipped {flipped:.2e} "
            f"(tolerance {MASK_TOLERANCE:.0e})"
        )
    return {"max_probability_difference": prob_diff, "mask_pixels_flipped": flipped}


def _card_member(member: dict) -> dict:
    """One ensemble member as the model card lists it."""
    cfg = member["config"]
    out = {"origin": member["origin"], "weight": member["weight"], "arch": cfg["model"]["arch"]}
    if cfg["task"] == "seg":
        out["encoder"] = cfg["model"]["encoder"]
    else:
        mode = cfg["input"]["mode"]
        out.update(input_mode=mode, input_mode_rule=INPUT_MODE_RULES[mode])
        if mode == "crop":
            out["crop_margin"] = cfg["input"]["crop_margin"]
    out["image_size"] = cfg["data"]["image_size"]
    out["hyperparameters"] = {k: cfg[k] for k in ("optimizer", "scheduler", "loss", "epochs")}
    return out


def write_programs(cascade: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """``out/cascade.pt2`` (torch.export) and ``out/cascade.onnx``, batch size dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(cascade, (example,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(program, Path(out) / "cascade.pt2")
    # From the exported program: the ONNX exporter would otherwise run torch.export again.
    onnx_program = torch.onnx.export(
        program,
        (example,),
        input_names=["images"],
        output_names=["probability", "mask"],
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(Path(out) / "cascade.onnx"))


def export_cascade(
    directory: Path, out: Path, *, check_images: int = 8, data: str | None = None
) -> dict:
    """Write ONNX + torch.export programs, verify both against eager outputs on test images
    (``data`` replaces the recorded data path), write the card with the test report that
    ``cascade evaluate`` wrote for this very cascade."""
    directory, out = Path(directory), Path(out)
    cascade, meta = load_cascade(directory)
    cascade.eval()
    report = _own_report(directory)
    out.mkdir(parents=True, exist_ok=True)
    images, source = _sample_images(meta, check_images, data)
    write_programs(cascade, images, out)
    checks = check_programs(cascade, images, out) | {"images_used": source}
    card = model_card(meta, report, checks)
    (out / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    files = ["cascade.onnx", "cascade.pt2", "model_card.json"]
    (out / "checksums.sha256").write_text("".join(f"{file_sha256(out / f)}  {f}\n" for f in files))
    return card


def _own_report(directory: Path) -> dict:
    """The directory's report.json when it scored this cascade.pt ({} when there is none);
    a report of an earlier cascade built into the same folder is refused."""
    path = directory / "report.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    if report.get("cascade_sha256") != file_sha256(directory / CASCADE_FILE):
        raise ValueError(
            f"{path} does not belong to {directory / CASCADE_FILE}: the cascade was rebuilt "
            "after it was evaluated, and the card would carry another cascade's test metrics; "
            f"run `melanoma cascade evaluate {directory}` again, then export"
        )
    return report


def check_programs(cascade, images: torch.Tensor, out: Path) -> dict:
    """Both exported programs against eager PyTorch on ``images``; raises beyond tolerance."""
    import onnxruntime as ort

    with torch.no_grad():
        eager = cascade(images)
        from_program = torch.export.load(out / "cascade.pt2").module()(images)
    checks = {
        "torch_export": compare(
            eager, (from_program[0].numpy(), from_program[1].numpy()), "torch.export program"
        )
    }
    session = ort.InferenceSession(str(out / "cascade.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": images.numpy()})
    checks["onnxruntime"] = compare(eager, (onnx_out[0], onnx_out[1]), "ONNX model (onnxruntime)")
    checks["images"] = int(len(images))
    return checks


CARD_TEST_KEYS = (
    "test_images",
    "dropped_test_images",
    "classification",
    "segmentation",
    "classifier_with_ground_truth_masks",
)


def model_card(meta: dict, report: dict, checks: dict) -> dict:
    """What the exported cascade is, expects, decides and scored, and how it was checked."""
    size = meta["input_size"]
    return {
        "name": "melanoma-search cascade",
        "intended_use": "research on dermoscopy images; not a medical device",
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": ["N", 3, size, size],
            "layout": "RGB, channels first",
            "preprocessing": (
                "decode, then squash (no crop) to the square size with area filtering when "
                "shrinking and cubic when enlarging: melanoma.data.io.load_image; "
                "normalisation happens inside the model"
            ),
        },
        "outputs": {
            "probability": "melanoma probability (N,)",
            "mask": "binary lesion mask (N, 1, S, S), uint8, as thresholded; see mask_cleanup",
        },
        # Connected components have no ONNX operator: `melanoma predict` applies the
        # clean-up to the graph's mask (melanoma.postprocess), as evaluation did.
        "mask_cleanup": {
            "on": bool(meta["mask_cleanup"]),
            "rule": CLEANUP_RULE if meta["mask_cleanup"] else "none: the mask as thresholded",
        },
        "threshold": meta["threshold"],
        "threshold_rule": meta["threshold_rule"],
        "segmenters": [_card_member(m) for m in meta["segmenters"]],
        "classifiers": [_card_member(m) for m in meta["classifiers"]],
        "ensemble": "mask probability and melanoma probability are the weighted means of the "
        "members' (weight: times chosen by the greedy selection on the selection set)",
        "test_time_augmentation": {
            f"{stage}s": "on: averaged over the 8 flips and 90-degree rotations" if on else "off"
            for stage, on in meta["tta"].items()
        },
        "selection": meta.get("selection") or {"set": "validation"},
        "validation_auc": meta["val_auc"],
        "test_metrics": {k: report[k] for k in CARD_TEST_KEYS if k in report}
        or "not evaluated: run `melanoma cascade evaluate` before export",
        "data": meta["data"],
        "splits_sha256": meta["splits_sha256"],
        "export_check": {
            **checks,
            "probability_tolerance": PROB_TOLERANCE,
            "mask_tolerance": MASK_TOLERANCE,
        },
        "versions": _versions(),
    }
