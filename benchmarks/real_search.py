"""Does the search buy anything over one sensible run? On the real ISIC 2017 images, at an
equal budget of trial-epochs: the default run, random + FIFO and TPE + ASHA, several seeds.

    python benchmarks/real_search.py --data ../shared/data/isic2017 [--seeds 0 1 2]
        [--budget 12] [--max-epochs 4] [--image-size 64] [--experiment isic2017_cpu_cls]
        [--all-methods] [--json out.json] [--log search.log]

Every method goes through the project's own stack (the shipped experiment, its space,
``create_searcher`` / ``create_scheduler``, ``search.budget_epochs``), with the inline
launcher and the data at ``--image-size`` (a small cache so that it fits in tens of
minutes on a 2-core CPU):
- **default run**: the experiment's train config as shipped, no search, one run of
  ``--budget`` epochs on both cores (the whole budget in one run: the strongest baseline);
- **random + FIFO**: random samples of the experiment's space, every trial to
  ``--max-epochs``, two at a time;
- **TPE + ASHA**: Optuna's TPE and ASHA (grace 1, reduction 2), two at a time.
``--all-methods`` adds TPE + FIFO and random + ASHA, which tell which half helps.

The seed sets the training seed and the searcher's seed of every method. For each run the
script records the best validation AUC after every trial-epoch, then evaluates the model
the run would hand on (its best trial's best checkpoint) on the lesion-grouped test split
carved from the training images, which no method selects on: with 30 melanomas among the
150 official validation images, a best-of-many validation figure flatters whoever tried
more, and the held-out column says whether the choice generalises.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ray import tune

SEARCHES = {
    "random + FIFO": {"searcher": "random", "scheduler": "fifo"},
    "TPE + ASHA": {"searcher": "optuna", "scheduler": "asha"},
}
MIXED = {
    "TPE + FIFO": {"searcher": "optuna", "scheduler": "fifo"},
    "random + ASHA": {"searcher": "random", "scheduler": "asha"},
}
DEFAULT = "default run"


class Curve(tune.Callback):
    """Best value so far after each reported trial-epoch, in the order Tune saw them."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best: list[float] = []
        self.trials: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.trials.add(trial.trial_id)
        value = float(result.get(self.metric, float("nan")))
        previous = self.best[-1] if self.best else float("-inf")
        self.best.append(max(previous, value) if value == value else previous)


def base_experiment(name: str) -> dict:
    """The shipped experiment as a plain dict."""
    from experiments import resolve

    return yaml.safe_load(resolve(name).read_text())


def experiment(base: dict, method: str, seed: int, args, storage: str) -> dict:
    """The benchmark's version of ``base`` for one method and seed."""
    train = json.loads(json.dumps(base["train"]))
    train["seed"] = seed
    train["log_images"] = 0
    train["data"] = {**train["data"], "path": args.data, "image_size": args.image_size}
    exp = {
        "name": f"{method.replace(' + ', '-').replace(' ', '-')}-{seed}",
        "task": base["task"],
        "storage": storage,
        "train": train,
    }
    if method == DEFAULT:
        return {
            **exp,
            "space": {},
            "search": {
                "num_samples": 1,
                "max_epochs": args.budget,
                "budget_epochs": args.budget,
                "searcher": {"name": "random", "seed": seed},
                "scheduler": {"name": "fifo"},
            },
            "resources": {"workers": 1, "cpus_per_worker": 2, "launcher": "inline"},
        }
    kinds = {**SEARCHES, **MIXED}[method]
    return {
        **exp,
        "space": base["space"],
        "search": {
            # Enough trials that the budget, not the trial count, ends every run.
            "num_samples": args.budget,
            "max_epochs": args.max_epochs,
            "max_concurrent": 2,
            "budget_epochs": args.budget,
            "searcher": {
                "name": kinds["searcher"],
                "seed": seed,
                "n_startup_trials": max(2, args.budget // args.max_epochs // 2),
            },
            "scheduler": {"name": kinds["scheduler"], "grace_period": 1, "reduction_factor": 2},
        },
        # Two trials at a time on two cores, one torch thread each.
        "resources": {"workers": 1, "cpus_per_worker": 1, "launcher": "inline"},
    }


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def held_out(exp, storage: str) -> tuple[float | None, str | None]:
    """Test AUC of the checkpoint the run would hand on, and that trial's id."""
    from melanoma.engine.evaluate import evaluate_run
    from search.runner import trial_table

    rows, _ = trial_table(exp.name, storage)
    best = next((r for r in rows if r["checkpoint"]), None)
    if best is None:
        return None, None
    metrics = evaluate_run(Path(best["checkpoint"]), task=exp.task, split="test")
    return float(metrics["auc"]), best["trial_id"]


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def summarise(runs: dict[str, list[dict]], target: float) -> dict:
    """Per method: best validation AUC, held-out AUC, trial-epochs to target, wins."""
    default = {r["seed"]: r for r in runs[DEFAULT]}
    summary = {}
    for name, rs in runs.items():
        finals = [r["curve"][-1] for r in rs]
        tests = [r["test_auc"] for r in rs if r["test_auc"] is not None]
        hits = [epochs_to_reach(r["curve"], target) for r in rs]
        reached = [h for h in hits if h is not None]
        summary[name] = {
            "val_best": finals,
            "test_auc": tests,
            "epochs_to_target": hits,
            "median_epochs_to_target": statistics.median(reached) if reached else None,
            "trials_mean": statistics.mean(r["trials"] for r in rs),
            "wall_mean_s": statistics.mean(r["wall_s"] for r in rs),
            "beats_default_val": sum(r["curve"][-1] > default[r["seed"]]["curve"][-1] for r in rs),
            "beats_default_test": sum(
                (r["test_auc"] or 0) > (default[r["seed"]]["test_auc"] or 0) for r in rs
            ),
        }
    return summary


def print_table(summary: dict, seeds: int) -> None:
    print(
        f"{'method':14} | {'best val AUC, mean (min-max)':>28} | {'test AUC of its pick':>24} | "
        f"{'beats default (val / test)':>26} | {'trial-epochs to target':>22} | "
        f"{'trials':>6} | {'wall s':>6}"
    )
    print("-" * 148)
    for name, s in summary.items():
        median = s["median_epochs_to_target"]
        to_target = f"{median:g} ({sum(h is not None for h in s['epochs_to_target'])} of {seeds})"
        wins = "-" if name == DEFAULT else f"{s['beats_default_val']} / {s['beats_default_test']}"
        tests = spread(s["test_auc"]) if s["test_auc"] else "-"
        print(
            f"{name:14} | {spread(s['val_best']):>28} | {tests:>24} | {wins:>26} | "
            f"{to_target if median is not None else 'never':>22} | {s['trials_mean']:6.1f} | "
            f"{s['wall_mean_s']:6.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the ISIC 2017 folder")
    parser.add_argument("--experiment", default="isic2017_cpu_cls")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=12, help="trial-epochs per run")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--log", type=Path, default=None, help="search output (default: hidden)")
    parser.add_argument("--all-methods", action="store_true", help="add TPE+FIFO, random+ASHA")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.budget < args.max_epochs:
        parser.error("--budget must hold at least one full trial (>= --max-epochs)")
    base = base_experiment(args.experiment)
    if base["task"] != "cls":
        parser.error(f"--experiment {args.experiment} is a {base['task']} search; give a cls one")
    methods = [DEFAULT, *SEARCHES, *(MIXED if args.all_methods else ())]

    import ray

    from search.experiment import experiment_from_dict
    from search.runner import connect, run_search

    runs: dict[str, list[dict]] = {name: [] for name in methods}
    log = open(args.log or "/dev/null", "w")  # noqa: SIM115 - held for the whole run
    with tempfile.TemporaryDirectory() as tmp:
        connect(None)
        for seed in args.seeds:
            for name in methods:
                storage = f"{tmp}/search"
                exp = experiment_from_dict(experiment(base, name, seed, args, storage))
                curve = Curve(exp.metric)
                started = time.perf_counter()
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    run_search(exp, callbacks=[curve])
                    wall = time.perf_counter() - started
                    test_auc, trial = held_out(exp, storage)
                runs[name].append(
                    {
                        "seed": seed,
                        "curve": curve.best,
                        "trials": len(curve.trials),
                        "picked": trial,
                        "test_auc": test_auc,
                        "wall_s": wall,
                    }
                )
                shown = "-" if test_auc is None else f"{test_auc:.4f}"
                print(
                    f"seed {seed} {name:14}: best val AUC {curve.best[-1]:.4f} after "
                    f"{len(curve.best)} trial-epochs, {len(curve.trials)} trials, its pick's "
                    f"test AUC {shown}, {wall:.0f} s",
                    flush=True,
                )
        ray.shutdown()
    log.close()

    # Target: what the default run reaches, median over seeds.
    target = args.target or statistics.median(r["curve"][-1] for r in runs[DEFAULT])
    print(
        f"\n{args.experiment} on {args.data} at {args.image_size} px; budget {args.budget} "
        f"trial-epochs per run, search trials up to {args.max_epochs} epochs; seeds "
        f"{args.seeds}; target val AUC {target:.4f} (the default run's median)\n"
    )
    summary = summarise(runs, target)
    print_table(summary, len(args.seeds))
    if args.json:
        args.json.write_text(
            json.dumps({"target": target, "summary": summary, "runs": runs}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
