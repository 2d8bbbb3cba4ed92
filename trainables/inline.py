"""The in-process trainable: the engine loop inside the Tune trial itself, without Ray Train.

One process per trial: no DDP, no worker restarts, no Train checkpoints. What it saves is
Train's start-up (a controller and a worker process per trial, about 15 s here), which
dominates searches of tiny models on a CPU. ``benchmarks/search_efficiency.py`` uses it to
compare searchers and schedulers over many trials; real searches use ``tune_driver``.
"""

from __future__ import annotations

import ray.tune


def inline_trial(params: dict) -> None:
    """Fit the trial's config here, reporting every epoch's metrics to Tune."""
    import torch

    from melanoma.engine import Runtime, fit
    from trainables.driver import trial_config

    config, meta = trial_config(params)
    torch.set_num_threads(max(1, round(meta["resources"]["cpus_per_worker"])))
    fit(
        config,
        Runtime(progress=False, report=lambda metrics, _checkpoint: ray.tune.report(metrics)),
    )


def inline_trainable(plan: dict):
    """``inline_trial`` holding one worker's resources from ``plan_resources``."""
    resources = {"CPU": plan["cpus_per_worker"]}
    if plan["gpus_per_worker"]:
        resources["GPU"] = plan["gpus_per_worker"]
    return ray.tune.with_resources(inline_trial, resources)
