"""What each step of search budget buys, on images nobody chose on (the budget curve).

    python benchmarks/real_search.py --data ../shared/data/isic2017 --seeds 0
        [--budgets 8 32] [--max-epochs 4] [--image-size 64] [--source-size 128]
        [--cv-top 2] [--folds 2] [--experiment isic2017_cpu_cls] [--masks predicted|gt]
        [--segmenter RUN] [--seg-epochs 4] [--ham ../shared/data/ham10000]
        [--ham-limit N] [--work DIR] [--json benchmarks/results/budget_curve_seed0.json]
        [--log search.log]
    python benchmarks/real_search.py --combine benchmarks/results/budget_curve_seed*.json
    # GPU-sized: --image-size 256 --source-size 512 --budgets 30 120 --max-epochs 10
    #            --folds 5 --seg-epochs 10 --experiment isic2017_gpu_cls

On the real ISIC 2017 images, through the project's own stack (the shipped experiment and
its space, the inline launcher, ``melanoma cv`` as Tune trials, the paired bootstrap), per
seed and for each budget B (trial-epochs):
- **default run**: the experiment's train config as shipped, one run of ``--max-epochs``
  (what the search's trial 0 trains);
- **seed ensemble @B**: B / ``--max-epochs`` such runs with other seeds (the default run
  first), averaged: the search's compute without a search;
- **search pick @B**: TPE + ASHA over the experiment's space, B trial-epochs, the default
  as trial 0; its best trial's best checkpoint;
- **hand-off @B**: what ``cascade build --cls SEARCH --handoff best`` hands on (the default
  until the anchored arm was measured): the best ``handoff_size`` trials, greedily
  ensembled on validation in ``ensemble_rounds`` rounds;
- **anchored hand-off @B**: what ``cascade build --cls SEARCH`` hands on by default: the
  default trial and the best ``handoff_size - 1`` others by validation, equal weights (a
  hand-off that holds the default by construction); TTA and mask clean-up off here, as
  in every arm;
- **hand-off + cv @B**: the search's best ``--cv-top`` trials cross-validated on
  ``--folds`` folds, fold models ensembled and chosen on pooled out-of-fold predictions
  (``cascade build --select-on oof``): the choice made on every training melanoma;
- **the curve**: from each search's trial table, the expected best validation AUC of n
  random trials and the expected held-out AUC of their validation pick (Dodge et al.
  2019), n = 1..N.

Each arm is scored once on the lesion-grouped test split carved from the training images,
which nothing selected on, and (``--ham``) on an out-of-distribution set through the
cascade: its AUC, its paired bootstrap differences to the default run and to the seed
ensemble of the same budget on the same images, with the 95% interval of each, and the gap
between the figure it was chosen on and held-out. Mask-using classifiers see the masks the
cascade would give them (``--masks predicted``): one segmenter of the shipped segmenter
experiment per command, out of fold on training.

One seed per command keeps each seed's JSON whole; ``--combine`` prints the table over
several.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
import numpy as np
from budget_table import (
    DEFAULT,
    all_budgets,
    check_targets,
    print_curves,
    print_table,
    summarise,
)

SEARCH = {"searcher": "optuna", "scheduler": "asha"}
SETS = ("test", "ham")


def experiment(base: dict, kind: str, seed: int, args, storage: str, budget: int = 0) -> dict:
    """The benchmark's version of ``base``: ``kind`` "default" (the train config, one run
    of ``--max-epochs`` on both cores) or "search" (TPE + ASHA over its space for
    ``budget`` trial-epochs, two trials at a time, the default as trial 0)."""
    train = json.loads(json.dumps(base["train"]))
    train["seed"] = seed
    train["log_images"] = 0
    train["data"] = {**train["data"], "path": args.data, "image_size": args.image_size}
    train["input"] = {**train.get("input", {}), "mask_source": args.mask_source}
    if train["input"].get("source_size"):
        train["input"]["source_size"] = args.source_size
    exp = {"name": f"{kind}-{seed}", "task": base["task"], "storage": storage, "train": train}
    if kind == "default":
        return {
            **exp,
            "space": {},
            "search": {
                "num_samples": 1,
                "max_epochs": args.max_epochs,
                "searcher": {"name": "random", "seed": seed},
                "scheduler": {"name": "fifo"},
            },
            "resources": {"workers": 1, "cpus_per_worker": 2, "launcher": "inline"},
        }
    return {
        **exp,
        "name": f"search-{seed}-{budget}",
        "space": base["space"],
        "search": {
            # Enough trials that the budget, not the trial count, ends the search.
            "num_samples": budget,
            "max_epochs": args.max_epochs,
            "max_concurrent": 2,
            "budget_epochs": budget,
            "default_first": True,
            "searcher": {
                "name": SEARCH["searcher"],
                "seed": seed,
                "n_startup_trials": max(2, budget // args.max_epochs // 2),
            },
            "scheduler": {"name": SEARCH["scheduler"], "grace_period": 1, "reduction_factor": 2},
        },
        # Two trials at a time on two cores, one torch thread each.
        "resources": {"workers": 1, "cpus_per_worker": 1, "launcher": "inline"},
    }


def member_seed(seed: int, j: int) -> int:
    """The train seed of the seed ensemble's ``j``-th run of ``seed`` (0: the default run,
    whose seed is the search's); never another seed's default run nor member."""
    return seed if j == 0 else 10_000 + seed * 1000 + j


HAM_SCORING_VERSION = 1  # raise when benchlib.ham_predictions changes what it computes


class Scorer:
    """Each checkpoint's predictions on validation and the carved test split, once per
    checkpoint; and an arm's predictions on the out-of-distribution set (``ham``) through
    the cascade it would ship: its members weighted, every member run at the input size
    the build would give them all (the largest load size among them and the segmenter),
    once per (checkpoint, size)."""

    def __init__(self, segmenter: Path | None, ham: bl.Ham | None, cache: Path | None = None):
        self.segmenter, self.ham, self.cache = segmenter, ham, cache
        self._seen: dict[str, dict] = {}
        self._ham: dict[tuple[str, int], dict] = {}
        self.ham_s = 0.0

    def _ham_of(self, checkpoint: Path, size: int) -> dict:
        """One checkpoint's HAM10000 predictions at ``size``, kept on disk under ``cache``
        so that a ``--reuse`` run that adds an arm scores only what it has not scored."""
        if (str(checkpoint), size) in self._ham:
            return self._ham[str(checkpoint), size]
        file = self.cache / f"{self._key(checkpoint, size)}.npz" if self.cache else None
        got = None
        if file is not None and file.is_file():
            with np.load(file) as z:
                got = {k: z[k] for k in ("id", "label", "prob")} | {"input_size": size}
            if got["id"].tolist() != list(self.ham.ids):  # a hash collision, or tampering
                got = None
        if got is None:
            got = bl.ham_predictions(self.segmenter, checkpoint, self.ham, input_size=size)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                part = file.with_suffix(".part.npz")  # never a half-written file read back
                np.savez(part, id=got["id"], label=got["label"], prob=got["prob"])
                os.replace(part, file)
        self._ham[str(checkpoint), size] = got
        return got

    def _key(self, checkpoint: Path, size: int) -> str:
        """What the predictions depend on: the bytes' identity (path, size, mtime) of the
        classifier and of every segmenter checkpoint, the images and labels scored, the
        input size and the scoring code's version."""
        files = [checkpoint, *sorted(Path(self.segmenter).rglob("*.pt"))]
        ident = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        images = hashlib.sha1(json.dumps([self.ham.ids, self.ham.labels.tolist()]).encode())
        ident += [str(self.segmenter), size, images.hexdigest(), HAM_SCORING_VERSION]
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]

    def __call__(self, checkpoint: Path) -> dict[str, dict]:
        key = str(checkpoint)
        if key not in self._seen:
            self._seen[key] = {s: bl.predictions(checkpoint, s) for s in ("val", "test")}
        return self._seen[key]

    def arm(self, files: list[Path], weights: list[float] | None = None) -> dict[str, dict]:
        """The weighted ensemble of ``files`` on every scored set."""
        out = ensemble([self(f) for f in files], weights)
        if self.ham is not None:
            started = time.perf_counter()
            size = bl.cascade_size(self.segmenter, files)
            parts = [self._ham_of(f, size) for f in files]
            out["ham"] = bl.mean_of(parts, weights)
            self.ham_s += time.perf_counter() - started
        return out


def ensemble(parts: list[dict[str, dict]], weights: list[float] | None = None) -> dict:
    """The weighted mean of several checkpoints' predictions, on every set they share."""
    sets = set.intersection(*(set(p) for p in parts))
    return {s: bl.mean_of([p[s] for p in parts], weights) for s in parts[0] if s in sets}


def arm(preds: dict, chosen_on: float, epochs: int, wall: float, **extra) -> dict:
    return {"preds": preds, "chosen_on": chosen_on, "epochs": epochs, "wall_s": wall, **extra}


def default_runs(base, seed, args, storage) -> list[tuple[Path, float]]:
    """The seed ensemble's members, the default run first: (checkpoint, wall) each."""
    out = []
    for j in range(max(args.budgets) // args.max_epochs):
        exp = experiment(base, "default", member_seed(seed, j), args, storage)
        exp["name"] = f"default-{seed}-{j}"
        rows, wall = bl.run_exp(exp, args.reuse)
        out.append((bl.checkpoint_file(rows[0]), wall))
    return out


def search_arms(base, seed, budget, args, storage, tmp, score: Scorer) -> dict[str, dict]:
    """From one search of ``budget`` trial-epochs: its pick, its default hand-off, the
    hand-off chosen on out-of-fold predictions, and its trials for the curve."""
    from melanoma.cascade.ensemble import greedy_selection
    from melanoma.cascade.oof_selection import choose_classifiers, cv_candidates
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.config import TrainConfig
    from melanoma_cli.cascade import ensemble_rounds, handoff_size
    from search.cv import run_cv
    from search.experiment import ResourcesConfig

    rows, wall = bl.run_exp(experiment(base, "search", seed, args, storage, budget), args.reuse)
    if not rows:
        raise RuntimeError(f"the search of {budget} trial-epochs kept no checkpoint to hand on")
    files = [bl.checkpoint_file(r) for r in rows]
    preds = [score(f) for f in files]
    trials = [
        {
            "trial_id": r["trial_id"],
            "default": bool(r.get("default")),
            "epochs": r["epochs"],
            "val_auc": bl.auc(p["val"]),
            "test_auc": bl.auc(p["test"]),
        }
        for r, p in zip(rows, preds, strict=True)
    ]
    out = {"search pick": arm(score.arm(files[:1]), trials[0]["val_auc"], budget, wall)}

    k = handoff_size(len(rows))
    labels = preds[0]["val"]["label"]
    probs = [bl.pair(preds[0]["val"], p["val"])[2] for p in preds[:k]]
    weights, value = greedy_selection(
        probs, lambda p: bl.auc({"label": labels, "prob": p}), ensemble_rounds(k)
    )
    picked = sorted(weights)
    out["hand-off"] = arm(
        score.arm([files[i] for i in picked], [weights[i] for i in picked]),
        value,
        budget,
        wall,
        members=[trials[i]["trial_id"] for i in picked],
        default_in=any(trials[i]["default"] for i in picked),
    )
    out["anchored hand-off"] = anchored_arm(files, preds, trials, k, budget, wall, score)

    started = time.perf_counter()
    candidates = {}
    for r in rows[: args.cv_top]:
        config = TrainConfig.from_dict(load_checkpoint(bl.checkpoint_file(r))["config"])
        candidates[r["trial_id"]] = config.with_overrides({"epochs": args.max_epochs})
    cv_dir = tmp / f"cv-{seed}-{budget}"
    if args.reuse and all((cv_dir / label / "cv.json").is_file() for label in candidates):
        cv_wall = bl.stored_wall(cv_dir)
    else:
        run_cv(candidates, args.folds, cv_dir, resources=ResourcesConfig(cpus_per_worker=1))
        cv_wall = time.perf_counter() - started  # training only: no other arm's wall scores
    folders = cv_candidates([cv_dir / label for label in candidates])
    choice = choose_classifiers(folders, ensemble_rounds(len(folders)), None)
    # Every fold model with its candidate's weight shared among its folds, as shipped.
    fold_files, fold_weights = [], []
    for i in sorted(choice.weights):
        for c in folders[i].checkpoints:
            fold_files.append(c)
            fold_weights.append(choice.weights[i] / len(folders[i].checkpoints))
    out["hand-off + cv"] = arm(
        score.arm(fold_files, fold_weights),
        choice.report["auc"],
        budget + len(candidates) * args.folds * args.max_epochs,
        wall + cv_wall,
    )
    return {"arms": out, "trials": trials}


def anchored(trials: list[dict], k: int) -> list[int]:
    """The default-anchored hand-off's members (indices into the ranked ``trials``), as
    ``cascade build --handoff anchored`` chooses them (its own function): the default trial
    and the best ``k - 1`` others by validation; the best ``k`` when the default kept no
    checkpoint. Fixed before seeds 1-2 were measured: equal weights, since greedy weights
    fitted on 30 validation melanomas were +0.06 to +0.10 optimistic."""
    from melanoma_cli.cascade import handoff

    ranked = [(i, None, None, t["default"]) for i, t in enumerate(trials)]
    picked, _ = handoff(ranked, k, anchored=True)
    return sorted(r[0] for r in picked)


def anchored_arm(files, preds, trials, k: int, budget: int, wall: float, score) -> dict:
    picked = anchored(trials, k)
    val = ensemble([preds[i] for i in picked])["val"]
    return arm(
        score.arm([files[i] for i in picked]),
        bl.auc(val),
        budget,
        wall,
        members=[trials[i]["trial_id"] for i in picked],
        default_in=any(trials[i]["default"] for i in picked),
    )


def run_seed(base, seed: int, args, tmp: Path, log, score: Scorer, save=None) -> dict:
    """Every arm of one seed as records (AUCs, paired gains, per-image probabilities),
    and each budget's trial table; ``save`` gets the seed so far after each budget, so
    that a run cut short keeps the budgets it finished."""
    storage = str(tmp / f"search-{seed}")
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        members = default_runs(base, seed, args, storage)
    first = score.arm([members[0][0]])
    arms = {DEFAULT: arm(first, bl.auc(first["val"]), args.max_epochs, members[0][1])}
    trials = {}
    for budget in args.budgets:
        n = budget // args.max_epochs
        seeds = score.arm([f for f, _ in members[:n]])
        arms[f"seed ensemble @{budget}"] = arm(
            seeds, bl.auc(seeds["val"]), n * args.max_epochs, sum(w for _, w in members[:n])
        )
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            found = search_arms(base, seed, budget, args, storage, tmp, score)
        trials[str(budget)] = found["trials"]
        arms.update({f"{name} @{budget}": a for name, a in found["arms"].items()})
        if save is not None and budget != args.budgets[-1]:
            save({"seed": seed, "arms": records(arms, seed, echo=False), "trials": trials})
    return {"seed": seed, "arms": records(arms, seed), "trials": trials}


def records(arms: dict[str, dict], seed: int, echo: bool = True) -> dict[str, dict]:
    """Per arm: AUC on each scored set, paired gains over the default run and over the
    seed ensemble of its budget, cost, and each image's probability."""
    out = {}
    for name, a in arms.items():
        budget = name.rsplit("@", 1)[1] if "@" in name else None
        record = {k: a[k] for k in a if k != "preds"}
        record["val_auc"] = bl.auc(a["preds"]["val"])
        for s in SETS:
            if s not in a["preds"]:
                continue
            record[f"{s}_auc"] = bl.auc(a["preds"][s])
            if name != DEFAULT:
                record[f"{s}_vs_default"] = bl.compare(a["preds"][s], arms[DEFAULT]["preds"][s])
            ref = f"seed ensemble @{budget}"
            if budget and name != ref:
                record[f"{s}_vs_seeds"] = bl.compare(a["preds"][s], arms[ref]["preds"][s])
            record[f"{s}_prob"] = [round(float(p), 6) for p in a["preds"][s]["prob"]]
            record[f"{s}_id"] = [str(i) for i in a["preds"][s]["id"]]
            record[f"{s}_label"] = [int(v) for v in a["preds"][s]["label"]]
        out[name] = record
        gains = "".join(
            f", {s} minus {what} {bl.interval(record[f'{s}_vs_{what}'])}"
            for s in SETS
            for what in ("default", "seeds")
            if f"{s}_vs_{what}" in record
        )
        ham = f", ham {record['ham_auc']:.4f}" if "ham_auc" in record else ""
        if echo:
            print(
                f"seed {seed} {name:22}: chosen on {record['chosen_on']:.4f}, val "
                f"{record['val_auc']:.4f}, held-out {record['test_auc']:.4f}{ham}{gains}; "
                f"{record['epochs']} epochs, {record['wall_s']:.0f} s",
                flush=True,
            )
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the ISIC 2017 folder")
    parser.add_argument("--combine", type=Path, nargs="+", help="per-seed JSONs to tabulate")
    parser.add_argument("--experiment", default="isic2017_cpu_cls")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-size", type=int, help="crop modes' copy (default: 2 x size)")
    parser.add_argument("--cv-top", type=int, default=2, help="search trials cross-validated")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--masks", choices=("predicted", "gt"), default="predicted")
    parser.add_argument("--segmenter", type=Path, help="a segmenter run to reuse")
    parser.add_argument("--seg-epochs", type=int, default=4)
    parser.add_argument("--ham", type=Path, help="also score every arm on this manifest.csv set")
    parser.add_argument("--ham-limit", type=int, help="score only this many of its images")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --work: read the runs already there instead of training them again",
    )
    parser.add_argument("--log", type=Path, help="search output (default: hidden)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.combine:
        return args
    if args.data is None:
        parser.error("give --data DIR (the ISIC 2017 folder), or --combine JSON... to tabulate")
    if len(set(args.budgets)) != len(args.budgets) or sorted(args.budgets) != args.budgets:
        parser.error(f"--budgets must be distinct and increasing, got {args.budgets}")
    for budget in args.budgets:
        if budget < args.max_epochs or budget % args.max_epochs:
            parser.error(
                f"--budgets {budget}: each budget must be a whole number of --max-epochs "
                f"({args.max_epochs}) runs, so the seed ensemble matches its compute"
            )
    if args.cv_top < 1 or args.folds < 2:
        parser.error(f"--cv-top must be >= 1 and --folds >= 2, got {args.cv_top}, {args.folds}")
    args.source_size = args.source_size or 2 * args.image_size
    if args.source_size < args.image_size:
        parser.error(f"--source-size {args.source_size} is below --image-size {args.image_size}")
    if args.ham is not None and not (args.ham / "manifest.csv").is_file():
        parser.error(f"--ham {args.ham} has no manifest.csv (image,label,... per image)")
    if args.reuse and args.work is None:
        parser.error("--reuse reads the runs of an earlier --work DIR; give --work")
    if args.masks == "gt" and args.ham is not None:
        parser.error("--ham scores through the cascade, which needs a segmenter: --masks predicted")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.combine:
        results = [json.loads(p.read_text()) for p in args.combine]
        return tabulate(results)
    base = bl.base_experiment(args.experiment)
    if base["task"] != "cls":
        sys.exit(f"--experiment {args.experiment} is a {base['task']} search; give a cls one")

    import ray

    ham = bl.Ham(args.ham, args.ham_limit) if args.ham is not None else None
    log = open(args.log or "/dev/null", "w")  # noqa: SIM115 - held for the whole run
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        check_runs(work, args)
        args.mask_source = "gt"
        if args.masks == "predicted":
            kept = work / "segmenter"
            if args.segmenter is None and args.reuse and (kept / "checkpoints").is_dir():
                args.segmenter = kept
            args.mask_source = str(args.segmenter or bl.train_segmenter(args, work, log))
        score = Scorer(Path(args.mask_source) if ham else None, ham, work / "ham-cache")
        if not args.reuse:
            # Ray starts before anything is timed (a --reuse run that trains nothing
            # starts none: run_search and run_cv connect when they must).
            from search.runner import connect

            connect(None)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warm_up(base, args, work)
        print(f"segmenter and out-of-fold masks: {time.perf_counter() - started:.0f} s")
        results = []
        for seed in args.seeds:
            started, score.ham_s = time.perf_counter(), 0.0
            path = None
            if args.json:
                path = args.json if len(args.seeds) == 1 else args.json.with_suffix(f".{seed}.json")

            def save(result: dict, seed_started: float = started, path=path) -> None:
                done = sorted({int(b) for b in result["trials"]})
                wall = time.perf_counter() - seed_started
                result["settings"] = settings(args, ham, wall, score) | {"budgets": done}
                if path is not None:
                    bl.write_json(path, result)

            result = run_seed(base, seed, args, work, log, score, save)
            save(result)
            results.append(result)
        if ray.is_initialized():
            ray.shutdown()
    log.close()
    return tabulate(results)


RUN_KEYS = (  # what the runs in --work were trained with: --reuse must ask the same
    "data", "experiment", "max_epochs", "image_size", "source_size", "cv_top", "folds",
    "masks", "segmenter", "seg_epochs",
)  # fmt: skip


def check_runs(work: Path, args) -> None:
    """``work/runs.json``: the settings its runs were trained with. A run that asks
    otherwise of a folder holding runs is refused, naming what differs (a run trained at
    another size or on other folds would be scored as if it were this one, and a fresh run
    killed before it replaced them would leave a stamp vouching for them)."""
    asked = {k: str(getattr(args, k)) if getattr(args, k) is not None else None for k in RUN_KEYS}
    stamp = work / "runs.json"
    has_runs = any(work.glob("search-*")) or (work / "segmenter").is_dir()
    if stamp.is_file() and (args.reuse or has_runs):
        kept = json.loads(stamp.read_text())
        differ = {k: (kept.get(k), v) for k, v in asked.items() if kept.get(k) != v}
        if differ:
            what = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items())
            sys.exit(
                f"the runs in {work} were trained otherwise ({what}); ask as they were "
                "asked, or give another --work"
            )
    elif args.reuse and has_runs:
        print(
            f"--reuse: {work} records no settings (made before runs.json); taking its runs "
            "as asked now",
            flush=True,
        )
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(asked, indent=1) + "\n")


def warm_up(base: dict, args, work: Path) -> None:
    """The out-of-fold masks and the decoded images made once, before any arm is timed:
    otherwise the first default run's wall would carry them."""
    from search.experiment import experiment_from_dict
    from search.runner import make_segmenter_masks

    exp = experiment_from_dict(experiment(base, "search", 0, args, str(work / "warm-up"), 8))
    make_segmenter_masks(exp)


def settings(args, ham, wall: float, score: Scorer) -> dict:
    import os

    return {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average": os.getloadavg(),
        **{
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("combine", "log", "json")
        },
        "ham_images": len(ham.ids) if ham else 0,
        "ham_s": score.ham_s,
        "wall_s": wall,
    }


def tabulate(results: list[dict]) -> int:
    first = results[0]["settings"]
    print(
        f"\n{first['experiment']} on {first['data']} at {first['image_size']} px; budgets "
        f"{all_budgets(results)} trial-epochs (trials up to {first['max_epochs']}); cv of the top "
        f"{first['cv_top']} on {first['folds']} folds; seeds {[r['seed'] for r in results]}; "
        f"masks {first['masks']} ({first['mask_source']})"
    )
    for r in results:
        s = r["settings"]
        print(
            f"  seed {r['seed']}: {s['date']} UTC, load {s['load_average'][0]:.1f}, "
            f"{s['wall_s'] / 60:.0f} min"
        )
    summary = summarise(results)
    for which in SETS:
        print_table(summary, len(results), which)
    print_curves(results)
    for line in check_targets(summary, all_budgets(results)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
