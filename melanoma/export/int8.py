"""An INT8 copy of the exported cascade: ONNX Runtime static quantisation, calibrated on
validation images, kept only when it scores within a stated tolerance of the float model.

The convolutions and matrix products (where the time goes) get int8 weights, per output
channel, and uint8 activations whose ranges are measured on the calibration images. An
activation (ReLU, or ReLU6 as Clip) right after a convolution is folded into it: the
convolution's quantised output takes the activated range (0-6 for ReLU6, not its raw
range), so no integer output is turned back into float for the activation, and the 256
levels cover only values that survive it. That was both faster and closer to the float
model than quantising the convolutions alone (at 224 px on 2 cores, 2.2x instead of
1.5-1.65x the float throughput, and 1.9% instead of 6.1% of mask pixels changed;
docs/results.md; measured while the heads were quantised too). The classifier heads
(Gemm), the resizes, the lesion crop, the softmax, the ensemble mean and the calibration
stay in float, so the logits and the probability keep their full resolution (a quantised
Gemm output would give the logits 256 levels and tie images at the threshold).

The check is made on validation images outside the calibration sample, on what the INT8
model is used for: AUC and Jaccard, and the decisions at the cascade's threshold
(``predict --int8`` and ``serve --int8`` flag melanoma there): the share of images whose
decision flips and the largest probability change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from melanoma.predict import INT8_FILE

__all__ = [
    "INT8_FILE",
    "calibration_indices",
    "model_scores",
    "decision_changes",
    "int8_card_lines",
    "int8_model",
    "quantize",
    "run_model",
]
AUC_TOLERANCE = 0.005  # validation melanoma AUC the INT8 model may lose
JACCARD_TOLERANCE = 0.01  # validation mask Jaccard it may lose
FLIP_TOLERANCE = 0.02  # share of validation decisions at the threshold it may flip
CALIBRATION_IMAGES = 32  # at most; at most half of the validation split
QUANTIZED_OPS = ["Conv", "MatMul", "Clip", "Relu"]


def quantize(
    float_model: Path,
    out: Path,
    calibration: np.ndarray,
    batch: int = 8,
    ops: list[str] = QUANTIZED_OPS,
) -> None:
    """Write the statically quantised ``float_model`` to ``out``, activation ranges from
    ``calibration`` (uint8 images (N, 3, S, S), the model's input); ``ops``: the operator
    types quantised (``benchmarks/int8.py`` compares other choices)."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{"images": calibration[i : i + batch]} for i in range(0, len(calibration), batch)]
            )

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        # Folds batch norms into convolutions first, so each quantised convolution is the
        # whole affine step. The exported graph's shapes are static but for the batch, which
        # the symbolic pass cannot follow through roi_align: ONNX's own inference suffices.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def calibration_indices(images: int, wanted: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Which of ``images`` validation images calibrate the activation ranges: spread over
    the split (it is ordered as the layout lists it), seeded, in order; at most half of
    them, so that the other half checks the model on images it was not calibrated on."""
    return np.sort(np.random.default_rng(0).permutation(images)[: min(wanted, images // 2)])


def run_model(path: Path, images: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N,) and masks (N, 1, S, S) of an exported model over ``images``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, masks = [], []
    for i in range(0, len(images), batch):
        p, m = session.run(None, {"images": images[i : i + batch]})
        probs.append(p)
        masks.append(m)
    return np.concatenate(probs), np.concatenate(masks)


def model_scores(probs, masks, labels, truth, has_mask) -> dict:
    """Melanoma AUC over the labelled images and mask Jaccard over those with a mask."""
    import torch
    from sklearn.metrics import roc_auc_score

    from melanoma.metrics.segmentation import segmentation_metrics

    out = {"auc": None, "jaccard": None}
    known = labels >= 0  # -1: an image without a label
    if len(np.unique(labels[known])) == 2:
        out["auc"] = float(roc_auc_score(labels[known], probs[known]))
    if has_mask.any():
        seg = segmentation_metrics(
            torch.from_numpy(masks[has_mask]).float(), torch.from_numpy(truth[has_mask]).float()
        )
        out["jaccard"] = float(seg["jaccard"])
    return out


def decision_changes(float_probs: np.ndarray, int8_probs: np.ndarray, threshold: float) -> dict:
    """How the INT8 model's decisions at ``threshold`` differ from the float model's: the
    share of images flagged otherwise (probability >= threshold) and the largest change
    in probability."""
    flips = (float_probs >= threshold) != (int8_probs >= threshold)
    return {
        "threshold": float(threshold),
        "flip_rate": float(flips.mean()),
        "flipped_images": int(flips.sum()),
        "max_probability_change": float(np.abs(float_probs - int8_probs).max()),
    }


def int8_model(
    out: Path, validation, threshold: float, *, calibration_images: int = CALIBRATION_IMAGES
) -> dict:
    """Quantise ``out/cascade.onnx`` into ``out/cascade.int8.onnx``, calibrated on some of
    the ``validation`` dataset's images (uint8 images, labels, masks), and score both
    models on the others, with the decisions at ``threshold``; the INT8 file is removed,
    and the result says why, when it loses more than the tolerances. Returns the model
    card's ``int8`` section."""
    items = [validation[i] for i in range(len(validation))]
    if len(items) < 2:
        raise ValueError(
            "an INT8 model is calibrated on some of the cascade's validation images and "
            f"checked on the others, and its validation split holds {len(items)}; export "
            "without --int8"
        )
    images = np.stack([it["image"].numpy() for it in items])
    labels = np.array([it["label"] for it in items])
    truth = np.stack([it["mask"].numpy() for it in items])
    has_mask = np.array([bool(it["has_mask"]) for it in items])
    chosen = calibration_indices(len(images), calibration_images)
    check = np.setdiff1d(np.arange(len(images)), chosen)
    path = Path(out) / INT8_FILE
    quantize(Path(out) / "cascade.onnx", path, images[chosen])
    float_out = run_model(Path(out) / "cascade.onnx", images[check])
    int8_out = run_model(path, images[check])
    truths = (labels[check], truth[check], has_mask[check])
    float_scores, int8_scores = model_scores(*float_out, *truths), model_scores(*int8_out, *truths)
    lost = {
        key: None if float_scores[key] is None else float_scores[key] - int8_scores[key]
        for key in ("auc", "jaccard")
    }
    decisions = decision_changes(float_out[0], int8_out[0], threshold)
    too_much = [
        f"{key} {lost[key]:+.4f} lost (tolerance {tol})"
        for key, tol in (("auc", AUC_TOLERANCE), ("jaccard", JACCARD_TOLERANCE))
        if lost[key] is not None and lost[key] > tol
    ]
    if decisions["flip_rate"] > FLIP_TOLERANCE:
        too_much.append(
            f"{decisions['flipped_images']} of {len(check)} decisions at the threshold "
            f"{threshold:.4f} flipped ({decisions['flip_rate']:.1%}, tolerance "
            f"{FLIP_TOLERANCE:.0%})"
        )
    section = {
        "file": INT8_FILE,
        "method": "ONNX Runtime static quantisation (QDQ): int8 per-channel weights and "
        "uint8 activations for Conv and MatMul, a ReLU or ReLU6 after a convolution "
        "folded into its output range; the classifier heads (Gemm) and the rest in float",
        "calibration_images": int(len(chosen)),
        "validation_images": int(len(images)),
        "checked_images": int(len(check)),  # scored: those outside the calibration sample
        "float": float_scores,
        "int8": int8_scores,
        "lost": lost,
        "decisions": decisions,
        "tolerance": {
            "auc": AUC_TOLERANCE,
            "jaccard": JACCARD_TOLERANCE,
            "flip_rate": FLIP_TOLERANCE,
        },
        "kept": not too_much,
    }
    if too_much:
        path.unlink()
        section["file"] = None
        section["refused"] = "; ".join(too_much)
    return section


def int8_card_lines(q: dict | None) -> list[str]:
    """The model card's INT8 section in Markdown (none without an INT8 section)."""
    if not q:
        return []

    def cell(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    verdict = f"kept as `{q['file']}`" if q["kept"] else f"refused, not shipped: {q['refused']}"
    d = q["decisions"]
    return [
        "## INT8 model",
        "",
        f"{q['method']}; calibrated on {q['calibration_images']} validation images, scored "
        f"on {q.get('checked_images', q['validation_images'])} others: {verdict}.",
        "",
        "| validation | float | INT8 | lost | tolerance |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {cell(q['float'][k])} | {cell(q['int8'][k])} | {cell(q['lost'][k])} | "
            f"{q['tolerance'][k]} |"
            for k, name in (("auc", "melanoma AUC"), ("jaccard", "mask Jaccard"))
        ),
        f"| decisions flipped at the threshold {d['threshold']:.4f} | - | - | "
        f"{d['flip_rate']:.2%} ({d['flipped_images']} images) | "
        f"{q['tolerance']['flip_rate']:.0%} |",
        "",
        f"Largest probability change: {d['max_probability_change']:.4f}.",
        "",
    ]
