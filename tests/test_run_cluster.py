"""`melanoma run --address`: a cluster's lanes counted from its nodes, more workers
buying seeds trained at once (not a longer wait), and the command on a Ray instance."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from search.plan import (
    MAX_RUNS,
    MIN_EPOCHS,
    SLACK,
    Costs,
    Machine,
    PlanError,
    check_machine,
    cluster_machine,
    make_plan,
)

COSTS = Costs(64, 0.15, 0.03, 0.08, 0.02, 0.004, 1527, 150, 323)


def test_a_clusters_lanes_come_from_its_nodes():
    # One lane per GPU, each with the cores its node has per GPU (the fewest of any node).
    gpus = cluster_machine([{"CPU": 16, "GPU": 2}, {"CPU": 8, "GPU": 2}, {"CPU": 4}])
    assert (gpus.lanes, gpus.threads_per_lane, gpus.gpus, gpus.cpus) == (4, 4, 4, 28)
    # Without GPUs: two lanes per node of the smallest node's cores, as one machine has.
    cpus = cluster_machine([{"CPU": 8}, {"CPU": 8}])
    assert (cpus.lanes, cpus.threads_per_lane) == (4, 4)
    assert cluster_machine([{"CPU": 2}]) == Machine(2, 0, 2, 1)
    assert cluster_machine([{"CPU": 1}]).lanes == 1
    # At most one segmenter lane and MAX_RUNS classifier lanes.
    assert cluster_machine([{"CPU": 64, "GPU": 8}] * 4).lanes == 1 + MAX_RUNS
    for nodes in ([], [{"GPU": 1}], [{"CPU": 0}]):
        with pytest.raises(PlanError, match="no node with a CPU"):
            cluster_machine(nodes)


def test_more_workers_buy_seeds_trained_at_once_not_a_longer_wait():
    one = make_plan(90 * 60, Machine(2), COSTS)
    wide = make_plan(90 * 60, Machine(8, 0, 4, 1), COSTS)  # three classifier lanes
    assert wide.size == one.size
    # The end scores every member, so more seeds reserve a longer end, paid for by at most
    # one segmenter epoch here, never below the epochs the plan aims for.
    assert wide.finish_s > one.finish_s
    assert max(MIN_EPOCHS, one.segmenter.epochs - 1) <= wide.segmenter.epochs
    assert wide.classifier.runs > one.classifier.runs and "3 lanes at once" in wide.classifier.why
    for p in (one, wide):
        assert max(p.segmenter.seconds, p.classifier.seconds) + p.finish_s <= p.budget_s
    # Each classifier lane trains its share of the seeds one after another.
    per_lane = -(-wide.classifier.runs // 3)
    run_s = COSTS.start_s() + wide.classifier.epochs * COSTS.epoch_s("cls", wide.size)
    assert wide.classifier.seconds == pytest.approx(per_lane * run_s)


@pytest.mark.parametrize("lanes", [3, 4, 6])
def test_more_lanes_never_cost_the_size_or_the_aim_at_any_budget(lanes):
    """Extra classifier lanes add seeds at the size two lanes plan, only where both
    models keep MIN_EPOCHS: a sweep of budgets, from cut-down ones to long ones."""
    wide_machine = Machine(2 * lanes, 0, lanes, 1)
    for minutes in range(12, 900, 11):
        one = make_plan(minutes * 60, Machine(2), COSTS)
        wide = make_plan(minutes * 60, wide_machine, COSTS)
        assert wide.size == one.size, minutes
        assert wide.classifier.runs >= one.classifier.runs, minutes
        assert wide.notes == one.notes or not one.notes, minutes
        if wide.classifier.runs > one.classifier.runs:
            assert min(wide.segmenter.epochs, wide.classifier.epochs) >= MIN_EPOCHS, minutes
        else:  # the same seeds, side by side: each as long or longer
            assert wide.segmenter == one.segmenter, minutes
            assert wide.classifier.epochs >= one.classifier.epochs, minutes
        longest = max(wide.segmenter.seconds, wide.classifier.seconds)
        assert longest + wide.finish_s <= wide.budget_s * (1 - SLACK), minutes


def test_a_stored_plan_is_refused_on_a_machine_of_another_shape():
    plan = make_plan(90 * 60, Machine(2), COSTS)
    check_machine(plan, Machine(2))
    check_machine(plan, cluster_machine([{"CPU": 2}]))  # the same shape
    for other in (Machine(8, 0, 4, 1), Machine(16, gpus=1), Machine(1)):
        with pytest.raises(PlanError, match="stored plan was made for .* pass --out NEW_DIR"):
            check_machine(plan, other)
    # A plan.json written before plans said their GPUs resumes on the machine that made it.
    from search.plan import Plan

    on_gpu = make_plan(90 * 60, Machine(16, gpus=1), COSTS).to_dict()
    del on_gpu["gpus"]
    check_machine(Plan.from_dict(on_gpu), Machine(16, gpus=1))


def test_seeds_are_dealt_round_robin_to_the_classifier_lanes():
    from types import SimpleNamespace

    from melanoma_cli.cluster import lane_groups

    lanes = {"segmenter": ["s"], "classifier": ["c0", "c1", "c2", "c3", "c4"]}
    assert lane_groups(lanes, SimpleNamespace(lanes=4)) == [
        ("segmenter", ["s"]),
        ("classifier 1", ["c0", "c3"]),
        ("classifier 2", ["c1", "c4"]),
        ("classifier 3", ["c2"]),
    ]
    # Fewer seeds than lanes: no empty lane; two lanes as on one machine; one lane shared.
    few = {"segmenter": ["s"], "classifier": ["c0"]}
    assert lane_groups(few, SimpleNamespace(lanes=6)) == [
        ("segmenter", ["s"]),
        ("classifier", ["c0"]),
    ]
    assert lane_groups(lanes, SimpleNamespace(lanes=2))[1] == ("classifier", lanes["classifier"])
    assert lane_groups(lanes, SimpleNamespace(lanes=1)) == [("lane", ["s", *lanes["classifier"]])]


@pytest.fixture
def own_ray(tmp_path):
    """A Ray instance of this test's own (address="local": never a stale or foreign one),
    which ``--address auto`` then uses as it is."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.ray
def test_run_on_a_cluster_trains_its_lanes_as_tasks_within_the_budget(
    own_ray, tmp_path, capsys, monkeypatch
):
    import melanoma_cli.run as run_module
    from melanoma_cli import main
    from melanoma_cli.cluster import check_shared

    def here(*a, **k):
        raise AssertionError("the lanes trained in this process, not as Ray tasks")

    monkeypatch.setattr(run_module, "run_lanes", here)
    # Workers that do not see a path are refused before anything trains.
    with pytest.raises(ValueError, match="does not see /nowhere/isic.*nothing was trained"):
        check_shared(tmp_path / "shared", ["/nowhere/isic"], cluster_machine([{"CPU": 2}]))

    budget_s = 300
    out = tmp_path / "run"
    started = time.time()
    args = ["run", "synthetic:160:64:0", "--budget", f"{budget_s}s", "--out", str(out)]
    assert main([*args, "--address", "auto", "--quiet"]) == 0
    took = time.time() - started
    printed = capsys.readouterr().out
    assert "[run] cluster auto: 2 CPUs, 0 GPUs; 2 lane(s) of 1 thread(s)" in printed
    assert "test AUC" in printed and (out / "export" / "cascade.onnx").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["plan"]["lanes"] == 2 and plan["costs"]["cls_train_s"] > 0
    # The lanes ran as tasks (written by worker processes), and every run the build took
    # is on disk where the driver reads it.
    assert (out / "seg" / "checkpoints" / "best.pt").is_file()
    assert (out / "cls" / "run-0" / "checkpoints" / "best.pt").is_file()
    assert took <= budget_s + 0.05 * budget_s + 45, took  # the tolerance test_run.py states


def test_a_cluster_without_a_cpu_is_refused_before_anything_trains(tmp_path, monkeypatch, capsys):
    import melanoma_cli.cluster as cluster
    from melanoma_cli import main

    def no_workers(address, on_gpu):
        return cluster_machine([])

    monkeypatch.setattr(cluster, "connect_cluster", no_workers)
    out = tmp_path / "run"
    code = main(
        ["run", "synthetic:40:32:0", "--budget", "5m", "--out", str(out), "--address", "x:1"]
    )
    assert code == 2 and "no node with a CPU" in capsys.readouterr().err
    assert not (out / "run.json").exists() and not Path(out, "seg").exists()


def test_a_cluster_run_rerun_on_one_machine_is_refused_and_the_reverse(tmp_path):
    from melanoma_cli.run import RunRecord

    inputs = {"data": "d", "budget_s": 60.0, "seed": 0, "experiments": {}}
    RunRecord(tmp_path, {**inputs, "address": "auto"}).save()
    with pytest.raises(ValueError, match="address: 'auto' then, None now"):
        RunRecord(tmp_path, inputs)
    local = tmp_path / "local"
    RunRecord(local, inputs).save()
    with pytest.raises(ValueError, match="address: None then, 'auto' now"):
        RunRecord(local, {**inputs, "address": "auto"})
    assert RunRecord(local, inputs).data["inputs"] == inputs


def test_each_lane_process_watches_the_driver_that_started_it(monkeypatch):
    """run_lanes starts its lanes as _lane_process with its own pid, and a lane process
    starts the watch on that pid before it trains."""
    from types import SimpleNamespace

    from melanoma_cli import lanes

    calls = []
    monkeypatch.setattr(lanes, "exit_with_parent", lambda pid: calls.append(("watch", pid)))
    monkeypatch.setattr(lanes, "train_lane", lambda *a: calls.append(("train", a[0])))
    lanes._lane_process(4242, "segmenter", [], 1, 0.0, True)
    assert calls == [("watch", 4242), ("train", "segmenter")]

    started = []

    class Process:
        def __init__(self, target, args):
            started.append((target, args))
            self.exitcode = 0

        def start(self):
            pass

        def join(self):
            pass

    monkeypatch.setattr(
        lanes.multiprocessing, "get_context", lambda _: SimpleNamespace(Process=Process)
    )
    plan = SimpleNamespace(lanes=2, threads_per_lane=1, finish_s=0.0, budget_s=60.0)
    lanes.run_lanes({"segmenter": [], "classifier": []}, plan, 60.0, True)
    import os

    assert [(t, a[0]) for t, a in started] == [(lanes._lane_process, os.getpid())] * 2


class _FakeRay:
    """As much of ``ray`` as melanoma_cli.cluster's refusals use: a task runs when it is
    got, so a task that raises is a task that failed on the cluster."""

    class exceptions:  # noqa: N801 (ray's own name)
        class RayError(Exception):
            pass

        class GetTimeoutError(RayError):
            pass

    def __init__(self, timeout: bool = False):
        self.timeout, self.cancelled, self.options = timeout, [], []

    def remote(self, *args, **kwargs):
        fake = self

        class Task:
            def __init__(self, fn):
                self.fn = fn

            def options(self, **resources):
                fake.options.append(resources)
                return self

            def remote(self, *a, **k):
                return lambda: self.fn(*a, **k)

        return Task(args[0]) if args and callable(args[0]) else Task

    def get(self, ref, timeout=None):
        if self.timeout:
            raise self.exceptions.GetTimeoutError("timed out")
        return ref()

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)


def test_a_probe_that_times_out_on_the_cluster_is_cancelled_and_refused(monkeypatch):
    import sys
    from types import SimpleNamespace

    from melanoma_cli import cluster

    fake = _FakeRay(timeout=True)
    monkeypatch.setitem(sys.modules, "ray", fake)
    measure = cluster.measure_on_cluster(SimpleNamespace(threads_per_lane=2, gpus=1))
    with pytest.raises(ValueError, match=r"no timing within \d+ s on the cluster; nothing was"):
        measure({"seg": object(), "cls": object()}, 2, 16)
    assert len(fake.cancelled) == 2  # neither probe task is left running
    assert fake.options == [{"num_cpus": 2, "num_gpus": 1}] * 2


def test_a_lane_that_fails_on_the_cluster_is_named_and_ctrl_c_cancels_every_lane(monkeypatch):
    import sys

    from melanoma_cli import cluster

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)

    def died():
        raise fake.exceptions.RayError("the worker died")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(ValueError, match=r"the task 'classifier 2' \(the worker died\) failed"):
        cluster._wait({"segmenter": lambda: None, "classifier 2": died})
    refs = {"segmenter": interrupted, "classifier": lambda: None}
    with pytest.raises(KeyboardInterrupt):
        cluster._wait(refs)
    assert fake.cancelled == list(refs.values())


def test_lanes_that_finish_without_a_checkpoint_this_node_sees_are_refused(tmp_path, monkeypatch):
    """Workers writing to a disk of their own: their lanes end, and the driver, which
    would build from what it sees, finds no checkpoint and says what --out needs."""
    import sys
    from types import SimpleNamespace

    from melanoma_cli import cluster, lanes

    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    trained = []
    monkeypatch.setattr(lanes, "train_lane", lambda name, configs, *a: trained.append(name))
    configs = {
        "segmenter": [SimpleNamespace(out=str(tmp_path / "seg"))],
        "classifier": [SimpleNamespace(out=str(tmp_path / f"cls/run-{k}")) for k in range(2)],
    }
    plan = SimpleNamespace(
        lanes=3,
        threads_per_lane=1,
        gpus=0,
        finish_s=60.0,
        budget_s=600.0,
        segmenter=SimpleNamespace(seconds=300.0),
        classifier=SimpleNamespace(seconds=300.0),
    )
    with pytest.raises(ValueError, match=r"the lanes finished but .*seg, .*run-0, .*run-1 hold"):
        cluster.run_lanes_on_cluster(configs, plan, 600.0, quiet=True)
    assert sorted(trained) == ["classifier 1", "classifier 2", "segmenter"]
    for run in ("seg", "cls/run-0", "cls/run-1"):  # every lane's first run on disk: taken
        best = tmp_path / run / "checkpoints" / "best.pt"
        best.parent.mkdir(parents=True)
        best.touch()
    cluster.run_lanes_on_cluster(configs, plan, 600.0, quiet=True)
