"""Experiment tracking: every trial of a search as an MLflow run nested under the search's.

Ray's ``MLflowLoggerCallback`` makes one flat run per trial, steps by training iteration and
logs the whole trial config (here it carries the base train config under ``__meta__``)
and, as artifacts, Tune's trial folder. A search wants a parent run, steps in epochs, the
sampled parameters only, and the trial's best checkpoint: this callback does that with
MLflow's own client, in the Tune driver (one writer, so a SQLite store is safe).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune

from trainables.meta import META

INSTALL_HINT = 'pip install -e ".[mlflow]"'
# Tune's own bookkeeping in every result: not the trial's measurements.
_NOT_METRICS = {
    "done",
    "training_iteration",
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "pid",
    "finished",
}


def stopped_early(last_result: dict, max_epochs: int) -> bool:
    """A trial that ended before its last epoch without saying it finished: ASHA stopped it."""
    return not last_result.get("finished", False) and last_result.get("epoch", 0) < max_epochs


def require_mlflow():
    """The mlflow module, or an error that names the install command."""
    try:
        import mlflow
    except ImportError:
        raise ImportError(
            f"tracking.mlflow is set but MLflow is not installed; {INSTALL_HINT} "
            "(or remove tracking.mlflow from the experiment)"
        ) from None
    return mlflow


class MLflowTracking(tune.Callback):
    """One MLflow run for the search (its settings), one nested run per trial: sampled
    parameters, every epoch's metrics (step = epoch), state, best checkpoint artifact.

    MLflow's run status has no word for a trial the scheduler stopped (it is FINISHED
    there): the tag ``melanoma_state`` holds the state ``search results`` shows
    (TERMINATED, STOPPED or ERROR)."""

    def __init__(self, uri: str, search: str, experiment: dict, metric: str, mode: str):
        require_mlflow()
        self.uri, self.client = uri, None  # the client is made in setup (picklable before)
        self.search, self.experiment, self.metric, self.mode = search, experiment, metric, mode
        self.checkpoint_metric = f"val_{experiment['train']['metric']}"
        self.parent: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.best: dict[str, tuple[float, str]] = {}  # trial id -> (value, checkpoint dir)
        self.last: dict[str, dict] = {}  # trial id -> its latest result
        self.max_epochs = int(experiment["search"]["max_epochs"])

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the search's state (resume): not the client.
        return {**self.__dict__, "client": None}

    def setup(self, **info) -> None:
        self.client = require_mlflow().MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.search)
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(
                self.search, artifact_location=artifact_location(self.uri)
            )
        )
        # A resumed search continues its parent run rather than starting a second one.
        parents = self.client.search_runs(
            [experiment_id], filter_string="tags.melanoma_role = 'search'", max_results=1
        )
        if parents:
            self.parent = parents[0].info.run_id
            for run in self.client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent}'"
            ):
                self.runs[run.data.tags.get("trial_id", "")] = run.info.run_id
        else:
            run = self.client.create_run(
                experiment_id, run_name=f"search {self.search}", tags={"melanoma_role": "search"}
            )
            self.parent = run.info.run_id
            for key, value in _flatten(self.experiment).items():
                self.client.log_param(self.parent, key, value)
        self.experiment_id = experiment_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.runs:  # restored or restarted: the same run goes on
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial {trial.trial_id}",
            tags={"mlflow.parentRunId": self.parent, "trial_id": trial.trial_id},
        )
        self.runs[trial.trial_id] = run.info.run_id
        for key, value in trial.config.items():
            if key != META:
                self.client.log_param(run.info.run_id, key, value)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run = self.runs.get(trial.trial_id)
        if run is None:
            return
        from mlflow.entities import Metric

        self.last[trial.trial_id] = result
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in result.items()
            if key not in _NOT_METRICS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ]
        # One write per epoch: a call per metric held Tune's driver 0.5 s per result.
        self.client.log_batch(run, metrics=metrics)
        # Ray Train (launcher: train) reports where each epoch's checkpoint went.
        value, path = result.get(self.checkpoint_metric), result.get("checkpoint_path")
        if isinstance(value, (int, float)) and path:
            sign = 1 if self.mode == "max" else -1
            best = self.best.get(trial.trial_id)
            if best is None or sign * value > sign * best[0]:
                self.best[trial.trial_id] = (float(value), path)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        stopped = stopped_early(self.last.get(trial.trial_id, {}), self.max_epochs)
        self._end(trial, "FINISHED", "STOPPED" if stopped else "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FAILED", "ERROR")

    def on_experiment_end(self, trials, **info) -> None:
        if self.parent:
            self.client.set_terminated(self.parent, "FINISHED")

    def _end(self, trial, status: str, state: str) -> None:
        run = self.runs.get(trial.trial_id)
        if run is None:
            return
        self.client.set_tag(run, "melanoma_state", state)
        best = self.best.get(trial.trial_id)
        path = best[1] if best else _tune_best_checkpoint(trial)
        if path and Path(path).is_dir():
            self.client.log_artifacts(run, path, "best_checkpoint")
            self.client.set_tag(run, "best_checkpoint", path)
        self.client.set_terminated(run, status)


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside its database file (MLflow's default is
    ./mlruns in whatever directory the search started from). A server (http://,
    databricks) keeps its own artifact root: None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix) :]).resolve().parent / "mlartifacts").as_uri()


def _tune_best_checkpoint(trial) -> str | None:
    """An inline trial's best checkpoint: Tune keeps them, scored by val_<metric>."""
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    best = manager.best_checkpoint_result if manager is not None else None
    return best.checkpoint.path if best is not None and best.checkpoint else None


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys to short strings (MLflow caps a parameter at 6000 characters)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out
