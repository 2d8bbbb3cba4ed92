"""Export a built cascade as one self-contained artifact, checked against eager PyTorch.

EXPORT_DIR/
  cascade.onnx       the whole cascade: uint8 (N, 3, S, S) -> probability (N,), mask (N, 1, S, S)
                     (the mask as thresholded: the card says whether to clean it up after)
  cascade.pt2        the same as a torch.export program (torch.export.load)
  model_card.json    intended and not-intended use, architectures, hyperparameters, threshold,
                     calibration, input spec, test metrics with intervals, operating points,
                     subgroups, data and split hashes, limitations, versions, tolerances
  MODEL_CARD.md      the same card for people
  cascade.int8.onnx  with --int8: the statically quantised copy, kept only within tolerance
                     of the float model on validation (melanoma.export.int8; the card says)
  checksums.sha256   SHA-256 of every file above
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from melanoma.cascade.record import CascadeRecord
from melanoma.cascade.store import CASCADE_FILE, load_cascade, recorded_splits
from melanoma.data.io import file_sha256
from melanoma.errors import MelanomaError
from melanoma.export.card import (
    MASK_TOLERANCE,
    PROB_TOLERANCE,
    model_card,
    render_markdown,
)
from melanoma.export.int8 import INT8_FILE, int8_model
from melanoma.files import write_json, write_text

PROGRAM_FILES = ("cascade.onnx", INT8_FILE)


class ExportMismatchError(MelanomaError):
    """The exported model's outputs differ from eager PyTorch beyond the stated tolerance."""


def _sample_images(record: CascadeRecord, n: int, data: str | None) -> tuple[torch.Tensor, str]:
    """Images for the parity check and what they are: the cascade's test images when its
    data are reachable (``data`` replaces the recorded path), else seeded random images,
    said loudly."""
    from melanoma.cascade.members import open_cascade_data

    path = data or record.data["path"]
    try:
        bundle = open_cascade_data(record.data, record.input_size, path=data, on_bad="skip")
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
    s = record.input_size
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
    directory: Path,
    out: Path,
    *,
    check_images: int = 8,
    data: str | None = None,
    int8: bool = False,
) -> dict:
    """Write ONNX + torch.export programs, verify both against eager outputs on test images
    (``data`` replaces the recorded data path), write the card with the test report that
    ``cascade evaluate`` wrote for this very cascade. ``int8`` adds the quantised ONNX
    model when it scores within tolerance on the validation images (the card records it
    either way)."""
    directory, out = Path(directory), Path(out)
    cascade, record = load_cascade(directory)
    cascade.eval()
    # Every refusal before anything is written: a refused export leaves the one in
    # ``out`` as it was.
    report = _own_report(directory)
    splits = json.loads(recorded_splits(directory, record, "export").read_text())
    validation = validation_set(record, data) if int8 else None
    if validation is not None and len(validation) < 2:
        raise ValueError(
            "an INT8 model is calibrated on some of the cascade's validation images and "
            f"checked on the others, and its validation split holds {len(validation)}; "
            "export without --int8"
        )
    out.mkdir(parents=True, exist_ok=True)
    images, source = _sample_images(record, check_images, data)
    write_programs(cascade, images, out)
    checks = check_programs(cascade, images, out) | {"images_used": source}
    card = model_card(record, report, checks, splits)
    stale = out / INT8_FILE
    stale.unlink(missing_ok=True)  # an earlier export's INT8 model is not this cascade's
    if int8:
        card["int8"] = int8_model(out, validation, record.threshold)
    # The card names the programs it describes: `predict` refuses a program that is not
    # the card's (an export killed between writing the two).
    card["programs"] = {
        name: file_sha256(out / name) for name in PROGRAM_FILES if (out / name).is_file()
    }
    write_json(out / "model_card.json", card)
    write_text(out / "MODEL_CARD.md", render_markdown(card))
    files = ["cascade.onnx", "cascade.pt2", "model_card.json", "MODEL_CARD.md"]
    if (out / INT8_FILE).is_file():
        files.append(INT8_FILE)
    write_text(out / "checksums.sha256", "".join(f"{file_sha256(out / f)}  {f}\n" for f in files))
    return card


def validation_set(record: CascadeRecord, data: str | None):
    """The cascade's validation images, which calibrate and check an INT8 model."""
    from melanoma.cascade.members import open_cascade_data

    try:
        bundle = open_cascade_data(record.data, record.input_size, path=data, on_bad="skip")
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(
            f"--int8 calibrates and checks the INT8 model on the cascade's validation images, "
            f"and its data ({data or record.data['path']}) cannot be read: {err}. Pass "
            "--data DIR where the data set is now, or export without --int8"
        ) from err
    # Without the validation copies of training images that the build dropped: the
    # members trained on them (check_member_splits).
    dropped = {d["id"] for d in record.dropped_val}
    val = [e for e in bundle.splits.entries["val"] if e.sample.id not in dropped]
    splits = replace(bundle.splits, entries={**bundle.splits.entries, "val": val})
    return bundle.with_splits(splits).dataset("val")


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
