"""Epoch time of the same training as a bare engine loop and inside the Ray Train trainable
(Tune trial -> TorchTrainer -> worker), side by side in one run, plus per-trial start-up.

    python benchmarks/train_overhead.py [--tasks seg cls] [--epochs 3]
                                        [--data synthetic:600:128:0] [--image-size 96]
                                        [--cpus-per-worker N] [--json out.json]

Both sides are timed the same way: the interval between two consecutive epoch reports
(epochs 2..N), which holds training, validation, TensorBoard logging, checkpoint writing
and, for Ray, checkpoint persistence and the report's round trip to Tune. Start-up is the
time from launch to the first report minus that first epoch's own training+validation:
for the bare loop, opening data and building the model; for Ray, also the Tune trial
actor, the Train controller, the worker process and their imports.

The Ray worker gets every CPU but the trial driver's share (``--cpus-per-worker``,
default: CPUs - 0.05), so both sides run torch on the same number of threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml


def train_config(task: str, data: str, image_size: int) -> dict:
    return {
        "task": task,
        "seed": 0,
        "log_images": 4,
        "data": {"path": data, "image_size": image_size, "batch_size": 16, "num_workers": 0},
        "model": {"arch": "fpn", "encoder": "resnet18"} if task == "seg" else {"arch": "resnet18"},
        # The classifier sees ground-truth-masked images: no segmenter stage in the timing.
        **({"input": {"mode": "masked", "mask_source": "gt"}} if task == "cls" else {}),
    }


def bare_run(train: dict, epochs: int, out: str) -> tuple[list[float], float]:
    """Report-to-report intervals of the bare loop, and its start-up."""
    from melanoma.engine import Runtime, TrainConfig, fit

    stamps: list[float] = []
    started = time.perf_counter()
    result = fit(
        TrainConfig.from_dict({**train, "epochs": epochs, "out": out}),
        Runtime(progress=False, report=lambda metrics, ckpt: stamps.append(time.perf_counter())),
    )
    intervals = [b - a for a, b in zip([started, *stamps], stamps, strict=False)]
    return intervals, intervals[0] - result.history[0]["time_s"]


def ray_run(train: dict, epochs: int, cpus_per_worker: float, tmp: str) -> tuple[list, list]:
    """Report-to-report intervals seen by Tune, and the worker's own epoch times."""
    import ray

    from search.experiment import load_experiment
    from search.runner import run_search

    exp_path = Path(tmp) / "exp.yaml"
    exp_path.write_text(
        yaml.safe_dump(
            {
                "name": "overhead",
                "task": train["task"],
                "storage": f"{tmp}/search",
                "train": train,
                "space": {"seed": {"choice": [0]}},
                "search": {"num_samples": 1, "max_epochs": epochs, "scheduler": {"name": "fifo"}},
                "resources": {
                    "workers": 1,
                    "cpus_per_worker": cpus_per_worker,
                    "gpus_per_worker": "auto",
                },
            },
            sort_keys=False,
        )
    )
    run_search(load_experiment(exp_path))
    ray.shutdown()
    trial = next((Path(tmp) / "search" / "overhead").glob("trial_*"))
    with open(trial / "progress.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["time_this_iter_s"]) for r in rows], [float(r["epoch_time_s"]) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=["seg", "cls"], default=["seg", "cls"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="synthetic:600:128:0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--cpus-per-worker", type=float, default=(os.cpu_count() or 1) - 0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 holds the start-up")

    results = {}
    for task in args.tasks:
        train = train_config(task, args.data, args.image_size)
        with tempfile.TemporaryDirectory() as tmp:
            bare, bare_startup = bare_run(train, args.epochs, f"{tmp}/bare")
            intervals, inner = ray_run(train, args.epochs, args.cpus_per_worker, tmp)
        results[task] = {
            "bare_interval_s": bare,
            "bare_startup_s": bare_startup,
            "ray_interval_s": intervals,
            "ray_inner_epoch_s": inner,
            "ray_startup_s": intervals[0] - inner[0],
            "bare_median_s": statistics.median(bare[1:]),
            "ray_median_s": statistics.median(intervals[1:]),
            "ray_inner_median_s": statistics.median(inner[1:]),
        }
        results[task]["ratio"] = results[task]["ray_median_s"] / results[task]["bare_median_s"]

    import torch

    print(
        f"\n{args.epochs} epochs on {args.data} at {args.image_size} px; torch threads: "
        f"{torch.get_num_threads()} bare, {max(1, round(args.cpus_per_worker))} in the Ray worker "
        f"(cpus_per_worker={args.cpus_per_worker:g})\n"
    )
    print(
        f"{'task':4} | {'bare epoch s':>12} | {'Ray epoch s':>11} | {'ratio':>5} | "
        f"{'Ray train+val s':>15} | {'bare start-up s':>15} | {'Ray start-up s':>14}"
    )
    print("-" * 98)
    for task, r in results.items():
        print(
            f"{task:4} | {r['bare_median_s']:12.2f} | {r['ray_median_s']:11.2f} | "
            f"{r['ratio']:5.2f} | {r['ray_inner_median_s']:15.2f} | {r['bare_startup_s']:15.2f} | "
            f"{r['ray_startup_s']:14.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
