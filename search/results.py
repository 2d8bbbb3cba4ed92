"""Reading a search back: its trial table, paired comparisons with the best trial, the
checkpoints it hands on, and the table as CSV or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from search.experiment import DEFAULT_STORAGE, Experiment
from search.searcher import is_default
from search.store import is_uri, load_search_experiment, search_path, trial_dirname
from trainables.meta import train_run_name, train_storage


def trial_table(name: str, storage: str = DEFAULT_STORAGE) -> tuple[list[dict], Experiment]:
    """Every trial with its hyperparameters, state, epochs, best metric and best checkpoint."""
    from ray.tune import ExperimentAnalysis

    exp = load_search_experiment(name, storage)
    root = search_path(storage, name)
    analysis = ExperimentAnalysis(root)
    metric, mode = exp.metric, exp.mode
    keys = [p.key for p in exp.space]
    default = exp.default_params
    rows = []
    frames = analysis.trial_dataframes
    for trial in analysis.trials:
        df = frames.get(trial.trial_id)
        best_value, best_epoch, checkpoint, epochs, finished = None, None, None, 0, False
        ci, world, nodes = None, None, None
        if df is not None and "checkpoint_path" not in df and "checkpoint_dir_name" in df:
            # Inline trials checkpoint through Tune, into the trial's own directory.
            trial_dir = Path(root) / trial_dirname(trial)
            df = df.assign(
                checkpoint_path=[
                    str(trial_dir / n) if isinstance(n, str) and n else None
                    for n in df["checkpoint_dir_name"]
                ]
            )
        if df is not None and len(df) and metric in df:
            epochs = int(df["epoch"].max()) if "epoch" in df else len(df)
            finished = bool(df["finished"].iloc[-1]) if "finished" in df else False
            world, nodes = _last_int(df, "world_size"), _last_int(df, "worker_nodes")
            col = df[metric].astype(float)
            idx = col.idxmax() if mode == "max" else col.idxmin()
            best_value = float(col[idx])
            vm = f"val_{exp.train.metric}"
            ci = _interval_at(df, idx, vm)
            # The checkpoint to use is the one of the epoch with the best validation value.
            scored = df[df["checkpoint_path"].notna()] if "checkpoint_path" in df else df.iloc[0:0]
            if len(scored) and not is_uri(root):  # only checkpoints Train has kept
                scored = scored[[Path(p).is_dir() for p in scored["checkpoint_path"]]]
            if len(scored) and vm in scored:
                pick = scored[vm].astype(float)
                row = scored.loc[pick.idxmax() if mode == "max" else pick.idxmin()]
                checkpoint, best_epoch = row["checkpoint_path"], int(row["epoch"])
        if best_value is None:
            # Tune's own progress files can lose their last lines when the driver is killed;
            # the Train checkpoints (written straight to storage) still hold the history.
            recovered = _from_checkpoints(
                Path(train_storage(root)) / train_run_name(trial.trial_id), exp
            ) or _from_checkpoints(Path(root) / trial_dirname(trial), exp)
            if recovered:
                best_value, best_epoch, checkpoint, epochs, finished = recovered
        state = trial.status
        if state == "TERMINATED" and not finished and epochs < exp.search.max_epochs:
            state = "STOPPED"  # by ASHA
        params = {k: trial.config.get(k) for k in keys if k in trial.config}
        rows.append(
            {
                "trial_id": trial.trial_id,
                # The experiment's own configuration (trial 0 unless the experiment opts out).
                "default": is_default(params, default) and len(params) == len(default or {}),
                "state": state,
                "epochs": epochs,
                metric: best_value,
                "ci_low": ci and ci[0],
                "ci_high": ci and ci[1],
                "best_epoch": best_epoch,
                "world_size": world,  # Train workers (DDP processes) of the trial
                "nodes": nodes,  # distinct nodes its workers ran on
                "checkpoint": checkpoint,
                # The trial's engine run (its best epoch's validation outputs among them).
                "run_dir": None if is_uri(root) else str(Path(root) / trial_dirname(trial) / "run"),
                **params,
            }
        )
    rows.sort(
        key=lambda r: (r[metric] is None, -(r[metric] or 0) if mode == "max" else (r[metric] or 0))
    )
    return rows, exp


def paired_to_best(rows: list[dict], exp: Experiment, top: int = 5) -> list[tuple[str, dict]]:
    """The best trial against each of the next ``top`` on the same validation images: the
    paired bootstrap of the difference in the selection metric (best minus other), from
    the validation outputs each trial's engine run kept for its best epoch."""
    from melanoma.engine.saver import load_val_outputs
    from melanoma.metrics.classification import BOOTSTRAP_KEYS
    from melanoma.metrics.paired import aligned, paired_difference, paired_mean_difference

    scored = [r for r in rows if r.get(exp.metric) is not None and r.get("run_dir")]
    outputs = {r["trial_id"]: load_val_outputs(Path(r["run_dir"])) for r in scored[: top + 1]}
    metric = exp.train.metric
    if not scored or outputs[scored[0]["trial_id"]] is None:
        return []
    best = outputs[scored[0]["trial_id"]]
    out = []
    for r in scored[1 : top + 1]:
        other = outputs[r["trial_id"]]
        if other is None:
            continue
        if exp.task == "cls" and metric in BOOTSTRAP_KEYS:
            _, a, b = aligned(best["id"], best["prob"], other["id"], other["prob"])
            labels = aligned(best["id"], best["label"], other["id"], other["label"])[1]
            result = paired_difference(labels, a, b, metric, threshold=exp.train.threshold)
        elif exp.task == "seg" and metric in best:
            _, a, b = aligned(best["id"], best[metric], other["id"], other[metric])
            result = paired_mean_difference(a, b)
        else:
            continue
        out.append((r["trial_id"], result))
    return out


def best_checkpoints(
    name: str, task: str, top_k: int, storage: str = DEFAULT_STORAGE
) -> list[tuple[Path, str, float | None]]:
    """(checkpoint file, "search/trial_id", validation figure) of the ``top_k`` best trials
    of a finished or running search that trained ``task`` models."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    return [r[:3] for r in ranked_checkpoints(name, task, storage)[:top_k]]


def ranked_checkpoints(
    name: str, task: str, storage: str = DEFAULT_STORAGE
) -> list[tuple[Path, str, float | None, bool]]:
    """Every trial of ``name`` that kept a checkpoint, best first: (checkpoint file,
    "search/trial_id", validation figure, whether it is the default trial)."""
    from trainables.train_loop import CHECKPOINT_FILE

    rows, exp = trial_table(name, storage)
    if exp.task != task:
        raise ValueError(
            f"search {name!r} searched {exp.task} models where {task} models were expected"
        )
    ranked = [
        (
            Path(r["checkpoint"]) / CHECKPOINT_FILE,
            f"{name}/{r['trial_id']}",
            r.get(exp.metric),
            bool(r.get("default")),
        )
        for r in rows
        if r.get("checkpoint")
    ]
    if not ranked:
        raise ValueError(f"search {name!r} has no trial with a checkpoint yet")
    return ranked


def _last_int(df, column: str) -> int | None:
    """The last reported value of an integer column (None for searches that lack it)."""
    if column not in df or df[column].isna().iloc[-1]:
        return None
    return int(df[column].iloc[-1])


def _interval_at(df, idx, column: str) -> tuple[float, float] | None:
    """The 95% interval the engine reported beside the validation metric at row ``idx``."""
    low, high = f"{column}_low", f"{column}_high"
    if low not in df or high not in df or df[low].isna()[idx]:
        return None
    return float(df[low][idx]), float(df[high][idx])


def _from_checkpoints(train_dir: Path, exp: Experiment):
    """(best value, best epoch, best checkpoint, epochs, finished) from a trial's Train
    checkpoints, or None when it has none."""
    from melanoma.engine.checkpoint import load_checkpoint
    from trainables.train_loop import CHECKPOINT_FILE

    found = []
    for directory in sorted(train_dir.glob("checkpoint_*")) if train_dir.is_dir() else []:
        try:
            state = load_checkpoint(directory / CHECKPOINT_FILE)
        except (FileNotFoundError, ValueError):
            continue
        found.append((directory, state))
    if not found:
        return None
    latest = max(found, key=lambda f: f[1]["epoch"])[1]
    history = latest["history"]
    key = exp.train.metric
    sign = 1 if exp.mode == "max" else -1
    scored = [(d, s["history"][-1]["val"].get(key)) for d, s in found]
    scored = [(d, v) for d, v in scored if v is not None]
    best_dir, _ = max(scored, key=lambda x: sign * x[1]) if scored else (None, None)
    stopped = bool(exp.train.early_stopping) and latest["stale"] >= exp.train.early_stopping
    return (
        latest["best_value"],
        latest["best_epoch"],
        str(best_dir) if best_dir else None,
        len(history),
        stopped or latest["epoch"] == exp.search.max_epochs,
    )


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, default=str)
