"""Self-describing checkpoints: state_dicts plus the config that rebuilds the model.

Loaded with ``weights_only=True`` always: a checkpoint is data, never code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from melanoma.files import replace_atomically

FORMAT = "melanoma-checkpoint"
VERSION = 1
LAST = "last.pt"
CHECKPOINTS = "checkpoints"  # the folder of a run that holds them
BEST = "best.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, config: dict, model: nn.Module, **extra) -> None:
    """Write atomically (temp file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "model": unwrap(model).state_dict(),
        **extra,
    }
    replace_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint file, or ``best.pt`` / ``last.pt`` inside a run directory."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST, f"{CHECKPOINTS}/{BEST}", f"{CHECKPOINTS}/{LAST}"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(
                f"no {BEST} or {LAST} in {path}; is it a training run directory?"
            )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "not ours"
        raise ValueError(f"{path} is not a readable melanoma checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a melanoma checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}, expected {VERSION}"
        )
    payload["path"] = str(path)
    return payload
