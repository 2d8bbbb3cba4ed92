"""What a search watches while it runs: one progress line per reported epoch, and the
budget in trial-epochs that stops it."""

from __future__ import annotations

import math

from ray import tune

from search.searcher import is_default
from search.tracking import stopped_early


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
