"""A two-node local Ray cluster runs trials on both nodes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.test_search_ray import write_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_trials_run_on_both_nodes(tmp_path: Path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from search.experiment import load_experiment
    from search.runner import run_search

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MELANOMA_FAIL_ONCE_MARKER", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        storage = tmp_path / "search"
        exp = load_experiment(
            write_experiment(tmp_path / "exp.yaml", storage, samples=2, cpus_per_worker=0.9)
        )
        run_search(exp, name="two_nodes", storage=str(storage), address=cluster.address)
        nodes = set()
        for trial_dir in (storage / "two_nodes").glob("trial_*"):
            with open(trial_dir / "progress.csv") as fh:
                nodes |= {row["node_id"] for row in csv.DictReader(fh)}
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
