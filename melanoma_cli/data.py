"""melanoma data synth | check | split | prepare."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from melanoma_cli.common import _progress


def _cmd_synth(args: argparse.Namespace) -> int:
    from melanoma.data.synth import SynthConfig, write_synthetic

    config = SynthConfig(n=args.n, size=args.size, seed=args.seed, prevalence=args.prevalence)
    summary = write_synthetic(Path(args.out), config)
    print(
        f"wrote {summary['n']} synthetic images ({summary['melanoma']} melanoma) "
        f"at {args.size}x{args.size} in the ISIC 2017 layout to {args.out}"
    )
    return 0


def _print_summary(summary: dict) -> None:
    cov = summary["mask_coverage"]
    print(f"layout:        {summary['layout']} ({summary['root']})")
    excluded = f" usable ({summary['excluded']} excluded)" if summary["excluded"] else ""
    print(f"images:        {summary['images']}{excluded}")
    print(f"masks:         {summary['masks']}")
    print(f"melanoma:      {summary['melanoma']}")
    print(f"benign:        {summary['benign']}")
    if summary["unlabelled"]:
        print(f"unlabelled:    {summary['unlabelled']} (segmentation only)")
    labelled = summary["melanoma"] + summary["benign"]
    if labelled:
        print(f"prevalence:    {summary['melanoma'] / max(1, labelled):.1%}")
    print(f"diagnoses:     {', '.join(f'{k} {v}' for k, v in summary['diagnoses'].items()) or '-'}")
    print(
        f"official splits: {', '.join(f'{k} {v}' for k, v in summary['official_splits'].items())}"
    )
    _print_cross_split(summary["cross_split_duplicates"], "official splits")
    _print_metadata(summary["metadata"], summary["images"])
    if cov["mean"] is not None:
        print(
            f"mask coverage: mean {cov['mean']:.3f}, min {cov['min']:.3f}, max {cov['max']:.3f}, "
            f"empty {cov['empty_masks']}"
        )
    sizes = ", ".join(f"{k} ({v})" for k, v in summary["image_sizes"].items())
    print(
        f"image sizes:   {sizes}"
        + (
            f" ... {summary['distinct_image_sizes']} distinct"
            if summary["distinct_image_sizes"] > 5
            else ""
        )
    )


def _print_metadata(metadata: dict, images: int) -> None:
    """Coverage of age, sex and site: known, unknown, and the values (age in bands)."""
    if not metadata:
        print("metadata:      none in this layout (age, sex, site)")
        return
    for name in ("age", "sex", "site"):
        if name not in metadata:
            print(f"{name + ':':15}not recorded")
            continue
        m = metadata[name]
        values = ", ".join(f"{k} {v}" for k, v in m["values"].items())
        print(f"{name + ':':15}{m['known']} of {images} known ({values})")


def _cmd_check(args: argparse.Namespace) -> int:
    from melanoma.data.check import check_dataset

    report = check_dataset(
        Path(args.data),
        args.layout,
        on_bad="skip",
        strict=args.strict,
        progress=_progress("checking"),
        external_paths=args.external_paths,
    )
    summary = report.summary()
    if args.json:
        print(
            json.dumps(
                {
                    **summary,
                    "problems": [str(p) for p in report.problems],
                    "excluded_ids": [s.id for s in report.excluded],
                },
                indent=1,
            )
        )
    else:
        _print_summary(summary)
        for p in report.problems:
            print(f"{'warning' if p.severity == 'warning' else 'bad'}: {p}")
    failing = report.problems if args.strict else report.errors
    if failing and args.on_bad == "fail":
        print(
            f"{len(failing)} bad file(s) found in {args.data}; fix them, or use --on-bad skip "
            "to exclude them",
            file=sys.stderr,
        )
        return 1
    if failing:
        print(
            f"{len(report.excluded)} sample(s) excluded; {len(report.samples)} usable",
            file=sys.stderr,
        )
    if not report.samples:
        print(f"no usable samples in {args.data}", file=sys.stderr)
        return 1
    return 0


def _split_config(args: argparse.Namespace):
    from melanoma.data.splits import SplitConfig

    return SplitConfig(
        seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        keep_official=not args.ignore_official_splits,
        val_from_train=args.val_from_train,
    )


def _cmd_split(args: argparse.Namespace) -> int:
    from melanoma.data.carve import build_splits
    from melanoma.data.check import check_dataset

    report = check_dataset(
        Path(args.data),
        args.layout,
        on_bad=args.on_bad,
        progress=_progress("checking"),
        external_paths=args.external_paths,
    )
    splits = build_splits(report, _split_config(args))
    splits.save(Path(args.out))
    _print_splits(splits)
    print(f"wrote {args.out}")
    return 0


def _print_cross_split(counts: dict[str, int], where: str) -> None:
    pairs = ", ".join(f"{pair} {n}" for pair, n in counts.items())
    print(f"cross-split duplicates ({where}; identical images or shared lesions): {pairs}")


def _print_splits(splits) -> None:
    for name, c in splits.counts().items():
        print(f"{name:5s}: {c['images']:6d} images, {c['melanoma']:5d} melanoma")
    _print_cross_split(splits.cross_split_duplicates(), "these splits")
    for leak in splits.leaks:
        print(f"warning: official splits {leak['splits']} share {leak['ids']}: {leak['reason']}")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from melanoma.data.cache import prepare_cache

    info = prepare_cache(
        Path(args.data),
        args.size,
        Path(args.out),
        layout=args.layout,
        on_bad=args.on_bad,
        split_config=_split_config(args),
        workers=args.workers,
        progress=_progress("caching"),
        external_paths=args.external_paths,
    )
    for name, c in info["splits"].items():
        print(f"{name:5s}: {c['images']:6d} images, {c['melanoma']:5d} melanoma")
    print(
        f"cached {info['images']} images at {info['size']}x{info['size']} "
        f"({info['bytes'] / 2**20:.0f} MiB) in {info['cache']}"
    )
    return 0


def _add_data_source(p: argparse.ArgumentParser) -> None:
    from melanoma.data.layouts import LAYOUTS

    p.add_argument("data", help="dataset directory (or manifest CSV)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), help="dataset layout (default: detect)")
    p.add_argument(
        "--external-paths",
        action="store_true",
        help="allow a manifest to name files outside its folder (refused by default)",
    )


def _add_on_bad(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-bad",
        choices=["fail", "skip"],
        default="fail",
        help="fail on bad samples (default) or exclude and list them",
    )


def _add_split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-seed", type=int, default=0, help="the carving's random seed")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share carved into validation")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share carved into test")
    p.add_argument(
        "--ignore-official-splits",
        action="store_true",
        help="carve all splits anew even where the layout has official ones",
    )
    p.add_argument(
        "--val-from-train",
        action="store_true",
        help="also carve --val-fraction from training into validation beside an official "
        "validation split (config: data.val_from_train)",
    )


def _data_command(data_sub, name: str, text: str) -> argparse.ArgumentParser:
    """A `data` subcommand that reads a data set: its folder, layout and bad-file rule."""
    p = data_sub.add_parser(name, help=text)
    _add_data_source(p)
    _add_on_bad(p)
    return p


def register(sub) -> None:
    """Add this stage's subcommands."""
    data = sub.add_parser("data", help="generate, check, split and cache datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser("synth", help="write synthetic dermoscopy data in the ISIC 2017 layout")
    p.add_argument("--out", required=True, help="the new data set folder")
    p.add_argument("--n", type=int, default=200, help="images")
    p.add_argument("--size", type=int, default=256, help="square side in pixels")
    p.add_argument("--seed", type=int, default=0, help="what the images look like")
    p.add_argument(
        "--prevalence", type=float, default=0.2, help="fraction of melanoma (default 0.2)"
    )
    p.set_defaults(func=_cmd_synth)

    p = _data_command(data_sub, "check", "validate a dataset and print a summary")
    p.add_argument(
        "--strict", action="store_true", help="treat warnings (duplicate content) as bad"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_check)

    p = _data_command(data_sub, "split", "write stratified, grouped splits with file hashes")
    _add_split_options(p)
    p.add_argument("--out", default="splits.json", help="the splits file")
    p.set_defaults(func=_cmd_split)

    p = _data_command(data_sub, "prepare", "decode and resize once into a memory-mapped cache")
    _add_split_options(p)
    p.add_argument("--size", type=int, required=True, help="square side in pixels")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: one per CPU)"
    )
    p.set_defaults(func=_cmd_prepare)
