"""Images/s of the training input pipeline: JPEG decode + augment versus the cache + augment,
and the engine's own loader versus the model's training step.

Table 1: both pipelines read the same images at the same size with the same augmentation,
side by side in one run, in the main process and through a DataLoader with worker processes.

Table 2: the loader exactly as the engine builds it (cache, the default augmentation and
data.num_workers, pinned memory on CUDA, persistent workers) against the engine's own
training step (forward, loss, backward, optimizer step; AMP and channels_last on CUDA) on
batches already in memory, for a segmenter and a classifier. A ratio above 1 means the
loader keeps up with the model; below 1 the GPU or CPU waits for data.

    python benchmarks/data_throughput.py [--data DIR] [--size 256] [--n 600] [--json out.json]
                                         [--device auto|cpu|cuda] [--step-batches 6]

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


def loader_versus_step(cache: Path, size: int, n: int, device: str, batches: int) -> list[dict]:
    """Engine loader img/s and engine training-step img/s, per model."""
    from melanoma.data.dataset import EpochSampler
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.inputs import make_loader, open_training_data
    from melanoma.engine.loop import resolve_device, train_one_epoch
    from melanoma.engine.training import build_training

    rows = []
    models = {
        "seg fpn/resnet18": ("seg", {"arch": "fpn", "encoder": "resnet18"}, {}),
        "cls efficientnet_lite0 (masked)": (
            "cls",
            {"arch": "efficientnet_lite0"},
            {"input": {"mode": "masked", "mask_source": "gt"}},
        ),
    }
    for label, (task_name, model, extra) in models.items():
        config = TrainConfig.from_dict(
            {
                "task": task_name,
                "epochs": 1,
                "device": device,
                "data": {"path": str(cache), "image_size": size, "batch_size": 16},
                "model": model,
                **extra,
            }
        )
        dev = resolve_device(config.device)
        bundle = open_training_data(config)
        dataset = bundle.dataset("train", build_augmentation(config.data.augment), seed=0)
        sampler = EpochSampler(len(dataset), 0, True)
        loader = make_loader(dataset, sampler, 16, config.data.num_workers, dev, drop_last=True)
        iterator = iter(loader)
        kept = [next(iterator)]  # the first batch pays for starting the workers
        start, seen = time.perf_counter(), 0
        for batch in iterator:
            seen += batch["image"].shape[0]
            if len(kept) < batches + 1:
                kept.append(batch)
            if seen >= n:
                break
        loader_ips = seen / (time.perf_counter() - start)
        del iterator, loader

        t = build_training(config, dev, dataset.labels(), len(kept), pretrained=True)
        train_one_epoch(t, kept[:1], 0, False)  # warm-up: allocator, cudnn autotuning
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_one_epoch(t, kept[1:], 0, False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        step_ips = 16 * len(kept[1:]) / (time.perf_counter() - start)
        rows.append(
            {
                "model": label,
                "device": str(dev),
                "num_workers": config.data.num_workers,
                "augment": config.data.augment,
                "loader_img_s": loader_ips,
                "train_step_img_s": step_ips,
                "ratio": loader_ips / step_ips,
            }
        )
    return rows


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
    parser.add_argument("--device", default="auto", help="for the training step (table 2)")
    parser.add_argument("--step-batches", type=int, default=6, help="timed training steps")
    args = parser.parse_args()

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
        torch.set_num_threads(1)  # table 1: one core per pipeline, as a loader worker has
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
        torch.set_num_threads(torch.get_num_interop_threads())  # table 2: every core
        versus = loader_versus_step(
            Path(tmp) / "cache", args.size, args.n, args.device, args.step_batches
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
    print(
        f"\nengine loader (cache, augment {versus[0]['augment']:g}, "
        f"{versus[0]['num_workers']} workers) vs engine training step, batch 16, "
        f"{args.size} px, on {versus[0]['device']}\n"
    )
    print(f"{'model':32} | {'loader img/s':>12} | {'train step img/s':>16} | loader/step")
    print("-" * 80)
    for r in versus:
        print(
            f"{r['model']:32} | {r['loader_img_s']:12.0f} | {r['train_step_img_s']:16.1f} | "
            f"{r['ratio']:.1f}x"
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
                    "loader_vs_step": versus,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
