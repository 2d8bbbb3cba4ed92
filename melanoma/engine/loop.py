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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from melanoma.config import dump_yaml
from melanoma.data.dataset import DataBundle, EpochSampler, open_data
from melanoma.data.splits import Splits
from melanoma.data.transforms import build_augmentation
from melanoma.engine.config import TrainConfig
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


def make_loader(
    dataset, sampler, batch_size: int, workers: int, device: torch.device, drop_last: bool
):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
    )


def train_one_epoch(
    t: Training,
    loader,
    epoch: int,
    progress: bool,
    on_batch: Callable[[int, dict], None] | None = None,
    world_size: int = 1,
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
    total, count = _sum_over_ranks(world_size, total, count)
    return {"loss": total / max(count, 1), "lr": schedule.lr}


def _distributed(world_size: int) -> bool:
    """Whether this run trains across ``world_size`` > 1 ranks of a process group. A run
    inside one rank of a group (the out-of-fold segmenters) has world size 1: it must not
    join the group's collectives, which the other ranks are not running."""
    return (
        world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    )


def _sum_over_ranks(world_size: int, *values: float) -> tuple[float, ...]:
    """Sums over every DDP rank (each rank trains on its own share of the epoch); the
    values themselves in a single process."""
    if not _distributed(world_size):
        return values
    # NCCL reduces GPU tensors only; gloo, CPU ones.
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tuple(float(v) for v in tensor.cpu())


def _from_rank0(value: float | None, world_size: int) -> float | None:
    """Rank 0's ``value`` on every rank of a DDP run; the value itself in one process."""
    if not _distributed(world_size):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


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


def needs_segmenter_masks(config: TrainConfig) -> bool:
    """Whether a classifier trains on a segmenter's predicted masks."""
    return config.task == "cls" and config.input.mode != "full" and config.input.mask_source != "gt"


def labelled(splits: Splits) -> Splits:
    """The same splits without unlabelled images (what a classifier trains and scores on)."""
    entries = {
        s: [e for e in items if e.sample.label is not None] for s, items in splits.entries.items()
    }
    return replace(splits, entries=entries)


def open_training_data(config: TrainConfig) -> DataBundle:
    d = config.data
    if not d.path:
        raise ValueError("no data path: set data.path in the experiment or pass --data DIR")
    return open_data(
        Path(d.path),
        config.load_size,
        layout=d.layout,
        on_bad=d.on_bad,
        split_config=d.split_config(),
        decode_once=d.cache,
        external_paths=d.external_paths,
    )


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
    return bool(_from_rank0(decided, run.runtime.world_size))


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
    bundle = _open_run(config, runtime, data, mask_override)
    train_loader, val_loader = _loaders(config, runtime, device, bundle, mask_override)
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
    train = train_one_epoch(t, run.train_loader, epoch, show, runtime.on_batch, runtime.world_size)
    keep = config.log_images if runtime.is_main else 0
    val, examples = validate(
        t.model, run.val_loader, t.task, t.criterion, run.device, config, keep=keep
    )
    # Every rank follows rank 0's figure: best epoch, plateau schedule and early stopping
    # are then decided alike (a tie that flips between ranks would leave one rank stopped
    # and another waiting in the next epoch's all-reduce).
    value = _from_rank0(val.get(config.metric), runtime.world_size)
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


def _open_run(config: TrainConfig, runtime: Runtime, data, mask_override) -> DataBundle:
    """The run's data (labelled images only for a classifier), its config and splits
    written to the run directory."""
    bundle = data or open_training_data(config)
    if config.task == "cls":
        bundle = bundle.with_splits(labelled(bundle.splits))
        if needs_segmenter_masks(config) and mask_override is None:
            raise ValueError(
                f"input.mask_source is {config.input.mask_source}: fit() needs those masks as "
                "mask_override; melanoma.engine.train makes them and calls fit"
            )
    if runtime.is_main:
        run_dir = Path(config.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(config.to_dict(), run_dir / "config.yaml")
        bundle.splits.save(run_dir / "splits.json")
    return bundle


def _loaders(config: TrainConfig, runtime: Runtime, device, bundle: DataBundle, masks):
    """Training loader (this rank's share, reshuffled each epoch) and validation loader
    (all of it on every rank)."""
    augment = build_augmentation(config.data.augment)
    train_set = bundle.dataset("train", augment, seed=config.seed, mask_override=masks)
    val_set = bundle.dataset("val", None, seed=config.seed, mask_override=masks)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(
            f"need training and validation images, got {len(train_set)} and {len(val_set)}; "
            "add data or change data.val_fraction"
        )
    _require_scorable_validation(config, val_set.labels())
    bs, workers = config.data.batch_size, config.data.num_workers
    train_sampler = EpochSampler(
        len(train_set), config.seed, True, runtime.rank, runtime.world_size
    )
    return (
        make_loader(
            train_set, train_sampler, bs, workers, device, drop_last=len(train_sampler) > bs
        ),
        make_loader(
            val_set, EpochSampler(len(val_set), 0, False), bs, workers, device, drop_last=False
        ),
    )


# Classifier metrics that need melanoma and benign validation images to be defined.
BOTH_CLASS_METRICS = ("auc", "average_precision", "balanced_accuracy")


def _require_scorable_validation(config: TrainConfig, labels: list[int | None]) -> None:
    """A classifier selected on a figure that one class cannot give would never have a
    best epoch (no best.pt): refuse before training."""
    if config.task != "cls":
        return
    have = sorted({x for x in labels if x is not None})
    needs = (
        {0, 1}
        if config.metric in BOTH_CLASS_METRICS
        else {1}
        if config.metric == "sensitivity"
        else {0}
        if config.metric == "specificity"
        else set()
    )
    if not needs <= set(have):
        kinds = {0: "benign", 1: "melanoma"}
        holds = " and ".join(kinds[x] for x in have) or "no labelled"
        raise ValueError(
            f"the validation split holds {holds} images only ({len(labels)} images), so "
            f"validation {config.metric} is undefined and no epoch could be chosen as the best; "
            "add data, raise data.val_fraction, or select on metric: loss"
        )


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
