"""What every trial of a search receives besides its sampled parameters, as one frozen
record. It crosses into the trial through Tune's ``param_space`` as a plain dict (the
Ray edge) and is read back here, so neither side indexes a dict by key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

META = "__meta__"  # the param_space key it travels under
CANDIDATE = "__candidate__"  # a cross-validation trial's candidate (a key of `candidates`)


@dataclass(frozen=True)
class TrialMeta:
    train: dict  # the base TrainConfig, as a dict
    run_root: str | None  # trial runs go to <run_root>/<trial dir>/run (None: older searches)
    train_storage: str  # Ray Train's runs of the search (launcher: train)
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_failures: int
    keep_checkpoints: int
    metric: str
    checkpoint_metric: str
    mode: str
    placement_strategy: str = "PACK"  # of the trial's Train workers
    # Cross-validation: label -> TrainConfig dict; a trial trains fold `data.fold` of the
    # candidate its CANDIDATE parameter names, into <run_root>/<label>/fold<k>.
    candidates: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrialMeta:
        """Read the record, also as searches before this class wrote it (resources nested,
        no run_root)."""
        data = dict(data)
        data.update(data.pop("resources", {}))
        data.setdefault("run_root", None)
        data.setdefault("placement_strategy", "PACK")
        data.setdefault("candidates", None)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def train_storage(search_root: str) -> str:
    """Where Ray Train keeps the runs of a search's trials."""
    return f"{search_root}/_train"


def train_run_name(trial_id: str) -> str:
    """The stable name of a trial's Train run: a restored trial finds it and resumes."""
    return f"train-{trial_id}"
