"""Experiment files and search spaces, without Ray: validation and conditional sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from melanoma.config import ConfigError
from search.experiment import experiment_from_dict, load_experiment
from search.space import define_by_run

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def base(**over) -> dict:
    data = {
        "name": "t",
        "task": "seg",
        "train": {
            "data": {"path": "x", "image_size": 64},
            "model": {"arch": "fpn", "encoder": "resnet18"},
        },
        "space": {
            "optimizer.name": {"choice": ["sgd", "adamw"]},
            "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
            "optimizer.momentum": {"uniform": [0.8, 0.99], "when": {"optimizer.name": "sgd"}},
        },
        "search": {"num_samples": 3, "max_epochs": 2},
    }
    data.update(over)
    return data


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiments_are_valid(path: Path):
    exp = load_experiment(path)
    assert exp.space and exp.search.num_samples >= 1
    assert exp.train.epochs == exp.search.max_epochs


def test_momentum_only_for_sgd():
    exp = experiment_from_dict(base())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sample = define_by_run(exp.space)
    seen = {"sgd": 0, "adamw": 0}
    for _ in range(30):
        trial = study.ask()
        sample(trial)
        name = trial.params["optimizer.name"]
        seen[name] += 1
        assert ("optimizer.momentum" in trial.params) == (name == "sgd")
        assert 1e-4 <= trial.params["optimizer.lr"] <= 1e-1
        study.tell(trial, 0.0)
    assert seen["sgd"] and seen["adamw"]


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_sampled_params_build_valid_train_configs(path: Path):
    exp = load_experiment(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    sample = define_by_run(exp.space)
    seen: dict[str, set] = {p.key: set() for p in exp.space}
    for _ in range(40):
        trial = study.ask()
        sample(trial)
        config = exp.train.with_overrides(trial.params).to_dict()
        for key, value in trial.params.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value  # the sampled value reached the trial's config
            seen[key].add(value)
        study.tell(trial, 0.0)
    # Every parameter was sampled, with more than one value.
    assert all(len(values) > 1 for values in seen.values()), seen


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"space": {"optimizer.lrr": {"choice": [1]}}},
            "'optimizer.lrr' is not a train config key",
        ),
        (
            {"space": {"optimizer.lr": {"gauss": [0, 1]}}},
            "give exactly one of \\['choice', 'uniform', 'loguniform', 'int'\\]",
        ),
        ({"space": {"optimizer.lr": {"loguniform": [0, 1]}}}, "bounds must be > 0"),
        ({"space": {"optimizer.lr": {"uniform": [1, 0]}}}, "low < high"),
        (
            {
                "space": {
                    "optimizer.momentum": {"uniform": [0.8, 0.9], "when": {"optimizer.name": "sgd"}}
                }
            },
            "must be a space entry written above",
        ),
        ({"space": {"epochs": {"choice": [1, 2]}}}, "set by the search itself"),
        # The images and their split are the same for every trial of a search.
        (
            {"space": {"data.split_seed": {"int": [0, 3]}}},
            "space.data.split_seed: data.split_seed cannot be searched: every trial",
        ),
        ({"space": {"data.val_fraction": {"uniform": [0.1, 0.3]}}}, "data.val_fraction cannot"),
        ({"space": {"data.test_fraction": {"choice": [0.1, 0.2]}}}, "data.test_fraction cannot"),
        ({"space": {"data.val_from_train": {"choice": [True, False]}}}, "val_from_train cannot"),
        ({"space": {"data.path": {"choice": ["a", "b"]}}}, "data.path cannot be searched"),
        ({"searchh": {}}, "unknown section\\(s\\) \\['searchh'\\]"),
        (
            {"search": {"scheduler": {"name": "hyperband"}}},
            "'hyperband' is not allowed; choose one of \\['asha', 'fifo'\\]",
        ),
        ({"search": {"searcher": {"name": "bohb"}}}, "choose one of \\['optuna', 'random'\\]"),
        ({"resources": {"gpus_per_worker": "many"}}, "a number or 'auto'"),
        ({"resources": {"gpus_per_worker": 1.5}}, "a fraction of one GPU .* got 1.5"),
        ({"resources": {"gpus_per_worker": -1}}, "a fraction of one GPU .* got -1"),
        ({"resources": {"cpus_per_worker": 0}}, "cpus_per_worker must be > 0, got 0"),
        (
            {"resources": {"launcher": "inline", "workers": 2}},
            "launcher 'inline' trains each trial in one process, but workers is 2",
        ),
        ({"resources": {"launcher": "local"}}, "choose one of \\['auto', 'train', 'inline'\\]"),
        ({"resources": {"driver_cpus": 1.5}}, "driver_cpus must be in \\(0, 1\\]"),
        ({"search": {"budget_epochs": 0}}, "budget_epochs must be >= 1 or null"),
        ({"search": {"budget_epochs": "lots"}}, "budget_epochs"),
        ({"task": "detect"}, "task must be 'seg' or 'cls'"),
        (
            {"train": {"model": {"arch": "segnet"}}},
            "train: unknown segmenter architecture 'segnet'",
        ),
        # Values inside the space are checked when the experiment loads, not in each trial.
        (
            {"space": {"model.arch": {"choice": ["fpn", "segnet"]}}},
            "space.model.arch: 'segnet' is not a valid model.arch: unknown segmenter",
        ),
        (
            {"space": {"model.encoder": {"choice": ["resnet18", "resnet19"]}}},
            "space.model.encoder: 'resnet19' is not a valid model.encoder",
        ),
        (
            {"space": {"optimizer.momentum": {"uniform": [0.5, 1.5]}}},
            "space.optimizer.momentum: 1.5 is not a valid .* must be in \\[0, 1\\)",
        ),
        (
            {"space": {"data.image_size": {"int": [64, 100]}}},
            "space.data.image_size: 100 .* multiple of 32",
        ),
    ],
)
def test_bad_experiments_name_the_key_and_allowed_values(change, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict(base(**change))


def test_default_metric_follows_the_train_metric():
    exp = experiment_from_dict(
        base(
            task="cls",
            train={"data": {"path": "x"}, "model": {"arch": "resnet18"}},
            space={"optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
        )
    )
    assert (exp.metric, exp.mode) == ("best_val_auc", "max")


def test_pruned_trials_are_told_to_optuna_as_pruned():
    from search.searcher import FidelityAwareOptunaSearch

    exp = experiment_from_dict(base())
    searcher = FidelityAwareOptunaSearch(
        define_by_run(exp.space),
        "best_val_jaccard",
        "max",
        optuna.samplers.RandomSampler(seed=0),
        max_epochs=4,
    )
    for trial_id in ("stopped", "complete", "early"):
        searcher.suggest(trial_id)
    searcher.on_trial_result(
        "stopped", {"best_val_jaccard": 0.9, "epoch": 1, "training_iteration": 7}
    )
    searcher.on_trial_complete("stopped", {"best_val_jaccard": 0.9, "epoch": 1, "finished": False})
    searcher.on_trial_result("complete", {"best_val_jaccard": 0.5, "epoch": 4})
    searcher.on_trial_complete("complete", {"best_val_jaccard": 0.5, "epoch": 4, "finished": True})
    # The engine's own early stopping is a completed trial, not a pruned one.
    searcher.on_trial_complete("early", {"best_val_jaccard": 0.4, "epoch": 2, "finished": True})
    trials = {t.number: t for t in searcher.study.trials}
    assert trials[0].state == optuna.trial.TrialState.PRUNED
    assert trials[0].intermediate_values == {1: 0.9}  # step is the epoch, not Tune's iteration
    assert trials[1].state == optuna.trial.TrialState.COMPLETE and trials[1].value == 0.5
    assert trials[2].state == optuna.trial.TrialState.COMPLETE
    assert searcher.study.best_value == 0.5  # the pruned 0.9 never wins


def test_the_searcher_fails_errored_trials_and_resumes_from_its_checkpoint(tmp_path):
    """Errors and non-finite values are FAIL; an epoch reported twice counts once; the
    pickled searcher (Tune's experiment checkpoint) goes on with the same study."""
    from search.searcher import FidelityAwareOptunaSearch

    exp = experiment_from_dict(base())

    def make():
        return FidelityAwareOptunaSearch(
            define_by_run(exp.space),
            "best_val_jaccard",
            "max",
            optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
            max_epochs=2,
        )

    searcher = make()
    config = searcher.suggest("a")
    assert set(config) <= {spec.key for spec in exp.space} and config
    exp.train.with_overrides(config)  # what the searcher asks for is a valid train config
    searcher.suggest("b")
    searcher.suggest("c")
    for epoch in (1, 1, 2):
        searcher.on_trial_result("a", {"best_val_jaccard": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("a", {"best_val_jaccard": 0.2, "epoch": 2})
    searcher.on_trial_complete("b", error=True)
    searcher.on_trial_complete("c", {"best_val_jaccard": float("nan"), "epoch": 2})
    searcher.on_trial_complete("a", {"best_val_jaccard": 0.9, "epoch": 2})  # told once only
    states = [t.state for t in searcher.study.trials]
    done, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert states == [done, fail, fail]
    assert searcher.study.trials[0].intermediate_values == {1: 0.1, 2: 0.2}
    assert searcher.study.best_value == 0.2

    searcher.suggest("d")
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("d", {"best_val_jaccard": 0.6, "epoch": 2, "finished": True})
    assert len(restored.study.trials) == 4 and restored.study.best_value == 0.6
    with pytest.raises(ValueError, match="mode must be one of"):
        FidelityAwareOptunaSearch(define_by_run(exp.space), "m", "up", None, max_epochs=1)


def test_epoch_budget_counts_each_trial_epoch_once():
    from search.callbacks import EpochBudget

    budget = EpochBudget(3)
    assert budget("a", {"epoch": 1}) is False and not budget.stop_all()
    # A trial restored from its checkpoint reports an epoch again: it is not counted twice.
    budget("a", {"epoch": 1})
    budget("b", {"epoch": 1})
    assert not budget.stop_all()
    budget("a", {"epoch": 2})
    assert budget.stop_all()


def test_ray_processes_that_only_need_configs_skip_the_model_zoos():
    """The trial driver and Train's controller import these modules; every second they
    spend importing is start-up paid once per trial."""
    import subprocess
    import sys

    code = (
        "import sys, trainables.train_loop, trainables.driver, melanoma.engine.config; "
        "from melanoma.engine.config import TrainConfig; "
        # Building and validating configs, as a trial's driver does, stays light too.
        "TrainConfig.from_dict({'task': 'seg', 'out': 'x', 'model': {'arch': 'fpn', "
        "'encoder': 'tu-tf_efficientnet_lite0'}, 'loss': {'name': 'lovasz'}}); "
        "TrainConfig.from_dict({'task': 'cls', 'out': 'x', 'model': {'arch': 'inception_v3'}}); "
        "heavy = [m for m in ('segmentation_models_pytorch', 'albumentations', 'timm', "
        "'torchvision', 'melanoma.engine.loop') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("gpus", "gpw", "workers", "expected"),
    [(1, 0.25, 1, 4), (1, 0.5, 1, 2), (2, 1, 1, 2), (4, 1, 2, 2), (2, 0.5, 2, 2)],
)
def test_fractional_gpus_pack_several_trials_on_one_gpu(monkeypatch, gpus, gpw, workers, expected):
    import ray

    from search.runner import plan_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": float(gpus)})
    exp = experiment_from_dict(
        base(
            search={"num_samples": 8, "max_epochs": 2},
            resources={"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": gpw},
        )
    )
    plan = plan_resources(exp)
    assert plan.gpus_per_worker == gpw
    assert plan.max_concurrent == expected


def test_a_timm_encoder_that_does_not_exist_fails_when_the_search_loads(tmp_path):
    from melanoma.config import ConfigError
    from search.experiment import experiment_from_dict

    exp = {
        "name": "x",
        "task": "seg",
        "train": {"data": {"path": "synthetic:20:64:0"}, "model": {"arch": "fpn"}},
        "space": {"model.encoder": {"choice": ["resnet18", "tu-not_a_timm_model"]}},
        "search": {"num_samples": 2, "max_epochs": 1},
    }
    with pytest.raises(ConfigError, match="model.encoder: unknown timm encoder 'tu-not_a_timm"):
        experiment_from_dict(exp)
    exp["space"]["model.encoder"]["choice"] = ["resnet18", "tu-resnet10t"]
    assert experiment_from_dict(exp).train.model.arch == "fpn"


def test_trial_metadata_round_trips_and_reads_older_searches():
    from trainables.meta import TrialMeta, train_run_name, train_storage

    meta = TrialMeta(
        train={"task": "seg"},
        run_root="/s/x",
        train_storage=train_storage("/s/x"),
        workers=2,
        cpus_per_worker=0.9,
        gpus_per_worker=0.0,
        max_failures=1,
        keep_checkpoints=2,
        metric="best_val_jaccard",
        checkpoint_metric="val_jaccard",
        mode="max",
    )
    assert TrialMeta.from_dict(meta.to_dict()) == meta
    assert meta.train_storage == "/s/x/_train" and train_run_name("ab12") == "train-ab12"
    # The nested form searches wrote before, restored by `search resume`.
    old = {k: v for k, v in meta.to_dict().items() if k not in ("workers", "run_root")}
    old["resources"] = {"workers": 2, "cpus_per_worker": 0.9, "gpus_per_worker": 0.0}
    for key in ("cpus_per_worker", "gpus_per_worker"):
        del old[key]
    assert TrialMeta.from_dict(old) == TrialMeta(**{**meta.to_dict(), "run_root": None})


def test_a_classifier_search_says_which_masks_rank_its_trials():
    from melanoma_cli.search import ranking_masks

    cls = {"task": "cls", "train": {"data": {"path": "x"}, "input": {"mode": "crop"}}}
    gt = experiment_from_dict(base(**cls, space={}))
    assert ranking_masks(gt).startswith("ground truth (input.mask_source: gt)")
    cls["train"]["input"]["mask_source"] = "runs/seg"
    assert "predicted by the segmenter runs/seg" in ranking_masks(
        experiment_from_dict(base(**cls, space={}))
    )
    cls["train"]["input"] = {"mode": "full"}
    assert ranking_masks(experiment_from_dict(base(**cls, space={}))) is None
    searched = base(**cls, space={"input.mode": {"choice": ["full", "masked"]}})
    assert ranking_masks(experiment_from_dict(searched)).startswith("ground truth")
    assert ranking_masks(experiment_from_dict(base())) is None  # a segmenter search


def test_the_driver_makes_masks_at_each_size_a_trial_can_load_its_images_at(monkeypatch):
    import melanoma.engine.run
    from search.runner import make_segmenter_masks

    asked = []
    monkeypatch.setattr(
        melanoma.engine.run, "training_data", lambda config, *a, **k: asked.append(config)
    )
    space = {
        "input.mode": {"choice": ["full", "crop", "dual"]},
        "input.source_size": {"choice": [128, 96], "when": {"input.mode": ["crop", "dual"]}},
    }
    train = {"data": {"path": "x", "image_size": 64}, "model": {"arch": "resnet18"}}
    exp = experiment_from_dict(
        base(task="cls", train={**train, "input": {"mask_source": "runs/seg"}}, space=space)
    )
    make_segmenter_masks(exp)
    # The whole image's size, then each source size: every trial finds its masks made.
    assert [c.load_size for c in asked] == [64, 96, 128]
    assert all(c.input.mask_source == "runs/seg" for c in asked)
    asked.clear()
    make_segmenter_masks(experiment_from_dict(base(task="cls", train=train, space=space)))
    assert asked == []  # ground-truth masks: nothing to make
