"""CUDA paths: AMP, channels_last and torch.compile train, and their checkpoints serve on
the CPU. Skipped on machines without a GPU (CI here has none); run with ``-m gpu``."""

from __future__ import annotations

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
    with torch.no_grad():
        cpu = model.eval()(x)
        gpu = model.cuda()(x.cuda()).cpu()
    cpu = cpu if isinstance(cpu, torch.Tensor) else cpu[0]
    gpu = gpu if isinstance(gpu, torch.Tensor) else gpu[0]
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)
