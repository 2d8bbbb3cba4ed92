"""The training engine: one loop for segmenters and classifiers, configs, losses, optimizers."""

from melanoma.engine.checkpoint import load_checkpoint, save_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.loop import FitResult, NonFiniteLossError, Runtime, evaluate, fit

__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "Runtime",
    "TrainConfig",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]
