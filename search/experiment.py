"""Search experiments: a base train config, a search space, the search budget and resources.

An experiment YAML has these sections (see experiments/*.yaml):

  name: quickstart_seg          # default search name
  task: seg
  train: {...}                  # a TrainConfig, as `melanoma train --experiment` reads it
  space:                        # dotted TrainConfig keys -> distributions, in order
    optimizer.name: {choice: [sgd, adamw]}
    optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    optimizer.momentum: {uniform: [0.8, 0.99], when: {optimizer.name: sgd}}
  search: {num_samples, max_epochs, metric, mode, searcher, scheduler, ...}
  resources: {workers, cpus_per_worker, gpus_per_worker, driver_cpus, launcher,
              placement_strategy}
  storage: runs/search          # where Tune writes (local path or s3://bucket/prefix)
  tracking: {mlflow: URI}       # optional: trials as MLflow runs (pip install -e ".[mlflow]")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from melanoma.config import ConfigError, from_dict, load_yaml, to_dict
from melanoma.engine.config import TrainConfig
from search.space import ParamSpec, default_point, parse_space

DEFAULT_STORAGE = "runs/search"  # where searches live unless the YAML or --storage says


@dataclass(frozen=True)
class SearcherConfig:
    name: Literal["optuna", "random"] = "optuna"
    seed: int = 0
    n_startup_trials: int = 5  # TPE samples randomly this many trials first
    # Where Optuna keeps the study: None is a journal file in the search's folder
    # (optuna.jsonl, for optuna-dashboard), or a path ending .log/.jsonl, or a database URL.
    optuna_storage: str | None = None


@dataclass(frozen=True)
class TrialSchedulerConfig:
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(
                f"search.scheduler.grace_period must be >= 1, got {self.grace_period}"
            )
        if self.reduction_factor <= 1:
            raise ConfigError(
                f"search.scheduler.reduction_factor must be > 1, got {self.reduction_factor}"
            )


@dataclass(frozen=True)
class SearchConfig:
    num_samples: int = 10
    max_epochs: int = 10  # replaces train.epochs for every trial
    metric: str | None = None  # default: best_val_<train.metric>
    mode: Literal["min", "max"] | None = None
    max_concurrent: int | None = None  # default: what the cluster's resources allow
    max_failures: int = 2  # worker failures a trial survives, resuming from its checkpoint
    keep_checkpoints: int = 2
    # Stop the whole search once its trials have trained this many epochs in all (every
    # reported epoch of every trial counts once): a fixed compute budget, whatever the
    # scheduler does with it. None: num_samples trials, each up to max_epochs.
    budget_epochs: int | None = None
    # Evaluate the experiment's own train configuration first (trial 0, enqueued in the
    # Optuna study so TPE learns from it, and run to max_epochs whatever ASHA says): the
    # population then holds the default, and the hand-off cannot lose to it but through
    # selection noise.
    default_first: bool = True
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    scheduler: TrialSchedulerConfig = field(default_factory=TrialSchedulerConfig)

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"search.num_samples must be >= 1, got {self.num_samples}")
        if self.max_epochs < 1:
            raise ConfigError(f"search.max_epochs must be >= 1, got {self.max_epochs}")
        if self.budget_epochs is not None and self.budget_epochs < 1:
            raise ConfigError(
                f"search.budget_epochs must be >= 1 or null (no budget), got {self.budget_epochs}"
            )


@dataclass(frozen=True)
class ResourcesConfig:
    workers: int = 1  # Ray Train workers (DDP processes) per trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | str = "auto"  # "auto": 1 when the cluster has GPUs, else 0
    # The Tune driver of a trial only waits on its Train workers: a whole CPU for it would
    # let two trials' drivers starve their own workers on a small machine (deadlock).
    driver_cpus: float = 0.05
    # "train": each trial is a Ray Train run (DDP over `workers`, worker restarts), which
    # costs 17-34 s of start-up per trial here. "inline": a single-worker trial trains in
    # the Tune trial's own process (no DDP; Tune restarts a failed trial from its last
    # checkpoint), starting in 5-8 s, at the bare loop's speed. "auto": inline for one
    # worker, where the two are equivalent, train for several.
    launcher: Literal["auto", "train", "inline"] = "auto"
    # Where one trial's Train workers go (Ray's placement-group strategies): PACK fills a
    # node first; SPREAD puts them on different nodes where it can, STRICT_SPREAD must.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @property
    def launcher_used(self) -> Literal["train", "inline"]:
        """The launcher that runs the trials, with "auto" resolved."""
        if self.launcher == "auto":
            return "inline" if self.workers == 1 else "train"
        return self.launcher

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"resources.workers must be >= 1, got {self.workers}")
        if self.launcher == "inline" and self.workers != 1:
            raise ConfigError(
                f"resources.launcher 'inline' trains each trial in one process, but workers is "
                f"{self.workers}; set workers: 1, or launcher: train for DDP over several workers"
            )
        if isinstance(self.gpus_per_worker, str) and self.gpus_per_worker != "auto":
            raise ConfigError(
                "resources.gpus_per_worker must be a number or 'auto', "
                f"got {self.gpus_per_worker!r}"
            )
        if not isinstance(self.gpus_per_worker, str):
            g = float(self.gpus_per_worker)
            # Ray packs fractions of one GPU (0.25: four small-model trials share a GPU);
            # above one GPU per worker it takes whole GPUs only.
            if g < 0 or (g > 1 and not g.is_integer()):
                raise ConfigError(
                    f"resources.gpus_per_worker must be 0, a fraction of one GPU (e.g. 0.25) "
                    f"or a whole number, got {self.gpus_per_worker}"
                )
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"resources.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if not 0 < self.driver_cpus <= 1:
            raise ConfigError(f"resources.driver_cpus must be in (0, 1], got {self.driver_cpus}")


@dataclass(frozen=True)
class TrackingConfig:
    # An MLflow tracking URI (sqlite:///runs/mlflow.db, http://host:5000, ...): each trial
    # becomes a run nested under the search's run. Needs pip install -e ".[mlflow]".
    mlflow: str | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    task: Literal["seg", "cls"]
    train: TrainConfig
    space: tuple[ParamSpec, ...]
    search: SearchConfig
    resources: ResourcesConfig
    storage: str = DEFAULT_STORAGE
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def metric(self) -> str:
        return self.search.metric or f"best_val_{self.train.metric}"

    @property
    def mode(self) -> str:
        return self.search.mode or self.train.mode

    @property
    def default_params(self) -> dict | None:
        """The space's parameters at the train config's own values (trial 0), or None
        when the experiment opts out (search.default_first: false)."""
        return default_point(self.space, self.train) if self.search.default_first else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "train": self.train.to_dict(),
            "space": {p.key: p.to_dict() for p in self.space},
            "search": to_dict(self.search),
            "resources": to_dict(self.resources),
            "storage": self.storage,
            "tracking": to_dict(self.tracking),
        }


_SECTIONS = ("name", "task", "train", "space", "search", "resources", "storage", "tracking")


def experiment_from_dict(data: dict, source: str = "experiment") -> Experiment:
    """Validate every section; errors name the bad key and the allowed values."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; allowed: {list(_SECTIONS)}")
    for required in ("task", "train"):
        if required not in data:
            raise ConfigError(f"{source}: missing section {required!r}")
    task = data["task"]
    if task not in ("seg", "cls"):
        raise ConfigError(f"{source}: task must be 'seg' or 'cls', got {task!r}")
    search = from_dict(SearchConfig, data.get("search") or {}, "search")
    train_dict = dict(data["train"])
    if train_dict.get("task", task) != task:
        raise ConfigError(f"{source}: train.task is {train_dict['task']!r} but task is {task!r}")
    train_dict["task"] = task
    train_dict["epochs"] = search.max_epochs
    try:
        train = TrainConfig.from_dict(train_dict)
    except ConfigError as err:
        raise ConfigError(f"{source}: train: {err}") from None
    space = parse_space(data.get("space") or {}, train)
    _check_timm_encoders(train, space, source)
    return Experiment(
        name=str(data.get("name") or Path(source).stem),
        task=task,
        train=train,
        space=space,
        search=search,
        resources=from_dict(ResourcesConfig, data.get("resources") or {}, "resources"),
        storage=str(data.get("storage") or DEFAULT_STORAGE),
        tracking=from_dict(TrackingConfig, data.get("tracking") or {}, "tracking"),
    )


def _check_timm_encoders(train: TrainConfig, space, source: str) -> None:
    """A 'tu-<name>' encoder is checked against timm here, where a search loads, not in
    every trial (config validation reads plain tables and cannot list timm's models)."""
    if train.task != "seg":
        return
    names = {train.model.encoder}
    for p in space:
        if p.key == "model.encoder" and p.kind == "choice":
            names.update(p.values)
    timm_names = sorted(n for n in names if isinstance(n, str) and n.startswith("tu-"))
    if not timm_names:
        return
    from melanoma.models.segmenter import validate_encoder

    for name in timm_names:
        try:
            validate_encoder(name)
        except ValueError as err:
            raise ConfigError(f"{source}: model.encoder: {err}") from None


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment YAML; ``overrides`` set dotted keys first."""
    from melanoma.config import apply_overrides

    data = load_yaml(Path(path))
    if overrides:
        data = apply_overrides(data, overrides)
    return experiment_from_dict(data, str(path))
