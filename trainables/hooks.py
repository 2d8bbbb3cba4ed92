"""Plug-ins of a trial's training loop, for tests: fault injection, sample tracing.

``MELANOMA_TRIAL_PLUGINS`` names modules (comma-separated) importable in every trial
process; each has ``trial_hooks(rank, run_dir) -> TrialHooks``. Trials import them where
they train, so a test that starts Ray with the variable set (its workers inherit the
environment) reaches every rank. Production trials name none and run no hook.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

PLUGINS_ENV = "MELANOMA_TRIAL_PLUGINS"


@dataclass(frozen=True)
class TrialHooks:
    """``on_batch(epoch, batch)`` before each training step; ``on_report(epoch)`` on rank
    0 before each epoch's report (after that epoch's checkpoint was written)."""

    on_batch: Callable[[int, dict], None] | None = None
    on_report: Callable[[int], None] | None = None


def trial_hooks(rank: int, run_dir: str | None = None) -> TrialHooks:
    """The hooks of the plug-ins ``MELANOMA_TRIAL_PLUGINS`` names, chained; none by
    default. ``run_dir``: the trial's Ray Train run in storage, or None inline."""
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    hooks = [importlib.import_module(n).trial_hooks(rank, run_dir) for n in names]
    batch = [h.on_batch for h in hooks if h.on_batch is not None]
    report = [h.on_report for h in hooks if h.on_report is not None]

    def on_batch(epoch: int, item: dict) -> None:
        for fn in batch:
            fn(epoch, item)

    def on_report(epoch: int) -> None:
        for fn in report:
            fn(epoch)

    return TrialHooks(on_batch if batch else None, on_report if report else None)
