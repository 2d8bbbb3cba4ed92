"""CUDA paths: AMP, channels_last and torch.compile train, and their checkpoints serve on
the CPU. Skipped on machines without a GPU (CI here has none); run with ``-m gpu``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.engine import Runtime, TrainConfig, fit, load_checkpoint
from melanoma.engine.tasks import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@contextlib.contextmanager
def full_fp32_on_cuda():
    """cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later, which
    moves a segmenter's logits by about 1e-3: compare against the CPU in IEEE fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu-data")
    write_synthetic(root, SynthConfig(n=48, size=64, seed=2, prevalence=0.4))
    return root


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_cuda_training_with_amp_channels_last(data, tmp_path, task, compile_model):
    config = TrainConfig.from_dict(
        {
            "task": task,
            "epochs": 2,
            "device": "cuda",
            "amp": True,
            "channels_last": True,
            "compile": compile_model,
            "out": str(tmp_path / "run"),
            "data": {"path": str(data), "image_size": 64, "batch_size": 8, "num_workers": 2},
            "model": {"arch": "fpn", "encoder": "resnet18"}
            if task == "seg"
            else {"arch": "resnet18"},
        }
    )
    result = fit(config, Runtime(progress=False))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    # The checkpoint holds plain fp32 weights that rebuild the model on the CPU.
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    assert floats and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in floats)
    model = build_model(TrainConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad(), full_fp32_on_cuda():
        cpu = model.eval()(x)
        gpu = model.cuda()(x.cuda()).cpu()
    cpu = cpu if isinstance(cpu, torch.Tensor) else cpu[0]
    gpu = gpu if isinstance(gpu, torch.Tensor) else gpu[0]
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ddp_trial_on_two_gpus(tmp_path, monkeypatch):
    """The two-worker trial of tests/test_search_ddp.py on two GPUs (NCCL, AMP): each
    rank trains on its own half of every epoch, and Tune hears each epoch once."""
    import csv

    import ray
    import yaml

    from melanoma.data.splits import Splits
    from melanoma_cli import main
    from tests.test_search_ddp import EPOCHS, ddp_experiment, read_trace
    from tests.trial_faults import plugin_env

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MELANOMA_TRACE_SAMPLES", str(tmp_path / "trace"))
    for key, value in plugin_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MELANOMA_FAIL_ONCE_MARKER", raising=False)
    (tmp_path / "trace").mkdir()
    path = ddp_experiment(tmp_path / "exp.yaml", tmp_path / "search")
    exp = yaml.safe_load(path.read_text())
    exp["resources"].update(cpus_per_worker=1, gpus_per_worker=1)
    exp["train"]["amp"] = True
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    ray.init(address="local", num_gpus=2, log_to_driver=False)
    try:
        assert main(["search", "cls", "--experiment", str(path)]) == 0
    finally:
        ray.shutdown()
    (trial,) = (tmp_path / "search" / "ddp").glob("trial_*")
    with open(trial / "progress.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert {r["world_size"] for r in rows} == {"2"}
    train = sorted(e.sample.id for e in Splits.load(trial / "run" / "splits.json").entries["train"])
    attempts = read_trace(tmp_path / "trace")
    assert sorted(a["rank"] for a in attempts) == [0, 1]
    for epoch in range(1, EPOCHS + 1):
        halves = [a["epochs"][epoch] for a in attempts]
        assert sorted(halves[0] + halves[1]) == train and not set(halves[0]) & set(halves[1])
