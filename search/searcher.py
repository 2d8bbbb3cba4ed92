"""Searcher and scheduler choices: Optuna TPE (or random) and ASHA (or FIFO).

ASHA and TPE disagree about what a stopped trial means. Tune tells its searcher a trial
is complete when ASHA stops it, with the value it had at, say, epoch 1: TPE would then
rank that early, low-fidelity value against fully trained trials and learn that the
hyperparameters of every quickly stopped trial are bad or, worse, good. Here:
- every epoch is reported to Optuna as an intermediate value at step = epoch (not Tune's
  iteration counter, which restarts after a restore);
- a trial that ends before its last epoch without having finished by its own rules
  (the engine's early stopping reports ``finished``) is told to Optuna as PRUNED. TPE
  ranks pruned trials by how far they got and their last intermediate value, below every
  trial that completed, which is exactly what ASHA's decision meant.
"""

from __future__ import annotations

import math
import pickle

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from search.experiment import Experiment
from search.space import DefineByRun, define_by_run

_DIRECTIONS = {"max": "maximize", "min": "minimize"}


class FidelityAwareOptunaSearch(Searcher):
    """Ray Tune's public ``Searcher`` over Optuna's public ask-and-tell interface: each new
    trial asks the study for a configuration (the define-by-run space), every epoch is
    reported as an intermediate value, and a trial ends as COMPLETE, PRUNED (cut short by
    the scheduler) or FAIL. Its state pickles into Tune's experiment checkpoints, so a
    resumed search goes on with the same study."""

    def __init__(
        self,
        space: DefineByRun,
        metric: str,
        mode: str,
        sampler: optuna.samplers.BaseSampler,
        *,
        max_epochs: int,
        study_name: str | None = None,
        storage=None,
        time_attr: str = "epoch",
        first: dict | None = None,
    ):
        if mode not in _DIRECTIONS:
            raise ValueError(f"mode must be one of {list(_DIRECTIONS)}, got {mode!r}")
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.max_epochs = max_epochs
        self.time_attr = time_attr
        self.study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            direction=_DIRECTIONS[mode],
            load_if_exists=True,
        )
        if first is not None and not self.study.trials:
            # The experiment's own configuration is the study's first trial: TPE learns
            # from it like from any other, and the population holds the default.
            self.study.enqueue_trial(first, user_attrs={"default": True})
        self.trials: dict[str, optuna.Trial] = {}  # Tune trial id -> its asked Optuna trial
        self.reported: dict[str, set[int]] = {}  # steps already reported, per trial
        self.completed: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # The metric and mode are fixed by the experiment when the searcher is made.
        return True

    def suggest(self, trial_id: str) -> dict:
        trial = self.study.ask()
        self.space(trial)
        self.trials[trial_id] = trial
        self.reported[trial_id] = set()
        return dict(trial.params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trials and trial_id not in self.completed:
            self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self.completed or trial_id not in self.trials:
            return
        self.completed.add(trial_id)
        trial = self.trials[trial_id]
        value = None if result is None else result.get(self.metric)
        if error or value is None or not math.isfinite(float(value)):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        # Tune hands the last epoch's result to on_trial_complete only: record it as that
        # epoch's intermediate value too, so the study holds every epoch.
        self._report(trial_id, result)
        cut_short = not result.get("finished", False) and (
            int(result.get(self.time_attr, 0)) < self.max_epochs
        )
        if cut_short:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, float(value))

    def _report(self, trial_id: str, result: dict) -> None:
        """``result``'s metric as the intermediate value at step = epoch (not Tune's
        iteration counter, which restarts after a restore), once per epoch."""
        value, step = result.get(self.metric), int(result.get(self.time_attr, 0))
        if value is not None and step not in self.reported[trial_id]:
            self.trials[trial_id].report(float(value), step)
            self.reported[trial_id].add(step)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


def optuna_storage(uri: str | None):
    if not uri:
        return None
    if uri.endswith((".log", ".jsonl")):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(uri))
    return optuna.storages.RDBStorage(uri)


def create_searcher(
    exp: Experiment, name: str, journal: str | None = None
) -> FidelityAwareOptunaSearch:
    """TPE (seeded, ``n_startup_trials`` random first) or Optuna's random sampler; both
    handle the conditional space and the pruned-trial rule above. The study goes to
    ``search.searcher.optuna_storage``, else to the ``journal`` file (a journal, not
    SQLite: parallel trials report at once, and SQLite locks under that, as Optuna's FAQ
    warns), else stays in memory."""
    s = exp.search.searcher
    if s.name == "optuna":
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    return FidelityAwareOptunaSearch(
        define_by_run(exp.space),
        exp.metric,
        exp.mode,
        sampler,
        study_name=name,
        storage=optuna_storage(s.optuna_storage or journal),
        max_epochs=exp.search.max_epochs,
        first=exp.default_params,
    )


def is_default(config: dict, default: dict | None) -> bool:
    """Whether a trial's parameters are the experiment's own configuration (trial 0)."""
    return bool(default) and all(config.get(k) == v for k, v in default.items())


class DefaultKeepingASHA(ASHAScheduler):
    """ASHA that never stops the experiment's own configuration: its results fill the
    rungs the other trials are compared against, but it always trains to max_epochs.
    Why: ASHA's early rungs are noisy (one or two epochs on 30 validation melanomas), and
    a default stopped there would leave the search's population without the one
    configuration the hand-off must never lose to; it costs one full trial."""

    def __init__(self, *args, default: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if is_default(trial.config, self.default):
            return self.CONTINUE
        return decision


def create_trial_scheduler(exp: Experiment):
    """ASHA on the reported epoch (restores keep counting right), keeping the default
    trial to the end (DefaultKeepingASHA), or FIFO."""
    s = exp.search.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return DefaultKeepingASHA(
        time_attr="epoch",
        metric=exp.metric,
        mode=exp.mode,
        max_t=exp.search.max_epochs,
        grace_period=min(s.grace_period, exp.search.max_epochs),
        reduction_factor=s.reduction_factor,
        default=exp.default_params,
    )
