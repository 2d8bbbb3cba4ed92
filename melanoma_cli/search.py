"""melanoma search seg | cls | resume | results."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from melanoma_cli.common import SEARCH_STORAGE
from melanoma_cli.train import _set_overrides


def _cmd_search_run(args: argparse.Namespace) -> int:
    from experiments import resolve
    from search.experiment import load_experiment
    from search.runner import run_search

    overrides = {}
    if args.num_samples is not None:
        overrides["search.num_samples"] = args.num_samples
    if args.data is not None:
        overrides["train.data.path"] = args.data
    overrides.update(_set_overrides(args.set, "train.optimizer.lr=0.01"))
    exp = load_experiment(resolve(args.experiment), overrides)
    # Paths in the YAML or on the command line are the user's, relative to where they ran
    # it; trials run elsewhere.
    if exp.task != args.task:
        raise ValueError(
            f"{args.experiment} is a {exp.task!r} experiment but `search {args.task}` was asked for"
        )
    exp = replace(exp, train=exp.train.with_absolute_paths(Path.cwd()))
    exp.train.check_paths()
    name = args.name or exp.name
    storage = args.storage or exp.storage
    if ranking_masks(exp) is not None and exp.train.input.mask_source == "gt":
        print(f"[search] warning: {ranking_masks(exp)}", flush=True)
    run_search(exp, name=name, storage=storage, address=args.address, verbose=args.verbose)
    return _print_results(name, storage, top=10, require_finished=True)


def _cmd_search_resume(args: argparse.Namespace) -> int:
    from search.runner import resume_search

    resume_search(args.name, storage=args.storage, address=args.address, verbose=args.verbose)
    return _print_results(args.name, args.storage, top=10, require_finished=True)


def _print_results(
    name: str,
    storage: str,
    top: int | None = None,
    csv_path: str | None = None,
    as_json: bool = False,
    require_finished: bool = False,
) -> int:
    """Print the trial table; with ``require_finished``, exit status 1 when no trial
    finished (all errored), so a script or CI that runs the search sees the failure."""
    from search.results import to_json, trial_table, write_csv

    rows, exp = trial_table(name, storage)
    if require_finished and not any(r["state"] in ("TERMINATED", "STOPPED") for r in rows):
        states = ", ".join(f"{r['trial_id']} {r['state']}" for r in rows) or "no trials"
        print(
            f"error: no trial of search {name!r} finished ({states}); the trials' errors are "
            f"in their error.txt files under {storage}/{name}",
            file=sys.stderr,
        )
        return 1
    if csv_path:
        write_csv(rows, Path(csv_path))
        print(f"wrote {len(rows)} trials to {csv_path}")
    if as_json:
        print(to_json(rows))
        return 0
    metric = exp.metric
    keys = [p.key for p in exp.space]
    header = ["trial_id", "state", "epochs", metric, "95% CI", "world_size", "nodes", *keys]
    shown = rows[:top] if top else rows
    for r in shown:
        low, high = r.get("ci_low"), r.get("ci_high")
        r["95% CI"] = f"{low:.3f}-{high:.3f}" if low is not None else "-"
    table = [[_fmt(r.get(k)) for k in header] for r in shown]
    for r, row in zip(shown, table, strict=True):
        if r.get("default"):  # the experiment's own configuration, trial 0
            row[0] += " (default)"
    widths = [
        max(len(h), *(len(row[i]) for row in table)) if table else len(h)
        for i, h in enumerate(header)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if top and len(rows) > top:
        print(f"... {len(rows) - top} more (melanoma search results {name})")
    if any(r.get("default") for r in rows):
        print("(default): the experiment's own train configuration, run to max_epochs")
    masks = ranking_masks(exp)
    if masks:
        print(f"masks that ranked the mask-using trials: {masks}")
    best = next((r for r in rows if r.get(metric) is not None), None)
    if best:
        print(
            f"best trial {best['trial_id']}: {metric} {best[metric]:.4f} "
            f"(95% CI {best.get('95% CI', '-')}) at epoch {best['best_epoch']}"
        )
        print(f"best checkpoint: {best['checkpoint']}")
        _print_paired(rows, exp)
    return 0


def ranking_masks(exp) -> str | None:
    """Which lesion masks the crop and masked trials of a classifier search were trained
    and validated on (None when no trial uses masks)."""
    from search.runner import explores_masks

    if not explores_masks(exp):
        return None
    source = exp.train.input.mask_source
    if source == "gt":
        return (
            "ground truth (input.mask_source: gt), which the cascade will not have: it "
            "feeds them its segmenter's predicted masks; set train.input.mask_source to a "
            "segmenter run to rank them as they will run"
        )
    return (
        f"predicted by the segmenter {source} (out-of-fold on the training split, the "
        "segmenter's own on validation), as the cascade will feed them"
    )


def _print_paired(rows: list[dict], exp) -> None:
    """The best trial against the next ones, paired on the same validation images."""
    from melanoma.metrics.paired import describe, in_sample
    from search.results import paired_to_best

    compared = paired_to_best(rows, exp)
    if not compared:
        return
    print(f"best minus the next trials, {exp.train.metric} on the same validation images:")
    close = []
    for trial_id, result in compared:
        # Validation ranked the trials: in-sample for the best one (even so, an interval
        # reaching zero says the ranking cannot tell them apart).
        print(f"  {trial_id}: {describe(in_sample(result, keep_interval=True))}")
        if result["low"] is not None and result["low"] <= 0:
            close.append(trial_id)
    if close:
        print(
            f"validation does not separate the best trial from {', '.join(close)}: compare them "
            "with `melanoma cv` or on a larger validation split (data.val_from_train)"
        )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _cmd_search_results(args: argparse.Namespace) -> int:
    return _print_results(args.name, args.storage, csv_path=args.csv, as_json=args.json)


def register(sub) -> None:
    """Add this stage's subcommands."""
    search = sub.add_parser("search", help="hyperparameter search with Ray Tune + Optuna + ASHA")
    search_sub = search.add_subparsers(dest="search_command", required=True)
    for task in ("seg", "cls"):
        p = search_sub.add_parser(
            task, help=f"search {'segmenters' if task == 'seg' else 'classifiers'}"
        )
        p.add_argument(
            "--experiment",
            required=True,
            help="experiment YAML, or the name of a shipped one (quickstart, seg_search, ...)",
        )
        p.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
        p.add_argument("--num-samples", type=int, help="number of trials (overrides the YAML)")
        p.add_argument("--name", help="search name (default: the experiment's name)")
        p.add_argument("--storage", help="results root, a local path or s3://... (default: YAML)")
        p.add_argument("--data", help="dataset path (overrides train.data.path)")
        p.add_argument("--verbose", type=int, default=0, help="Tune's own console output (0-3)")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="any experiment key, e.g. --set train.data.image_size=128 or "
            "--set search.max_epochs=10 (repeatable); the resolved experiment is written "
            "to the search's experiment.yaml",
        )
        p.set_defaults(func=_cmd_search_run, task=task)
    p = search_sub.add_parser("resume", help="finish an interrupted search")
    p.add_argument("name", help="the search's name (its folder under --storage)")
    p.add_argument("--storage", default=SEARCH_STORAGE, help="the searches' root folder or URI")
    p.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
    p.add_argument("--verbose", type=int, default=0, help="Tune's own console output (0-3)")
    p.set_defaults(func=_cmd_search_resume)
    p = search_sub.add_parser("results", help="trials sorted by the metric, best checkpoint")
    p.add_argument("name", help="the search's name (its folder under --storage)")
    p.add_argument("--storage", default=SEARCH_STORAGE, help="the searches' root folder or URI")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_cmd_search_results)
