"""A two-node local Ray cluster: each trial's two Train workers run on different nodes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.test_search_ray import write_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_trials_two_workers_run_on_different_nodes(tmp_path: Path, monkeypatch, capsys):
    import ray
    import yaml
    from ray.cluster_utils import Cluster

    from melanoma_cli import main

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
        path = write_experiment(tmp_path / "exp.yaml", storage, samples=2, cpus_per_worker=0.9)
        exp = yaml.safe_load(path.read_text())
        # One 0.9-CPU worker per 1-CPU node: the trial's DDP group spans both nodes.
        exp["resources"].update(workers=2, placement_strategy="SPREAD")
        path.write_text(yaml.safe_dump(exp, sort_keys=False))
        argv = ["search", "seg", "--experiment", str(path), "--address", cluster.address]
        status = main(argv)
        assert status == 0, capsys.readouterr().err[-3000:]
        capsys.readouterr()
        for trial_dir in (storage / "tiny").glob("trial_*"):
            with open(trial_dir / "progress.csv") as fh:
                rows = list(csv.DictReader(fh))
            assert rows and {(r["world_size"], r["worker_nodes"]) for r in rows} == {("2", "2")}
        # `search results` shows each trial's world size and how many nodes it spanned.
        assert main(["search", "results", "tiny", "--storage", str(storage)]) == 0
        header, *lines = capsys.readouterr().out.splitlines()
        assert "world_size" in header.split() and "nodes" in header.split()
        at = {name: header.index(f"  {name} ") + 2 for name in ("state", "world_size", "nodes")}
        trials = [line for line in lines if line[at["state"] :].startswith("TERMINATED")]
        assert len(trials) == 2
        for line in trials:  # the table is aligned: read each column where its header is
            assert [line[at[c] :].split()[0] for c in ("world_size", "nodes")] == ["2", "2"]
    finally:
        ray.shutdown()
        cluster.shutdown()
