"""`melanoma run`'s training: the two lanes (the segmenter's run, the classifier's seeds)
trained side by side or one after the other within their time (the probe that prices
them is ``melanoma_cli.probing``)."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from melanoma_cli.probing import exit_with_parent
from search.plan import RUN_EPOCHS


def mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def has_checkpoint(config, last: bool = False) -> bool:
    """Whether the run of ``config`` has trained an epoch (its best, or its last, checkpoint)."""
    from melanoma.engine.checkpoint import BEST, CHECKPOINTS, LAST

    return (Path(config.out) / CHECKPOINTS / (LAST if last else BEST)).exists()


def _lane_process(parent: int, name, configs, threads, deadline, quiet) -> None:
    exit_with_parent(parent)
    train_lane(name, configs, threads, deadline, quiet)


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
    """Train one lane's runs one after another (each from its last epoch when it has one).
    A run whose epochs take longer than planned is re-planned to the epochs that fit its
    share, so its schedule still anneals; one that would not finish another epoch stops.
    Epochs that run long drop later seeds not yet started before they cut runs below
    ``RUN_EPOCHS``; a run already started is never dropped, and a resumed one keeps the
    length it was training to. A later run is planned from the lane's measured epochs,
    longer when they ran short."""
    import torch

    torch.set_num_threads(threads)
    epoch_s = 0.0  # the lane's measured epoch: whether another run can start at all
    j = 0
    while j < len(configs):
        records = [recorded_epochs(c) for c in configs[j:]]
        lengths = [_length(c, r) for c, r in zip(configs[j:], records, strict=True)]
        done = records[0][0]
        # The lane's measurement (or, resumed, the runs' own epochs), not the probe's price.
        measured = epoch_s or next((r[2] for r in records if r[2]), 0.0)
        if done >= lengths[0]:  # finished by an earlier command
            epoch_s, j = measured, j + 1
            continue
        lane = LaneTime(
            time.time(),
            deadline,
            tuple(max(0, n - r[0]) for n, r in zip(lengths, records, strict=True)),
            # A run with any checkpoint is started (best.pt is written before last.pt):
            # the build would take it, so it is never dropped.
            tuple(
                r[0] == 0 and not has_checkpoint(c) and not has_checkpoint(c, last=True)
                for c, r in zip(configs[j:], records, strict=True)
            ),
        )
        keep = lane.kept(measured)
        if keep < len(lane.remaining):
            kept = lane.kept_runs(measured)
            dropped = [c.out for k, c in enumerate(configs[j:]) if k not in kept]
            print(
                f"[{name}] dropped {', '.join(dropped)}: an epoch takes {measured / 60:.1f} "
                f"min, too long for {RUN_EPOCHS} epochs of each seed not yet started",
                flush=True,
            )
            configs = configs[:j] + [configs[j + k] for k in kept]
            lane = replace(
                lane,
                remaining=tuple(lane.remaining[k] for k in kept),
                fresh=tuple(lane.fresh[k] for k in kept),
            )
        config = configs[j].with_overrides({"epochs": lengths[0]})
        if measured:
            fits = epochs_that_fit(measured, lane.share(measured), done)
            if fits <= done:
                print(
                    f"[{name}] cut down: {', '.join(c.out for c in configs[j:])} not "
                    f"{'continued' if done else 'started'}, no time left for an epoch of them",
                    flush=True,
                )
                return
            # A run not yet started takes the epochs its share holds: shorter when the
            # lane runs long, longer (up to twice the plan) when it runs short, so the
            # time an earlier run left is spent.
            longest = config.epochs if done else 2 * config.epochs
            config = config.with_overrides({"epochs": min(longest, fits)})
        epoch_s = _train_run(name, config, j, len(configs), lane, deadline, quiet) or epoch_s
        j += 1


def _length(config, record) -> int:
    """A run's length: a started run keeps the one its config.yaml says it trains to
    (re-planned shorter, or lengthened up to twice the plan, by an earlier command)."""
    done, planned, _ = record
    if done and planned and planned <= 2 * config.epochs:
        return planned
    return config.epochs


@dataclass(frozen=True)
class LaneTime:
    """The time from a run's start to its lane's deadline, shared between that run and
    the lane's later ones in proportion to the epochs each has left (``remaining``, this
    run first). Runs not yet started (``fresh``) are dropped from the end while their
    share at the measured epoch would hold fewer than ``RUN_EPOCHS``; a started run gets
    its own next epochs first, so a resumed run finishes before later seeds begin."""

    start: float
    deadline: float
    remaining: tuple[int, ...]
    fresh: tuple[bool, ...]

    def kept(self, epoch_s: float) -> int:
        return len(self.kept_runs(epoch_s))

    def kept_runs(self, epoch_s: float) -> list[int]:
        """The runs kept (indices into ``remaining``): fresh ones dropped from the end,
        started ones always kept."""
        keep = list(range(len(self.remaining)))
        if not epoch_s:
            return keep
        window = (self.deadline - self.start) / epoch_s
        for k in reversed(range(1, len(self.remaining))):
            if not self.fresh[k]:
                continue
            total = sum(self.remaining[i] for i in keep) or 1
            # The run's whole epochs, less the stop for time's tenth (epochs_that_fit).
            held = window * self.remaining[k] / total - 0.1
            if held >= min(RUN_EPOCHS, self.remaining[k]):
                break
            keep.remove(k)
        return keep

    def share(self, epoch_s: float) -> float:
        """When this run must end."""
        total = sum(self.remaining[k] for k in self.kept_runs(epoch_s)) or 1
        end = self.start + (self.deadline - self.start) * self.remaining[0] / total
        if not self.fresh[0] and epoch_s:  # a started run's own epochs come first
            end = max(end, self.start + (self.remaining[0] + 0.1) * epoch_s)
        return min(self.deadline, end)


def epochs_that_fit(epoch_s: float, until: float, done: int = 0) -> int:
    """The epochs a run that has trained ``done`` can reach by ``until`` at ``epoch_s``
    each, its last epoch started with the stop for time's margin (a tenth of an epoch)
    left: the margin counts once, not per epoch."""
    return done + int((until - time.time() - 0.1 * epoch_s) / epoch_s)


def recorded_epochs(config) -> tuple[int, int | None, float]:
    """What ``config``'s run folder records: the epochs trained (none without last.pt, the
    file a resume starts from), its length as last planned (config.yaml: a re-planned run's
    shorter length) and the median seconds of its epochs. An unreadable file counts as
    absent: the run then resumes or starts as planned."""
    import json
    from statistics import median

    import yaml

    run = Path(config.out)
    try:
        doc = json.loads((run / "metrics.json").read_text())
        history = (doc.get("history") or []) if isinstance(doc, dict) else []
        times = [float(h["time_s"]) for h in history]
    except (OSError, ValueError, TypeError, KeyError):
        times = []
    if not all(math.isfinite(t) and t > 0 for t in times):  # a time no epoch took
        times = []
    if not has_checkpoint(config, last=True):
        times = []
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):  # UnicodeDecodeError is a ValueError
        saved = None
    planned = saved.get("epochs") if isinstance(saved, dict) else None
    if isinstance(planned, bool) or not isinstance(planned, int) or planned < 1:
        planned = None
    return len(times), planned, median(times) if times else 0.0


def _train_run(name, config, j, runs, lane: LaneTime, deadline, quiet) -> float:
    """One run to its end or to its share of ``lane``, re-planned shorter while its epochs
    run long (priced at the median of its epochs so far); returns that median."""
    from statistics import median

    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import train

    times: list[float] = []
    while True:
        shorter = []

        def should_stop(record: dict, config=config, shorter=shorter) -> bool:
            times.append(record["time_s"])
            share = lane.share(median(times))
            if time.time() + 1.1 * record["time_s"] > share:
                return True  # no time for another epoch: stopped for time
            fits = epochs_that_fit(median(times), share, record["epoch"])
            if fits < config.epochs:
                shorter.append(max(fits, record["epoch"] + 1))
                return True
            return False

        def report(flat: dict, _where, config=config) -> None:
            if not quiet:
                value = flat.get(f"best_val_{config.metric}")
                left = max(deadline - time.time(), 0)
                print(
                    f"[{name}{f' {j + 1}/{runs}' if runs > 1 else ''}] epoch "
                    f"{flat['epoch']}/{config.epochs}, best val {config.metric} {value:.4f}, "
                    f"lane ends in {mmss(left)}",
                    flush=True,
                )

        result = train(
            config, Runtime(progress=False, report=report, should_stop=should_stop), resume=True
        )
        done = len(result.history)
        if not shorter:
            if result.extra.get("stopped_for_time"):
                print(f"[{name}] {config.out}: stopped at epoch {done} for time", flush=True)
            if times:
                return median(times)
            return result.history[-1]["time_s"] if result.history else 0.0
        print(
            f"[{name}] {config.out}: re-planned from {config.epochs} to {shorter[0]} epochs "
            f"(an epoch took {median(times) / 60:.1f} min)",
            flush=True,
        )
        config = config.with_overrides({"epochs": shorter[0]})


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
            target=_lane_process,
            args=(os.getpid(), name, configs, plan.threads_per_lane, finish_at, quiet),
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
