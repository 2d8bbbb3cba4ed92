"""melanoma train | cv: one model, its cross-validation."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from melanoma.names import INPUT_MODES
from melanoma_cli.cascade import resolve_candidates
from melanoma_cli.common import SEARCH_STORAGE

# Each option sets one train config key; left out, the experiment's value stays. The
# underscore spellings (--learning_rate) are the research repo's, still accepted.
TRAIN_OPTIONS: dict[str, tuple[str, dict]] = {
    "data": ("data.path", {"help": "dataset directory, manifest CSV or prepared cache"}),
    "layout": ("data.layout", {"help": "dataset layout (default: detect)"}),
    "epochs": ("epochs", {"type": int, "help": "epochs to train"}),
    "arch": (
        "model.arch",
        {
            "help": "segmenter architecture (seg) or classifier name (cls)",
            "aliases": ["--architecture"],
        },
    ),
    "encoder": (
        "model.encoder",
        {"help": "segmenter encoder (any SMP encoder, or tu-<timm model>)"},
    ),
    "optimizer": ("optimizer.name", {"help": "sgd, adam or adamw"}),
    "learning_rate": (
        "optimizer.lr",
        {"type": float, "help": "the optimizer's step size", "aliases": ["--lr"]},
    ),
    "momentum": ("optimizer.momentum", {"type": float, "help": "SGD momentum"}),
    "weight_decay": ("optimizer.weight_decay", {"type": float, "help": "L2 penalty"}),
    "class_weight": (
        "loss.class_weight",
        {"type": float, "help": "multiplies the minority class's weight"},
    ),
    "loss": ("loss.name", {"help": "seg: dice_bce, bce, dice, focal or lovasz; cls: ce or focal"}),
    "input_mode": (
        "input.mode",
        # melanoma.names: read without torch
        {"choices": INPUT_MODES, "help": "what the classifier sees of the image and its mask"},
    ),
    "source_size": (
        "input.source_size",
        {"type": int, "help": "crop, dual: cut the lesion crop from a copy at this size"},
    ),
    "mask_source": (
        "input.mask_source",
        {"help": "'gt' or a segmenter run directory (out-of-fold masks)"},
    ),
    "image_size": ("data.image_size", {"type": int, "help": "square side in pixels"}),
    "batch_size": ("data.batch_size", {"type": int, "help": "images per step"}),
    "num_workers": ("data.num_workers", {"type": int, "help": "data loader processes"}),
    "augment": ("data.augment", {"type": float, "help": "augmentation strength in [0, 1]"}),
    "on_bad": (
        "data.on_bad",
        {"choices": ["fail", "skip"], "help": "an unreadable image: stop, or leave it out"},
    ),
    "pretrained": (
        "model.pretrained",
        {
            "action": "store_true",
            "default": None,
            "help": "ImageNet weights from local files (see README)",
        },
    ),
    "weights_path": (
        "model.weights_path",
        {"help": "a local file of pretrained weights (nothing is downloaded)"},
    ),
    "seed": ("seed", {"type": int, "help": "weights, order and augmentation"}),
    "device": ("device", {"help": "auto, cpu, cuda or cuda:N"}),
    "out": ("out", {"help": "run directory (default runs/<task>-<arch>-<time>)"}),
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    for dest, (_, options) in TRAIN_OPTIONS.items():
        options = dict(options)
        flags = [f"--{dest.replace('_', '-')}", *options.pop("aliases", [])]
        if "_" in dest:
            flags.insert(1, f"--{dest}")
        p.add_argument(*flags, dest=dest, **options)


def resolve_train_config(task: str, experiment: str | None, overrides: dict):
    """YAML (a train config, or the ``train`` section of a search experiment), then
    overrides; returns the validated TrainConfig."""
    from experiments import resolve
    from melanoma.config import ConfigError, apply_overrides, load_yaml
    from melanoma.engine.config import TrainConfig

    base: dict = {}
    if experiment:
        base = load_yaml(resolve(experiment))
        if "train" in base:
            base = base["train"]
    if base.get("task", task) != task:
        raise ConfigError(
            f"{experiment} is a {base['task']!r} experiment but `train {task}` was asked for"
        )
    base["task"] = task
    config = TrainConfig.from_dict(apply_overrides(base, overrides))
    # Recorded absolute in the run's config.yaml: the run can be resumed, evaluated and
    # assembled from any directory.
    return config.with_absolute_paths(Path.cwd())


def _set_overrides(items: list[str] | None, example: str) -> dict:
    """``--set KEY=VALUE`` items as dotted-key overrides (values parsed as YAML)."""
    from melanoma.config import ConfigError, parse_value

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (for example {example}), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def _overrides(args: argparse.Namespace) -> dict:
    out = {
        key: getattr(args, flag)
        for flag, (key, _) in TRAIN_OPTIONS.items()
        if getattr(args, flag, None) is not None
    }
    return {**out, **_set_overrides(args.set, "optimizer.lr=0.01")}


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from melanoma.engine.checkpoint import CHECKPOINTS, LAST
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.run import train

    overrides = _overrides(args)
    config = resolve_train_config(args.task, args.experiment, overrides)
    named_out = "out" in overrides or config.out != TrainConfig().out
    if args.resume and not named_out:
        raise ValueError(
            "--resume continues the run in --out, but no --out was given (nor out: in the "
            "experiment); pass the run directory to continue, e.g. --out runs/cls-resnet18-<time>"
        )
    last = Path(config.out) / CHECKPOINTS / LAST
    if args.resume and not last.is_file():
        raise FileNotFoundError(
            f"--resume: {config.out} holds no run to continue (no {CHECKPOINTS}/{LAST}); "
            "drop --resume to start a new run there, or name the run directory with --out"
        )
    if not named_out:
        # Neither the experiment nor the command line named a run directory: make a new one.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = replace(config, out=f"runs/{args.task}-{config.model.arch}-{stamp}")
    last = Path(config.out) / CHECKPOINTS / LAST
    if last.is_file() and not args.resume:
        raise FileExistsError(
            f"{config.out} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    print(f"run directory: {config.out}")
    result = train(config, resume=args.resume)
    best = result.best_metrics.get(config.metric)
    print(
        f"best val {config.metric}: {best:.4f} at epoch {result.best_epoch}"
        if isinstance(best, float)
        else f"best val {config.metric}: {best} at epoch {result.best_epoch}"
    )
    print(
        f"checkpoints, metrics.json and TensorBoard logs in {result.run_dir} "
        f"(tensorboard --logdir {result.run_dir})"
    )
    return 0


def _cv_label(source: str, origin: str) -> str:
    """A search trial's id, or the name of a run directory (given as such or by a file)."""
    path = Path(source)
    if not path.exists():
        return origin.rsplit("/", 1)[-1]
    path = path.resolve()
    return path.parent.parent.name if path.is_file() else path.name


def _cmd_cv(args: argparse.Namespace) -> int:
    out = Path(args.out)
    candidates, chosen_on = {}, {}
    for source in args.source:
        for cand in resolve_candidates([source], args.task, args.top_k, args.storage):
            config = cand.config
            if args.data:
                config = replace(config, data=replace(config.data, path=args.data))
            if args.epochs:
                config = replace(config, epochs=args.epochs)
            label = _cv_label(source, cand.origin)
            if label in candidates:
                raise ValueError(f"two candidates are both called {label!r}; give them apart")
            candidates[label], chosen_on[label] = config, cand.val_metric
            print(f"[cv] {cand.origin}: {args.folds} folds into {out / label}", flush=True)
            uses_mask = config.task == "cls" and config.input.mode != "full"
            if uses_mask and config.input.mask_source == "gt":
                print(
                    f"[cv] warning: {label} ({config.input.mode}) is scored on ground-truth "
                    "masks: its out-of-fold figures are what perfect masks give, not what a "
                    "cascade will score, and `cascade build` will not choose on them; train "
                    "it with input.mask_source: SEGMENTER_RUN to cross-validate on "
                    "predicted masks",
                    flush=True,
                )
    if args.local:
        from melanoma.engine.cv import cross_validate

        summaries = cross_validate(candidates, args.folds, out)
    else:
        from search.cv import run_cv
        from search.experiment import ResourcesConfig

        resources = ResourcesConfig(
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
        )
        summaries = run_cv(candidates, args.folds, out, address=args.address, resources=resources)
    rows = [(label, chosen_on[label], summaries[label]) for label in candidates]
    print(
        f"\n{'candidate':24} | {'selected on':>11} | {'cross-validated (95% CI)':>26} | "
        f"folds: mean +- sd (in {out})"
    )
    for label, chosen, s in rows:
        ci = f" ({s['ci']['low']:.3f}-{s['ci']['high']:.3f})" if s["ci"] else ""
        shown = f"{chosen:.4f}" if chosen is not None else "-"
        print(
            f"{label:24} | {shown:>11} | {s['value']:.4f}{ci:>20} | "
            f"{s['fold_mean']:.4f} +- {s['fold_sd']:.4f}"
        )
    _print_cv_paired(out, rows, args.task)
    return 0


def _print_cv_paired(out: Path, rows: list, task: str) -> None:
    """The best candidate against each other one on the same training images, paired
    bootstrap of the pooled out-of-fold figures."""
    from melanoma.engine.cv import load_oof_outputs
    from melanoma.metrics.classification import BOOTSTRAP_KEYS
    from melanoma.metrics.paired import (
        aligned,
        describe,
        in_sample,
        paired_difference,
        paired_mean_difference,
    )

    if len(rows) < 2:
        return
    sign = -1 if rows[0][2]["metric"] == "loss" else 1
    ranked = sorted(rows, key=lambda r: -sign * r[2]["value"])
    best_label, _, best_summary = ranked[0]
    metric = best_summary["metric"]
    best = load_oof_outputs(out / best_label)
    print(f"\n{best_label} minus each other candidate, pooled out-of-fold {metric}:")
    for label, _, _ in ranked[1:]:
        other = load_oof_outputs(out / label)
        try:
            if task == "cls" and metric in BOOTSTRAP_KEYS:
                _, a, b = aligned(best["id"], best["prob"], other["id"], other["prob"])
                # The candidates' own decision threshold, as their figures were computed.
                threshold = best_summary.get("config", {}).get("threshold", 0.5)
                result = paired_difference(best["label"], a, b, metric, threshold=threshold)
            elif task == "seg":
                key = metric if metric in best else "jaccard"
                _, a, b = aligned(best["id"], best[key], other["id"], other[key])
                result = paired_mean_difference(a, b)
            else:
                continue
        except ValueError as err:  # trained on other data: not on the same images
            print(f"  {label}: not compared ({err})")
            continue
        # The pooled figures ranked them: the best is in-sample against the others.
        print(f"  {label}: {describe(in_sample(result, keep_interval=True))}")


def register(sub) -> None:
    """Add `train` and `cv`."""
    _register_train(sub)
    _register_cv(sub)


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one segmenter or classifier locally (no Ray)",
        description="Train one model from an experiment's train config; each option left "
        "out keeps the experiment's value, and --set reaches any other key.",
    )
    p.add_argument("task", choices=["seg", "cls"], help="seg: a segmenter; cls: a classifier")
    p.add_argument(
        "--experiment", help="YAML train config (or search experiment: its train section)"
    )
    _add_train_options(p)
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, e.g. --set scheduler.name=step (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=_cmd_train)


def _register_cv(sub) -> None:
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation of candidates on the training split (fold models), "
        "each fold a trial of one Ray Tune run",
    )
    p.add_argument("task", choices=["seg", "cls"], help="seg: segmenters; cls: classifiers")
    p.add_argument(
        "source", nargs="+", help="search name(s) (their --top-k best trials), run directories"
    )
    p.add_argument("--folds", type=int, default=5, help="lesion-grouped, stratified folds")
    p.add_argument("--top-k", type=int, default=1, help="trials of each search to validate")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the candidate's own)")
    p.add_argument("--storage", default=SEARCH_STORAGE, help="the searches' root folder or URI")
    p.add_argument("--data", help="dataset (default: the one the candidates were trained on)")
    p.add_argument("--out", required=True, help="one folder per candidate, one run per fold")
    p.add_argument(
        "--local",
        action="store_true",
        help="train the folds one after another in this process, without Ray",
    )
    p.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP) per fold")
    p.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs a Ray Train worker takes"
    )
    p.add_argument(
        "--gpus-per-worker", default="auto", type=_gpus, help="a number, or auto (1 on GPUs)"
    )
    p.set_defaults(func=_cmd_cv)


def _gpus(value: str) -> float | str:
    return value if value == "auto" else float(value)
