"""Search spaces declared in YAML, turned into an Optuna define-by-run function.

Each entry maps a dotted TrainConfig key to one distribution:
  {choice: [a, b, c]}  {uniform: [lo, hi]}  {loguniform: [lo, hi]}  {int: [lo, hi]}
and optionally ``when: {other.key: value-or-list}``: the parameter exists only when the
earlier parameter took one of those values (momentum only for sgd). Entries are sampled in
the order written, so a condition can refer only to an entry above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from melanoma.config import ConfigError

KINDS = ("choice", "uniform", "loguniform", "int")
# What decides the images and their split: the same for every trial of a search.
FIXED_KEYS = (
    "data.path",
    "data.layout",
    "data.on_bad",
    "data.split_seed",
    "data.val_fraction",
    "data.test_fraction",
    "data.val_from_train",
    "data.external_paths",
    "data.folds",
    "data.fold",
)


@dataclass(frozen=True)
class ParamSpec:
    key: str
    kind: str
    values: tuple
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, params: dict[str, Any]) -> bool:
        return all(k in params and params[k] in allowed for k, allowed in self.when)

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        lo, hi = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, int(lo), int(hi))
        return trial.suggest_float(self.key, float(lo), float(hi), log=self.kind == "loguniform")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {self.kind: list(self.values)}
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when}
        return out


def parse_space(raw: dict, base) -> tuple[ParamSpec, ...]:
    """Validate a YAML space against the TrainConfig ``base`` (keys must exist in it)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"space must be a mapping of config keys to distributions, got {raw!r}")
    specs: list[ParamSpec] = []
    seen: set[str] = set()
    base_dict = base.to_dict()
    for key, spec in raw.items():
        where = f"space.{key}"
        node = base_dict
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{where}: {key!r} is not a train config key")
            node = node[part]
        if key in ("task", "epochs", "out"):
            raise ConfigError(f"{where}: {key} is set by the search itself and cannot be searched")
        if key in FIXED_KEYS:
            raise ConfigError(
                f"{where}: {key} cannot be searched: every trial of a search must see the same "
                "data and the same train/validation/test split, or their validation figures "
                "compare different images and a trial's test split can hold another's training "
                f"images; set it once in the train section (train.{key}) or with --set"
            )
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where}: expected a mapping such as {{choice: [a, b]}}, got {spec!r}"
            )
        kinds = [k for k in spec if k in KINDS]
        extra = sorted(set(spec) - set(KINDS) - {"when"})
        if len(kinds) != 1 or extra:
            raise ConfigError(
                f"{where}: give exactly one of {list(KINDS)} (and optionally 'when'), "
                f"got {sorted(spec)}"
            )
        kind = kinds[0]
        values = spec[kind]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
        if kind != "choice":
            if (
                len(values) != 2
                or not all(isinstance(v, (int, float)) for v in values)
                or values[0] >= values[1]
            ):
                raise ConfigError(
                    f"{where}.{kind}: expected [low, high] with low < high, got {values!r}"
                )
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{where}.loguniform: bounds must be > 0, got {values!r}")
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise ConfigError(f"{where}.when: expected a mapping, got {when!r}")
        for other in when:
            if other not in seen:
                raise ConfigError(
                    f"{where}.when: {other!r} must be a space entry written above {key!r}"
                )
        spec = ParamSpec(
            key,
            kind,
            tuple(values),
            tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in when.items()),
        )
        _check_values(spec, base, where)
        specs.append(spec)
        seen.add(key)
    return tuple(specs)


def _check_values(spec: ParamSpec, base, where: str) -> None:
    """Every choice and both range bounds must make a valid train config (with the values
    its ``when`` conditions need), so a bad value fails here, not in every trial."""
    condition = {k: allowed[0] for k, allowed in spec.when}
    for value in spec.values:
        try:
            base.with_overrides({**condition, spec.key: value})
        except ConfigError as err:
            raise ConfigError(f"{where}: {value!r} is not a valid {spec.key}: {err}") from None


class DefineByRun:
    """An Optuna define-by-run function over a space (conditional entries skipped when off).
    A class, not a closure, so that Tune can pickle the searcher into its checkpoints."""

    def __init__(self, space: tuple[ParamSpec, ...]):
        self.space = space

    def __call__(self, trial) -> None:
        params: dict[str, Any] = {}
        for spec in self.space:
            if spec.active(params):
                params[spec.key] = spec.suggest(trial)


def define_by_run(space: tuple[ParamSpec, ...]) -> DefineByRun:
    return DefineByRun(space)


def default_point(space: tuple[ParamSpec, ...], base) -> dict[str, Any]:
    """The space's parameters at the values of the train config ``base``, the experiment's
    own configuration: what the search evaluates first (its trial 0). A number outside
    its range is kept (Optuna evaluates a fixed value outside the range, and warns); a
    choice the space does not offer takes the space's first choice (a space of one choice
    is how an experiment overrides its train value for the whole search)."""
    values = base.to_dict()
    params: dict[str, Any] = {}
    for spec in space:
        if not spec.active(params):
            continue
        node = values
        for part in spec.key.split("."):
            node = node[part]
        if spec.kind == "choice" and node not in spec.values:
            node = spec.values[0]
        params[spec.key] = int(node) if spec.kind == "int" else node
    return params
