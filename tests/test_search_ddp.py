"""One trial with two Ray Train workers (DDP over gloo on CPU), through `melanoma search`.

The trial's rank 1 is killed in the middle of epoch 2; every rank writes the ids of the
images it trains on. Checked: the two ranks share each epoch's training images, every
image exactly once; the group comes back from the epoch-1 checkpoint; the reported
validation figures are those of the whole validation split; rank 0's checkpoint loads
with weights_only and resumes; and a one-process run at the same global batch agrees
with the two-worker trial on the first epoch's loss.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.trial_faults import plugin_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DATA = "synthetic:64:64:0"  # 44 training images (checked below), 10 validation
PER_WORKER_BATCH = 11  # 22 images per rank: two full batches, no padding, nothing dropped
EPOCHS = 3
# Measured: 1.2% apart (BatchNorm normalises each rank's 11 images, not the global 22).
FIRST_EPOCH_LOSS_RTOL = 0.05


def ddp_experiment(path: Path, storage: Path) -> Path:
    exp = {
        "name": "ddp",
        "task": "cls",
        "storage": str(storage),
        "train": {
            "data": {
                "path": DATA,
                "image_size": 64,
                "batch_size": PER_WORKER_BATCH,
                "num_workers": 0,
                "augment": 0.0,
            },
            "model": {"arch": "resnet18"},
            "input": {"mode": "masked"},
            "optimizer": {"name": "adamw", "lr": 3e-4},
            "log_images": 2,
        },
        "space": {"optimizer.weight_decay": {"choice": [0.01]}},
        "search": {"num_samples": 1, "max_epochs": EPOCHS, "scheduler": {"name": "fifo"}},
        # 2 x 0.9 CPU + the trial's 0.05 CPU driver fit this 2-core machine.
        "resources": {"workers": 2, "cpus_per_worker": 0.9, "gpus_per_worker": 0},
    }
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ddp_search(tmp_path_factory):
    """Run the search once, with the fault and the sample trace switched on."""
    import ray

    from melanoma_cli import main

    root = tmp_path_factory.mktemp("ddp")
    trace = root / "trace"
    trace.mkdir()
    env = {
        "MELANOMA_CACHE": str(root / "cache"),
        "MELANOMA_FAIL_ONCE_MARKER": str(root / "failed-once"),
        "MELANOMA_FAIL_ONCE_RANK": "1",
        "MELANOMA_TRACE_SAMPLES": str(trace),
        **plugin_env(),  # the fault and the trace are a test plug-in of the trials
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the Ray workers inherit the driver's environment
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        storage = root / "search"
        exp = ddp_experiment(root / "exp.yaml", storage)
        assert main(["search", "cls", "--experiment", str(exp)]) == 0
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    (trial_dir,) = (storage / "ddp").glob("trial_*")
    with open(trial_dir / "progress.csv") as fh:
        progress = list(csv.DictReader(fh))
    return {
        "root": root,
        "storage": storage,
        "run": trial_dir / "run",
        "progress": progress,
        "trace": trace,
        "marker": Path(env["MELANOMA_FAIL_ONCE_MARKER"]),
        "cache": Path(env["MELANOMA_CACHE"]),
    }


def read_trace(trace: Path) -> list[dict]:
    """One record per worker process: its rank, and the ids it trained on per epoch."""
    attempts = []
    for path in sorted(trace.glob("rank*-*.jsonl")):
        epochs: dict[int, list[str]] = defaultdict(list)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            epochs[record["epoch"]].extend(record["ids"])
        rank = int(path.name[len("rank") :].split("-")[0])
        attempts.append({"rank": rank, "epochs": dict(epochs), "first": min(epochs)})
    return attempts


def test_two_worker_trial_reports_once_per_epoch_and_comes_back_from_a_lost_worker(ddp_search):
    from search.results import trial_table

    assert ddp_search["marker"].read_text().startswith("failed on rank 1 in the middle of epoch 2")
    # Epoch 1 was reported before the failure, epochs 2-3 by the restarted group: each once.
    assert [int(r["epoch"]) for r in ddp_search["progress"]] == list(range(1, EPOCHS + 1))
    assert {r["world_size"] for r in ddp_search["progress"]} == {"2"}
    rows, _ = trial_table("ddp", str(ddp_search["storage"]))
    (row,) = rows
    assert row["state"] == "TERMINATED" and row["epochs"] == EPOCHS
    assert row["world_size"] == 2 and row["nodes"] == 1


def test_each_training_image_is_seen_exactly_once_per_epoch_across_the_ranks(ddp_search):
    from melanoma.data.splits import Splits

    train_ids = sorted(
        e.sample.id for e in Splits.load(ddp_search["run"] / "splits.json").entries["train"]
    )
    assert len(train_ids) == 2 * 2 * PER_WORKER_BATCH  # the premise of "nothing padded or dropped"
    attempts = read_trace(ddp_search["trace"])
    first = [a for a in attempts if a["first"] == 1]
    restarted = [a for a in attempts if a["first"] > 1]
    # Two processes started at epoch 1; after the failure two more started at epoch 2, from
    # the epoch-1 checkpoint rather than from scratch.
    assert sorted(a["rank"] for a in first) == [0, 1]
    assert sorted(a["rank"] for a in restarted) == [0, 1]
    assert {a["first"] for a in restarted} == {2}
    complete = [(first, 1)] + [(restarted, e) for e in range(2, EPOCHS + 1)]
    for group, epoch in complete:
        by_rank = {a["rank"]: a["epochs"][epoch] for a in group}
        assert len(by_rank[0]) == len(by_rank[1]) == 2 * PER_WORKER_BATCH
        assert not set(by_rank[0]) & set(by_rank[1]), f"epoch {epoch}: an image on both ranks"
        assert sorted(by_rank[0] + by_rank[1]) == train_ids, f"epoch {epoch}"
    # The epoch the failure interrupted: rank 1 got through one batch of it, not two.
    (lost,) = [a for a in first if a["rank"] == 1]
    assert len(lost["epochs"].get(2, [])) == PER_WORKER_BATCH


def test_reported_validation_is_the_whole_split_as_one_process_scores_it(ddp_search, monkeypatch):
    from melanoma.data.splits import Splits
    from melanoma.engine.evaluate import evaluate_run

    monkeypatch.setenv("MELANOMA_CACHE", str(ddp_search["cache"]))
    last = ddp_search["progress"][-1]
    val = Splits.load(ddp_search["run"] / "splits.json").entries["val"]
    assert int(float(last["val_n"])) == len(val) == 10
    # The engine's last.pt is rank 0's checkpoint of the last epoch.
    single = evaluate_run(
        ddp_search["run"] / "checkpoints" / "last.pt", task="cls", split="val", device="cpu"
    )
    assert single["epoch"] == EPOCHS
    compared = [
        k
        for k, v in single.items()
        if isinstance(v, float) and last.get(f"val_{k}") not in (None, "")
    ]
    assert {"auc", "average_precision", "balanced_accuracy"} <= set(compared)
    for key in compared:
        assert single[key] == pytest.approx(float(last[f"val_{key}"]), abs=1e-6), key


def test_rank_zero_checkpoint_loads_weights_only_and_resumes(ddp_search, monkeypatch, tmp_path):
    import torch

    from melanoma.engine import Runtime, TrainConfig, fit
    from search.results import trial_table

    monkeypatch.setenv("MELANOMA_CACHE", str(ddp_search["cache"]))
    rows, _ = trial_table("ddp", str(ddp_search["storage"]))
    checkpoint = Path(rows[0]["checkpoint"]) / "last.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert not [k for k in state["model"] if k.startswith("module.")]  # no DDP wrapper inside
    config = TrainConfig.from_dict(state["config"]).with_overrides(
        {"epochs": EPOCHS + 1, "out": str(tmp_path / "resumed")}
    )
    result = fit(config, Runtime(progress=False), resume=checkpoint)
    done = state["epoch"]  # the best epoch's checkpoint: any of 1..EPOCHS
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 2))
    assert result.history[:done] == state["history"]  # continued, not started over


def test_one_process_at_the_same_global_batch_agrees_on_the_first_epoch(
    ddp_search, monkeypatch, tmp_path
):
    from melanoma.engine import Runtime, TrainConfig, fit

    monkeypatch.setenv("MELANOMA_CACHE", str(ddp_search["cache"]))
    config = TrainConfig.from_dict(yaml.safe_load((ddp_search["run"] / "config.yaml").read_text()))
    one = config.with_overrides(
        {"data.batch_size": 2 * PER_WORKER_BATCH, "epochs": EPOCHS, "out": str(tmp_path / "one")}
    )
    result = fit(one, Runtime(progress=False))
    two_workers = float(ddp_search["progress"][0]["train_loss"])
    one_worker = result.history[0]["train_loss"]
    print(f"first-epoch loss: 1 worker {one_worker:.5f}, 2 workers {two_workers:.5f}")
    assert one_worker == pytest.approx(two_workers, rel=FIRST_EPOCH_LOSS_RTOL)
