"""`melanoma run`'s probe: this machine's training and inference costs per image, each
model timed at two sizes with one lane's threads (side by side when two CPU lanes will
train at once), and the watch that ends a lane process whose driver is gone."""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from pathlib import Path

PROBE_SIZES = (64, 128)
# Each run's own batch size (None). Probed side by side after the 90-minute ISIC run, a
# 256 px segmenter epoch was priced at 5.1 minutes at batch 8 and at 10.4 at its own 16;
# the run's epochs took 12.4-13.4.
PROBE_BATCH = None
PROBE_TIMEOUT_S = 600


def probe(
    configs: dict, data: dict, machine, batch: int | None = PROBE_BATCH, measure=None
) -> object:
    """This machine's costs with one lane's threads: each model at 64 and 128 px (the
    plan scales between and beyond them by the measured exponent), plus the loader's
    work between steps. With two CPU lanes both models are timed at once, each while the
    other trains, as the lanes will run. A first guess (docs/running.md gives its spread):
    the lanes re-plan from the epochs they measure. ``measure(configs, threads, batch)``,
    when given, times both models elsewhere (a cluster's workers) and returns the same
    per-size timings."""
    from melanoma.engine.loop import resolve_device
    from melanoma.engine.probe import decode_cost
    from search.plan import Costs, size_exponent

    device = str(resolve_device(configs["cls"].device))
    if measure is not None:  # on a cluster's workers (melanoma_cli.cluster)
        cost = measure(configs, machine.threads_per_lane, batch)
    elif machine.lanes == 2 and device == "cpu":
        cost = _probe_side_by_side(configs, machine.threads_per_lane, batch)
    else:
        threads = machine.threads_per_lane
        cost = {t: lane_costs(configs[t], threads, device, batch) for t in ("seg", "cls")}
    small, large = PROBE_SIZES
    exponent = (
        sum(size_exponent((small, cost[t][small][0]), (large, cost[t][large][0])) for t in cost) / 2
    )
    n = data["labelled"]
    return Costs(
        small,
        *cost["seg"][small],
        *cost["cls"][small],
        decode_cost([Path(f) for f in data["files"]], small),
        data["images"]["train"],
        n["val"],
        n["test"],
        exponent,
    )


def lane_costs(config, threads: int, device: str, batch) -> dict[int, tuple[float, float]]:
    """Per size: seconds per image of a training step (with the loader's work when the
    lane's own thread does it) and of an inference pass."""
    import torch

    from melanoma.engine.probe import loader_cost, step_cost

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for size in PROBE_SIZES:
            step = step_cost(config, size, batch=batch, device=device)
            # Loader workers run beside the steps; with none, the lane pays their work.
            loader = loader_cost(config, size) if config.data.num_workers == 0 else 0.0
            out[size] = (step.train_s + loader, step.infer_s)
        return out
    finally:
        torch.set_num_threads(before)


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this lane process when the process that started it is gone: a driver killed
    (SIGTERM or SIGKILL, not Ctrl-C, which reaches the whole group) would otherwise leave
    its lanes training beside the rerun that resumes them, each at half speed."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _probe_lane(task, config, threads, batch, start, done, results, parent=None) -> None:
    """One lane's probe in its own process: timed once both have started, then busy
    until the other lane's timing is done too."""
    import torch

    from melanoma.engine.probe import keep_training

    if parent is not None:
        exit_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        start.wait()
        results.put((task, lane_costs(config, threads, "cpu", batch)))
    except BaseException as e:  # the parent names it; the other lane stops waiting
        results.put((task, f"{type(e).__name__}: {e}"))
        raise
    finally:
        done[task].set()
    # The largest probed size at the run's batch: the load the slower lane's timings are
    # taken beside should be the load training will put there.
    keep_training(config, PROBE_SIZES[-1], lambda: all(e.is_set() for e in done.values()), batch)


def _gather(results, procs) -> dict:
    """Both lanes' timings, or the reason there are none (a lane that died before it
    could say, a timing that never came)."""
    cost, waited = {}, 0.0
    while len(cost) < len(procs):
        try:
            task, c = results.get(timeout=1.0)
            cost[task] = c
            continue
        except queue.Empty:
            waited += 1.0
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead or waited > PROBE_TIMEOUT_S:
            while not results.empty():  # a reason that came in after the last wait
                task, c = results.get_nowait()
                cost[task] = c
            reasons = "".join(f"; {t}: {c}" for t, c in cost.items() if isinstance(c, str))
            got = sum(not isinstance(c, str) for c in cost.values())
            raise ValueError(
                f"the probe got {got} of {len(procs)} timings "
                f"({'a lane exited with ' + str(dead[0].exitcode) if dead else 'timed out'}"
                f"{reasons}; any other error is printed above); nothing was trained"
            )
    failed = {t: c for t, c in cost.items() if isinstance(c, str)}
    if failed:
        raise ValueError(
            "the probe failed: "
            + "; ".join(f"{t}: {why}" for t, why in failed.items())
            + "; nothing was trained"
        )
    return cost


def _probe_side_by_side(configs: dict, threads: int, batch) -> dict:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2, timeout=PROBE_TIMEOUT_S), ctx.Queue()
    done = {t: ctx.Event() for t in ("seg", "cls")}
    procs = [
        ctx.Process(
            target=_probe_lane,
            args=(t, configs[t], threads, batch, start, done, results, os.getpid()),
        )
        for t in ("seg", "cls")
    ]
    for p in procs:
        p.start()
    try:
        cost = _gather(results, procs)
    finally:
        for p in procs:  # after both timings, each stops within a step
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return cost
