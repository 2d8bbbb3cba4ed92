"""The training path against the model's own speed, for the shipped GPU experiments: how
much of what the model could train per second the engine reaches.

    python benchmarks/gpu_path.py [--data DIR] [--device cuda] [--tasks seg cls]
                                  [--size 256] [--batch-size N] [--batches 40]
                                  [--workers 4 8] [--variants fp32 amp amp+compile]
                                  [--augment-on loader device] [--json out.json]

Three rates, images per second, side by side in one run, for the segmenter of
``isic2017_gpu_seg`` (FPN, Lite0 encoder) and the ``dual`` classifier of
``isic2017_gpu_cls`` (EfficientNet-Lite0, ground-truth masks: the step costs the same as
with predicted ones):

- **model**: the engine's training step (forward, loss, backward, optimizer step) on
  batches already on the device, repeated: the physical limit of this model on this
  device, per precision variant (fp32; AMP with channels_last; AMP, channels_last and
  ``torch.compile``);
- **loader**: the engine's loader alone (the cache, its augmentation, pinned memory,
  persistent workers), per worker count and per ``data.augment_on`` (``device``: the
  loader hands images over unaugmented);
- **epoch**: the engine's real training epoch, loader and step and (``augment_on:
  device``) the batch augmentation on the device, per worker count, augmentation place
  and variant; its fraction of the model's rate for that variant is the figure to read.

Every timed stretch starts after warm-up batches (worker start, cuDNN autotuning, the
compile). AMP, channels_last and compile are CUDA-only in the engine: on a CPU the
variants are one run, and the script says so; a CPU figure is not a GPU figure.
Without --data it uses ../shared/data/isic2017 when present, else synthetic data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib import base_experiment

from melanoma.data.dataset import EpochSampler
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.data.transforms import build_augmentation
from melanoma.engine.config import TrainConfig
from melanoma.engine.inputs import labelled, make_loader, open_training_data
from melanoma.engine.loop import resolve_device, train_one_epoch
from melanoma.engine.training import build_training

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2017"
EXPERIMENTS = {"seg": "isic2017_gpu_seg", "cls": "isic2017_gpu_cls"}
VARIANTS = {
    "fp32": {"amp": False, "channels_last": False, "compile": False},
    "amp": {"amp": True, "channels_last": True, "compile": False},
    "amp+compile": {"amp": True, "channels_last": True, "compile": True},
}
WARM_BATCHES = 3  # before timing the model on held batches


def shipped_config(task: str, data: Path, args, *, variant: str, workers: int, on: str):
    """The shipped GPU experiment's train config at this benchmark's size and settings."""
    train = base_experiment(EXPERIMENTS[task])["train"]
    train["data"] = {
        **train["data"],
        "path": str(data),
        "image_size": args.size,
        "batch_size": args.batch_size or train["data"]["batch_size"],
        "num_workers": workers,
        "augment_on": on,
    }
    if task == "seg":
        train["model"] = {**train["model"], "encoder": "tu-tf_efficientnet_lite0"}
    else:
        train["model"] = {**train["model"], "arch": "efficientnet_lite0"}
        # Crops from twice the input size, as the shipped experiment cuts them from 512 at 256.
        train["input"] = {**train["input"], "mask_source": "gt", "source_size": 2 * args.size}
    return TrainConfig.from_dict(
        {
            **train,
            **VARIANTS[variant],
            "task": task,
            "epochs": 1,
            "device": args.device,
            "log_images": 0,
        }
    )


def _timed(device: torch.device, run) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _loader(config: TrainConfig, device: torch.device):
    bundle = open_training_data(config)
    if config.task == "cls":  # as the engine's run: a classifier trains on labelled images
        bundle = bundle.with_splits(labelled(bundle.splits))
    on_loader = config.data.augment_on == "loader"
    augment = build_augmentation(config.data.augment) if on_loader else None
    dataset = bundle.dataset("train", augment, seed=config.seed)
    sampler = EpochSampler(len(dataset), config.seed, True)
    bs = config.data.batch_size
    loader = make_loader(dataset, sampler, bs, config.data.num_workers, device, drop_last=True)
    if len(loader) == 0:  # chained epochs of nothing would never end
        raise ValueError(
            f"{config.data.path}: {len(dataset)} training images, fewer than one batch of "
            f"{bs}; lower --batch-size or give more data"
        )
    return loader, dataset.labels()


def _warm(config: TrainConfig) -> int:
    """Warm-up batches for a loader-fed figure: past the loader's prefetch queue (4 per
    worker, filled while the first steps start up), so no timed batch was made earlier."""
    return WARM_BATCHES + 4 * config.data.num_workers


def _batches(loader, n: int):
    """``n`` batches from the loader, its epochs chained (a small data set runs out)."""
    return itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), n)


def model_rate(config: TrainConfig, batches: int) -> float:
    """Training steps on batches already on the device, img/s."""
    device = resolve_device(config.device)
    loader, labels = _loader(config, device)
    held = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        for b in _batches(loader, WARM_BATCHES + 1)
    ]
    t = build_training(config, device, labels, batches, pretrained=False)
    if config.compile and device.type == "cuda":
        t.model = torch.compile(t.model)
    train_one_epoch(t, held * WARM_BATCHES, 0, False)
    steps = [held[i % len(held)] for i in range(batches)]
    return (
        batches
        * config.data.batch_size
        / _timed(device, lambda: train_one_epoch(t, steps, 0, False))
    )


def loader_rate(config: TrainConfig, batches: int) -> float:
    """The engine's loader alone, img/s."""
    device = resolve_device(config.device)
    loader, _ = _loader(config, device)
    warm = _warm(config)
    stream = _batches(loader, warm + batches)
    for _ in itertools.islice(stream, warm):
        pass

    def drain():
        for batch in stream:
            batch["image"].to(device, non_blocking=True)

    return batches * config.data.batch_size / _timed(device, drain)


def epoch_rate(config: TrainConfig, batches: int) -> float:
    """The engine's training epoch over its loader (and device augmentation), img/s."""
    device = resolve_device(config.device)
    loader, labels = _loader(config, device)
    t = build_training(config, device, labels, batches, pretrained=False)
    if config.compile and device.type == "cuda":
        t.model = torch.compile(t.model)
    warm = _warm(config)
    stream = _batches(loader, warm + batches)
    train_one_epoch(t, itertools.islice(stream, warm), 0, False)
    return (
        batches
        * config.data.batch_size
        / _timed(device, lambda: train_one_epoch(t, stream, 0, False))
    )


def measure(args, data: Path) -> dict:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the engine's loop sets it
    variants = list(args.variants)
    if device.type != "cuda" and len(variants) > 1:
        print(f"[gpu_path] on {device} amp, channels_last and compile are off: one variant, fp32")
        variants = ["fp32"]
    rows = []
    for task in args.tasks:
        first = shipped_config(task, data, args, variant=variants[0], workers=0, on="loader")
        base = {"task": task, "device": str(device), "batch": first.data.batch_size}
        model = {}
        for v in variants:
            config = shipped_config(
                task, data, args, variant=v, workers=args.workers[0], on="loader"
            )
            model[v] = model_rate(config, args.batches)
            rows.append({**base, "rate": "model", "variant": v, "img_s": model[v]})
        for workers, on in itertools.product(args.workers, args.augment_on):
            config = shipped_config(task, data, args, variant=variants[0], workers=workers, on=on)
            where = {"workers": workers, "augment_on": on}
            rows.append(
                {**base, **where, "rate": "loader", "img_s": loader_rate(config, args.batches)}
            )
            for v in variants:
                config = shipped_config(task, data, args, variant=v, workers=workers, on=on)
                rate = epoch_rate(config, args.batches)
                rows.append(
                    {
                        **base,
                        **where,
                        "rate": "epoch",
                        "variant": v,
                        "img_s": rate,
                        "fraction_of_model": rate / model[v],
                    }
                )
    return {
        "device": device_name(device),
        "size": args.size,
        "batches": args.batches,
        "data": str(data),
        "rows": rows,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def print_table(result: dict) -> None:
    print(
        f"\n{result['device']}: {result['size']} px, {result['batches']} timed batches per "
        "figure, img/s\n"
    )
    print(
        f"{'task':4} | {'batch':>5} | {'rate':6} | {'variant':11} | {'workers':>7} | "
        f"{'augment on':10} | {'img/s':>8} | of model"
    )
    print("-" * 86)
    for r in result["rows"]:
        fraction = f"{r['fraction_of_model']:.0%}" if "fraction_of_model" in r else ""
        print(
            f"{r['task']:4} | {r['batch']:5} | {r['rate']:6} | {r.get('variant', '-'):11} | "
            f"{r.get('workers', '-'):>7} | {r.get('augment_on', '-'):10} | "
            f"{r['img_s']:8.1f} | {fraction}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED if SHARED.is_dir() else None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tasks", nargs="+", default=["seg", "cls"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch (default: each shipped GPU experiment's own, seg 16, cls 32)",
    )
    parser.add_argument("--batches", type=int, default=40, help="timed batches per figure")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--augment-on", nargs="+", default=["loader", "device"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    checks = [
        (set(args.tasks) - set(EXPERIMENTS), f"--tasks takes {sorted(EXPERIMENTS)}"),
        (set(args.variants) - set(VARIANTS), f"--variants takes {list(VARIANTS)}"),
        (set(args.augment_on) - {"loader", "device"}, "--augment-on takes loader and device"),
    ]
    for unknown, fix in checks:
        if unknown:
            parser.error(f"unknown {sorted(unknown)}: {fix}")
    if args.batches < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error(
            f"--batches and --batch-size must be at least 1, got {args.batches}, {args.batch_size}"
        )
    if any(w < 0 for w in args.workers):
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    if args.size % 32:
        parser.error(f"--size must be a multiple of 32 (the segmenter's stride), got {args.size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synth"
            print(f"[gpu_path] no --data and no {SHARED}: writing 200 synthetic images")
            write_synthetic(data, SynthConfig(n=200, size=2 * args.size, seed=0))
        # The engine decodes the data into its cache once per machine, before any timing.
        result = measure(args, data)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
