"""Which operators to quantise: INT8 settings of one exported cascade, paired.

    python benchmarks/int8.py --cascade CASCADE_DIR --export EXPORT_DIR [--seconds 2]

CASCADE_DIR is the `melanoma cascade build` directory that EXPORT_DIR (`melanoma export`)
was written from. Each setting quantises EXPORT_DIR/cascade.onnx with the same calibration
images the export uses (`calibration_indices` of the validation split). For each setting:
- on the validation images outside the calibration sample (what the export's tolerance
  is checked on): the melanoma AUC and mask Jaccard lost against the float model, and the
  decisions at the cascade's threshold that flip;
- on the test split, which nothing here chose on: AUC and per-image Jaccard of the setting
  minus the float model's, each with a paired 95% bootstrap interval, and the same for
  the last setting (the shipped one) minus each other setting;
- ONNX Runtime throughput at batch 16 against the float model, the models taking turns
  (``benchlib.onnxruntime_rates``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchlib import onnxruntime_rates

SETTINGS = {
    # The shipped setting less the folded activations: one difference between the two.
    "convolutions only": ["Conv", "MatMul"],
    "activations folded in (shipped)": None,  # melanoma.export.int8.QUANTIZED_OPS
}


def split_arrays(dataset) -> dict[str, np.ndarray]:
    """Images, labels, ground-truth masks and which images have one, of a split's dataset."""
    items = [dataset[i] for i in range(len(dataset))]
    return {
        "images": np.stack([it["image"].numpy() for it in items]),
        "labels": np.array([it["label"] for it in items]),
        "truth": np.stack([it["mask"].numpy() for it in items]),
        "has_mask": np.array([bool(it["has_mask"]) for it in items]),
    }


def per_image_jaccard(masks: np.ndarray, data: dict) -> np.ndarray:
    import torch

    from melanoma.metrics.segmentation import per_image_counts, scores_from_counts

    keep = data["has_mask"]
    counts = per_image_counts(
        torch.from_numpy(masks[keep]).float(), torch.from_numpy(data["truth"][keep]).float()
    )
    return scores_from_counts(counts)["jaccard"]


def paired(a: tuple, b: tuple, data: dict, resamples: int = 1000) -> dict:
    """AUC and per-image Jaccard of outputs ``a`` minus ``b`` (each (probs, masks))."""
    from melanoma.metrics.paired import paired_difference, paired_mean_difference

    known = data["labels"] >= 0
    labels = data["labels"][known]
    return {
        "auc": paired_difference(labels, a[0][known], b[0][known], resamples=resamples),
        "jaccard": paired_mean_difference(
            per_image_jaccard(a[1], data), per_image_jaccard(b[1], data), resamples=resamples
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade", type=Path, required=True, help="a `cascade build` directory")
    parser.add_argument("--export", type=Path, required=True, help="its `export` directory")
    parser.add_argument("--seconds", type=float, default=2.0, help="per timing turn")
    args = parser.parse_args()
    float_model = args.export / "cascade.onnx"
    if not float_model.is_file():
        parser.error(f"{float_model} does not exist: give a `melanoma export` directory")

    from melanoma.cascade.evaluate import checked_test_data
    from melanoma.cascade.store import load_cascade
    from melanoma.export import validation_set
    from melanoma.export.int8 import (
        QUANTIZED_OPS,
        calibration_indices,
        decision_changes,
        model_scores,
        quantize,
        run_model,
    )
    from melanoma.metrics.paired import describe

    _, record = load_cascade(args.cascade)
    # The test split as `cascade evaluate` checks it (isolated, the files the build
    # recorded); validation without the copies of training images the build dropped.
    dropped = bool(record.dropped_test)  # evaluated as built (--drop-test-duplicates)
    test = split_arrays(checked_test_data(args.cascade, record, None, dropped).dataset("test"))
    val = split_arrays(validation_set(record, None))
    chosen = calibration_indices(len(val["images"]))
    calibration = val["images"][chosen]
    # Scored outside the calibration sample, as the export checks.
    check = np.setdiff1d(np.arange(len(val["images"])), chosen)
    val = {k: v[check] for k, v in val.items()}
    tmp = Path(tempfile.mkdtemp())
    models = {"float": float_model}
    for name, ops in SETTINGS.items():
        models[name] = tmp / f"{len(models)}.onnx"
        quantize(float_model, models[name], calibration, ops=ops or QUANTIZED_OPS)

    def score(path: Path, data: dict) -> tuple[np.ndarray, np.ndarray]:
        return run_model(path, data["images"])

    outputs = {name: (score(p, val), score(p, test)) for name, p in models.items()}
    rates = onnxruntime_rates(models, val["images"][:16], seconds=args.seconds)
    base = model_scores(*outputs["float"][0], val["labels"], val["truth"], val["has_mask"])
    print(
        f"\n{args.export} at {record.input_size} px; {len(calibration)} calibration images; "
        f"validation {len(val['images'])} images (float AUC {base['auc']:.4f}, Jaccard "
        f"{base['jaccard']:.4f}); test {len(test['images'])} images\n"
    )
    shipped = list(SETTINGS)[-1]
    for name in SETTINGS:
        got = model_scores(*outputs[name][0], val["labels"], val["truth"], val["has_mask"])
        vs_float = paired(outputs[name][1], outputs["float"][1], test)
        print(
            f"{name}: {rates[name] / rates['float']:.2f}x float throughput "
            f"({rates[name]:.0f} vs {rates['float']:.0f} images/s); validation AUC lost "
            f"{base['auc'] - got['auc']:+.4f}, Jaccard lost {base['jaccard'] - got['jaccard']:+.4f}"
        )
        flips = decision_changes(outputs["float"][0][0], outputs[name][0][0], record.threshold)
        print(
            f"  validation decisions at the threshold {record.threshold:.4f} flipped: "
            f"{flips['flipped_images']} of {len(check)} ({flips['flip_rate']:.1%}); largest "
            f"probability change {flips['max_probability_change']:.4f}"
        )
        print(f"  test, minus float: {describe(vs_float['auc'], 'AUC')}")
        print(f"  test, minus float: {describe(vs_float['jaccard'], 'Jaccard')}")
        if name != shipped:
            vs = paired(outputs[shipped][1], outputs[name][1], test)
            print(f"  test, {shipped} minus this: {describe(vs['auc'], 'AUC')}")
            print(f"  test, {shipped} minus this: {describe(vs['jaccard'], 'Jaccard')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
