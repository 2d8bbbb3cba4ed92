"""Run, resume and read searches: Ray Tune over the Train-in-Tune trainable."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray import tune

from melanoma.config import dump_yaml, load_yaml
from search.experiment import DEFAULT_STORAGE, Experiment, experiment_from_dict
from search.searcher import create_searcher, create_trial_scheduler, is_default
from search.tracking import stopped_early
from trainables.driver import tune_driver
from trainables.meta import META, TrialMeta, train_run_name, train_storage

if TYPE_CHECKING:
    from melanoma.engine.config import TrainConfig

EXPERIMENT_FILE = "experiment.yaml"


OPTUNA_JOURNAL = "optuna.jsonl"  # the study, beside the search, for optuna-dashboard


def _is_uri(path: str) -> bool:
    return "://" in path


def search_path(storage: str, name: str) -> str:
    return (
        f"{storage.rstrip('/')}/{name}" if _is_uri(storage) else str(Path(storage).resolve() / name)
    )


def connect(address: str | None) -> None:
    """Join a running cluster (``auto`` or HOST:PORT) or start a local Ray instance."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
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


class Progress(tune.Callback):
    """One line per event: running, finished, stopped and errored trials, best so far."""

    def __init__(self, metric: str, mode: str, max_epochs: int):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.best: tuple[float, str] | None = None
        self.stopped: set[str] = set()
        self.done: set[str] = set()
        self.errored: set[str] = set()
        self.last: dict[str, dict] = {}
        self.seen_restored = False

    def on_step_begin(self, iteration, trials, **info):
        # A resumed search restores this callback as it was pickled at the start: count
        # the trials that ended before the interruption, so every line covers the search.
        if self.seen_restored:
            return
        self.seen_restored = True
        for trial in trials:
            result = trial.last_result or {}
            if result:
                self._note_best(trial.trial_id, result)
            if trial.status == "TERMINATED":
                self.last[trial.trial_id] = result
                self._ended(trial)
            elif trial.status == "ERROR":
                self.errored.add(trial.trial_id)

    def _note_best(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        valid = isinstance(value, (int, float)) and not math.isnan(value)
        if valid and (
            self.best is None
            or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        ):
            self.best = (float(value), trial_id)

    def _ended(self, trial) -> None:
        result = self.last.get(trial.trial_id, {})
        if stopped_early(result, self.max_epochs):
            self.stopped.add(trial.trial_id)
        self.done.add(trial.trial_id)

    def _line(self, trials, event: str) -> None:
        # Tune updates a trial's status after its callbacks run: count from our own sets.
        ended = self.done | self.errored
        running = sum(t.status == "RUNNING" and t.trial_id not in ended for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        best = f"{self.best[0]:.4f} (trial {self.best[1]})" if self.best else "-"
        print(
            f"[search] {event:<20} running {running}, finished {len(self.done - self.stopped)}, "
            f"stopped early {len(self.stopped)}, errored {len(self.errored)}, pending {pending} "
            f"| best {self.metric} {best}",
            flush=True,
        )

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        self._note_best(trial.trial_id, result)
        self._line(trials, f"{trial.trial_id} epoch {result.get('epoch')}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)
        self._line(trials, f"{trial.trial_id} done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errored.add(trial.trial_id)
        self._line(trials, f"{trial.trial_id} ERROR")


class EpochBudget(tune.Stopper):
    """Ends the search once its trials have reported ``budget`` epochs in all, but lets the
    experiment's own configuration (``default``, the trial 0) train to ``max_epochs``
    first: once the budget is spent every other trial stops after its next epoch, and the
    search ends when the default has finished. Why: a default cut short by the budget
    would leave the search's population without the configuration its hand-off must not
    lose to (measured: at 8 trial-epochs it was cut at 3 of 4). A default that never
    finishes (errored, never started, restored after it ended) cannot keep the search
    going: at ``budget + 2 * max_epochs`` trial-epochs it ends regardless."""

    def __init__(self, budget: int, default: dict | None = None, max_epochs: int = 0):
        self.budget, self.default, self.max_epochs = budget, default, max_epochs
        self.seen: set[tuple[str, int]] = set()
        self.default_done = not default
        self.cap = budget + 2 * max_epochs if default else budget

    def __call__(self, trial_id: str, result: dict) -> bool:
        # (trial, epoch) pairs: a trial restored from a checkpoint does not count twice.
        epoch = int(result.get("epoch", 0))
        self.seen.add((trial_id, epoch))
        if self.default and is_default(result.get("config") or {}, self.default):
            self.default_done = bool(result.get("finished")) or epoch >= self.max_epochs
            return False
        return self.spent()

    def spent(self) -> bool:
        return len(self.seen) >= self.budget

    def stop_all(self) -> bool:
        return self.spent() and (self.default_done or len(self.seen) >= self.cap)


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"


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
    if _is_uri(storage):
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
    if not _is_uri(root) and (Path(root) / EXPERIMENT_FILE).exists():
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
    if not _is_uri(root):
        Path(root).mkdir(parents=True, exist_ok=True)
        dump_yaml({**exp.to_dict(), "name": name, "storage": storage}, Path(root) / EXPERIMENT_FILE)
    searcher = tune.search.ConcurrencyLimiter(
        create_searcher(exp, name, None if _is_uri(root) else str(Path(root) / OPTUNA_JOURNAL)),
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
            storage_path=storage if _is_uri(storage) else str(Path(storage).resolve()),
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


def load_search_experiment(name: str, storage: str) -> Experiment:
    root = Path(search_path(storage, name))
    path = root / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no search named {name!r} in {storage} (looked for {path})")
    data = load_yaml(path)
    data["train"]["epochs"] = data["search"]["max_epochs"]
    return experiment_from_dict(data, str(path))


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


def trial_table(name: str, storage: str = DEFAULT_STORAGE) -> tuple[list[dict], Experiment]:
    """Every trial with its hyperparameters, state, epochs, best metric and best checkpoint."""
    from ray.tune import ExperimentAnalysis

    exp = load_search_experiment(name, storage)
    root = search_path(storage, name)
    analysis = ExperimentAnalysis(root)
    metric, mode = exp.metric, exp.mode
    keys = [p.key for p in exp.space]
    default = exp.default_params
    rows = []
    frames = analysis.trial_dataframes
    for trial in analysis.trials:
        df = frames.get(trial.trial_id)
        best_value, best_epoch, checkpoint, epochs, finished = None, None, None, 0, False
        ci, world, nodes = None, None, None
        if df is not None and "checkpoint_path" not in df and "checkpoint_dir_name" in df:
            # Inline trials checkpoint through Tune, into the trial's own directory.
            trial_dir = Path(root) / trial_dirname(trial)
            df = df.assign(
                checkpoint_path=[
                    str(trial_dir / n) if isinstance(n, str) and n else None
                    for n in df["checkpoint_dir_name"]
                ]
            )
        if df is not None and len(df) and metric in df:
            epochs = int(df["epoch"].max()) if "epoch" in df else len(df)
            finished = bool(df["finished"].iloc[-1]) if "finished" in df else False
            world, nodes = _last_int(df, "world_size"), _last_int(df, "worker_nodes")
            col = df[metric].astype(float)
            idx = col.idxmax() if mode == "max" else col.idxmin()
            best_value = float(col[idx])
            vm = f"val_{exp.train.metric}"
            ci = _interval_at(df, idx, vm)
            # The checkpoint to use is the one of the epoch with the best validation value.
            scored = df[df["checkpoint_path"].notna()] if "checkpoint_path" in df else df.iloc[0:0]
            if len(scored) and not _is_uri(root):  # only checkpoints Train has kept
                scored = scored[[Path(p).is_dir() for p in scored["checkpoint_path"]]]
            if len(scored) and vm in scored:
                pick = scored[vm].astype(float)
                row = scored.loc[pick.idxmax() if mode == "max" else pick.idxmin()]
                checkpoint, best_epoch = row["checkpoint_path"], int(row["epoch"])
        if best_value is None:
            # Tune's own progress files can lose their last lines when the driver is killed;
            # the Train checkpoints (written straight to storage) still hold the history.
            recovered = _from_checkpoints(
                Path(train_storage(root)) / train_run_name(trial.trial_id), exp
            ) or _from_checkpoints(Path(root) / trial_dirname(trial), exp)
            if recovered:
                best_value, best_epoch, checkpoint, epochs, finished = recovered
        state = trial.status
        if state == "TERMINATED" and not finished and epochs < exp.search.max_epochs:
            state = "STOPPED"  # by ASHA
        params = {k: trial.config.get(k) for k in keys if k in trial.config}
        rows.append(
            {
                "trial_id": trial.trial_id,
                # The experiment's own configuration (trial 0 unless the experiment opts out).
                "default": is_default(params, default) and len(params) == len(default or {}),
                "state": state,
                "epochs": epochs,
                metric: best_value,
                "ci_low": ci and ci[0],
                "ci_high": ci and ci[1],
                "best_epoch": best_epoch,
                "world_size": world,  # Train workers (DDP processes) of the trial
                "nodes": nodes,  # distinct nodes its workers ran on
                "checkpoint": checkpoint,
                # The trial's engine run (its best epoch's validation outputs among them).
                "run_dir": None
                if _is_uri(root)
                else str(Path(root) / trial_dirname(trial) / "run"),
                **params,
            }
        )
    rows.sort(
        key=lambda r: (r[metric] is None, -(r[metric] or 0) if mode == "max" else (r[metric] or 0))
    )
    return rows, exp


def paired_to_best(rows: list[dict], exp: Experiment, top: int = 5) -> list[tuple[str, dict]]:
    """The best trial against each of the next ``top`` on the same validation images: the
    paired bootstrap of the difference in the selection metric (best minus other), from
    the validation outputs each trial's engine run kept for its best epoch."""
    from melanoma.engine.saver import load_val_outputs
    from melanoma.metrics.classification import BOOTSTRAP_KEYS
    from melanoma.metrics.paired import aligned, paired_difference, paired_mean_difference

    scored = [r for r in rows if r.get(exp.metric) is not None and r.get("run_dir")]
    outputs = {r["trial_id"]: load_val_outputs(Path(r["run_dir"])) for r in scored[: top + 1]}
    metric = exp.train.metric
    if not scored or outputs[scored[0]["trial_id"]] is None:
        return []
    best = outputs[scored[0]["trial_id"]]
    out = []
    for r in scored[1 : top + 1]:
        other = outputs[r["trial_id"]]
        if other is None:
            continue
        if exp.task == "cls" and metric in BOOTSTRAP_KEYS:
            _, a, b = aligned(best["id"], best["prob"], other["id"], other["prob"])
            labels = aligned(best["id"], best["label"], other["id"], other["label"])[1]
            result = paired_difference(labels, a, b, metric, threshold=exp.train.threshold)
        elif exp.task == "seg" and metric in best:
            _, a, b = aligned(best["id"], best[metric], other["id"], other[metric])
            result = paired_mean_difference(a, b)
        else:
            continue
        out.append((r["trial_id"], result))
    return out


def best_checkpoints(
    name: str, task: str, top_k: int, storage: str = DEFAULT_STORAGE
) -> list[tuple[Path, str, float | None]]:
    """(checkpoint file, "search/trial_id", validation figure) of the ``top_k`` best trials
    of a finished or running search that trained ``task`` models."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    return [r[:3] for r in ranked_checkpoints(name, task, storage)[:top_k]]


def ranked_checkpoints(
    name: str, task: str, storage: str = DEFAULT_STORAGE
) -> list[tuple[Path, str, float | None, bool]]:
    """Every trial of ``name`` that kept a checkpoint, best first: (checkpoint file,
    "search/trial_id", validation figure, whether it is the default trial)."""
    from trainables.train_loop import CHECKPOINT_FILE

    rows, exp = trial_table(name, storage)
    if exp.task != task:
        raise ValueError(
            f"search {name!r} searched {exp.task} models where {task} models were expected"
        )
    ranked = [
        (
            Path(r["checkpoint"]) / CHECKPOINT_FILE,
            f"{name}/{r['trial_id']}",
            r.get(exp.metric),
            bool(r.get("default")),
        )
        for r in rows
        if r.get("checkpoint")
    ]
    if not ranked:
        raise ValueError(f"search {name!r} has no trial with a checkpoint yet")
    return ranked


def _last_int(df, column: str) -> int | None:
    """The last reported value of an integer column (None for searches that lack it)."""
    if column not in df or df[column].isna().iloc[-1]:
        return None
    return int(df[column].iloc[-1])


def _interval_at(df, idx, column: str) -> tuple[float, float] | None:
    """The 95% interval the engine reported beside the validation metric at row ``idx``."""
    low, high = f"{column}_low", f"{column}_high"
    if low not in df or high not in df or df[low].isna()[idx]:
        return None
    return float(df[low][idx]), float(df[high][idx])


def _from_checkpoints(train_dir: Path, exp: Experiment):
    """(best value, best epoch, best checkpoint, epochs, finished) from a trial's Train
    checkpoints, or None when it has none."""
    from melanoma.engine.checkpoint import load_checkpoint
    from trainables.train_loop import CHECKPOINT_FILE

    found = []
    for directory in sorted(train_dir.glob("checkpoint_*")) if train_dir.is_dir() else []:
        try:
            state = load_checkpoint(directory / CHECKPOINT_FILE)
        except (FileNotFoundError, ValueError):
            continue
        found.append((directory, state))
    if not found:
        return None
    latest = max(found, key=lambda f: f[1]["epoch"])[1]
    history = latest["history"]
    key = exp.train.metric
    sign = 1 if exp.mode == "max" else -1
    scored = [(d, s["history"][-1]["val"].get(key)) for d, s in found]
    scored = [(d, v) for d, v in scored if v is not None]
    best_dir, _ = max(scored, key=lambda x: sign * x[1]) if scored else (None, None)
    stopped = bool(exp.train.early_stopping) and latest["stale"] >= exp.train.early_stopping
    return (
        latest["best_value"],
        latest["best_epoch"],
        str(best_dir) if best_dir else None,
        len(history),
        stopped or latest["epoch"] == exp.search.max_epochs,
    )


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, default=str)
