"""The benchmark scripts stay runnable: their configs validate and their helpers compute
what their tables print. No timing is asserted here (see benchmarks/ for the figures)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_has_a_usage_docstring():
    for path in sorted(BENCHMARKS.glob("*.py")):
        doc = load(path.stem).__doc__
        assert doc and f"python benchmarks/{path.name}" in doc, path.name


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_train_overhead_configs_validate(task):
    from melanoma.engine.config import TrainConfig

    bench = load("train_overhead")
    config = TrainConfig.from_dict(
        {**bench.train_config(task, "synthetic:40:64:0", 64), "epochs": 2, "out": "x"}
    )
    assert config.task == task
    assert set(bench.LAUNCHERS) == {"train", "inline"}


def test_search_efficiency_experiments_validate_and_count_right():
    from search.experiment import experiment_from_dict

    bench = load("search_efficiency")
    args = argparse.Namespace(
        budget=48, max_epochs=8, data="synthetic:40:64:0", image_size=32, encoder="resnet18"
    )
    for method in {**bench.METHODS, **bench.MIXED}.values():
        exp = experiment_from_dict(bench.experiment(method, 0, args, "runs/x"))
        assert exp.search.budget_epochs == 48
        assert exp.resources.launcher == "inline"
        assert exp.search.scheduler.name == method["scheduler"]
    # Trial-epochs until the best-so-far curve first reaches the target.
    assert bench.epochs_to_reach([0.1, 0.5, 0.5, 0.7], 0.5) == 2
    assert bench.epochs_to_reach([0.1, 0.2], 0.5) is None
    curve = bench.Curve("best_val_jaccard")
    for value in (0.3, float("nan"), 0.2, 0.6):
        curve.on_trial_result(
            0, [], type("T", (), {"trial_id": "a"})(), {"best_val_jaccard": value}
        )
    assert curve.best == [0.3, 0.3, 0.3, 0.6]
