"""The training engine: one loop for segmenters and classifiers, configs, losses, optimizers.

Names load on first use: Ray processes that only need ``TrainConfig`` (a trial's driver,
Train's controller) then skip importing torch, torchvision and the model zoos.
"""

from __future__ import annotations

from melanoma.lazy import lazy_exports

_EXPORTS = {
    "load_checkpoint": "melanoma.engine.checkpoint",
    "save_checkpoint": "melanoma.engine.checkpoint",
    "TrainConfig": "melanoma.engine.config",
    "FitResult": "melanoma.engine.loop",
    "NonFiniteLossError": "melanoma.engine.loop",
    "Runtime": "melanoma.engine.loop",
    "validate": "melanoma.engine.loop",
    "fit": "melanoma.engine.loop",
    "train": "melanoma.engine.run",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
