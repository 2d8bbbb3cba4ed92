"""A trial plug-in (``trainables.hooks``) the Ray tests register: a one-off trial failure,
a DDP worker lost mid-epoch, and a trace of the samples each rank trained on.

Switched on through the environment the trial processes inherit from the test's Ray:
- MELANOMA_FAIL_ONCE_MARKER: a file; when it does not exist yet, the trial creates it and
  fails once, on rank 0 just before epoch 2's report;
- MELANOMA_FAIL_ONCE_RANK: with the marker, that rank fails in the middle of epoch 2 (at
  its second batch) instead;
- MELANOMA_TRACE_SAMPLES: a folder; every rank appends the image ids of each training
  batch to rank<r>-<pid>.jsonl there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from trainables.hooks import PLUGINS_ENV, TrialHooks
from trainables.train_loop import CHECKPOINT_FILE

FAIL_ONCE_ENV = "MELANOMA_FAIL_ONCE_MARKER"
FAIL_RANK_ENV = "MELANOMA_FAIL_ONCE_RANK"
TRACE_ENV = "MELANOMA_TRACE_SAMPLES"
ROOT = Path(__file__).resolve().parents[1]


def plugin_env() -> dict[str, str]:
    """The environment that registers this plug-in in the trials of a Ray started after it
    is set (the repository on PYTHONPATH, so that every worker can import ``tests``)."""
    path = os.environ.get("PYTHONPATH")
    return {
        PLUGINS_ENV: __name__,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


def _fail_once(where: str) -> None:
    marker = Path(os.environ[FAIL_ONCE_ENV])
    if not marker.exists():
        marker.write_text(f"failed {where}\n")
        raise RuntimeError(f"injected trial failure ({FAIL_ONCE_ENV}): {where}")


def _wait_for_a_persisted_checkpoint(run_dir: str | None, timeout_s: float = 60) -> None:
    """Until Ray Train has a checkpoint of this run in storage: rank 0 uploads it in the
    background, and a group lost before that would start over instead of resuming."""
    if not run_dir or "://" in run_dir:
        return
    deadline = time.monotonic() + timeout_s
    while not list(Path(run_dir).glob(f"checkpoint_*/{CHECKPOINT_FILE}")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)
    time.sleep(1.0)  # the upload thread hands the report on just after the file is written


def trial_hooks(rank: int, run_dir: str | None) -> TrialHooks:
    trace = os.environ.get(TRACE_ENV)
    armed = bool(os.environ.get(FAIL_ONCE_ENV))
    fail_rank = os.environ.get(FAIL_RANK_ENV) if armed else None
    seen: dict[int, int] = {}
    path = Path(trace) / f"rank{rank}-{os.getpid()}.jsonl" if trace else None

    def on_report(epoch: int) -> None:
        # A crash in the middle of the run: epoch 1's checkpoint is persisted, epoch 2's
        # report never happens.
        if armed and fail_rank is None and epoch > 1:
            _fail_once(f"after epoch {epoch - 1}")

    def on_batch(epoch: int, batch: dict) -> None:
        seen[epoch] = seen.get(epoch, 0) + 1
        if fail_rank is not None and int(fail_rank) == rank and epoch == 1 and seen[epoch] == 2:
            _wait_for_a_persisted_checkpoint(run_dir)
            _fail_once(f"on rank {rank} in the middle of epoch 2")
        if path is not None:
            with open(path, "a") as fh:
                fh.write(json.dumps({"epoch": epoch + 1, "ids": list(batch["id"])}) + "\n")

    wants_batches = path is not None or (fail_rank is not None and int(fail_rank) == rank)
    return TrialHooks(on_batch if wants_batches else None, on_report if armed else None)
