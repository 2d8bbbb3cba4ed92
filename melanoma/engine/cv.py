"""K-fold cross-validation of candidate configurations on the training split, nnU-Net style.

The training split is cut into ``folds`` lesion-grouped, label-stratified folds (images of
one lesion and byte-identical images stay in one fold). Each fold's model trains on the
others and is scored on it with its **last** epoch, so nothing is selected on the fold that
scores it. The pooled out-of-fold predictions cover every training image: a classifier's
AUC on ISIC 2017's 1677 training images, with a bootstrap interval several times narrower
than one on the 150 official validation images. The validation and test splits are left
alone, so the fold models can be assembled (``cascade build --cls CV_DIR``) and scored on
validation as any other candidates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from melanoma.data.carve import fold_splits
from melanoma.engine.checkpoint import CHECKPOINTS, LAST, load_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.evaluate import score_split
from melanoma.engine.inputs import labelled, open_training_data
from melanoma.engine.loop import Runtime
from melanoma.engine.run import train, training_data
from melanoma.engine.saver import load_outputs
from melanoma.files import replace_atomically, write_json
from melanoma.metrics.classification import resampled_metrics
from melanoma.metrics.intervals import classification_interval, mean_interval

CV_FILE = "cv.json"
OOF_OUTPUTS = "oof_outputs.npz"  # pooled out-of-fold predictions, one row per image
PLAN_FILE = "cv_plan.json"  # what defines the fold runs: a rerun must match it


@dataclass(frozen=True)
class FoldScores:
    """One fold: its run directory, the metrics of its last epoch on the held-out fold,
    and the outputs behind them (labels and probabilities, or per-image scores)."""

    fold: int
    run_dir: Path
    metrics: dict
    outputs: dict


def fold_config(config: TrainConfig, folds: int, k: int, out: Path) -> TrainConfig:
    """``config`` as fold ``k`` of ``folds``, trained into ``out/fold{k}``: the fold lives
    in the config (``data.folds``, ``data.fold``), so its checkpoint says which images it
    held out. No early stopping: every fold trains the epochs asked for."""
    data = replace(config.data, folds=folds, fold=k)
    return replace(config, data=data, out=str(Path(out) / f"fold{k}"), early_stopping=0)


def cross_validate(
    candidates: dict[str, TrainConfig], folds: int, out: Path, runtime: Runtime | None = None
) -> dict[str, dict]:
    """Train each candidate on each of ``folds`` folds of its training split, here, one
    after another, into ``out/<label>/fold{k}``; score and write them (``cv.json``) and
    return label -> summary. ``search.cv.run_cv`` runs the same folds as Ray Tune trials."""
    runtime = runtime or Runtime()
    out = Path(out).resolve()  # cv.json names its fold runs: absolute, usable from anywhere
    claim_cv_dir(out, cv_plan(candidates, folds))
    for label, config in candidates.items():
        for k in range(folds):
            if runtime.progress:
                print(f"[cv] {label}: fold {k + 1}/{folds}", flush=True)
            train(fold_config(config, folds, k, out / label), runtime, resume=True)
    return {
        label: score_folds(config, folds, out / label, runtime)
        for label, config in candidates.items()
    }


def score_folds(config: TrainConfig, folds: int, out: Path, runtime: Runtime | None = None) -> dict:
    """Score each trained fold of ``config`` in ``out`` by its last epoch on the fold it
    held out; write ``cv.json`` and ``oof_outputs.npz`` there; return the summary."""
    runtime = runtime or Runtime(progress=False)
    scores = []
    for k in range(folds):
        fold = fold_config(config, folds, k, out)
        bundle, masks = training_data(fold, runtime, keep_copy=False)
        last = Path(fold.out) / CHECKPOINTS / LAST
        if not last.is_file():
            raise FileNotFoundError(f"fold {k} of {out} has no {last}: it did not finish")
        state = load_checkpoint(last)
        metrics, outputs = score_split(fold, state["model"], bundle, "val", config.device, masks)
        # Scored in the split's order; masks only where they exist.
        entries = bundle.splits.entries["val"]
        scored = entries if config.task == "cls" else [e for e in entries if e.mask_sha256]
        outputs["id"] = np.array([e.sample.id for e in scored])
        scores.append(FoldScores(k, Path(fold.out), metrics, outputs))
    summary = summarise_folds(config, scores)
    save_oof_outputs(Path(out), config, scores)
    write_json(Path(out) / CV_FILE, summary)
    return summary


def save_oof_outputs(out: Path, config: TrainConfig, scores: list[FoldScores]) -> None:
    """The pooled out-of-fold outputs per training image (``id`` with ``label`` and
    ``prob``, or the per-image mask scores): what candidates are compared on, paired."""
    pooled = {"id": np.concatenate([s.outputs["id"] for s in scores])}
    if config.task == "cls":
        pooled["label"] = np.concatenate([s.outputs["labels"] for s in scores])
        pooled["prob"] = np.concatenate([s.outputs["probs"] for s in scores])
    else:
        for key in scores[0].outputs["per_image"]:
            pooled[key] = np.concatenate([s.outputs["per_image"][key] for s in scores])
    replace_atomically(out / OOF_OUTPUTS, lambda tmp: np.savez(tmp, **pooled))


def load_oof_outputs(out: Path) -> dict[str, np.ndarray] | None:
    """What :func:`save_oof_outputs` wrote in a cross-validation folder, or None."""
    return load_outputs(Path(out) / OOF_OUTPUTS)


def cv_plan(candidates: dict[str, TrainConfig], folds: int) -> dict:
    """Everything that defines the fold runs of a cross-validation: the fold count, each
    candidate's configuration (but where it writes) and its training images by content.
    Finished folds are reused only under the same plan. Refuses a fold count the data
    cannot give before anything trains."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    plan: dict = {"folds": folds, "candidates": {}}
    for label, config in candidates.items():
        bundle = open_training_data(config)
        if config.task == "cls":
            bundle = bundle.with_splits(labelled(bundle.splits))
        fold_splits(bundle.splits, folds, config.data.split_seed)
        train = sorted((e.sample.id, e.image_sha256) for e in bundle.splits.entries["train"])
        plan["candidates"][label] = {
            "config": {k: v for k, v in config.to_dict().items() if k != "out"},
            "training_images": len(train),
            "training_images_sha256": hashlib.sha256(json.dumps(train).encode()).hexdigest(),
        }
    return plan


def claim_cv_dir(out: Path, plan: dict) -> None:
    """Write ``out/cv_plan.json``, or refuse when ``out`` holds fold runs of another plan
    (their models would be scored on images they were trained on), naming what differs."""
    file = out / PLAN_FILE
    if file.is_file():
        recorded = json.loads(file.read_text())
        changed = _differences(recorded, plan)
        if changed:
            raise FileExistsError(
                f"{out} holds a cross-validation of another configuration, fold count or data "
                f"({'; '.join(changed[:6])}{'; ...' if len(changed) > 6 else ''}); its fold "
                "models would be reused for folds they were not trained on. Choose another "
                "--out, or delete the folder to start over"
            )
        return
    if out.is_dir() and any(out.glob("*/fold*")):
        raise FileExistsError(
            f"{out} holds fold runs with no {PLAN_FILE} to tell what made them; choose another "
            "--out, or delete the folder to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(file, plan)


def _differences(recorded, now, prefix: str = "") -> list[str]:
    """'key: recorded -> now' for every leaf that differs between two plans."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [
            line
            for k in sorted(set(recorded) | set(now))
            for line in _differences(recorded.get(k), now.get(k), f"{prefix}{k}.")
        ]
    if recorded != now:
        return [f"{prefix.rstrip('.')}: {recorded!r} before, {now!r} now"]
    return []


def summarise_folds(config: TrainConfig, scores: list[FoldScores], resamples: int = 1000) -> dict:
    """Per-fold metrics; the pooled out-of-fold metric with its 95% bootstrap interval."""
    metric = config.metric
    per_fold = [float(s.metrics[metric]) for s in scores]
    if config.task == "cls":
        labels = np.concatenate([s.outputs["labels"] for s in scores])
        probs = np.concatenate([s.outputs["probs"] for s in scores])
        everything = np.arange(len(labels))[None]  # one "resample": the pooled predictions
        pooled = {
            k: float(v[0])
            for k, v in resampled_metrics(labels, probs, config.threshold, everything).items()
        }
        value = pooled.get(metric, float(np.mean(per_fold)))
        ci = classification_interval(labels, probs, metric, config.threshold, resamples)
    else:
        key = metric if metric in scores[0].outputs["per_image"] else "jaccard"  # not "loss"
        values = np.concatenate([s.outputs["per_image"][key] for s in scores])
        pooled = {key: float(values.mean())}
        value, ci = pooled[key], mean_interval(values, resamples)
    return {
        "task": config.task,
        "metric": metric,
        "folds": len(scores),
        "images": int(sum(_count(s) for s in scores)),
        "pooled": pooled,
        "value": value,
        "ci": ci,
        "per_fold": per_fold,
        "fold_mean": float(np.mean(per_fold)),
        "fold_sd": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0,
        "runs": [str(s.run_dir) for s in scores],
        "config": config.to_dict(),
    }


def _count(s: FoldScores) -> int:
    if "labels" in s.outputs:
        return len(s.outputs["labels"])
    return len(next(iter(s.outputs["per_image"].values()), []))


def fold_runs(path: Path) -> list[Path] | None:
    """The fold models of a cross-validation directory, as scored: each fold run's
    ``last.pt`` (its best.pt was chosen on the fold that scores it); None if ``path`` is
    not one."""
    file = Path(path) / CV_FILE
    if not file.is_file():
        return None
    return [Path(p) / CHECKPOINTS / LAST for p in json.loads(file.read_text())["runs"]]
