"""Bad inputs at the search, cascade and predict boundaries, each with its message."""

from __future__ import annotations

from pathlib import Path

import pytest

from melanoma_cli import main
from search.experiment import experiment_from_dict


def experiment(**resources):
    return experiment_from_dict(
        {
            "name": "t",
            "task": "seg",
            "train": {
                "data": {"path": "x", "image_size": 64},
                "model": {"arch": "fpn", "encoder": "resnet18"},
            },
            "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
            "resources": resources,
        }
    )


def test_resources_are_checked_against_the_cluster(monkeypatch):
    import ray

    from search.runner import plan_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ValueError, match="gpus_per_worker is 1.0 but the cluster has no GPU"):
        plan_resources(experiment(gpus_per_worker=1))
    with pytest.raises(ValueError, match="one trial needs 4.05 CPUs .* but the cluster has 2"):
        plan_resources(experiment(workers=2, cpus_per_worker=2))
    # A Ray Train trial also holds its driver's 0.05 CPU: 3 of them fit 2 CPUs.
    plan = plan_resources(experiment(cpus_per_worker=0.5, gpus_per_worker="auto", launcher="train"))
    assert plan.gpus_per_worker == 0 and plan.max_concurrent == 3
    # One worker per trial: inline by default (no driver to hold), 4 at a time.
    plan = plan_resources(experiment(cpus_per_worker=0.5))
    assert plan.launcher == "inline" and plan.max_concurrent == 4
    assert plan_resources(experiment(workers=2, cpus_per_worker=0.5)).launcher == "train"
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 4.0})
    plan = plan_resources(experiment(gpus_per_worker=0.5))  # fractional GPUs: 8 trials at once
    assert plan.max_concurrent == 8


def test_unknown_search_names(tmp_path: Path, capsys):
    assert main(["search", "results", "nope", "--storage", str(tmp_path)]) == 2
    assert "no search named 'nope'" in capsys.readouterr().err
    assert main(["search", "resume", "nope", "--storage", str(tmp_path)]) == 2
    assert "no search named 'nope'" in capsys.readouterr().err


def test_search_task_must_match_the_experiment(capsys):
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    assert main(["search", "cls", "--experiment", str(experiments / "quickstart.yaml")]) == 2
    assert "is a 'seg' experiment but `search cls` was asked for" in capsys.readouterr().err


def test_cascade_and_predict_refuse_what_they_cannot_use(tmp_path: Path, capsys):
    assert main(["cascade", "evaluate", str(tmp_path)]) == 2
    assert "melanoma cascade build" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "cascade.pt does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "not an exported cascade" in capsys.readouterr().err
    assert main(["predict", str(tmp_path)]) == 2
    assert "got only" in capsys.readouterr().err
    # The old spelling still reaches the same check, with its deprecation line.
    assert main(["predict", str(tmp_path), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an exported cascade" in err and "is deprecated" in err
    assert "use `melanoma predict MODEL IMAGES...`" in err
    assert (
        main(
            ["cascade", "build", "--seg", "a", "--cls", "b", "--out", str(tmp_path), "--top-k", "0"]
        )
        == 2
    )
    assert "--top-k must be at least 1" in capsys.readouterr().err


def test_search_takes_set_overrides_like_train(monkeypatch, capsys):
    import search.runner

    ran = []
    monkeypatch.setattr(search.runner, "run_search", lambda exp, **kw: ran.append(exp))
    monkeypatch.setattr("melanoma_cli.search._print_results", lambda *a, **kw: 0)
    args = ["search", "seg", "--experiment", "quickstart"]
    sets = ["--set", "train.optimizer.lr=0.05", "--set", "search.max_epochs=7"]
    assert main([*args, *sets]) == 0
    assert ran[0].train.optimizer.lr == 0.05 and ran[0].train.epochs == 7
    assert main([*args, "--set", "optimizer.lr=0.1"]) == 2
    assert "unknown section(s) ['optimizer']" in capsys.readouterr().err
    assert main([*args, "--set", "train.optimizer.lr"]) == 2
    assert (
        "--set expects KEY=VALUE (for example train.optimizer.lr=0.01)" in capsys.readouterr().err
    )
    assert len(ran) == 1


def test_mlflow_tracking_without_mlflow_names_the_install(monkeypatch, tmp_path: Path):
    import sys

    from melanoma.config import ConfigError
    from search.runner import run_search

    with pytest.raises(
        ConfigError,
        match=r"unknown config key\(s\) \['tracking.wandb'\]; allowed under tracking: \['mlflow'\]",
    ):
        experiment_from_dict(
            {**experiment().to_dict(), "tracking": {"mlflow": "sqlite:///x.db", "wandb": 1}}
        )
    exp = experiment_from_dict(
        {**experiment().to_dict(), "tracking": {"mlflow": f"sqlite:///{tmp_path}/m.db"}}
    )
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(
        ImportError, match=r'MLflow is not installed; pip install -e "\.\[mlflow\]"'
    ):
        run_search(exp, storage=str(tmp_path / "search"))
    assert not (tmp_path / "search").exists()  # refused before anything started


def test_a_search_refuses_a_missing_data_path_before_ray_starts(tmp_path: Path, capsys):
    import ray

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    args = ["search", "cls", "--experiment", str(experiments / "isic2017_cpu_cls.yaml")]
    missing = tmp_path / "nowhere"
    assert main([*args, "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"data.path {missing} does not exist" in err and "--data" in err
    assert not ray.is_initialized()
    mask_source = ["--set", f"train.input.mask_source={tmp_path / 'no-run'}"]
    assert main([*args, "--data", str(tmp_path), *mask_source]) == 2
    assert f"input.mask_source {tmp_path / 'no-run'} does not exist" in capsys.readouterr().err


def test_train_resume_needs_the_run_to_continue(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "cls", "--data", "synthetic:24:64:0", "--epochs", "1", "--resume"]
    assert main(args) == 2
    assert "--resume continues the run in --out, but no --out was given" in capsys.readouterr().err
    assert main([*args, "--out", "runs/empty"]) == 2
    assert "runs/empty holds no run to continue" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    import melanoma_cli.data as data_stage

    def broken(args):
        raise RuntimeError("a bug, not a user's mistake")

    def refused(args):
        raise ValueError("bad input: what to fix")

    monkeypatch.setattr(data_stage, "_cmd_synth", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["data", "synth", "--out", "x"])
    monkeypatch.setattr(data_stage, "_cmd_synth", refused)
    assert main(["data", "synth", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "error: bad input: what to fix" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="what to fix"):
        main(["--debug", "data", "synth", "--out", "x"])


def test_a_segmenter_search_as_mask_source_is_for_searches(tmp_path: Path, monkeypatch, capsys):
    """`input.mask_source: search:NAME` names a segmenter search, which `melanoma search`
    resolves; a bare prefix is refused, and a single run is told how to get a checkpoint."""
    from melanoma.config import ConfigError
    from melanoma.engine.config import InputConfig, TrainConfig

    with pytest.raises(ConfigError, match="'search:' names no search; write search:NAME"):
        InputConfig(mask_source="search:")
    config = TrainConfig(task="cls", input=InputConfig(mode="crop", mask_source="search:seg"))
    assert config.input.mask_search == "seg" and InputConfig().mask_search is None
    assert "input.mask_source" not in config.path_values()  # not a path to check
    monkeypatch.chdir(tmp_path)
    args = ["train", "cls", "--data", "synthetic:24:64:0", "--epochs", "1"]
    assert main([*args, "--input-mode", "crop", "--mask-source", "search:seg"]) == 2
    err = capsys.readouterr().err
    assert "input.mask_source is 'search:seg', a segmenter search" in err
    assert "`melanoma search results seg` prints the best checkpoint" in err
