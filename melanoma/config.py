"""Typed, frozen configs from plain dicts: unknown keys and bad values are named.

One flow: a YAML file, then overrides (``section.key=value``), then the resolved config
written next to the outputs. Plain dicts exist only at the edges (YAML, CLI, Ray, Optuna).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import uuid
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def cache_root() -> Path:
    """The machine-wide cache folder: $MELANOMA_CACHE, else ~/.cache/melanoma. It holds
    decoded data sets (``decoded/``), synthetic data, out-of-fold masks (``oof/``) and
    the engine runs of trials on s3 storage (``runs/``)."""
    import os

    return Path(os.environ.get("MELANOMA_CACHE", Path.home() / ".cache" / "melanoma"))


class ConfigError(ValueError):
    """A config key or value that is not allowed."""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with the allowed ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; allowed under "
            f"{where or 'the top level'}: {names}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def to_dict(obj: Any) -> Any:
    """Plain, YAML-friendly dict of a (nested) dataclass config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_value(text: str) -> Any:
    """A CLI override value: YAML scalars, so 1e-3, true, null and [a, b] work."""
    return yaml.safe_load(text)


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Deep-copied ``data`` with dotted keys (``optimizer.lr``) set."""
    import copy

    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {dotted}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_yaml(path: Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"experiment file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def dump_yaml(data: dict, path: Path) -> None:
    """Written atomically: a killed run leaves the previous file whole (melanoma run reads
    a run's planned length from its config.yaml on resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # melanoma.files sits above this layer: the same rename, written here.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
