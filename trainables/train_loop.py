"""The Ray Train per-worker function: the engine's fit under DDP, reporting every epoch."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import ray.train
import ray.train.torch

# melanoma.engine.checkpoint needs only torch (already loaded by ray.train.torch); the rest
# of the engine is imported in the worker only, so Train's controller stays light.
from melanoma.engine.checkpoint import LAST as CHECKPOINT_FILE
from trainables.hooks import trial_hooks


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
    from melanoma.engine.checkpoint import CHECKPOINTS
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
    hooks = trial_hooks(rank, loop_config.get("run_dir"))

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        metrics = {**metrics, "node_id": node, "world_size": world, "worker_nodes": nodes}
        if rank == 0 and hooks.on_report is not None:
            hooks.on_report(metrics["epoch"])
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
        on_batch=hooks.on_batch,
    )
    fit_resuming(config, runtime, ray.train.get_checkpoint())
