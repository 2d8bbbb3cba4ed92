"""`melanoma run`'s training: the probe of this machine's costs, and the two lanes (the
segmenter's run, the classifier's seeds) trained side by side or one after the other
within their time."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

PROBE_SIZES = (64, 128)
PROBE_BATCH = 8  # per-image cost barely changes above it; the probe stays under a minute


def mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def has_checkpoint(config, last: bool = False) -> bool:
    """Whether the run of ``config`` has trained an epoch (its best, or its last, checkpoint)."""
    from melanoma.engine.checkpoint import BEST, CHECKPOINTS, LAST

    return (Path(config.out) / CHECKPOINTS / (LAST if last else BEST)).exists()


def probe(configs: dict, data: dict, machine) -> object:
    """This machine's costs with one lane's threads: each model at 64 and 128 px (the
    plan scales between and beyond them by the measured exponent)."""
    import torch

    from melanoma.engine.probe import decode_cost, step_cost
    from search.plan import Costs, size_exponent

    threads = torch.get_num_threads()
    torch.set_num_threads(machine.threads_per_lane)
    from melanoma.engine.loop import resolve_device

    device = str(resolve_device(configs["cls"].device))
    try:
        cost = {
            (task, size): step_cost(configs[task], size, batch=PROBE_BATCH, device=device)
            for task in ("seg", "cls")
            for size in PROBE_SIZES
        }
    finally:
        torch.set_num_threads(threads)
    small, large = PROBE_SIZES
    exponent = (
        sum(
            size_exponent((small, cost[t, small].train_s), (large, cost[t, large].train_s))
            for t in ("seg", "cls")
        )
        / 2
    )
    n = data["labelled"]
    return Costs(
        small,
        cost["seg", small].train_s,
        cost["seg", small].infer_s,
        cost["cls", small].train_s,
        cost["cls", small].infer_s,
        decode_cost([Path(f) for f in data["files"]], small),
        data["images"]["train"],
        n["val"],
        n["test"],
        exponent,
    )


def lane_configs(configs: dict, plan, out: Path, gpus: int = 0) -> dict[str, list]:
    """Each lane's train configs: the segmenter's one run, the classifier's seeds; with
    two GPUs and two lanes, one GPU each (else they would share the first)."""
    devices = {"seg": {}, "cls": {}}
    if plan.lanes == 2 and gpus >= 2:
        devices = {"seg": {"device": "cuda:0"}, "cls": {"device": "cuda:1"}}
    seg = configs["seg"].with_overrides(
        {
            "epochs": plan.segmenter.epochs,
            "data.image_size": plan.size,
            "out": str(out / "seg"),
            **devices["seg"],
        }
    )
    cls = [
        configs["cls"].with_overrides(
            {
                "epochs": plan.classifier.epochs,
                "data.image_size": plan.size,
                "seed": configs["cls"].seed + j,
                "out": str(out / "cls" / f"run-{j}"),
                **devices["cls"],
            }
        )
        for j in range(plan.classifier.runs)
    ]
    return {"segmenter": [seg], "classifier": cls}


def train_lane(name: str, configs: list, threads: int, deadline: float, quiet: bool) -> None:
    """Train one lane's runs one after another (each from its last epoch when it has one),
    stopping a run that would not finish another epoch before ``deadline``."""
    import torch

    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import train

    torch.set_num_threads(threads)
    epoch_s = 0.0  # the last epoch's time: whether another run can start at all
    for j, config in enumerate(configs):
        # Later runs share what is left of the lane's time.
        share = deadline - (len(configs) - j - 1) * (deadline - time.time()) / (len(configs) - j)
        if (
            epoch_s
            and not has_checkpoint(config, last=True)
            and time.time() + 1.1 * epoch_s > share
        ):
            print(
                f"[{name}] cut down: runs {j + 1}-{len(configs)} not started, no time left "
                "for an epoch of them",
                flush=True,
            )
            return

        def should_stop(record: dict, share: float = share) -> bool:
            return time.time() + 1.1 * record["time_s"] > share

        def report(flat: dict, _where, j: int = j, config=config) -> None:
            if not quiet:
                value = flat.get(f"best_val_{config.metric}")
                left = max(deadline - time.time(), 0)
                print(
                    f"[{name}{f' {j + 1}/{len(configs)}' if len(configs) > 1 else ''}] epoch "
                    f"{flat['epoch']}/{config.epochs}, best val {config.metric} {value:.4f}, "
                    f"lane ends in {mmss(left)}",
                    flush=True,
                )

        result = train(
            config, Runtime(progress=False, report=report, should_stop=should_stop), resume=True
        )
        epoch_s = result.history[-1]["time_s"] if result.history else epoch_s
        if result.extra.get("stopped_for_time"):
            print(
                f"[{name}] {config.out}: stopped at epoch {len(result.history)} for time",
                flush=True,
            )


def run_lanes(lanes: dict[str, list], plan, seconds_left: float, quiet: bool) -> None:
    """The lanes side by side (one process each) or one after another, ending in time for
    the plan's end (build, evaluation, export) and 2% of the budget to spare."""
    finish_at = time.time() + seconds_left - plan.finish_s - plan.budget_s * 0.02
    if plan.lanes == 1:
        seg_share = plan.segmenter.seconds / (plan.segmenter.seconds + plan.classifier.seconds)
        split = time.time() + seg_share * (finish_at - time.time())
        train_lane("segmenter", lanes["segmenter"], plan.threads_per_lane, split, quiet)
        train_lane("classifier", lanes["classifier"], plan.threads_per_lane, finish_at, quiet)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = {
        name: ctx.Process(
            target=train_lane, args=(name, configs, plan.threads_per_lane, finish_at, quiet)
        )
        for name, configs in lanes.items()
    }
    for p in procs.values():
        p.start()
    try:
        for p in procs.values():
            p.join()
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        raise
    failed = [n for n, p in procs.items() if p.exitcode != 0]
    if failed:
        raise ValueError(f"the {', '.join(failed)} lane failed (its error is printed above)")
