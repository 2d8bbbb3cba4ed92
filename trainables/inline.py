"""The inline launcher: a single-worker trial trains inside the Tune trial's own process.

No Ray Train around it: no DDP and no worker restarts, but also no Train controller and
worker group to start, which cost about 15 s per trial here. Checkpoints go through Tune
(``ray.tune.report(checkpoint=...)``): Tune keeps the best k and restarts a failed trial
from its last checkpoint. Chosen for one-worker trials by ``resources.launcher: auto`` (the
default) or ``inline``; searches of many short trials of small models gain most.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ray
import ray.tune

from trainables.hooks import trial_hooks
from trainables.train_loop import fit_resuming, stage_checkpoint


def inline_trial(params: dict) -> None:
    """Fit the trial's config here, reporting every epoch (with last.pt) to Tune."""
    import torch

    from melanoma.engine import Runtime
    from trainables.driver import trial_config

    config, meta = trial_config(params)
    torch.set_num_threads(max(1, round(meta.cpus_per_worker)))
    node = ray.get_runtime_context().get_node_id()
    hooks = trial_hooks(0)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        metrics = {**metrics, "node_id": node, "world_size": 1, "worker_nodes": 1}
        if hooks.on_report is not None:
            hooks.on_report(metrics["epoch"])
        # Tune copies the staged last.pt into the trial's storage before report returns.
        staged = stage_checkpoint(checkpoint_dir)
        try:
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(staged))
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    runtime = Runtime(progress=False, report=report, on_batch=hooks.on_batch)
    fit_resuming(config, runtime, ray.tune.get_checkpoint())


def inline_trainable(cpus: float, gpus: float):
    """``inline_trial`` holding one worker's resources (its CPUs and GPUs)."""
    resources = {"CPU": cpus}
    if gpus:
        resources["GPU"] = gpus
    return ray.tune.with_resources(inline_trial, resources)
