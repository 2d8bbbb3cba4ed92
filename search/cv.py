"""Cross-validation on the cluster: each (candidate, fold) is a trial of one Ray Tune run.

The trials go through the search's own machinery (launcher, resources, storage, fault
tolerance): one-worker folds train inline, several-worker folds through Ray Train, as many
at once as the cluster holds. The run lives in ``OUT/_tune``; a rerun of the same
cross-validation after a killed driver restores it there, so finished folds are not
trained again (``melanoma.engine.cv.claim_cv_dir`` refuses a rerun of another plan). Each
fold trains into ``OUT/<label>/fold<k>``, where the driver then scores it by its last
epoch, exactly as the local ``melanoma.engine.cv.cross_validate`` does.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ray import tune

from melanoma.config import dump_yaml
from melanoma.engine.config import TrainConfig
from melanoma.engine.cv import claim_cv_dir, cv_plan, fold_config, score_folds
from melanoma.engine.inputs import needs_segmenter_masks
from melanoma.engine.loop import Runtime
from melanoma.engine.run import training_data
from melanoma.errors import MelanomaError
from search.callbacks import Progress
from search.experiment import Experiment, ResourcesConfig, SearchConfig, TrialSchedulerConfig
from search.runner import (
    ResourcePlan,
    connect,
    plan_resources,
    trainable_for,
    trial_meta,
    tune_fault_and_checkpoints,
)
from search.store import EXPERIMENT_FILE, trial_dirname
from trainables.meta import CANDIDATE, META

TUNE_DIR = "_tune"
RUN_NAME = "cv"


def run_cv(
    candidates: dict[str, TrainConfig],
    folds: int,
    out: Path,
    *,
    address: str | None = None,
    resources: ResourcesConfig | None = None,
    max_failures: int = 2,
) -> dict[str, dict]:
    """Train every candidate's ``folds`` folds as Tune trials, then score each candidate
    on its pooled out-of-fold predictions; returns label -> summary (``cv.json``)."""
    out = Path(out).resolve()
    candidates = {k: c.with_absolute_paths(Path.cwd()) for k, c in candidates.items()}
    for config in candidates.values():
        config.check_paths()
    claim_cv_dir(out, cv_plan(candidates, folds))
    for config in candidates.values():
        if needs_segmenter_masks(config):
            # Once here, before the trials, rather than in each (they would wait on it).
            training_data(config, Runtime(), keep_copy=False)
    exp = _experiment(candidates, folds, out, resources or ResourcesConfig(), max_failures)
    connect(address)
    plan = plan_resources(exp)
    meta = replace(
        trial_meta(exp, RUN_NAME, exp.storage, plan),
        run_root=str(out),
        # Each trial adds its fold (data.fold) and where it writes (trainables.driver).
        candidates={
            label: fold_config(c, folds, 0, out / label).to_dict()
            for label, c in candidates.items()
        },
    )
    root = out / TUNE_DIR / RUN_NAME
    root.mkdir(parents=True, exist_ok=True)
    # As a search writes it: `melanoma search results cv --storage OUT/_tune` lists the folds.
    dump_yaml({**exp.to_dict(), "storage": exp.storage}, root / EXPERIMENT_FILE)
    started = time.perf_counter()
    if tune.Tuner.can_restore(str(root)):
        print(f"[cv] resuming {root}: finished folds are kept", flush=True)
        tuner = tune.Tuner.restore(
            str(root), trainable=trainable_for(plan), resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = _new_tuner(exp, plan, meta, list(candidates), folds)
    grid = tuner.fit()
    failed = [r for r in grid if r.error is not None]
    if failed:
        raise MelanomaError(
            f"{len(failed)} of {len(grid)} fold trials failed ({failed[0].error}); their "
            f"errors are in error.txt under {root}; run the same `melanoma cv` again to "
            "retry them (finished folds are kept)"
        )
    print(f"[cv] {len(grid)} folds trained in {time.perf_counter() - started:.0f} s", flush=True)
    return {label: score_folds(c, folds, out / label) for label, c in candidates.items()}


def _experiment(candidates, folds, out: Path, resources, max_failures) -> Experiment:
    first = next(iter(candidates.values()))
    epochs = max(c.epochs for c in candidates.values())
    return Experiment(
        name=RUN_NAME,
        task=first.task,
        train=first,
        space=(),
        search=SearchConfig(
            num_samples=len(candidates) * folds,
            max_epochs=epochs,
            max_failures=max_failures,
            scheduler=TrialSchedulerConfig(name="fifo"),
        ),
        resources=resources,
        storage=str(out / TUNE_DIR),
    )


def _new_tuner(exp: Experiment, plan: ResourcePlan, meta, labels: list[str], folds: int):
    return tune.Tuner(
        trainable_for(plan),
        # Every (candidate, fold) once: a grid, not a search.
        param_space={
            META: meta.to_dict(),
            CANDIDATE: tune.grid_search(labels),
            "data.fold": tune.grid_search(list(range(folds))),
        },
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=plan.max_concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=RUN_NAME,
            storage_path=exp.storage,
            callbacks=[Progress(exp.metric, exp.mode, exp.search.max_epochs)],
            verbose=0,
            **tune_fault_and_checkpoints(exp),
        ),
    )
