"""Run and resume searches: Ray Tune over the Train-in-Tune trainable, its resources,
and the out-of-fold masks a mask-using search trains on."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray import tune

from melanoma.config import dump_yaml
from search.callbacks import EpochBudget, Progress
from search.experiment import DEFAULT_STORAGE, Experiment
from search.searcher import create_searcher, create_trial_scheduler
from search.store import (
    EXPERIMENT_FILE,
    OPTUNA_JOURNAL,
    is_uri,
    load_search_experiment,
    search_path,
    trial_dirname,
)
from trainables.driver import tune_driver
from trainables.meta import META, TrialMeta, train_storage

if TYPE_CHECKING:
    from melanoma.engine.config import TrainConfig


# The budget curve's largest budget, in runs of the default's length: 32 trial-epochs of
# 4-epoch runs (docs/results.md, "The budget curve").
MEASURED_RUNS = 8


def budget_advice(exp: Experiment) -> str | None:
    """A line for a search no larger than the budget curve measured, where averaged runs
    of the default beat every search hand-off on other clinics' images; None above it."""
    total = exp.search.budget_epochs or exp.search.num_samples * exp.search.max_epochs
    runs = total / exp.search.max_epochs
    if runs > MEASURED_RUNS:
        return None
    return (
        f"[search] note: {total} trial-epochs is {runs:g} runs' worth of the default "
        f"({exp.search.max_epochs} epochs). At up to {MEASURED_RUNS} such runs the budget "
        "curve (ISIC 2017 at 64 px, 4-epoch runs, three seeds) found the default's seeds "
        "averaged ahead of every search hand-off on another clinic's images on the mean, "
        "with intervals below zero for the search in two or three seeds of three: "
        "`melanoma run` plans that (docs/results.md#the-budget-curve-real-data)"
    )


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """Join a running cluster (``auto`` or HOST:PORT) or start a local Ray instance."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    from ray._private.services import find_gcs_addresses

    others = sorted(find_gcs_addresses())
    if others:
        # Ray Train 2.60 checks its workers through the State API, which finds "the" Ray
        # instance on the machine by itself and fails when there are several: trials then
        # hang waiting for CPUs their finished predecessors still hold.
        print(
            f"[search] warning: Ray is already running on this machine ({', '.join(others)}); "
            "a second local instance makes Ray Train's health checks fail. Join the running "
            f"one with --address {others[0]}, or stop it first.",
            file=sys.stderr,
            flush=True,
        )
    ray.init(include_dashboard=True, log_to_driver=False)


@dataclass(frozen=True)
class ResourcePlan:
    """What each trial of a search gets on this cluster, and how many run at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    driver_cpus: float
    launcher: str  # "inline" or "train", resolved from resources.launcher
    placement_strategy: str
    max_concurrent: int


def plan_resources(exp: Experiment) -> ResourcePlan:
    """Per-worker resources and how many trials fit the cluster at once."""
    total = ray.cluster_resources()
    r = exp.resources
    gpus = float(total.get("GPU", 0))
    gpw = (1.0 if gpus else 0.0) if r.gpus_per_worker == "auto" else float(r.gpus_per_worker)
    if gpw and not gpus:
        raise ValueError(
            f"resources.gpus_per_worker is {gpw} but the cluster has no GPU; set it to 0 or 'auto'"
        )
    cpus = float(total.get("CPU", 1))
    # An inline trial trains in its own process: no separate driver to reserve CPUs for.
    driver = r.driver_cpus if r.launcher_used == "train" else 0.0
    per_trial_cpu = r.workers * r.cpus_per_worker + driver
    if per_trial_cpu > cpus:
        raise ValueError(
            f"one trial needs {per_trial_cpu:g} CPUs "
            f"({r.workers} workers x {r.cpus_per_worker:g} + "
            f"driver {driver:g}) but the cluster has {cpus:g}; "
            "lower resources.workers or cpus_per_worker"
        )
    fits = math.floor(gpus / (r.workers * gpw)) if gpw else math.floor(cpus / per_trial_cpu)
    concurrent = exp.search.max_concurrent or max(1, fits)
    return ResourcePlan(
        workers=r.workers,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=gpw,
        driver_cpus=r.driver_cpus,
        launcher=r.launcher_used,
        placement_strategy=r.placement_strategy,
        max_concurrent=max(1, min(concurrent, exp.search.num_samples)),
    )


def trainable_for(plan: ResourcePlan):
    if plan.launcher == "inline":
        from trainables.inline import inline_trainable

        return inline_trainable(plan.cpus_per_worker, plan.gpus_per_worker)
    return tune.with_resources(tune_driver, {"CPU": plan.driver_cpus})


def tune_fault_and_checkpoints(exp: Experiment) -> dict:
    """Inline trials checkpoint through Tune itself: Tune keeps the best k and restarts a
    failed trial from its last one. (Train-launched trials do both inside Ray Train.)"""
    if exp.resources.launcher_used != "inline":
        return {}
    return {
        "failure_config": tune.FailureConfig(max_failures=exp.search.max_failures),
        "checkpoint_config": tune.CheckpointConfig(
            num_to_keep=exp.search.keep_checkpoints,
            checkpoint_score_attribute=f"val_{exp.train.metric}",
            checkpoint_score_order=exp.mode,
        ),
    }


def run_root(storage: str, name: str) -> str:
    """Where trials' engine runs go (checkpoints, TensorBoard images, metrics.json): beside
    Tune's files in the search directory, or on the node's disk when storage is a URI."""
    if is_uri(storage):
        from melanoma.config import cache_root

        return str(cache_root() / "runs" / name)
    return search_path(storage, name)


def trial_meta(exp: Experiment, name: str, storage: str, plan: ResourcePlan) -> TrialMeta:
    return TrialMeta(
        train=exp.train.to_dict(),
        run_root=run_root(storage, name),
        train_storage=train_storage(search_path(storage, name)),
        workers=plan.workers,
        cpus_per_worker=plan.cpus_per_worker,
        gpus_per_worker=plan.gpus_per_worker,
        max_failures=exp.search.max_failures,
        keep_checkpoints=exp.search.keep_checkpoints,
        metric=exp.metric,
        checkpoint_metric=f"val_{exp.train.metric}",
        mode=exp.mode,
        placement_strategy=plan.placement_strategy,
    )


def run_search(
    exp: Experiment,
    *,
    name: str | None = None,
    storage: str | None = None,
    address: str | None = None,
    verbose: int = 0,
    callbacks: list | None = None,
):
    """Start a new search; returns Tune's ResultGrid. ``callbacks``: more Tune callbacks."""
    name = name or exp.name
    storage = storage or exp.storage
    # Trials run in directories of their own: relative paths mean the caller's directory.
    exp = replace(exp, train=exp.train.with_absolute_paths(Path.cwd()))
    root = search_path(storage, name)
    if not is_uri(root) and (Path(root) / EXPERIMENT_FILE).exists():
        raise FileExistsError(
            f"a search named {name!r} already exists in {storage}; continue it with "
            f"`melanoma search resume {name}` or choose another --name"
        )
    exp = replace(exp, train=resolve_mask_source(exp.train, storage))
    tracking = _tracking(exp, name)  # before Ray starts: a missing MLflow fails at once
    exp.train.check_paths()  # and a missing data set, not in every trial
    make_segmenter_masks(exp)
    connect(address)
    plan = plan_resources(exp)
    if not is_uri(root):
        Path(root).mkdir(parents=True, exist_ok=True)
        dump_yaml({**exp.to_dict(), "name": name, "storage": storage}, Path(root) / EXPERIMENT_FILE)
    searcher = tune.search.ConcurrencyLimiter(
        create_searcher(exp, name, None if is_uri(root) else str(Path(root) / OPTUNA_JOURNAL)),
        max_concurrent=plan.max_concurrent,
    )
    print(
        f"[search] {name}: {exp.search.num_samples} trials x up to {exp.search.max_epochs} epochs, "
        f"{plan.max_concurrent} at a time, {plan.workers} worker(s) x "
        f"({plan.cpus_per_worker:g} CPU, {plan.gpus_per_worker:g} GPU) each; "
        f"results in {root}",
        flush=True,
    )
    budget = exp.search.budget_epochs
    if budget:
        print(f"[search] budget: {budget} trial-epochs in all", flush=True)
    advice = budget_advice(exp)
    if advice:
        print(advice, flush=True)
    tuner = tune.Tuner(
        trainable_for(plan),
        param_space={META: trial_meta(exp, name, storage, plan).to_dict()},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=create_trial_scheduler(exp),
            num_samples=exp.search.num_samples,
            trial_dirname_creator=trial_dirname,
            # No actor reuse: a reused trial process reports the previous trial's directory
            # (get_trial_dir), and the run would write its images and checkpoints there.
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage if is_uri(storage) else str(Path(storage).resolve()),
            callbacks=[
                Progress(exp.metric, exp.mode, exp.search.max_epochs),
                *tracking,
                *(callbacks or []),
            ],
            stop=EpochBudget(budget, exp.default_params, exp.search.max_epochs) if budget else None,
            verbose=verbose,
            **tune_fault_and_checkpoints(exp),
        ),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    print(f"[search] {name} finished in {time.perf_counter() - started:.0f} s", flush=True)
    return grid


def resolve_mask_source(train: TrainConfig, storage: str) -> TrainConfig:
    """``input.mask_source: search:NAME`` made the best checkpoint of segmenter search NAME
    in ``storage``, so every trial (and a resumed search) uses that one segmenter."""
    name = train.input.mask_search
    if name is None:
        return train
    try:
        from search.results import best_checkpoints  # reads searches; this module runs them

        ((path, origin, value),) = best_checkpoints(name, "seg", 1, storage)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"input.mask_source {train.input.mask_source} names the segmenter search "
            f"{name!r}, which is not in {search_path(storage, name)}; run it first (`melanoma "
            "search seg`, same --storage) or set input.mask_source to a segmenter run directory"
        ) from None
    except ValueError as err:
        raise ValueError(f"input.mask_source {train.input.mask_source}: {err}") from None
    shown = "" if value is None else f", validation {value:.4f}"
    print(f"[search] masks of segmenter search {name}: its best trial {origin}{shown}", flush=True)
    return train.with_overrides({"input.mask_source": str(path)})


def explores_masks(exp: Experiment) -> bool:
    """Whether a search trains classifiers that use lesion masks (crop, masked, ...)."""
    explores = exp.train.input.mode != "full" or any(p.key == "input.mode" for p in exp.space)
    return exp.task == "cls" and explores


def make_segmenter_masks(exp: Experiment) -> None:
    """A classifier search's out-of-fold masks, made by the driver before the first trial
    rather than in the first trials at once (they would wait on each other's lock)."""
    train = exp.train
    if not explores_masks(exp) or train.input.mask_source == "gt":
        return
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import training_data

    print(f"[search] out-of-fold masks from {train.input.mask_source}", flush=True)
    # The masks do not depend on the mode, only on the size a trial loads its images at:
    # ask as a lesion-crop classifier would, at the image size and at each source size
    # the experiment can choose.
    sizes = {None, train.input.source_size}
    for p in exp.space:
        if p.key == "input.source_size" and p.kind == "choice":
            sizes.update(p.values)
    for size in sorted(sizes, key=lambda s: s or 0):
        config = replace(train, input=replace(train.input, mode="crop", source_size=size))
        training_data(config, Runtime(), keep_copy=False)


def _tracking(exp: Experiment, name: str) -> list:
    """The experiment-tracking callbacks the experiment asks for."""
    if not exp.tracking.mlflow:
        return []
    from search.tracking import MLflowTracking

    return [MLflowTracking(exp.tracking.mlflow, name, exp.to_dict(), exp.metric, exp.mode)]


def resume_search(
    name: str, *, storage: str = DEFAULT_STORAGE, address: str | None = None, verbose: int = 0
):
    """Restore an interrupted search: unfinished trials resume from their checkpoints,
    errored ones are retried; finished trials are not run again."""
    exp = load_search_experiment(name, storage)
    connect(address)
    plan = plan_resources(exp)
    root = search_path(storage, name)
    if not tune.Tuner.can_restore(root):
        raise FileNotFoundError(
            f"search {name!r} in {storage} has no Tune state to restore yet; start it again"
        )
    print(f"[search] resuming {name} from {root}", flush=True)
    tuner = tune.Tuner.restore(
        root, trainable=trainable_for(plan), resume_unfinished=True, resume_errored=True
    )
    return tuner.fit()
