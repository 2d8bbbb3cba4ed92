"""melanoma export | predict."""

from __future__ import annotations

import argparse
from pathlib import Path

from melanoma_cli.common import deprecated


def _cmd_export(args: argparse.Namespace) -> int:
    from melanoma.export import export_cascade

    card = export_cascade(Path(args.dir), Path(args.out), data=args.data, int8=args.int8)
    check = card["export_check"]
    print(f"exported to {args.out}: cascade.onnx, cascade.pt2, model_card.json, checksums.sha256")
    q = card.get("int8")
    if q:
        verdict = f"kept as {q['file']}" if q["kept"] else f"refused ({q['refused']})"
        scores = ", ".join(
            f"{k} {q['float'][k]:.4f} float, {q['int8'][k]:.4f} int8"
            for k in ("auc", "jaccard")
            if q["float"][k] is not None
        )
        checked = q.get("checked_images", q["validation_images"])
        print(
            f"INT8 model {verdict}; on {checked} validation images outside its calibration "
            f"sample: {scores}"
        )
    print(
        f"checked on {check['images_used']}: "
        f"ONNX max |dp| {check['onnxruntime']['max_probability_difference']:.1e}, "
        f"torch.export max |dp| {check['torch_export']['max_probability_difference']:.1e} "
        f"(tolerance {check['probability_tolerance']:.0e})"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from melanoma.predict import predict

    model, inputs = _model_and_images(args)
    rows = predict(
        Path(model),
        inputs,
        Path(args.out),
        masks_out=args.masks_out,
        batch_size=args.batch_size,
        int8=args.int8,
    )
    bad = sum(1 for r in rows if r["error"])
    print(
        f"wrote {len(rows) - bad} predictions to {args.out}"
        + (f"; {bad} unreadable image(s) skipped" if bad else "")
    )
    return 0 if len(rows) > bad else 1


def _model_and_images(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``predict MODEL IMAGES...``; the old ``predict IMAGES... --model MODEL`` still works
    for this version, with a warning."""
    if args.model is not None:
        deprecated("melanoma predict IMAGES... --model MODEL", "melanoma predict MODEL IMAGES...")
        return args.model, args.paths
    if len(args.paths) < 2:
        raise ValueError(
            f"predict needs an exported cascade and at least one image: got only "
            f"{args.paths[0]!r}. Use `melanoma predict MODEL IMAGE [IMAGE ...]`"
        )
    return args.paths[0], args.paths[1:]


def register(sub) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("export", help="write the cascade as ONNX + torch.export, checked")
    p.add_argument("dir", metavar="CASCADE", help="a `cascade build` directory")
    p.add_argument("--out", required=True, help="the new export directory")
    p.add_argument(
        "--data",
        help="the cascade's data set, where it has moved since the build: the export is "
        "checked on its test images (default: the recorded path)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write cascade.int8.onnx, statically quantised and calibrated on the "
        "validation images; kept only within the card's tolerance of the float model",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "predict",
        help="melanoma probability and lesion mask per image",
        description="Run an exported cascade on images: a CSV of the melanoma probability "
        "and decision per image, and the lesion masks with --masks-out.",
        usage="%(prog)s [options] MODEL IMAGE [IMAGE ...]",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="MODEL IMAGE",
        help="the exported cascade directory (`melanoma export --out`), then image files "
        "or folders",
    )
    p.add_argument("--model", help=argparse.SUPPRESS)  # the old spelling, deprecated
    p.add_argument("--out", default="predictions.csv", help="the predictions CSV")
    p.add_argument(
        "--masks-out",
        help="folder for the lesion masks (PNG, original size): <stem>_mask.png, or, where "
        "inputs share a stem, their path below the common folder with / as __ "
        "(a__ISIC_1.jpg_mask.png); the CSV's mask column names each",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per ONNX Runtime call")
    p.add_argument("--int8", action="store_true", help="run the INT8 model (export --int8) instead")
    p.set_defaults(func=_cmd_predict)
