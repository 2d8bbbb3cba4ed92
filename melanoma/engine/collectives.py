"""The few DDP collectives the loop needs, each a no-op in a single process."""

from __future__ import annotations

import torch


def distributed(world_size: int) -> bool:
    """Whether this run trains across ``world_size`` > 1 ranks of a process group. A run
    inside one rank of a group (the out-of-fold segmenters) has world size 1: it must not
    join the group's collectives, which the other ranks are not running."""
    return (
        world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    )


def sum_over_ranks(world_size: int, *values: float) -> tuple[float, ...]:
    """Sums over every DDP rank (each rank trains on its own share of the epoch); the
    values themselves in a single process."""
    if not distributed(world_size):
        return values
    # NCCL reduces GPU tensors only; gloo, CPU ones.
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tuple(float(v) for v in tensor.cpu())


def from_rank0(value: float | None, world_size: int) -> float | None:
    """Rank 0's ``value`` on every rank of a DDP run; the value itself in one process."""
    if not distributed(world_size):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
