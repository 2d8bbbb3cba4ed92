"""Does the search hand on a model that beats one sensible run on images nobody chose on?

    python benchmarks/real_search.py --data ../shared/data/isic2017 [--seeds 0 1 2]
        [--budget 12] [--max-epochs 4] [--image-size 64] [--top-k 2] [--folds 3]
        [--experiment isic2017_cpu_cls] [--masks predicted|gt] [--segmenter RUN]
        [--seg-epochs 4] [--json out.json] [--log search.log]
    # GPU-sized: --image-size 256 --budget 60 --max-epochs 10 --folds 5 --top-k 3
    #            --seg-epochs 10 --experiment isic2017_gpu_cls (resources as it says)

On the real ISIC 2017 images, through the project's own stack (the shipped experiment and
its space, the inline launcher, ``melanoma cv`` as Tune trials, the paired bootstrap), five
arms per seed, each handing on a model or an ensemble:
- **default run**: the experiment's train config as shipped, one run of ``--budget``
  epochs on both cores;
- **seed ensemble**: ``--budget / --max-epochs`` default runs of ``--max-epochs`` epochs
  with other seeds, averaged: the search's compute without a search;
- **search pick**: TPE + ASHA over the experiment's space for ``--budget`` trial-epochs,
  its best trial's best checkpoint;
- **search + ensemble**: the same search's trials, ensembled greedily on validation;
- **search + cv**: the search's ``--top-k`` trials cross-validated on ``--folds`` folds of
  the training split, fold models ensembled and chosen (members, weights) on the pooled
  out-of-fold predictions (``cascade build --select-on oof``'s selection).
Each arm's pick is scored once on the lesion-grouped test split carved from the training
images, which nothing selected on: its AUC, its paired bootstrap differences to the default
run and to the seed ensemble on the same images with the 95% interval of each, and the
gap between the figure it was chosen on (validation AUC, or out-of-fold AUC for the cv arm)
and held-out.

Lesion crops and masked images see the masks the cascade would give them (``--masks
predicted``, the default): one segmenter of the shipped segmenter experiment is trained
once for the whole run (``--seg-epochs`` at the benchmark's image size, or ``--segmenter
RUN`` reuses one), and every classifier trains on its out-of-fold masks and is validated
and tested on its predicted masks. ``--masks gt`` measures with ground-truth masks, which
the cascade never has (an oracle: it flatters crop classifiers).
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

import numpy as np
import yaml

DEFAULT = "default run"
SEEDS = "seed ensemble"
ARMS = (DEFAULT, SEEDS, "search pick", "search + ensemble", "search + cv")
SEGMENTER_EXPERIMENT = {
    "isic2017_cpu_cls": "isic2017_cpu_seg",
    "isic2017_gpu_cls": "isic2017_gpu_seg",
}
SEARCH = {"searcher": "optuna", "scheduler": "asha"}
ENSEMBLE_ROUNDS = 5


def base_experiment(name: str) -> dict:
    """The shipped experiment as a plain dict."""
    from experiments import resolve

    return yaml.safe_load(resolve(name).read_text())


def experiment(base: dict, kind: str, seed: int, args, storage: str, epochs: int) -> dict:
    """The benchmark's version of ``base``: ``kind`` "default" (the train config, one run
    of ``epochs``) or "search" (TPE + ASHA over its space, ``args.budget`` trial-epochs)."""
    train = json.loads(json.dumps(base["train"]))
    train["seed"] = seed
    train["log_images"] = 0
    train["data"] = {**train["data"], "path": args.data, "image_size": args.image_size}
    train["input"] = {**train.get("input", {}), "mask_source": args.mask_source}
    exp = {"name": f"{kind}-{seed}", "task": base["task"], "storage": storage, "train": train}
    if kind == "default":
        return {
            **exp,
            "space": {},
            "search": {
                "num_samples": 1,
                "max_epochs": epochs,
                "searcher": {"name": "random", "seed": seed},
                "scheduler": {"name": "fifo"},
            },
            "resources": {"workers": 1, "cpus_per_worker": 2, "launcher": "inline"},
        }
    return {
        **exp,
        "space": base["space"],
        "search": {
            # Enough trials that the budget, not the trial count, ends the search.
            "num_samples": args.budget,
            "max_epochs": args.max_epochs,
            "max_concurrent": 2,
            "budget_epochs": args.budget,
            "searcher": {
                "name": SEARCH["searcher"],
                "seed": seed,
                "n_startup_trials": max(2, args.budget // args.max_epochs // 2),
            },
            "scheduler": {"name": SEARCH["scheduler"], "grace_period": 1, "reduction_factor": 2},
        },
        # Two trials at a time on two cores, one torch thread each.
        "resources": {"workers": 1, "cpus_per_worker": 1, "launcher": "inline"},
    }


def train_segmenter(args, tmp: Path, log) -> Path:
    """One segmenter of the shipped segmenter experiment at the benchmark's image size,
    whose masks every mask-using classifier of the run trains (out of fold), validates
    and is tested on."""
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import train

    name = SEGMENTER_EXPERIMENT.get(args.experiment, "isic2017_cpu_seg")
    config = json.loads(json.dumps(base_experiment(name)["train"]))
    config["data"] = {**config["data"], "path": args.data, "image_size": args.image_size}
    config.update(epochs=args.seg_epochs, log_images=0, out=str(tmp / "segmenter"))
    started = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        result = train(TrainConfig.from_dict(config), Runtime(progress=False))
    print(
        f"segmenter ({name}, {args.seg_epochs} epochs): validation Jaccard "
        f"{result.best_metrics[result.metric]:.4f}, {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return Path(config["out"])


def member_name(seed: int, j: int) -> str:
    """The search name of the seed ensemble's ``j``-th member run of ``seed``."""
    return f"member-{seed}-{j}"


def predictions(checkpoint: Path, split: str) -> dict[str, np.ndarray]:
    """A checkpoint's melanoma probabilities on ``split`` of its data as split for the
    search (a fold model on the official validation and test splits too)."""
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.evaluate import score_split
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import training_data

    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    # The official splits, also for a fold model; the masks it ran on (predicted on val
    # and test when it names a segmenter).
    whole = config.with_overrides({"data.folds": 0, "data.fold": 0})
    bundle, masks = training_data(whole, Runtime(progress=False), keep_copy=False)
    _, out = score_split(config, state["model"], bundle, split, "cpu", masks=masks)
    ids = np.array([e.sample.id for e in bundle.splits.entries[split]])
    return {"id": ids, "label": out["labels"], "prob": out["probs"]}


def mean_of(parts: list[dict], weights: list[float] | None = None) -> dict:
    """The weighted mean probability of several models' predictions of the same images."""
    from melanoma.metrics.paired import aligned

    weights = weights or [1.0] * len(parts)
    first = parts[0]
    total = sum(
        w * aligned(first["id"], first["prob"], p["id"], p["prob"])[2]
        for p, w in zip(parts, weights, strict=True)
    )
    return {"id": first["id"], "label": first["label"], "prob": total / sum(weights)}


def auc(pred: dict) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(pred["label"], pred["prob"]))


def run_exp(exp_dict: dict) -> tuple[list[dict], float]:
    """Run one experiment; its trials (best first) and the wall time."""
    from search.experiment import experiment_from_dict
    from search.runner import run_search, trial_table

    exp = experiment_from_dict(exp_dict)
    started = time.perf_counter()
    run_search(exp)
    rows, _ = trial_table(exp.name, exp.storage)
    return [r for r in rows if r["checkpoint"]], time.perf_counter() - started


def checkpoint_file(row: dict) -> Path:
    from trainables.train_loop import CHECKPOINT_FILE

    return Path(row["checkpoint"]) / CHECKPOINT_FILE


def arm_default(base, seed, args, storage) -> dict:
    rows, wall = run_exp(experiment(base, "default", seed, args, storage, args.budget))
    ckpt = checkpoint_file(rows[0])
    val = predictions(ckpt, "val")
    return {
        "chosen_on": auc(val),
        "val": val,
        "test": predictions(ckpt, "test"),
        "epochs": args.budget,
        "wall_s": wall,
    }


def arm_seed_ensemble(base, seed, args, storage) -> dict:
    members, wall = args.budget // args.max_epochs, 0.0
    vals, tests = [], []
    for j in range(members):
        exp = experiment(base, "default", seed * 1000 + j + 1, args, storage, args.max_epochs)
        exp["name"] = member_name(seed, j)  # not default-<seed>: the next seed's default run
        rows, took = run_exp(exp)
        wall += took
        vals.append(predictions(checkpoint_file(rows[0]), "val"))
        tests.append(predictions(checkpoint_file(rows[0]), "test"))
    val = mean_of(vals)
    return {
        "chosen_on": auc(val),
        "val": val,
        "test": mean_of(tests),
        "epochs": members * args.max_epochs,
        "wall_s": wall,
    }


def arms_of_the_search(base, seed, args, storage, tmp: Path) -> dict[str, dict]:
    """The search pick, the search + greedy validation ensemble, and the search's top-k
    cross-validated and chosen on out-of-fold predictions: from one search."""
    from melanoma.cascade.ensemble import greedy_selection
    from melanoma.cascade.oof_selection import choose_classifiers, cv_candidates
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.config import TrainConfig
    from search.cv import run_cv
    from search.experiment import ResourcesConfig

    rows, wall = run_exp(experiment(base, "search", seed, args, storage, args.max_epochs))
    vals = [predictions(checkpoint_file(r), "val") for r in rows]
    tests = [predictions(checkpoint_file(r), "test") for r in rows]
    out = {
        "search pick": {
            "chosen_on": auc(vals[0]),
            "val": vals[0],
            "test": tests[0],
            "epochs": args.budget,
            "wall_s": wall,
        }
    }
    probs = [_pair(vals[0], v)[2] for v in vals]  # every trial's, in the first one's order
    labels = vals[0]["label"]
    weights, _ = greedy_selection(
        probs, lambda p: auc({"label": labels, "prob": p}), ENSEMBLE_ROUNDS
    )
    picked = list(weights)
    val = mean_of([vals[i] for i in picked], [weights[i] for i in picked])
    out["search + ensemble"] = {
        "chosen_on": auc(val),
        "val": val,
        "test": mean_of([tests[i] for i in picked], [weights[i] for i in picked]),
        "epochs": args.budget,
        "wall_s": wall,
    }

    started = time.perf_counter()
    candidates = {}
    for r in rows[: args.top_k]:
        config = TrainConfig.from_dict(load_checkpoint(checkpoint_file(r))["config"])
        candidates[r["trial_id"]] = config.with_overrides({"epochs": args.max_epochs})
    cv_dir = tmp / f"cv-{seed}"
    run_cv(candidates, args.folds, cv_dir, resources=ResourcesConfig(cpus_per_worker=1))
    folders = cv_candidates([cv_dir / label for label in candidates])
    choice = choose_classifiers(folders, ENSEMBLE_ROUNDS, None)
    groups = list(choice.weights)
    group_preds = {
        split: [mean_of([predictions(c, split) for c in folders[i].checkpoints]) for i in groups]
        for split in ("val", "test")
    }
    w = [choice.weights[i] for i in groups]
    out["search + cv"] = {
        "chosen_on": choice.report["auc"],
        "val": mean_of(group_preds["val"], w),
        "test": mean_of(group_preds["test"], w),
        "epochs": args.budget + len(candidates) * args.folds * args.max_epochs,
        "wall_s": wall + time.perf_counter() - started,
    }
    return out


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per arm over seeds: held-out AUC, paired gain over the default run (with how often
    it is positive and its interval excludes zero), chosen-on minus held-out gap, cost."""
    summary = {}
    for name, rs in runs.items():
        gains = [r["vs_default"]["difference"] for r in rs if r.get("vs_default")]
        over_seeds = [r["vs_seeds"] for r in rs if r.get("vs_seeds")]
        summary[name] = {
            "test_auc": [r["test_auc"] for r in rs],
            "val_auc": [r["val_auc"] for r in rs],
            "gap": [r["chosen_on"] - r["test_auc"] for r in rs],
            "gain_vs_default": gains,
            "wins": sum(g > 0 for g in gains),
            "separated_wins": sum(r["vs_default"]["low"] > 0 for r in rs if r.get("vs_default")),
            "gain_vs_seeds": [v["difference"] for v in over_seeds],
            "wins_vs_seeds": sum(v["difference"] > 0 for v in over_seeds),
            "separated_wins_vs_seeds": sum(v["low"] > 0 for v in over_seeds),
            "epochs": statistics.mean(r["epochs"] for r in rs),
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
        }
    return summary


def mean_range(values: list[float]) -> str:
    """A figure over seeds: mean (min-max)."""
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):+.4f} ({min(values):+.4f} to {max(values):+.4f})"


def print_table(summary: dict, seeds: int) -> None:
    print(
        f"{'arm':18} | {'held-out AUC, mean (min-max)':>30} | {'paired gain vs default':>34} | "
        f"{'wins':>5} | {'paired gain vs seed ensemble':>34} | {'wins':>5} | "
        f"{'chosen-on minus held-out':>34} | {'epochs':>6} | {'wall s':>6}"
    )
    print("-" * 198)
    for name, s in summary.items():
        tests = mean_range(s["test_auc"])
        wins = "-" if name == DEFAULT else f"{s['wins']}/{seeds}"
        wins_seeds = "-" if name == SEEDS else f"{s.get('wins_vs_seeds', 0)}/{seeds}"
        print(
            f"{name:18} | {tests:>30} | {spread(s['gain_vs_default']):>34} | {wins:>5} | "
            f"{spread(s.get('gain_vs_seeds', [])):>34} | {wins_seeds:>5} | "
            f"{spread(s['gap']):>34} | {s['epochs']:6.0f} | {s['wall_s']:6.0f}"
        )
    print(
        "wins: seeds where the arm's held-out AUC is above the other's, paired on the same "
        "images; the intervals are in each seed's line above"
    )


def run_seed(base, seed: int, args, tmp: Path, log) -> dict[str, dict]:
    from melanoma.metrics.paired import paired_difference

    storage = str(tmp / "search")
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        arms = {DEFAULT: arm_default(base, seed, args, storage)}
        arms["seed ensemble"] = arm_seed_ensemble(base, seed, args, storage)
        arms.update(arms_of_the_search(base, seed, args, storage, tmp))
    default, seeds = arms[DEFAULT]["test"], arms[SEEDS]["test"]
    results = {}
    for name, arm in arms.items():
        record = {
            "seed": seed,
            "test_auc": auc(arm["test"]),
            "val_auc": auc(arm["val"]),
            "chosen_on": arm["chosen_on"],
            "epochs": arm["epochs"],
            "wall_s": arm["wall_s"],
        }
        for key, other, other_name in (
            ("vs_default", default, DEFAULT),
            ("vs_seeds", seeds, SEEDS),
        ):
            if name != other_name:
                _, a, b = _pair(arm["test"], other)  # in the arm's order, as its labels
                record[key] = paired_difference(arm["test"]["label"], a, b)
        # Each image's held-out probability, for paired comparisons made later.
        record["test"] = {k: arm["test"][k].tolist() for k in ("id", "label", "prob")}
        results[name] = record
        paired = "".join(
            f", minus {what} {vs['difference']:+.4f} ({vs['low']:+.3f} to {vs['high']:+.3f})"
            for what, vs in (
                ("default", record.get("vs_default")),
                ("seeds", record.get("vs_seeds")),
            )
            if vs is not None
        )
        print(
            f"seed {seed} {name:18}: chosen on {record['chosen_on']:.4f}, val "
            f"{record['val_auc']:.4f}, held-out {record['test_auc']:.4f}{paired}; "
            f"{record['epochs']} epochs, {record['wall_s']:.0f} s",
            flush=True,
        )
    return results


def _pair(a: dict, b: dict):
    from melanoma.metrics.paired import aligned

    return aligned(a["id"], a["prob"], b["id"], b["prob"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the ISIC 2017 folder")
    parser.add_argument("--experiment", default="isic2017_cpu_cls")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=12, help="trial-epochs of the search")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=2, help="search trials cross-validated")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--masks",
        choices=("predicted", "gt"),
        default="predicted",
        help="masks of crop/masked classifiers: a segmenter's (as the cascade runs) or the "
        "ground truth (an oracle)",
    )
    parser.add_argument(
        "--segmenter", type=Path, help="a segmenter run to reuse (with --masks predicted)"
    )
    parser.add_argument("--seg-epochs", type=int, default=4, help="epochs of the segmenter trained")
    parser.add_argument("--log", type=Path, default=None, help="search output (default: hidden)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.budget < args.max_epochs:
        parser.error("--budget must hold at least one full trial (>= --max-epochs)")
    base = base_experiment(args.experiment)
    if base["task"] != "cls":
        parser.error(f"--experiment {args.experiment} is a {base['task']} search; give a cls one")

    import ray

    from search.runner import connect

    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    log = open(args.log or "/dev/null", "w")  # noqa: SIM115 - held for the whole run
    with tempfile.TemporaryDirectory() as tmp:
        args.mask_source = "gt"
        if args.masks == "predicted":
            args.mask_source = str(args.segmenter or train_segmenter(args, Path(tmp), log))
        connect(None)
        for seed in args.seeds:
            for name, record in run_seed(base, seed, args, Path(tmp), log).items():
                runs[name].append(record)
        ray.shutdown()
    log.close()
    print(
        f"\n{args.experiment} on {args.data} at {args.image_size} px; search {args.budget} "
        f"trial-epochs (trials up to {args.max_epochs}); cv of the top {args.top_k} on "
        f"{args.folds} folds; seeds {args.seeds}; masks: {args.masks}"
        f"{'' if args.masks == 'gt' else ' by ' + args.mask_source}\n"
    )
    summary = summarise(runs)
    print_table(summary, len(args.seeds))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
