"""The real Tune + Train path on CPU: a search, a worker failure, an interrupted search.

Few and tiny on purpose: every Train-in-Tune trial costs 15-20 s of start-up here.
Only Ray processes this test starts are stopped (ray.shutdown), never `ray stop`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.trial_faults import plugin_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def write_experiment(
    path: Path,
    storage: Path,
    *,
    samples: int,
    scheduler: str = "fifo",
    cpus_per_worker: float = 1.0,
) -> Path:
    exp = {
        "name": "tiny",
        "task": "seg",
        "storage": str(storage),
        "train": {
            "data": {
                "path": "synthetic:40:64:0",
                "image_size": 32,
                "batch_size": 8,
                "num_workers": 0,
                "augment": 0.0,
            },
            "model": {"arch": "fpn", "encoder": "resnet18"},
            "log_images": 2,
        },
        "space": {
            "optimizer.name": {"choice": ["sgd", "adamw"]},
            "optimizer.lr": {"loguniform": [1e-3, 1e-2]},
            "optimizer.momentum": {"uniform": [0.8, 0.95], "when": {"optimizer.name": "sgd"}},
        },
        "search": {
            "num_samples": samples,
            "max_epochs": 2,
            "searcher": {"seed": 1, "n_startup_trials": 1},
            "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 2},
        },
        # The Ray Train path: these tests are about it (the inline ones say so).
        "resources": {
            "workers": 1,
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": 0,
            "launcher": "train",
        },
    }
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def progress(storage: Path, name: str, trial_id: str) -> list[dict]:
    with open(storage / name / f"trial_{trial_id}" / "progress.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray

    cache = tmp_path_factory.mktemp("cache")
    marker = tmp_path_factory.mktemp("fault") / "failed-once"
    # Workers inherit the driver's environment: the synthetic data cache and the one-off
    # fault injection reach them this way.
    env = {"MELANOMA_CACHE": str(cache), "MELANOMA_FAIL_ONCE_MARKER": str(marker), **plugin_env()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # address="local": always a fresh instance of our own, never a stale or foreign one.
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    yield {"cache": cache, "marker": marker}
    ray.shutdown()
    for key, value in saved.items():  # leave the environment as the fixture found it
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def tune_staging_trials(name: str) -> list[Path]:
    """The trial folders Tune stages on this node and copies to storage while trials run."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return list(session.glob(f"artifacts/*/{name}/driver_artifacts/trial_*"))


def test_search_with_a_worker_failure_completes(local_ray, tmp_path: Path, capfd):
    from melanoma_cli import main
    from search.results import trial_table

    storage = tmp_path / "search"
    exp = write_experiment(tmp_path / "exp.yaml", storage, samples=2)
    assert main(["search", "seg", "--experiment", str(exp)]) == 0
    out, err = capfd.readouterr()
    assert "[search]" in out and "best trial" in out and "best checkpoint:" in out
    # The engine's runs live outside what Tune copies while they change (a vanishing
    # last.pt.tmp failed Tune's experiment-state sync): no error, no traceback.
    staged = tune_staging_trials("tiny")
    assert staged and not [t for t in staged if (t / "run").exists()]
    assert "Saving experiment state" not in err and "Traceback" not in out + err, err
    rows, _ = trial_table("tiny", str(storage))
    assert len(rows) == 2
    # Each trial kept its best epoch's validation outputs: the two are compared paired.
    assert all((Path(r["run_dir"]) / "best_val_outputs.npz").is_file() for r in rows)
    assert f"{rows[1]['trial_id']}: difference " in out and "paired 95% CI" in out
    assert all(r["state"] == "TERMINATED" and r["epochs"] == 2 for r in rows)
    assert all(0.0 <= r["best_val_jaccard"] <= 1.0 and Path(r["checkpoint"]).is_dir() for r in rows)
    # The injected failure happened once, and that trial resumed from its epoch-1 checkpoint
    # instead of starting over: every trial reports epochs 1 and 2 exactly once.
    assert local_ray["marker"].read_text().startswith("failed after epoch 1")
    for r in rows:
        assert [int(p["epoch"]) for p in progress(storage, "tiny", r["trial_id"])] == [1, 2]
    # Conditional space: momentum exists exactly for the sgd trials.
    for r in rows:
        assert (r.get("optimizer.momentum") is not None) == (r["optimizer.name"] == "sgd")
    # TensorBoard: Tune's scalars per trial, and rank 0's images in the trial's own run dir.
    trial_dir = storage / "tiny" / f"trial_{rows[0]['trial_id']}"
    assert list(trial_dir.glob("events.out.tfevents.*"))
    assert list((trial_dir / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (
        main(
            [
                "search",
                "results",
                "tiny",
                "--storage",
                str(storage),
                "--csv",
                str(tmp_path / "r.csv"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3
    # Trial 0 is the experiment's own train configuration, and the table marks it.
    # (A sampled trial would not land on lr 1e-3 exactly: this one was enqueued.)
    (default,) = [r for r in rows if r["default"]]
    assert (default["optimizer.name"], default["optimizer.lr"]) == ("adamw", 1e-3)
    assert f"{default['trial_id']} (default)" in capfd.readouterr().out
    # Starting the same search again is refused with the way out.
    assert main(["search", "seg", "--experiment", str(exp)]) == 2
    assert "melanoma search resume tiny" in capfd.readouterr().err


def interrupt_after_first_trial(args: list[str], env: dict) -> list[str]:
    """Run ``melanoma ARGS`` in its own process, as a user would, and press Ctrl-C once its
    first trial has finished; the lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "melanoma_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    lines = []
    deadline = time.time() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if " done " in line and "finished 1" in line:
                break
            assert time.time() < deadline, "".join(lines[-30:])
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return lines


def test_interrupted_search_is_finished_by_resume(local_ray, tmp_path: Path, capsys):
    import ray

    from melanoma_cli import main
    from search.results import trial_table

    storage = tmp_path / "search"
    exp = write_experiment(tmp_path / "exp.yaml", storage, samples=3)
    env = dict(os.environ)
    env.pop("MELANOMA_FAIL_ONCE_MARKER", None)
    # The search runs in its own process with its own local Ray, as a user's would.
    address = ray.get_runtime_context().gcs_address
    args = ["search", "seg", "--experiment", str(exp), "--address", address]
    lines = interrupt_after_first_trial(args, env)
    before, _ = trial_table("tiny", str(storage))
    finished = [r for r in before if r["state"] == "TERMINATED" and r["epochs"] == 2]
    assert finished, "".join(lines[-30:])
    first = finished[0]["trial_id"]

    capsys.readouterr()
    assert main(["search", "resume", "tiny", "--storage", str(storage)]) == 0
    # The progress lines of the resumed run count the trials that ended before it too.
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[search] ")]
    assert "finished 3," in lines[-1] and "pending 0" in lines[-1], lines
    after, _ = trial_table("tiny", str(storage))
    assert len(after) == 3 and all(r["state"] == "TERMINATED" and r["epochs"] == 2 for r in after)
    # The trial that had finished was not run again.
    assert [int(p["epoch"]) for p in progress(storage, "tiny", first)] == [1, 2]


def test_budget_ends_the_search_after_that_many_trial_epochs(local_ray, tmp_path: Path):
    from ray import tune

    from search.experiment import load_experiment
    from search.runner import run_search

    class Seen(tune.Callback):
        def __init__(self):
            self.results: list[tuple[str, int]] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append((trial.trial_id, int(result["epoch"])))

    path = write_experiment(tmp_path / "exp.yaml", tmp_path / "search", samples=6)
    exp = load_experiment(
        path,
        {
            "search.budget_epochs": 3,
            "search.max_concurrent": 1,
            "resources.launcher": "inline",
        },
    )
    seen = Seen()
    grid = run_search(exp, callbacks=[seen])
    # One trial at a time, 2 epochs each: the first trial finishes, the second is stopped
    # after its first epoch, and no third trial starts.
    assert len(seen.results) == 3
    assert [epoch for _, epoch in seen.results] == [1, 2, 1]
    assert len(grid) == 2
    assert sorted(r.metrics["epoch"] for r in grid) == [1, 2]
    assert all(0.0 <= r.metrics["best_val_jaccard"] <= 1.0 for r in grid)


def test_a_budget_spent_before_the_default_finishes_lets_it_finish_alone(local_ray, tmp_path: Path):
    from ray import tune

    from search.experiment import load_experiment
    from search.results import trial_table
    from search.runner import run_search

    class Seen(tune.Callback):
        def __init__(self):
            self.results: list[tuple[str, int]] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results.append((trial.trial_id, int(result["epoch"])))

    path = write_experiment(tmp_path / "exp.yaml", tmp_path / "search", samples=6)
    overrides = {"search.budget_epochs": 1, "search.max_concurrent": 1}
    exp = load_experiment(path, {**overrides, "resources.launcher": "inline"})
    seen = Seen()
    run_search(exp, callbacks=[seen])
    # The budget is spent by the default's first epoch; it trains its second (its
    # result's config is how the budget knows it), and no other trial starts.
    assert [epoch for _, epoch in seen.results] == [1, 2]
    rows, _ = trial_table("tiny", str(tmp_path / "search"))
    assert len(rows) == 1 and rows[0]["default"] and rows[0]["epochs"] == 2


def test_inline_launcher_checkpoints_and_restarts_through_tune(local_ray, tmp_path: Path, capsys):
    """One process per trial, no Ray Train: Tune keeps the checkpoints and restarts the
    trial that fails once from its epoch-1 checkpoint."""
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma_cli import main
    from search.results import trial_table

    marker = local_ray["marker"]
    marker.unlink(missing_ok=True)  # arm the one-off failure again for this search
    storage = tmp_path / "search"
    exp = write_experiment(tmp_path / "exp.yaml", storage, samples=2)
    data = yaml.safe_load(exp.read_text())
    data["resources"]["launcher"] = "inline"
    exp.write_text(yaml.safe_dump(data, sort_keys=False))
    resume_copies = set(Path(tempfile.gettempdir()).glob("melanoma-resume-*"))
    assert main(["search", "seg", "--experiment", str(exp)]) == 0
    assert marker.read_text().startswith("failed after epoch 1")
    # The restarted trial's local copy of its checkpoint is gone with the trial.
    assert set(Path(tempfile.gettempdir()).glob("melanoma-resume-*")) == resume_copies
    rows, _ = trial_table("tiny", str(storage))
    assert len(rows) == 2
    for r in rows:
        assert r["state"] == "TERMINATED" and r["epochs"] == 2
        assert r["ci_low"] <= r["best_val_jaccard"] <= r["ci_high"]  # shown by `results`
        assert [int(p["epoch"]) for p in progress(storage, "tiny", r["trial_id"])] == [1, 2]
        # The checkpoint of the best epoch, in the trial's own directory, loads as the
        # engine's checkpoint.
        checkpoint = Path(r["checkpoint"])
        assert checkpoint.parent == storage / "tiny" / f"trial_{r['trial_id']}"
        # Each trial's own run (TensorBoard images, engine checkpoints) in its own directory.
        assert (checkpoint.parent / "run" / "tensorboard").is_dir()
        assert not list((checkpoint.parent / "run" / "checkpoints").glob("staged-*"))
        state = load_checkpoint(checkpoint)
        assert state["epoch"] == r["best_epoch"]


def test_relative_paths_are_the_callers_and_a_search_with_no_finished_trial_fails(
    local_ray, tmp_path: Path, monkeypatch, capsys
):
    """A relative data path means the directory the command ran from, for an inline and a
    Ray Train trial (each runs in a directory of its own); a search whose every trial
    errored exits non-zero."""
    from melanoma.data.synth import SynthConfig, write_synthetic
    from melanoma_cli import main

    local_ray["marker"].write_text("disarmed: no injected failure in the first two searches")
    work = tmp_path / "work"
    write_synthetic(work / "data", SynthConfig(n=40, size=64, seed=0))
    monkeypatch.chdir(work)
    exp = write_experiment(work / "exp.yaml", Path("search"), samples=1)
    data = yaml.safe_load(exp.read_text())
    data["train"]["data"]["path"] = "data"  # relative, as in the shipped YAMLs
    data["search"].update(max_epochs=1, max_failures=0)
    for launcher in ("inline", "train"):
        data.update(name=f"relative_{launcher}")
        data["resources"]["launcher"] = launcher
        exp.write_text(yaml.safe_dump(data, sort_keys=False))
        assert main(["search", "seg", "--experiment", "exp.yaml"]) == 0, launcher
        out = capsys.readouterr().out
        assert "best checkpoint:" in out, out
        (config,) = (work / "search" / f"relative_{launcher}").glob("trial_*/run/config.yaml")
        assert yaml.safe_load(config.read_text())["data"]["path"] == str(work / "data")

    local_ray["marker"].unlink()  # armed: the one trial fails at epoch 2 and may not retry
    data.update(name="all_errored")
    data["search"]["max_epochs"] = 2
    data["resources"]["launcher"] = "inline"
    exp.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["search", "seg", "--experiment", "exp.yaml"]) == 1
    assert "no trial of search 'all_errored' finished" in capsys.readouterr().err


def test_cross_validation_runs_folds_as_trials_and_resumes_after_a_killed_driver(
    local_ray, tmp_path: Path, capsys
):
    """`melanoma cv` of two candidates x 3 folds is one Tune run of six trials; a driver
    interrupted part-way is resumed by the same command without retraining finished folds,
    and a rerun with another fold count is refused."""
    import ray

    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.loop import Runtime, fit
    from melanoma_cli import main

    local_ray["marker"].write_text("disarmed: no injected failure in this run")
    base = yaml.safe_load(
        write_experiment(tmp_path / "e.yaml", tmp_path / "s", samples=1).read_text()
    )
    for name, lr in (("lr_low", 1e-3), ("lr_high", 5e-3)):
        config = {**base["train"], "task": "seg", "epochs": 1, "out": str(tmp_path / name)}
        config["optimizer"] = {"lr": lr}
        fit(TrainConfig.from_dict(config), Runtime(progress=False))
    out = tmp_path / "cv"
    args = ["cv", "seg", str(tmp_path / "lr_low"), str(tmp_path / "lr_high"), "--folds", "3"]
    args += ["--epochs", "2", "--out", str(out), "--address", ray.get_runtime_context().gcs_address]
    lines = interrupt_after_first_trial(args, dict(os.environ))

    def finished() -> dict[Path, int]:
        """The fold runs of the trials Tune recorded as finished, with their last.pt's time."""
        from ray.tune import ExperimentAnalysis

        trials = ExperimentAnalysis(str(out / "_tune" / "cv")).trials
        runs = [
            out / t.config["__candidate__"] / f"fold{t.config['data.fold']}"
            for t in trials
            if t.status == "TERMINATED"
        ]
        last = [run / "checkpoints" / "last.pt" for run in runs]
        assert all(load_checkpoint(p)["epoch"] == 2 for p in last)
        return {p: p.stat().st_mtime_ns for p in last}

    before = finished()
    assert 1 <= len(before) < 6, "".join(lines[-30:])
    assert not (out / "lr_low" / "cv.json").exists()  # interrupted before scoring

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "6 folds trained" in printed
    after = finished()
    assert len(after) == 6 and all(after[p] == before[p] for p in before)  # not retrained
    for label in ("lr_low", "lr_high"):
        summary = json.loads((out / label / "cv.json").read_text())
        assert summary["folds"] == 3 and len(summary["runs"]) == 3
        for k, run in enumerate(summary["runs"]):
            config = yaml.safe_load((Path(run) / "config.yaml").read_text())
            assert (config["data"]["folds"], config["data"]["fold"]) == (3, k)
    assert re.search(r"^lr_(low|high) minus each other candidate", printed, re.M)
    # The folds are trials of a Tune run that `search results` reads as any search.
    assert main(["search", "results", "cv", "--storage", str(out / "_tune"), "--json"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert len(trials) == 6 and {t["state"] for t in trials} == {"TERMINATED"}

    assert main([*args[:5], "2", *args[6:]]) == 2
    assert "folds: 3 before, 2 now" in capsys.readouterr().err


def test_classifier_search_on_a_segmenter_searchs_masks_makes_them_once(
    local_ray, tmp_path, capsys
):
    """`input.mask_source: search:SEG` in a classifier search: the driver resolves it to
    the segmenter search's best trial and trains its fold segmenters once, before the
    first trial; every trial reuses those masks, and the results say they ranked it."""
    import json

    from melanoma.engine.config import TrainConfig
    from melanoma_cli import main
    from search.results import best_checkpoints
    from search.runner import resolve_mask_source

    local_ray["marker"].write_text("disarmed: no injected failure in this search")
    exp_path = write_experiment(tmp_path / "exp.yaml", tmp_path / "search", samples=1)
    exp = yaml.safe_load(exp_path.read_text())
    exp.update(name="seg")
    exp["space"] = {"optimizer.lr": {"loguniform": [1e-3, 1e-2]}}
    exp["search"]["max_epochs"] = 1
    exp["resources"]["launcher"] = "inline"
    exp_path.write_text(yaml.safe_dump(exp, sort_keys=False))
    assert main(["search", "seg", "--experiment", str(exp_path)]) == 0
    ((seg_best, _, _),) = best_checkpoints("seg", "seg", 1, str(tmp_path / "search"))

    exp.update(name="oof_cls", task="cls")
    exp["train"]["model"] = {"arch": "resnet18"}
    exp["train"]["input"] = {"mode": "crop", "mask_source": "search:seg", "oof_folds": 2}
    exp["space"] = {"input.crop_margin": {"uniform": [0.05, 0.4]}}
    exp["search"]["num_samples"] = 2
    exp_path.write_text(yaml.safe_dump(exp, sort_keys=False))
    capsys.readouterr()
    assert main(["search", "cls", "--experiment", str(exp_path)]) == 0
    printed = capsys.readouterr().out
    assert "[search] masks of segmenter search seg: its best trial seg/" in printed
    assert f"[search] out-of-fold masks from {seg_best}" in printed
    # `search results` (printed at the end) says which masks ranked the trials.
    assert f"masks that ranked the mask-using trials: predicted by the segmenter {seg_best}" in (
        printed
    )
    # The search records the segmenter it resolved: a resume uses that one.
    recorded = yaml.safe_load((tmp_path / "search" / "oof_cls" / "experiment.yaml").read_text())
    assert recorded["train"]["input"]["mask_source"] == str(seg_best)
    copies = sorted((tmp_path / "search" / "oof_cls").glob("trial_*/run/oof_masks.json"))
    assert len(copies) == 2
    folds = {json.loads(c.read_text())["folds_dir"] for c in copies}
    assert len(folds) == 1  # one set of fold segmenters for the whole search
    folds_dir = Path(folds.pop())
    assert folds_dir.parent == local_ray["cache"] / "oof"
    made = max((folds_dir / f"fold{k}" / "checkpoints" / "last.pt").stat().st_mtime for k in (0, 1))
    for copy in copies:  # trained before any trial began
        assert (copy.parent / "config.yaml").stat().st_mtime > made

    # A classifier search is no source of masks; a missing search is named.
    cls_config = TrainConfig.from_dict({**exp["train"], "task": "cls"})
    storage = str(tmp_path / "search")
    with pytest.raises(ValueError, match="search:oof_cls: search 'oof_cls' searched cls models"):
        resolve_mask_source(
            cls_config.with_overrides({"input.mask_source": "search:oof_cls"}), storage
        )
    with pytest.raises(
        FileNotFoundError, match="names the segmenter search 'nope', which is not in"
    ):
        resolve_mask_source(
            cls_config.with_overrides({"input.mask_source": "search:nope"}), storage
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(argv: list[str], url: str, timeout: float = 90.0):
    """Start a server process; return (process, first JSON answer of ``url``), waiting at
    most ``timeout`` seconds for it to answer."""
    import json
    import urllib.request

    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return proc, json.loads(r.read())
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited: {proc.stderr.read()[-2000:]}") from None
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{argv} did not answer {url} in {timeout} s") from None
            time.sleep(0.5)


def get_json(url: str, body: dict | None = None):
    import json
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_the_dashboards_users_open_read_a_finished_search(local_ray, tmp_path: Path):
    """optuna-dashboard on the search's journal (COMPLETE and PRUNED trials with their
    per-epoch values) and TensorBoard on its folder (one run per trial, val scalars,
    mask overlays, hparams), both as real servers on loopback ports."""
    import shutil

    from melanoma_cli import main

    local_ray["marker"].write_text("disarmed: no injected failure in this search")
    storage = tmp_path / "search"
    exp = write_experiment(tmp_path / "exp.yaml", storage, samples=4, scheduler="asha")
    data = yaml.safe_load(exp.read_text())
    data["name"] = "dash"
    data["search"]["max_epochs"] = 3
    data["search"]["max_concurrent"] = 2
    data["resources"]["launcher"] = "inline"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data["tracking"] = {"mlflow": mlflow_uri}
    exp.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["search", "seg", "--experiment", str(exp)]) == 0
    journal = storage / "dash" / "optuna.jsonl"
    assert journal.is_file()
    check_mlflow_runs(mlflow_uri, "dash", storage)

    port = free_port()
    dashboard = shutil.which("optuna-dashboard")
    assert dashboard, "optuna-dashboard is a dev dependency: pip install -e '.[dev]'"
    argv = [dashboard, str(journal), "--host", "127.0.0.1", "--port", str(port)]
    proc, studies = serve(argv, f"http://127.0.0.1:{port}/api/studies")
    try:
        study = next(s for s in studies["study_summaries"] if s["study_name"] == "dash")
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
        states = [t["state"] for t in detail["trials"]]
        assert len(states) == 4 and "Complete" in states and "Pruned" in states
        for trial in detail["trials"]:
            steps = [v["step"] for v in trial["intermediate_values"]]
            assert steps == list(range(1, len(steps) + 1)) and steps  # one value per epoch
            assert len(steps) == (3 if trial["state"] == "Complete" else len(steps))
    finally:
        proc.kill()
        proc.wait()

    port = free_port()
    argv = [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(storage / "dash"),
        "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"
    proc, runs = serve(argv, f"{base}/runs")
    try:
        deadline = time.monotonic() + 60
        while len(runs) < 4 and time.monotonic() < deadline:  # the first load may be partial
            time.sleep(1)
            runs = get_json(f"{base}/runs")
        trial_runs = sorted(r for r in runs if r.endswith("run/tensorboard"))
        assert len(trial_runs) == 4, runs  # one run per trial
        scalars = get_json(f"{base}/plugin/scalars/tags")
        images = get_json(f"{base}/plugin/images/tags")
        for run in trial_runs:
            assert {"val/jaccard", "val/loss", "train/loss"} <= set(scalars[run])
            assert "val/overlays" in images[run]
        hparams = get_json(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in hparams["hparamInfos"]}
        assert {"optimizer.name", "optimizer.lr"} <= names
    finally:
        proc.kill()
        proc.wait()


def check_mlflow_runs(uri: str, name: str, storage: Path) -> None:
    """MLflow holds the search as one run and every trial as a run nested under it, with
    its sampled parameters, one value per epoch and its best checkpoint as an artifact."""
    from mlflow import MlflowClient

    from search.results import trial_table

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.melanoma_role = 'search'"
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.num_samples"] == "4"
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    rows, _ = trial_table(name, str(storage))
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(r["trial_id"] for r in rows)
    for child, row in zip(
        sorted(children, key=lambda c: c.data.tags["trial_id"]),
        sorted(rows, key=lambda r: r["trial_id"]),
        strict=True,
    ):
        assert child.info.status == "FINISHED"
        # ASHA-stopped trials are FINISHED to MLflow: the tag says what `search results` says.
        assert child.data.tags["melanoma_state"] == row["state"]
        assert child.data.params["optimizer.name"] == row["optimizer.name"]
        assert float(child.data.params["optimizer.lr"]) == pytest.approx(row["optimizer.lr"])
        history = client.get_metric_history(child.info.run_id, "val_jaccard")
        assert [m.step for m in history] == list(range(1, row["epochs"] + 1))
        best = max(m.value for m in history)
        assert best == pytest.approx(row["best_val_jaccard"])
        artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "best_checkpoint")]
        assert artifacts == ["best_checkpoint/last.pt"]
        # Beside the SQLite file, not in ./mlruns of whatever directory the test ran from.
        store = Path(uri[len("sqlite:///") :]).parent
        assert child.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
