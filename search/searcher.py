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

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search.experiment import Experiment
from search.space import define_by_run


class FidelityAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports per-epoch values and marks scheduler-stopped trials PRUNED."""

    def __init__(self, *args, max_epochs: int, time_attr: str = "epoch", **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self.time_attr = time_attr
        self.pruned_trials: set[str] = set()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        step = int(result.get(self.time_attr, 0))
        ot_trial = self._ot_trials[trial_id]
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(result[self.metric], step)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result is not None and not error:
            # Tune hands the last epoch's result to on_trial_complete only: record it as
            # that epoch's intermediate value too, so the study holds every epoch.
            self.on_trial_result(trial_id, result)
        cut_short = (
            not error
            and result is not None
            and not result.get("finished", False)
            and int(result.get(self.time_attr, 0)) < self.max_epochs
        )
        if cut_short:
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            finally:
                self._completed_trials.add(trial_id)
                self.pruned_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


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
        space=define_by_run(exp.space),
        metric=exp.metric,
        mode=exp.mode,
        sampler=sampler,
        study_name=name,
        storage=optuna_storage(s.optuna_storage or journal),
        max_epochs=exp.search.max_epochs,
    )


def create_trial_scheduler(exp: Experiment):
    """ASHA on the reported epoch (restores keep counting right), or FIFO."""
    s = exp.search.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        metric=exp.metric,
        mode=exp.mode,
        max_t=exp.search.max_epochs,
        grace_period=min(s.grace_period, exp.search.max_epochs),
        reduction_factor=s.reduction_factor,
    )
