"""The Ray Train per-worker function: the engine's fit under DDP, reporting every epoch."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch

# melanoma.engine.checkpoint needs only torch (already loaded by ray.train.torch); the rest
# of the engine is imported in the worker only, so Train's controller stays light.
from melanoma.engine.checkpoint import LAST as CHECKPOINT_FILE

# Fault injection for the failure-recovery tests: when this names a file that does not
# exist yet, the trial creates it and raises, once.
FAIL_ONCE_ENV = "MELANOMA_FAIL_ONCE_MARKER"
# With this set to a rank, that rank fails in the middle of epoch 2 (at its second batch)
# instead of rank 0 just before epoch 2's report: a DDP worker lost mid-epoch.
FAIL_RANK_ENV = "MELANOMA_FAIL_ONCE_RANK"
# A directory: every rank appends the image ids of each training batch to
# rank<r>-<pid>.jsonl there (which samples each rank saw, epoch by epoch).
TRACE_ENV = "MELANOMA_TRACE_SAMPLES"


def _fail_once(where: str) -> None:
    marker = Path(os.environ[FAIL_ONCE_ENV])
    if not marker.exists():
        marker.write_text(f"failed {where}\n")
        raise RuntimeError(f"injected trial failure ({FAIL_ONCE_ENV}): {where}")


def inject_failure_once(epoch: int) -> None:
    """A crash in the middle of the run: epoch 1's checkpoint is persisted, this epoch's
    report never happens. Only when MELANOMA_FAIL_ONCE_MARKER asks for it, once, and no
    rank is named for a mid-epoch failure instead."""
    if os.environ.get(FAIL_ONCE_ENV) and FAIL_RANK_ENV not in os.environ and epoch > 1:
        _fail_once(f"after epoch {epoch - 1}")


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


def batch_hook(rank: int, run_dir: str | None = None):
    """The engine's per-batch callback for the test hooks above, or None when none is set.
    ``run_dir``: the trial's Ray Train run in storage (a mid-epoch failure waits for its
    first checkpoint there, so that the test of resuming is not a race)."""
    trace = os.environ.get(TRACE_ENV)
    fail_rank = os.environ.get(FAIL_RANK_ENV) if os.environ.get(FAIL_ONCE_ENV) else None
    if not trace and (fail_rank is None or int(fail_rank) != rank):
        return None
    seen: dict[int, int] = {}
    path = Path(trace) / f"rank{rank}-{os.getpid()}.jsonl" if trace else None

    def on_batch(epoch: int, batch: dict) -> None:
        seen[epoch] = seen.get(epoch, 0) + 1
        if fail_rank is not None and int(fail_rank) == rank and epoch == 1 and seen[epoch] == 2:
            _wait_for_a_persisted_checkpoint(run_dir)
            _fail_once(f"on rank {rank} in the middle of epoch 2")
        if path is not None:
            with open(path, "a") as fh:
                fh.write(json.dumps({"epoch": epoch + 1, "ids": list(batch["id"])}) + "\n")

    return on_batch


def stage_checkpoint(checkpoint_dir: Path) -> Path:
    """A new directory holding this epoch's last.pt, for Ray to persist.

    Only last.pt travels: model, optimizer, schedule and RNG states at this epoch, enough
    to resume the trial and to use the model. A hard link costs nothing: the engine
    replaces last.pt by rename, so the link keeps this epoch's bytes.
    """
    staged = Path(tempfile.mkdtemp(prefix="staged-", dir=checkpoint_dir))
    try:
        os.link(checkpoint_dir / CHECKPOINT_FILE, staged / CHECKPOINT_FILE)
    except OSError:  # no hard links here: copy
        shutil.copy(checkpoint_dir / CHECKPOINT_FILE, staged / CHECKPOINT_FILE)
    return staged


def fit_resuming(config, runtime, checkpoint) -> None:
    """``fit``, resumed from a reported checkpoint (restarted or restored trial) if any.
    The local copy of its last.pt lives as long as the fit, then goes."""
    from melanoma.engine.loop import CHECKPOINTS
    from melanoma.engine.run import train

    if runtime.is_main:
        # Staged copies that a killed attempt of this trial left before Ray persisted them:
        # nothing uploads them any more, and each holds a whole checkpoint.
        for stale in (Path(config.out) / CHECKPOINTS).glob("staged-*"):
            shutil.rmtree(stale, ignore_errors=True)

    if checkpoint is None:
        train(config, runtime)
        return
    with tempfile.TemporaryDirectory(prefix="melanoma-resume-") as tmp:
        with checkpoint.as_directory() as restored:
            local = Path(tmp) / CHECKPOINT_FILE
            shutil.copy(Path(restored) / CHECKPOINT_FILE, local)
        train(config, runtime, resume=local)


def worker_nodes(node: str, world: int) -> int:
    """How many distinct nodes the trial's workers run on (Ray Train has set up the process
    group before the loop starts)."""
    if world == 1:
        return 1
    import torch.distributed as dist

    everyone: list[str | None] = [None] * world
    dist.all_gather_object(everyone, node)
    return len(set(everyone))


def train_loop_per_worker(loop_config: dict) -> None:
    """Run one training on this worker. ``loop_config["train"]`` is a TrainConfig dict."""
    import torch

    from melanoma.engine import Runtime, TrainConfig

    config = TrainConfig.from_dict(loop_config["train"])
    # Ray sets OMP_NUM_THREADS from the integer part of the worker's CPUs (1 for 1.9):
    # use as many torch threads as the CPUs the worker actually reserved, rounded.
    cpus = float(loop_config.get("cpus_per_worker", 1))
    torch.set_num_threads(max(1, round(cpus)))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    def wrap(model):
        # DDP only with more than one worker; one worker keeps the bare module.
        return ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model

    node = ray.get_runtime_context().get_node_id()
    nodes = worker_nodes(node, world)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        metrics = {**metrics, "node_id": node, "world_size": world, "worker_nodes": nodes}
        if rank == 0:
            inject_failure_once(metrics["epoch"])
        if checkpoint_dir is None:  # every rank reports; only rank 0 brings a checkpoint
            ray.train.report(metrics)
            return
        # The upload to storage runs in the background while the next epoch trains; Ray
        # deletes the staged directory once it is persisted.
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(stage_checkpoint(checkpoint_dir)),
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        )

    runtime = Runtime(
        device=device,
        rank=rank,
        world_size=world,
        wrap_model=wrap,
        report=report,
        progress=False,
        on_batch=batch_hook(rank, loop_config.get("run_dir")),
    )
    fit_resuming(config, runtime, ray.train.get_checkpoint())
