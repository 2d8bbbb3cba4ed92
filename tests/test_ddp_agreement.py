"""Two DDP ranks (gloo, two local processes, no Ray) agree on what would otherwise split
them: the early-stopping decision, and who trains the out-of-fold segmenters. Either
disagreement leaves one rank waiting in a collective the other never joins: each test
fails on a deadline instead of hanging."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from melanoma.engine import Runtime, TrainConfig, fit

pytestmark = pytest.mark.slow

DEADLINE_S = 240


def _tiny(task: str, data: Path, out: Path, **more) -> dict:
    return {
        "task": task,
        "epochs": 1,
        "log_images": 0,
        "out": str(out),
        "data": {"path": str(data), "image_size": 64, "batch_size": 4, "num_workers": 0},
        "model": {"arch": "fpn", "encoder": "resnet18"} if task == "seg" else {"arch": "resnet18"},
        **more,
    }


def _init(rank: int, init_file: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)


def _ddp_runtime(rank: int) -> Runtime:
    from torch.nn.parallel import DistributedDataParallel

    return Runtime(rank=rank, world_size=2, wrap_model=DistributedDataParallel, progress=False)


def _early_stopping_rank(rank: int, init_file: str, config: dict, result: str) -> None:
    import melanoma.engine.loop as loop

    _init(rank, init_file)
    epochs = []

    def validation(model, loader, task, criterion, device, config, keep=0):
        # Rank 0 improves every epoch; rank 1 would see no improvement after its first.
        epochs.append(1)
        value = 0.5 + 0.1 * len(epochs) if rank == 0 else 0.5
        return {"jaccard": value, "loss": 1.0}, {}

    loop.validate = validation
    done = fit(TrainConfig.from_dict(config), _ddp_runtime(rank))
    Path(result, f"rank{rank}.json").write_text(json.dumps(len(done.history)))


def _oof_rank(rank: int, init_file: str, config: dict, result: str) -> None:
    import torch.distributed as dist

    from melanoma.engine.run import train

    _init(rank, init_file)
    done = train(TrainConfig.from_dict(config), _ddp_runtime(rank))
    dist.barrier()
    Path(result, f"rank{rank}.json").write_text(json.dumps(len(done.history)))


def _run_two_ranks(target, config: dict, tmp_path: Path) -> list[int]:
    """Epochs each rank trained; fails when they are not both back by the deadline."""
    ctx = multiprocessing.get_context("spawn")
    result = tmp_path / "result"
    result.mkdir()
    args = (str(tmp_path / "rendezvous"), config, str(result))
    procs = [ctx.Process(target=target, args=(rank, *args)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(DEADLINE_S)
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still waiting after {DEADLINE_S} s: a collective mismatch"
    assert [p.exitcode for p in procs] == [0, 0]
    return [json.loads((result / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_stop_early_together_on_rank_zeros_figure(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "machine"))
    config = _tiny("seg", synth_root, tmp_path / "run", epochs=3, early_stopping=1)
    # Rank 1's own figure would have stopped it after epoch 2 while rank 0 trained on.
    assert _run_two_ranks(_early_stopping_rank, config, tmp_path) == [3, 3]


def test_out_of_fold_masks_are_made_by_one_process_per_node(synth_root, tmp_path, monkeypatch):
    """A DDP classifier on a segmenter's out-of-fold masks with nothing cached: one rank
    trains the fold segmenters alone while the other waits for its masks."""
    machine = tmp_path / "machine"
    monkeypatch.setenv("MELANOMA_CACHE", str(machine))
    seg_run = tmp_path / "seg"
    fit(TrainConfig.from_dict(_tiny("seg", synth_root, seg_run)), Runtime(progress=False))
    config = _tiny(
        "cls",
        synth_root,
        tmp_path / "cls",
        input={"mode": "crop", "mask_source": str(seg_run), "oof_folds": 2},
    )
    assert _run_two_ranks(_oof_rank, config, tmp_path) == [1, 1]
    assert len(list(machine.glob("oof/*/fold*/checkpoints/last.pt"))) == 2  # made once
