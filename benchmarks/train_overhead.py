"""Epoch time of the same training as a bare engine loop and inside the Ray Train trainable
(Tune trial -> TorchTrainer -> worker), side by side in one run, plus per-trial start-up.

    python benchmarks/train_overhead.py [--task seg|cls] [--epochs 4] [--data synthetic:400:128:0]
                                        [--image-size 64] [--json out.json]

Ray epoch time is the interval between two reports seen by Tune (epochs 2..N: training,
validation, checkpoint persistence, reporting). Start-up is the first report's interval
minus that epoch's own training time.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["seg", "cls"], default="seg")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data", default="synthetic:400:128:0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import ray

    from melanoma.engine import Runtime, TrainConfig, fit
    from search.experiment import load_experiment
    from search.runner import run_search

    train = {
        "task": args.task,
        "seed": 0,
        "log_images": 4,
        "data": {
            "path": args.data,
            "image_size": args.image_size,
            "batch_size": 16,
            "num_workers": 0,
        },
        "model": {"arch": "fpn", "encoder": "resnet18"}
        if args.task == "seg"
        else {"arch": "resnet18"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        bare = fit(
            TrainConfig.from_dict({**train, "epochs": args.epochs, "out": f"{tmp}/bare"}),
            Runtime(progress=False),
        )
        bare_epochs = [h["time_s"] for h in bare.history]

        exp_path = Path(tmp) / "exp.yaml"
        exp_path.write_text(
            yaml.safe_dump(
                {
                    "name": "overhead",
                    "task": args.task,
                    "storage": f"{tmp}/search",
                    "train": train,
                    "space": {"seed": {"choice": [0]}},
                    "search": {
                        "num_samples": 1,
                        "max_epochs": args.epochs,
                        "scheduler": {"name": "fifo"},
                    },
                    "resources": {
                        "workers": 1,
                        "cpus_per_worker": args.cpus_per_worker,
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
    intervals = [float(r["time_this_iter_s"]) for r in rows]
    inner = [float(r["epoch_time_s"]) for r in rows]
    startup = intervals[0] - inner[0]
    bare_median = statistics.median(bare_epochs[1:])
    ray_median = statistics.median(intervals[1:])
    print(f"\n{args.task}: {args.epochs} epochs on {args.data} at {args.image_size} px\n")
    print(f"{'':34} | {'bare loop':>10} | {'Ray trainable':>13} | ratio")
    print("-" * 72)
    print(
        f"{'median epoch time, epochs 2..N (s)':34} | {bare_median:10.2f} | {ray_median:13.2f} | "
        f"{ray_median / bare_median:.2f}"
    )
    inner_median = statistics.median(inner[1:])
    print(
        f"{'  of which training+validation (s)':34} | {bare_median:10.2f} | {inner_median:13.2f} | "
        f"{inner_median / bare_median:.2f}"
    )
    print(f"{'per-trial start-up (s)':34} | {'-':>10} | {startup:13.2f} |")
    import torch

    print(
        f"\ntorch threads: {torch.get_num_threads()} here, "
        f"{max(1, round(args.cpus_per_worker))} in the Ray worker "
        f"(cpus_per_worker={args.cpus_per_worker:g})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "bare_epoch_s": bare_epochs,
                    "ray_interval_s": intervals,
                    "ray_inner_epoch_s": inner,
                    "startup_s": startup,
                    "ratio": ray_median / bare_median,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
