"""cluster.yaml passes Ray's own cluster-launcher validation (as `ray up` runs it)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_cluster_yaml_is_valid():
    cfg = yaml.safe_load(CLUSTER.read_text())
    validate(cfg)
    assert cfg["docker"]["image"] == "rayproject/ray:2.60.0-gpu"
    gpu_types = [n for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU")]
    assert {"gpu_on_demand", "gpu_spot"} <= set(gpu_types)
    assert all(cfg["available_node_types"][n]["min_workers"] == 0 for n in gpu_types)
    # Head and workers must agree on Ray 2.60's token authentication mode.
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    modes = {c.split("RAY_AUTH_MODE=")[1].split()[0] for c in starts if "ray start" in c}
    assert len(modes) == 1


def test_validation_catches_mistakes():
    cfg = yaml.safe_load(CLUSTER.read_text())
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_spot"]["max_workerz"] = 3
    from jsonschema.exceptions import ValidationError

    with pytest.raises(ValidationError, match="max_workerz"):
        validate(bad)
    bad = copy.deepcopy(cfg)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate(bad)
