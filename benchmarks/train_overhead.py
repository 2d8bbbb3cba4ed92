"""Epoch time of the same training as a bare engine loop and inside the Ray Train trainable
(Tune trial -> TorchTrainer -> worker), side by side in one run, plus per-trial start-up.

    python benchmarks/train_overhead.py [--tasks seg cls] [--epochs 3]
                                        [--data synthetic:400:128:0] [--image-size 96]
                                        [--cpus-per-worker N] [--json out.json]

Both sides are timed the same way: the interval between two consecutive epoch reports
(epochs 2..N), which holds training, validation, TensorBoard logging, checkpoint writing
and, for Ray, checkpoint persistence and the report's round trip to Tune. Start-up is the
time from launch to the first report minus that first epoch's own training+validation:
for the bare loop, opening data and building the model; for Ray, also the Tune trial
actor, the Train controller, the worker process and their imports.

Two Ray launchers are measured: the Ray Train trainable (``resources.launcher: train``)
and the inline launcher (``launcher: inline``, the loop inside the Tune trial). The order
is bare, Train (one search, two trials one after the other), inline (the same), bare
again, so that a slow spell of a shared machine falls on every side. Ray Train hands
reports to Tune on its 2 s health-check poll, so single intervals jitter by up to 2 s:
epoch times are the mean over epochs 2..N of every run, (last - first report) / (N - 1).
The first trial's start-up includes the fresh Ray instance warming up; the second one's
is what every further trial of a running search pays.

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

LAUNCHERS = {"train": "Ray Train trainable", "inline": "inline launcher"}


def overhead_config(task: str, data: str, image_size: int) -> dict:
    return {
        "task": task,
        "seed": 0,
        "log_images": 4,
        # The engine's default loader (data.num_workers workers, persistent): as users run it.
        "data": {"path": data, "image_size": image_size, "batch_size": 16},
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


def ray_run(
    train: dict, epochs: int, cpus_per_worker: float, launcher: str, tmp: str
) -> list[tuple[list, list]]:
    """Per trial: report-to-report intervals seen by Tune, and the worker's own epoch times."""
    import ray

    from search.experiment import load_experiment
    from search.runner import run_search

    exp_path = Path(tmp) / "exp.yaml"
    exp_path.write_text(
        yaml.safe_dump(
            {
                "name": f"overhead-{launcher}",
                "task": train["task"],
                "storage": f"{tmp}/search",
                "train": train,
                "space": {"seed": {"choice": [0]}},
                "search": {
                    "num_samples": 2,
                    "max_concurrent": 1,
                    "max_epochs": epochs,
                    "scheduler": {"name": "fifo"},
                },
                "resources": {
                    "workers": 1,
                    "cpus_per_worker": cpus_per_worker,
                    "gpus_per_worker": "auto",
                    "launcher": launcher,
                },
            },
            sort_keys=False,
        )
    )
    run_search(load_experiment(exp_path))
    ray.shutdown()
    trials = []
    for trial in (Path(tmp) / "search" / f"overhead-{launcher}").glob("trial_*"):
        with open(trial / "progress.csv") as fh:
            rows = list(csv.DictReader(fh))
        trials.append(
            (
                float(rows[0]["timestamp"]),
                [float(r["time_this_iter_s"]) for r in rows],
                [float(r["epoch_time_s"]) for r in rows],
            )
        )
    return [(intervals, inner) for _, intervals, inner in sorted(trials)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=["seg", "cls"], default=["seg", "cls"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="synthetic:400:128:0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--cpus-per-worker", type=float, default=(os.cpu_count() or 1) - 0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 holds the start-up")

    results = {}
    mean = statistics.mean
    for task in args.tasks:
        train = overhead_config(task, args.data, args.image_size)
        with tempfile.TemporaryDirectory() as tmp:
            bare1, startup1 = bare_run(train, args.epochs, f"{tmp}/bare1")
            runs = {
                launcher: ray_run(train, args.epochs, args.cpus_per_worker, launcher, tmp)
                for launcher in LAUNCHERS
            }
            bare2, startup2 = bare_run(train, args.epochs, f"{tmp}/bare2")
        r = results[task] = {
            "bare_interval_s": [bare1, bare2],
            "bare_startup_s": [startup1, startup2],
            "bare_epoch_s": mean(bare1[1:] + bare2[1:]),
        }
        for launcher, trials in runs.items():
            epoch = mean([i for intervals, _ in trials for i in intervals[1:]])
            inner = mean([e for _, epochs in trials for e in epochs[1:]])
            r[launcher] = {
                "interval_s": [t[0] for t in trials],
                "inner_epoch_s": [t[1] for t in trials],
                "startup_s": [intervals[0] - epochs[0] for intervals, epochs in trials],
                "epoch_s": epoch,
                "inner_s": inner,
                "ratio": epoch / r["bare_epoch_s"],
                "inner_ratio": inner / r["bare_epoch_s"],
            }

    import torch

    print(
        f"\n{args.epochs} epochs on {args.data} at {args.image_size} px; torch threads: "
        f"{torch.get_num_threads()} bare, {max(1, round(args.cpus_per_worker))} in Ray "
        f"(cpus_per_worker={args.cpus_per_worker:g})\n"
    )
    print(
        f"{'task':4} | {'run':19} | {'epoch s':>7} | {'ratio':>5} | "
        f"{'train+val s (ratio)':>19} | {'start-up s, 1st / 2nd trial':>27}"
    )
    print("-" * 96)
    for task, r in results.items():
        startups = " / ".join(f"{s:.1f}" for s in r["bare_startup_s"])
        print(
            f"{task:4} | {'bare loop':19} | {r['bare_epoch_s']:7.2f} | {1:5.2f} | "
            f"{r['bare_epoch_s']:11.2f} (1.00) | {startups:>27}"
        )
        for launcher, label in LAUNCHERS.items():
            x = r[launcher]
            startups = " / ".join(f"{s:.1f}" for s in x["startup_s"])
            print(
                f"{task:4} | {label:19} | {x['epoch_s']:7.2f} | {x['ratio']:5.2f} | "
                f"{x['inner_s']:11.2f} ({x['inner_ratio']:.2f}) | {startups:>27}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
