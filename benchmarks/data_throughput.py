"""Images/s of the training input pipeline: JPEG decode + augment versus the cache + augment.

Both pipelines read the same images at the same size with the same augmentation, side by
side in one run, in the main process and through a DataLoader with worker processes.

    python benchmarks/data_throughput.py [--data DIR] [--size 256] [--n 600] [--json out.json]

Without --data it uses ../shared/data/isic2017 when present, else synthetic data it writes
to a temporary directory at 1024x768-like size (squashed into 768 px squares).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from melanoma.data.cache import prepare_cache
from melanoma.data.dataset import open_data
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.data.transforms import build_augmentation

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"


def measure(dataset, n: int, workers: int, batch_size: int = 32) -> float:
    subset = Subset(dataset, list(range(min(n, len(dataset)))))
    loader = DataLoader(
        subset, batch_size=batch_size, num_workers=workers, shuffle=False, persistent_workers=False
    )
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.is_dir() else None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=600, help="images per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--augment",
        type=float,
        nargs="+",
        default=[0.0, 0.5],
        help="augmentation strengths to measure (0 = decode only)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synth"
            print(
                f"no --data and no {SHARED}: writing {args.n} synthetic 768 px images",
                file=sys.stderr,
            )
            write_synthetic(data, SynthConfig(n=args.n, size=768, seed=0))
        t0 = time.perf_counter()
        prepare_cache(data, args.size, Path(tmp) / "cache", on_bad="skip")
        prepare_s = time.perf_counter() - t0
        raw_bundle = open_data(data, args.size, on_bad="skip")
        cache_bundle = open_data(Path(tmp) / "cache", args.size)
        rows = []
        for strength in args.augment:
            augment = build_augmentation(strength)
            raw = raw_bundle.dataset("train", augment)
            cached = cache_bundle.dataset("train", augment)
            for workers in args.workers:
                raw_ips = measure(raw, args.n, workers)
                cache_ips = measure(cached, args.n, workers)
                rows.append(
                    {
                        "augment": strength,
                        "workers": workers,
                        "jpeg_decode_augment_img_s": raw_ips,
                        "cache_augment_img_s": cache_ips,
                        "ratio": cache_ips / raw_ips,
                    }
                )

    cpu = platform.processor() or platform.machine()
    print(f"\ndata: {data}  size: {args.size}  images per run: {args.n}  cpu: {cpu}")
    print(f"one-off prepare (check + split + decode + resize + write): {prepare_s:.1f} s\n")
    header = ("augment", "workers", "JPEG decode+augment img/s", "cache+augment img/s", "ratio")
    print(" | ".join(header))
    print("-" * 80)
    for r in rows:
        print(
            f"{r['augment']:>7.2f} | {r['workers']:>7} | {r['jpeg_decode_augment_img_s']:>25.0f} | "
            f"{r['cache_augment_img_s']:>19.0f} | {r['ratio']:>4.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "data": str(data),
                    "size": args.size,
                    "n": args.n,
                    "prepare_s": prepare_s,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
