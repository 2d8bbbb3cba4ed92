"""The training engine: one loop for segmenters and classifiers, configs, losses, optimizers.

Names load on first use: Ray processes that only need ``TrainConfig`` (a trial's driver,
Train's controller) then skip importing torch, torchvision and the model zoos.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_checkpoint": "melanoma.engine.checkpoint",
    "save_checkpoint": "melanoma.engine.checkpoint",
    "TrainConfig": "melanoma.engine.config",
    "FitResult": "melanoma.engine.loop",
    "NonFiniteLossError": "melanoma.engine.loop",
    "Runtime": "melanoma.engine.loop",
    "evaluate": "melanoma.engine.loop",
    "fit": "melanoma.engine.loop",
    "train": "melanoma.engine.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'melanoma.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
