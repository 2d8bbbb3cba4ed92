"""The one training loop: train_one_epoch, validate and fit, for segmenters and classifiers.

It knows nothing of Ray: distributed training plugs in through ``Runtime`` (rank, world
size, a model wrapper such as DDP, and a ``report`` callback called after every epoch).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from melanoma.data.dataset import DataBundle
from melanoma.engine.collectives import from_rank0, sum_over_ranks
from melanoma.engine.config import TrainConfig
from melanoma.engine.inputs import loaders, open_run
from melanoma.engine.logging import RunLogger
from melanoma.engine.saver import CheckpointSaver, RunState
from melanoma.engine.training import Training, build_training
from melanoma.errors import MelanomaError
from melanoma.metrics.intervals import classification_interval, mean_interval


class NonFiniteLossError(MelanomaError):
    """The loss became NaN or infinite: the run cannot go on."""


@dataclass
class Runtime:
    """How the loop runs: device, distributed rank, model wrapper and per-epoch reporting."""

    device: torch.device | None = None
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[nn.Module], nn.Module] | None = None
    report: Callable[[dict, Path | None], None] | None = None
    progress: bool = True
    # Called with (epoch, batch) before each training step: tracing, fault injection.
    on_batch: Callable[[int, dict], None] | None = None
    # Called with each finished epoch's record; True ends the run there (a wall-clock
    # budget: `melanoma run` stops a run that would not finish another epoch in time).
    should_stop: Callable[[dict], bool] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int
    best_metrics: dict
    stopped_early: bool = False
    metric: str = ""
    extra: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use --device cpu"
        )
    return device


def _autocast(device: torch.device, enabled: bool):
    if not (enabled and device.type == "cuda"):
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train_one_epoch(
    t: Training,
    loader,
    epoch: int,
    progress: bool,
    on_batch: Callable[[int, dict], None] | None = None,
    world_size: int = 1,
    rank: int = 0,
) -> dict:
    """One pass over the training loader; returns the mean loss (over every rank's samples
    under DDP) and the final learning rate."""
    model, task, device, config, schedule = t.model, t.task, t.device, t.config, t.schedule
    model.train()
    total, count = 0.0, 0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=None if progress else True,
    )
    for step, batch in enumerate(bar):
        if on_batch is not None:
            on_batch(epoch, batch)
        batch = t.augmented(batch, epoch, step, rank)
        inputs = task.inputs(batch, device)
        if device.type == "cuda" and config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with _autocast(device, config.amp):
            outputs = model(inputs)
            loss = task.loss(t.criterion, outputs, batch, device)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss became {value} at epoch {epoch + 1}, step {step + 1} "
                f"(lr {schedule.lr:.3g}); lower optimizer.lr, set grad_clip, or check the data"
            )
        _step(t, loss)
        schedule.step_batch()
        n = batch["image"].shape[0]
        total += value * n
        count += n
        bar.set_postfix(loss=f"{total / count:.4f}")
    total, count = sum_over_ranks(world_size, total, count)
    return {"loss": total / max(count, 1), "lr": schedule.lr}


def _step(t: Training, loss: torch.Tensor) -> None:
    """Backward and optimizer step, through the gradient scaler and clipping if any."""
    t.optimizer.zero_grad(set_to_none=True)
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
        t.scaler.unscale_(t.optimizer)
    else:
        loss.backward()
    if t.config.grad_clip > 0:
        nn.utils.clip_grad_norm_(t.model.parameters(), t.config.grad_clip)
    if t.scaler is not None:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()


@torch.no_grad()
def validate(model, loader, task, criterion, device, config, keep: int = 0) -> tuple[dict, dict]:
    """Metrics over a loader, plus the first ``keep`` examples for pictures."""
    model.eval()
    meter = task.meter()
    total, count = 0.0, 0
    examples: dict[str, list] = {"images": [], "inputs": [], "masks": [], "preds": []}
    for batch in loader:
        inputs = task.inputs(batch, device)
        with _autocast(device, config.amp):
            outputs = model(inputs)
            if criterion is not None:
                loss = task.loss(criterion, outputs, batch, device)
        n = batch["image"].shape[0]
        if criterion is not None:
            total += float(loss) * n
            count += n
        task.update(meter, outputs.float(), batch)
        have = sum(len(x) for x in examples["images"])
        if have < keep:
            take = keep - have
            examples["images"].append(batch["image"][:take])
            examples["inputs"].append(inputs[:take].float().cpu())
            examples["masks"].append(batch["mask"][:take])
            if task.name == "seg":
                examples["preds"].append(
                    (torch.sigmoid(outputs[:take].float()) > config.threshold).cpu()
                )
    metrics = meter.compute()
    if count:
        metrics["loss"] = total / count
    out = {k: torch.cat(v) for k, v in examples.items() if v}
    if task.name == "cls":
        out["labels"], out["probs"] = meter.arrays()
        ci = classification_interval(out["labels"], out["probs"], config.metric, config.threshold)
    else:
        out["per_image"] = meter.per_image()
        ci = mean_interval(out["per_image"].get(config.metric, []))
    if ci:  # the interval of what trials are selected on, reported with it
        metrics[f"{config.metric}_low"], metrics[f"{config.metric}_high"] = ci["low"], ci["high"]
    return metrics, out


def fit(
    config: TrainConfig,
    runtime: Runtime | None = None,
    *,
    resume: bool | Path = False,
    data: DataBundle | None = None,
    mask_override: dict[str, np.ndarray] | None = None,
) -> FitResult:
    """Train ``config`` into ``config.out``: resolved config, splits, checkpoints, metrics.json
    and TensorBoard logs. ``resume=True`` continues from ``out/checkpoints/last.pt`` when it
    exists; a path resumes from that checkpoint file or directory."""
    run = _start(config, runtime or Runtime(), resume, data, mask_override)
    stopped_early = stopped_for_time = False
    try:
        for epoch in range(run.state.epoch, config.epochs):
            stopped_early = _epoch(run, epoch)
            if stopped_early:
                break
            if epoch + 1 < config.epochs and _stop_for_time(run):
                stopped_for_time = True
                break
    finally:
        run.logger.finish(config, run.state.history, run.state.best_epoch)
    state = run.state
    best = next((h["val"] for h in state.history if h["epoch"] == state.best_epoch), {})
    return FitResult(
        Path(config.out),
        state.history,
        state.best_epoch,
        best,
        stopped_early,
        config.metric,
        {"stopped_for_time": stopped_for_time},
    )


def _stop_for_time(run) -> bool:
    """The runtime's ``should_stop`` on the last epoch, as rank 0 decides it (every rank
    stops together, or one would wait for the others in the next all-reduce)."""
    stop = run.runtime.should_stop
    if stop is None:
        return False
    decided = 1.0 if stop(run.state.history[-1]) else 0.0
    return bool(from_rank0(decided, run.runtime.world_size))


@dataclass
class _Run:
    """What one run's epochs share: the model and its optimiser, the data, where it saves
    and logs, and how far it has come."""

    config: TrainConfig
    runtime: Runtime
    device: torch.device
    training: Training
    train_loader: DataLoader
    val_loader: DataLoader
    bundle: DataBundle
    saver: CheckpointSaver
    logger: RunLogger
    state: RunState


def _start(config: TrainConfig, runtime: Runtime, resume, data, mask_override) -> _Run:
    """Seeded, with its data open and written out, its model built (or restored from the
    checkpoint ``resume`` names) and wrapped as the runtime says."""
    device = runtime.device or resolve_device(config.device)
    _seed(config, device)
    bundle = open_run(config, runtime, data, mask_override)
    train_loader, val_loader = loaders(config, runtime, device, bundle, mask_override)
    saver = CheckpointSaver(config)
    checkpoint = saver.resume_path(resume)
    # A resumed run takes every weight from its checkpoint: no ImageNet file needed.
    t = build_training(
        config, device, train_loader.dataset.labels(), len(train_loader), checkpoint is None
    )
    state = saver.restore(t, checkpoint) if checkpoint else RunState()
    # Every checkpoint records its images: a cascade proves its test split against them.
    state.splits = bundle.splits.hashes()
    if runtime.wrap_model is not None:
        t.model = runtime.wrap_model(t.model)
    if config.compile and device.type == "cuda":
        t.model = torch.compile(t.model)
    logger = RunLogger(Path(config.out), enabled=runtime.is_main)
    return _Run(config, runtime, device, t, train_loader, val_loader, bundle, saver, logger, state)


def _epoch(run: _Run, epoch: int) -> bool:
    """Train one epoch, validate, log, save and report it; True when early stopping ends
    the run here."""
    config, runtime, t, state = run.config, run.runtime, run.training, run.state
    started = time.perf_counter()
    run.train_loader.sampler.set_epoch(epoch)
    show = runtime.progress and runtime.is_main
    train = train_one_epoch(
        t, run.train_loader, epoch, show, runtime.on_batch, runtime.world_size, runtime.rank
    )
    keep = config.log_images if runtime.is_main else 0
    val, examples = validate(
        t.model, run.val_loader, t.task, t.criterion, run.device, config, keep=keep
    )
    # Every rank follows rank 0's figure: best epoch, plateau schedule and early stopping
    # are then decided alike (a tie that flips between ranks would leave one rank stopped
    # and another waiting in the next epoch's all-reduce).
    value = from_rank0(val.get(config.metric), runtime.world_size)
    t.schedule.step_epoch(value)
    improved = state.update(value, config.mode)
    record = {
        "epoch": state.epoch,
        "train_loss": train["loss"],
        "lr": train["lr"],
        "time_s": time.perf_counter() - started,
        "val": val,
    }
    state.history.append(record)
    checkpoint_dir = None
    if runtime.is_main:
        run.logger.epoch(t.task.name, state.epoch, train, val, examples)
        checkpoint_dir = run.saver.save(t, state, improved, run.bundle, examples)
        _print_epoch(config, runtime, record, value, improved)
    stopped_early = bool(config.early_stopping and state.stale >= config.early_stopping)
    _report(runtime, config, state, record, checkpoint_dir, stopped_early)
    return stopped_early


def _seed(config: TrainConfig, device: torch.device) -> None:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _print_epoch(config: TrainConfig, runtime: Runtime, record: dict, value, improved) -> None:
    if not runtime.progress:
        return
    shown = f"{value:.4f}" if isinstance(value, float) else value
    print(
        f"epoch {record['epoch']}/{config.epochs}  train loss {record['train_loss']:.4f}  "
        f"val loss {record['val'].get('loss', float('nan')):.4f}  val {config.metric} {shown}"
        f"{'  *best*' if improved else ''}  ({record['time_s']:.1f} s)",
        flush=True,
    )


def _report(runtime: Runtime, config: TrainConfig, state: RunState, record, where, stop) -> None:
    if runtime.report is not None:
        flat = _flat(record, state.best_value, config.metric)
        # "finished": the run ends here by its own rules (last epoch or early stopping),
        # so a search can tell it from a trial a scheduler cut short.
        flat["finished"] = stop or state.epoch == config.epochs
        runtime.report(flat, where)
    if stop and runtime.is_main and runtime.progress:
        print(
            f"early stopping: no {config.metric} improvement for {state.stale} epochs",
            flush=True,
        )


def _flat(record: dict, best_value, metric: str) -> dict:
    flat = {
        "epoch": record["epoch"],
        "train_loss": record["train_loss"],
        "lr": record["lr"],
        "epoch_time_s": record["time_s"],
        f"best_val_{metric}": best_value,
    }
    for k, v in record["val"].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            flat[f"val_{k}"] = v
    return flat
