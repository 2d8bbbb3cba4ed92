"""The optimizer's parameter groups and the learning-rate schedules (timm and torch)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from melanoma.engine.config import OptimizerConfig, SchedulerConfig
from melanoma.engine.optim import create_lr_schedule, create_optimizer


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_weight_decay_reaches_weights_only():
    model = tiny()
    opt = create_optimizer(OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.05), model)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay == {id(named["0.weight"]), id(named["3.weight"])}  # conv and linear weights
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)


def lrs(schedule, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(schedule.lr)
        schedule.optimizer.step()
        schedule.step_batch()
    return out


def test_cosine_warms_up_linearly_then_decays_to_its_floor():
    model = tiny()
    opt = create_optimizer(OptimizerConfig(name="sgd", lr=0.1), model)
    config = SchedulerConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.01)
    schedule = create_lr_schedule(config, opt, epochs=3, steps_per_epoch=4)
    seen = lrs(schedule, 14)
    assert seen[:5] == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1])  # 4 warmup steps
    # then a cosine over the 8 remaining steps, from 0.1 to 0.001, held there
    expected = [0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * t / 8)) for t in range(9)]
    assert seen[4:13] == pytest.approx(expected)
    assert seen[13] == pytest.approx(0.001)


def test_a_resumed_schedule_continues_where_it_stopped():
    config = SchedulerConfig(name="cosine", warmup_epochs=0.5)

    def build():
        opt = create_optimizer(OptimizerConfig(name="adamw", lr=1e-3), tiny())
        return create_lr_schedule(config, opt, epochs=4, steps_per_epoch=5)

    whole = lrs(build(), 20)
    first = build()
    head = lrs(first, 7)
    second = build()
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    assert head + lrs(second, 13) == pytest.approx(whole)
    with pytest.raises(ValueError, match="cannot be resumed"):
        build().load_state_dict({"base_lrs": [1e-3], "last_epoch": 7})  # an old LambdaLR state


def test_a_cosine_resumed_with_fewer_epochs_anneals_over_its_new_length():
    """melanoma run shortens a lane that runs long: the resumed cosine must follow the new
    length (a schedule restored whole would keep the old one and never reach its floor)."""
    config = SchedulerConfig(name="cosine", warmup_epochs=0.5, min_lr_ratio=0.01)

    def build(epochs):
        opt = create_optimizer(OptimizerConfig(name="adamw", lr=1e-3), tiny())
        return create_lr_schedule(config, opt, epochs=epochs, steps_per_epoch=5)

    first = build(4)
    head = lrs(first, 7)
    shorter = build(3)
    shorter.optimizer.load_state_dict(first.optimizer.state_dict())
    shorter.load_state_dict(first.state_dict())
    tail = lrs(shorter, 9)
    assert head == pytest.approx(lrs(build(4), 7))
    assert tail == pytest.approx(lrs(build(3), 16)[7:])  # the 3-epoch cosine from step 7
    assert tail[-1] == pytest.approx(1e-5) and tail[-2] > tail[-1]


@pytest.mark.parametrize("name", ["step", "plateau", "constant"])
def test_per_epoch_schedules(name):
    opt = create_optimizer(OptimizerConfig(name="sgd", lr=0.1), tiny())
    config = SchedulerConfig(name=name, step_size=1, gamma=0.5, patience=0)
    schedule = create_lr_schedule(config, opt, epochs=3, steps_per_epoch=2)
    lrs(schedule, 2)
    schedule.step_epoch(0.5)
    schedule.step_epoch(0.4)  # worse for a "max" metric: plateau halves
    assert schedule.lr == pytest.approx({"step": 0.025, "plateau": 0.05, "constant": 0.1}[name])


def test_unknown_scheduler_names_the_valid_ones():
    opt = torch.optim.SGD(tiny().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="valid: cosine, step, plateau, constant"):
        create_lr_schedule(SimpleNamespace(name="linear", warmup_epochs=0), opt, 1, 1)
