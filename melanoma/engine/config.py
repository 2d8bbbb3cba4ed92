"""The training configuration: one frozen dataclass tree, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from melanoma.config import ConfigError, apply_overrides, from_dict, to_dict
from melanoma.names import (
    CROP_MODES,
    OPTIMIZERS,
    check_classifier,
    check_loss,
    check_segmenter,
)

TASKS = ("seg", "cls")
DEFAULT_METRIC = {"seg": "jaccard", "cls": "auc"}
SEG_METRICS = ("jaccard", "dice", "thresholded_jaccard", "pixel_accuracy", "loss")
CLS_METRICS = (
    "auc",
    "average_precision",
    "balanced_accuracy",
    "f1",
    "accuracy",
    "sensitivity",
    "specificity",
    "loss",
)


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    layout: str | None = None
    on_bad: Literal["fail", "skip"] = "fail"
    image_size: int | None = None  # None: 256 for segmenters, the classifier's natural size
    batch_size: int = 16
    num_workers: int = 2
    augment: float = 0.5
    # Where the augmentation runs: in the loader's processes (albumentations, per image)
    # or on the model's device after each batch arrives (melanoma.data.device_augment, the
    # same transforms), for a GPU the loader cannot keep fed.
    augment_on: Literal["loader", "device"] = "loader"
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Also carve val_fraction from training into validation beside an official validation
    # split (see melanoma.data.splits); the official images stay scorable on their own.
    val_from_train: bool = False
    # A raw data set is decoded once per machine into $MELANOMA_CACHE/decoded/ and every
    # trial memory-maps that; false decodes the image files every epoch.
    cache: bool = True
    # Allow an index file (manifest.csv) to name files outside its own folder.
    external_paths: bool = False
    # Cross-validation: with folds >= 2 the run trains on the other folds of the training
    # split and validates on fold `fold` (lesion-grouped, label-stratified, seeded by
    # split_seed); the official validation split is left out. 0: the splits as they are.
    folds: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"data.folds must be 0 (no folds) or at least 2, got {self.folds}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ConfigError(f"data.fold must be in [0, {self.folds}), got {self.fold}")
        if self.image_size is not None and not 32 <= self.image_size <= 2048:
            raise ConfigError(f"data.image_size must be between 32 and 2048, got {self.image_size}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.augment <= 1.0:
            raise ConfigError(f"data.augment must be in [0, 1], got {self.augment}")

    def split_config(self):
        """The :class:`~melanoma.data.splits.SplitConfig` these settings describe."""
        from melanoma.data.splits import SplitConfig

        return SplitConfig.from_record(self)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = ""  # segmenter architecture (seg) or classifier name (cls)
    encoder: str = "resnet34"  # segmenters only
    pretrained: bool = False
    weights_path: str | None = None
    aux_weight: float = 0.4  # inception_v3/googlenet auxiliary loss; 0 builds no aux head
    # inception_v3/googlenet: torchvision's ImageNet ports re-normalise their input
    # (transform_input). Resolved from `pretrained` and kept in every checkpoint, so a
    # trained model rebuilds the same without the ImageNet weights file.
    transform_input: bool | None = None

    def __post_init__(self) -> None:
        if self.aux_weight < 0:
            raise ConfigError(f"model.aux_weight must be >= 0, got {self.aux_weight}")


@dataclass(frozen=True)
class LossConfig:
    name: str | None = None  # None: dice_bce for seg, ce for cls
    class_weight: float = 1.0  # multiplies the minority class's balanced weight (cls)
    focal_gamma: float = 2.0
    dice_weight: float = 1.0  # dice_bce: loss = bce + dice_weight * dice

    def __post_init__(self) -> None:
        if self.class_weight <= 0:
            raise ConfigError(f"loss.class_weight must be > 0, got {self.class_weight}")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class SchedulerConfig:
    name: Literal["cosine", "step", "plateau", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    patience: int = 3
    min_lr_ratio: float = 0.01


# ``input.mask_source: search:NAME``: the best trial of segmenter search NAME, which the
# search and cv commands resolve to its checkpoint before any trial starts.
MASK_SEARCH_PREFIX = "search:"


@dataclass(frozen=True)
class InputConfig:
    """What the classifier sees: the whole image, the masked lesion, a lesion crop, the
    image with the mask as a fourth channel, or the image and the crop side by side."""

    mode: Literal["full", "masked", "crop", "mask_channel", "dual"] = "full"
    # "gt"; a segmenter run directory or checkpoint (out-of-fold masks on train, its own on
    # val/test); or "search:NAME", a segmenter search's best trial.
    mask_source: str = "gt"
    crop_margin: float = 0.15  # crop: bounding box dilated by this fraction of its size
    oof_folds: int = 3
    # crop, dual: the size of the copy of each image the lesion crop is cut from (the
    # whole image and the segmenter still see data.image_size). Larger than
    # data.image_size gives the crop detail the downsized image lost; None: the same.
    # The other modes ignore it.
    source_size: int | None = None

    def __post_init__(self) -> None:
        if self.oof_folds < 2:
            raise ConfigError(f"input.oof_folds must be at least 2, got {self.oof_folds}")
        if not 0 <= self.crop_margin <= 1:
            raise ConfigError(f"input.crop_margin must be in [0, 1], got {self.crop_margin}")
        if self.mask_source == MASK_SEARCH_PREFIX:
            raise ConfigError(
                f"input.mask_source {self.mask_source!r} names no search; write "
                f"{MASK_SEARCH_PREFIX}NAME with the segmenter search's name"
            )

    @property
    def mask_search(self) -> str | None:
        """The segmenter search named by ``mask_source: search:NAME``, else None."""
        if self.mask_source.startswith(MASK_SEARCH_PREFIX):
            return self.mask_source[len(MASK_SEARCH_PREFIX) :]
        return None


@dataclass(frozen=True)
class TrainConfig:
    task: Literal["seg", "cls"] = "seg"
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = True  # used on CUDA only
    channels_last: bool = True  # used on CUDA only
    compile: bool = False  # torch.compile, CUDA only
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    early_stopping: int = 0  # epochs without improvement before stopping; 0 disables
    metric: str | None = None  # selection metric; None: jaccard (seg) or auc (cls)
    threshold: float = 0.5  # mask / melanoma decision threshold during training
    log_images: int = 8  # validation images drawn to TensorBoard each epoch
    out: str = "runs/train"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        valid = SEG_METRICS if self.task == "seg" else CLS_METRICS
        if self.metric is not None and self.metric not in valid:
            raise ConfigError(
                f"metric {self.metric!r} is not a {self.task} metric; valid: {list(valid)}"
            )
        # Defaults that depend on the task are resolved here, so the written config is explicit.
        if not self.model.arch:
            object.__setattr__(
                self, "model", replace(self.model, arch="fpn" if self.task == "seg" else "resnet18")
            )
        if self.loss.name is None:
            object.__setattr__(
                self, "loss", replace(self.loss, name="dice_bce" if self.task == "seg" else "ce")
            )
        if self.metric is None:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.task])
        if self.model.transform_input is None:
            uses = self.task == "cls" and self.model.arch in ("inception_v3", "googlenet")
            imagenet = self.model.pretrained or bool(self.model.weights_path)
            object.__setattr__(
                self, "model", replace(self.model, transform_input=uses and imagenet)
            )
        if self.data.image_size is None:
            try:
                size = 256 if self.task == "seg" else check_classifier(self.model.arch).input_size
            except ValueError as err:
                raise ConfigError(str(err)) from None
            object.__setattr__(self, "data", replace(self.data, image_size=size))
        self._validate_names()
        self._validate_source_size()

    def _validate_source_size(self) -> None:
        source = self.input.source_size
        if source is None:
            return
        if self.task != "cls":
            raise ConfigError(
                f"input.source_size ({source}) sizes the copy a classifier's lesion crop is "
                "cut from; a segmenter has none: drop it"
            )
        if not self.data.image_size <= source <= 2048:
            raise ConfigError(
                f"input.source_size must be between data.image_size ({self.data.image_size}) "
                f"and 2048, got {source}"
            )

    @property
    def load_size(self) -> int:
        """The size images are loaded and augmented at: ``input.source_size`` for a
        classifier that cuts a crop (crop, dual), else ``data.image_size``. Other modes
        ignore ``source_size``, so one experiment can search modes with and without it."""
        if self.input.mode in CROP_MODES and self.input.source_size:
            return self.input.source_size
        return self.data.image_size

    def _validate_names(self) -> None:
        # Plain tables (melanoma.names): building a config imports no model zoo.
        try:
            if self.task == "seg":
                min_size = check_segmenter(self.model.arch, self.model.encoder)
                if self.data.image_size % 32:
                    raise ConfigError(
                        "data.image_size must be a multiple of 32 for segmenters, "
                        f"got {self.data.image_size}"
                    )
            else:
                spec = check_classifier(self.model.arch)
                # dual mode builds no auxiliary heads (they see one view).
                aux = spec.has_aux and self.model.aux_weight > 0 and self.input.mode != "dual"
                min_size = spec.min_size_aux if aux else spec.min_size
            check_loss(self.task, self.loss.name)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.data.image_size < min_size:
            raise ConfigError(
                f"{self.model.arch} needs data.image_size >= {min_size}, got {self.data.image_size}"
                + (
                    " (or set model.aux_weight: 0 to build it without its auxiliary head)"
                    if self.task == "cls" and min_size == 299
                    else ""
                )
            )
        if self.optimizer.name not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer.name!r}; valid: {list(OPTIMIZERS)}"
            )

    @property
    def mode(self) -> str:
        return "min" if self.metric == "loss" else "max"

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return from_dict(cls, data)

    def with_absolute_paths(self, base: Path) -> TrainConfig:
        """The same config with its relative file paths (``data.path``, a segmenter run as
        ``input.mask_source``, ``model.weights_path``) made absolute against ``base``, the
        directory the user ran the command from: Ray runs each trial in a directory of
        its own, where a relative path points nowhere."""
        changes = {
            key: str(Path(base) / value)
            for key, value in self.path_values().items()
            if not Path(value).is_absolute()
        }
        return self.with_overrides(changes) if changes else self

    def path_values(self) -> dict[str, str]:
        """The dotted keys of this config that name files or folders, with their values
        (synthetic data specs, URIs and ``gt`` masks name none)."""
        values = {
            "data.path": self.data.path,
            "input.mask_source": "" if self.input.mask_source == "gt" else self.input.mask_source,
            "model.weights_path": self.model.weights_path or "",
        }
        return {
            k: v
            for k, v in values.items()
            if v and not v.startswith(("synthetic:", MASK_SEARCH_PREFIX)) and "://" not in v
        }

    def check_paths(self) -> None:
        """Refuse, naming the key, a file or folder this config needs that does not exist:
        before a search starts Ray, rather than in every trial."""
        for key, value in self.path_values().items():
            if not Path(value).exists():
                flag = {"data.path": " or --data"}.get(key, "")
                raise FileNotFoundError(
                    f"{key} {value} does not exist; set {key} in the experiment (train."
                    f"{key}){flag} to an existing path, relative to the directory you run "
                    "the command from or absolute"
                )

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A new config with dotted keys replaced, e.g. {"optimizer.lr": 0.01}."""
        return from_dict(TrainConfig, apply_overrides(self.to_dict(), overrides))
