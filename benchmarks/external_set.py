"""An exported cascade scored once on a labelled set from other clinics, exactly as
`melanoma predict` runs it (the artifact a user ships: its threshold, calibration and
mask clean-up; INT8 with --int8).

    python benchmarks/external_set.py --model EXPORT_DIR \\
        --manifest ../shared/data/ham10000/manifest.csv [--int8] [--out preds.csv]

Prints the melanoma AUC, average precision, sensitivity and specificity at the shipped
threshold, each with its 95% bootstrap interval, per source where the manifest has a
``source`` column and over all; an unreadable image is counted and left out, never scored
as benign. Score a cascade here once, after every choice: nothing may be chosen on it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

KEYS = ("auc", "average_precision", "sensitivity", "specificity")


def read_manifest(path: Path) -> tuple[list[dict], dict[str, int]]:
    """The manifest's rows labelled 0 or 1, each with its image's absolute path, and the
    counts of rows left out (unlabelled or another label; a repeated image is refused)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a manifest CSV with image and label columns")
    out, left = [], {"unlabelled": 0, "other label": 0}
    for row in rows:
        label = row["label"].strip()
        if label in ("0", "1"):
            out.append({**row, "path": str((path.parent / row["image"]).resolve())})
        else:
            left["unlabelled" if label == "" else "other label"] += 1
    paths = [r["path"] for r in out]
    if len(set(paths)) < len(paths):
        twice = sorted({p for p in paths if paths.count(p) > 1})[:3]
        raise ValueError(f"{path}: images listed more than once, e.g. {twice}; list each once")
    return out, left


def joined(manifest: list[dict], predictions: list[dict]) -> tuple[list[dict], int]:
    """Manifest rows with their predicted probability, and how many had none (unreadable,
    or missing from the predictions)."""
    by_path = {str(Path(p["image"]).resolve()): p for p in predictions}
    out, missing = [], 0
    for row in manifest:
        p = by_path.get(row["path"])
        if p is None or p.get("error") or p.get("probability") in ("", None):
            missing += 1
            continue
        out.append({**row, "probability": float(p["probability"])})
    return out, missing


def scores(rows: list[dict], threshold: float, resamples: int = 1000) -> dict:
    from melanoma.metrics.classification import metrics_with_intervals

    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([r["probability"] for r in rows])
    figures = metrics_with_intervals(labels, probs, threshold, KEYS, resamples)
    return {"images": len(rows), "melanomas": int(labels.sum()), **figures}


def table(rows: list[dict], threshold: float, resamples: int = 1000) -> list[tuple[str, dict]]:
    """(group, scores) over every source of the manifest holding both classes, then all
    images; a source of one class is named in a row of its own without figures."""
    sources = sorted({r.get("source") or "" for r in rows} - {""})
    out = []
    for source in sources:
        group = [r for r in rows if r.get("source") == source]
        if len({r["label"] for r in group}) == 2:
            out.append((source, scores(group, threshold, resamples)))
        else:
            out.append((source, {"images": len(group), "one_class": group[0]["label"]}))
    return [*out, ("all", scores(rows, threshold, resamples))]


def print_table(results: list[tuple[str, dict]], threshold: float) -> None:
    print(f"at the shipped threshold {threshold:.4f}; 95% bootstrap intervals\n")
    print(f"{'images':20} | {'n':>5} | {'mel':>4} | " + " | ".join(f"{k:>22}" for k in KEYS))
    for name, s in results:
        if "one_class" in s:
            print(f"{name:20} | {s['images']:5d} | only label {s['one_class']}: no figures")
            continue
        cells = " | ".join(
            f"{s[k]['value']:.3f} ({s[k]['low']:.3f}-{s[k]['high']:.3f})".rjust(22) for k in KEYS
        )
        print(f"{name:20} | {s['images']:5d} | {s['melanomas']:4d} | {cells}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a `melanoma export` folder")
    parser.add_argument("--manifest", type=Path, required=True, help="image,label[,source] CSV")
    parser.add_argument("--int8", action="store_true", help="score the INT8 model")
    parser.add_argument("--out", type=Path, help="keep the predictions CSV here")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"--manifest {args.manifest} does not exist")
    if args.resamples < 100:
        parser.error(f"--resamples must be at least 100, got {args.resamples}")

    from melanoma.predict import predict

    manifest, left = read_manifest(args.manifest)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "predictions.csv"
        predictions = predict(args.model, [r["path"] for r in manifest], out, int8=args.int8)
    rows, missing = joined(manifest, predictions)
    threshold = float(predictions[0]["threshold"])
    print(
        f"\n{args.model} ({'INT8' if args.int8 else 'float'}) on {args.manifest}: "
        f"{len(rows)} images scored, {missing} unreadable or unpredicted (left out); manifest "
        f"rows not scored: {left['unlabelled']} unlabelled, {left['other label']} with "
        "another label than 0 or 1"
    )
    print("(intervals resample images: with several images of one lesion they are too narrow)")
    print_table(table(rows, threshold, args.resamples), threshold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
