"""A run's checkpoints on disk: best.pt when validation improved, last.pt with everything
a resume needs, metrics.json, and the best epoch's per-image validation outputs; and the
way back from last.pt to where the run stood (as timm's ``CheckpointSaver`` does for its
loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from melanoma.engine.checkpoint import (
    BEST,
    CHECKPOINTS,
    LAST,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from melanoma.engine.config import TrainConfig
from melanoma.files import replace_atomically, write_json

if TYPE_CHECKING:
    from melanoma.data.dataset import DataBundle
    from melanoma.engine.training import Training

VAL_OUTPUTS = "best_val_outputs.npz"


def _improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


@dataclass
class RunState:
    """Where a run stands: what a checkpoint restores and every epoch updates."""

    epoch: int = 0  # epochs done
    history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = -1
    stale: int = 0  # epochs since the best
    splits: dict = field(default_factory=dict)  # split -> {image id: SHA-256} of the run

    def update(self, value, mode: str) -> bool:
        """Count one more epoch with validation ``value``; True when it is the best yet."""
        self.epoch += 1
        if _improved(value, self.best_value, mode):
            self.best_value, self.best_epoch, self.stale = value, self.epoch, 0
            return True
        self.stale += 1
        return False

    def checkpoint_fields(self) -> dict:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "splits": self.splits,
        }


class CheckpointSaver:
    """Writes and reads the checkpoints of the run in ``config.out``."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = Path(config.out)
        self.checkpoint_dir = self.run_dir / CHECKPOINTS

    def resume_path(self, resume: bool | Path) -> Path | None:
        """The checkpoint to resume from: ``resume`` itself when a path, else last.pt when
        there is one (None: a fresh start)."""
        if not resume:
            return None
        if not isinstance(resume, bool):
            return Path(resume)
        last = self.checkpoint_dir / LAST
        return last if last.is_file() else None

    def restore(self, t: Training, path: Path) -> RunState:
        """Weights, optimizer, schedule, scaler and RNG from a checkpoint; where the run stood."""
        state = load_checkpoint(path, map_location=t.device)
        if state["config"].get("task") != t.config.task:
            raise ValueError(
                f"checkpoint {path} is a {state['config'].get('task')} run, not {t.config.task}"
            )
        unwrap(t.model).load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.schedule.load_state_dict(state["scheduler"])
        if t.scaler is not None and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return RunState(
            state["epoch"],
            state["history"],
            state["best_value"],
            state["best_epoch"],
            state["stale"],
        )

    def save(
        self, t: Training, state: RunState, improved: bool, bundle: DataBundle, examples: dict
    ) -> Path:
        """best.pt and the validation outputs when the epoch improved, last.pt, metrics.json;
        returns the checkpoint folder."""
        config, fields = self.config.to_dict(), state.checkpoint_fields()
        if improved:
            save_checkpoint(self.checkpoint_dir / BEST, config=config, model=t.model, **fields)
            save_val_outputs(self.run_dir, bundle, t.task.name, examples)
        save_checkpoint(
            self.checkpoint_dir / LAST,
            config=config,
            model=t.model,
            optimizer=t.optimizer.state_dict(),
            scheduler=t.schedule.state_dict(),
            scaler=t.scaler.state_dict() if t.scaler is not None else None,
            rng=rng_state(),
            **fields,
        )
        self.write_metrics(state)
        return self.checkpoint_dir

    def write_metrics(self, state: RunState) -> None:
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
        doc = {
            "task": self.config.task,
            "metric": self.config.metric,
            "mode": self.config.mode,
            "best_epoch": state.best_epoch,
            "best": best["val"] if best else None,
            "history": state.history,
        }
        write_json(self.run_dir / "metrics.json", doc)


def save_val_outputs(run_dir: Path, bundle: DataBundle, task: str, examples: dict) -> None:
    """The best epoch's validation outputs per image (``id`` with ``label`` and ``prob``,
    or the per-image mask scores), for paired comparisons of runs on the same images."""
    entries = bundle.splits.entries["val"]
    if task == "cls":
        ids = [e.sample.id for e in entries]
        values = {"label": examples.get("labels"), "prob": examples.get("probs")}
    else:  # scored where a ground-truth mask exists
        ids = [e.sample.id for e in entries if e.mask_sha256 is not None]
        values = dict(examples.get("per_image") or {"jaccard": None})
    if any(v is None or len(v) != len(ids) for v in values.values()):
        return  # not one value per image: nothing that could be paired
    replace_atomically(run_dir / VAL_OUTPUTS, lambda tmp: np.savez(tmp, id=np.array(ids), **values))


def load_val_outputs(run_dir: Path) -> dict[str, np.ndarray] | None:
    """What :func:`save_val_outputs` wrote in ``run_dir``, or None."""
    return load_outputs(Path(run_dir) / VAL_OUTPUTS)


def load_outputs(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a per-image outputs file (``.npz``), or None where there is none."""
    if not Path(path).is_file():
        return None
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}
