"""Where a search lives on disk: its folder, its experiment file, its trials' folders."""

from __future__ import annotations

from pathlib import Path

from melanoma.config import load_yaml
from search.experiment import Experiment, experiment_from_dict

EXPERIMENT_FILE = "experiment.yaml"


OPTUNA_JOURNAL = "optuna.jsonl"  # the study, beside the search, for optuna-dashboard


def is_uri(path: str) -> bool:
    return "://" in path


def search_path(storage: str, name: str) -> str:
    return (
        f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(Path(storage).resolve() / name)
    )


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"


def load_search_experiment(name: str, storage: str) -> Experiment:
    root = Path(search_path(storage, name))
    path = root / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no search named {name!r} in {storage} (looked for {path})")
    data = load_yaml(path)
    data["train"]["epochs"] = data["search"]["max_epochs"]
    return experiment_from_dict(data, str(path))
