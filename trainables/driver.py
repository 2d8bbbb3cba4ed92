"""The Tune function trainable: one TorchTrainer per trial (Ray Train V2)."""

from __future__ import annotations

import os
from pathlib import Path

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from melanoma.engine.config import TrainConfig
from trainables.meta import CANDIDATE, META, TrialMeta, train_run_name
from trainables.train_loop import train_loop_per_worker


def trial_config(params: dict) -> tuple[TrainConfig, TrialMeta]:
    """The trial's TrainConfig (base config plus sampled params, writing its run into
    ``meta.run_root/<trial dir name>/run``) and the search's metadata."""
    params = dict(params)
    meta = TrialMeta.from_dict(params.pop(META))
    candidate = params.pop(CANDIDATE, None)
    base = meta.train if candidate is None else meta.candidates[candidate]
    config = TrainConfig.from_dict(base).with_overrides(params)
    # Not into Tune's own trial directory: that is a staging folder that Tune copies to
    # storage while the engine replaces files in it (last.pt.tmp vanishing under the copy
    # failed the experiment-state sync), and every copy would carry the checkpoints again.
    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    root = Path(meta.run_root) if meta.run_root else trial_dir.parent  # older searches
    if candidate is not None:  # a fold of a cross-validation: where `melanoma cv` reads it
        return config.with_overrides(
            {"out": str(root / candidate / f"fold{config.data.fold}")}
        ), meta
    return config.with_overrides({"out": str(root / trial_dir.name / "run")}), meta


def tune_driver(params: dict) -> None:
    """Fit the trial's config with Ray Train. Metrics and checkpoints flow back to Tune
    through TuneReportCallback."""
    config, meta = trial_config(params)
    context = ray.tune.get_context()
    use_gpu = bool(meta.gpus_per_worker)
    run_name = train_run_name(context.get_trial_id())
    per_worker = {"CPU": meta.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = meta.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": config.to_dict(),
            "cpus_per_worker": meta.cpus_per_worker,
            "run_dir": f"{meta.train_storage}/{run_name}",
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=meta.workers,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
            placement_strategy=meta.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            # Stable name: a restored trial finds its Train run and resumes from its checkpoint.
            name=run_name,
            storage_path=meta.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=meta.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=meta.keep_checkpoints,
                # Score each checkpoint by its own epoch's value: a best-so-far metric ties
                # across epochs and would let the best epoch's checkpoint be deleted.
                checkpoint_score_attribute=meta.checkpoint_metric,
                checkpoint_score_order=meta.mode,
            ),
        ),
    )
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    trainer.fit()
