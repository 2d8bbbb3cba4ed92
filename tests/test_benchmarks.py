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


def test_real_search_experiments_validate_and_count_right():
    from search.experiment import experiment_from_dict

    bench = load("real_search")
    base = bench.base_experiment("isic2017_cpu_cls")
    args = argparse.Namespace(budget=12, max_epochs=4, data="synthetic:40:64:0", image_size=64)
    for method in [bench.DEFAULT, *bench.SEARCHES, *bench.MIXED]:
        exp = experiment_from_dict(bench.experiment(base, method, 2, args, "runs/x"))
        assert exp.search.budget_epochs == 12
        assert exp.resources.launcher == "inline"
        assert exp.train.seed == 2 and exp.search.searcher.seed == 2
        assert exp.train.data.image_size == 64 and exp.train.data.path == "synthetic:40:64:0"
    default = experiment_from_dict(bench.experiment(base, bench.DEFAULT, 0, args, "runs/x"))
    # The default run is the shipped train config, unsearched, for the whole budget.
    assert default.space == () and default.search.num_samples == 1
    assert default.train.epochs == 12 and default.train.input == base_input(base)
    tpe = experiment_from_dict(bench.experiment(base, "TPE + ASHA", 0, args, "runs/x"))
    assert tpe.search.scheduler.name == "asha" and tpe.search.searcher.name == "optuna"
    assert {p.key for p in tpe.space} == set(base["space"])
    # Trial-epochs until the best-so-far curve first reaches the target.
    assert bench.epochs_to_reach([0.1, 0.5, 0.5, 0.7], 0.5) == 2
    assert bench.epochs_to_reach([0.1, 0.2], 0.5) is None
    curve = bench.Curve("best_val_auc")
    for value in (0.3, float("nan"), 0.2, 0.6):
        curve.on_trial_result(0, [], type("T", (), {"trial_id": "a"})(), {"best_val_auc": value})
    assert curve.best == [0.3, 0.3, 0.3, 0.6]


def base_input(base: dict):
    from melanoma.engine.config import InputConfig

    return InputConfig(**base["train"]["input"])


def test_real_search_summary_counts_wins_per_seed():
    bench = load("real_search")

    def run(seed, curve, test):
        return {"seed": seed, "curve": curve, "trials": 3, "test_auc": test, "wall_s": 1.0}

    runs = {
        bench.DEFAULT: [run(0, [0.70, 0.75], 0.72), run(1, [0.80], 0.70)],
        "TPE + ASHA": [run(0, [0.6, 0.76], 0.71), run(1, [0.74], 0.75)],
    }
    summary = bench.summarise(runs, target=0.75)
    tpe = summary["TPE + ASHA"]
    # Seed 0: better on validation, worse on test; seed 1 the other way round.
    assert (tpe["beats_default_val"], tpe["beats_default_test"]) == (1, 1)
    assert tpe["epochs_to_target"] == [2, None]
    assert summary[bench.DEFAULT]["epochs_to_target"] == [2, 1]
    bench.print_table(summary, seeds=2)
