"""`melanoma run --address`: the probe and the lanes as Ray tasks on a cluster's workers,
one task per lane with that lane's cores (and GPU). More workers buy more classifier
seeds trained at once, not a longer wait (search.plan.cluster_machine counts them).

Every node must see ``--out`` and the data at the same paths (shared storage): the lanes
write their runs there and the driver builds the cascade from them. The lanes' deadlines
are wall-clock times, so the nodes' clocks must agree (NTP)."""

from __future__ import annotations

import time
from pathlib import Path


def connect_cluster(address: str):
    """Join the cluster (``auto`` or HOST:PORT; a Ray this process already started is
    used as it is) and count its lanes from the alive nodes."""
    import ray

    from search.plan import cluster_machine
    from search.runner import connect

    connect(address, log_to_driver=True)  # the lanes' epoch lines reach this terminal
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return cluster_machine(nodes)


def _options(machine) -> dict:
    return {"num_cpus": machine.threads_per_lane, "num_gpus": 1 if machine.gpus else 0}


def measure_on_cluster(machine):
    """A ``measure`` for probing.probe: both models timed at once, each in a task with
    one lane's resources on whichever worker Ray places it."""
    import ray

    from melanoma_cli.probing import lane_costs

    @ray.remote(max_retries=0)
    def timed(config, threads, batch):
        from melanoma.engine.loop import resolve_device

        return lane_costs(config, threads, str(resolve_device(config.device)), batch)

    def measure(configs: dict, threads: int, batch) -> dict:
        refs = {
            t: timed.options(**_options(machine)).remote(configs[t], threads, batch)
            for t in configs
        }
        return {t: ray.get(ref) for t, ref in refs.items()}

    return measure


def lane_groups(lanes: dict[str, list], plan) -> list[tuple[str, list]]:
    """(name, runs) per Ray task: the segmenter's lane, and the classifier seeds dealt
    round-robin to the classifier lanes (lane k trains seeds k, k + L, ...). With one
    lane, the segmenter's run and the seeds share it."""
    seg, cls = lanes["segmenter"], lanes["classifier"]
    if plan.lanes == 1:
        return [("lane", seg + cls)]
    groups = max(1, min(plan.lanes - 1, len(cls)))
    named = [("segmenter", seg)]
    for k in range(groups):
        name = "classifier" if groups == 1 else f"classifier {k + 1}"
        named.append((name, cls[k::groups]))
    return named


def run_lanes_on_cluster(lanes: dict[str, list], plan, machine, seconds_left: float, quiet) -> None:
    """Each lane a Ray task, all at once, ending in time for the plan's end; refused when
    they finished but this node cannot see what they wrote."""
    import ray

    from melanoma_cli.lanes import has_checkpoint, train_lane

    finish_at = time.time() + seconds_left - plan.finish_s - plan.budget_s * 0.02

    @ray.remote(max_retries=0)
    def lane(name, configs, threads, deadline, quiet):
        if name == "lane":  # one lane: the segmenter's time share, then the seeds
            seg_share = plan.segmenter.seconds / (plan.segmenter.seconds + plan.classifier.seconds)
            split = time.time() + seg_share * (deadline - time.time())
            train_lane("segmenter", configs[:1], threads, split, quiet)
            train_lane("classifier", configs[1:], threads, deadline, quiet)
        else:
            train_lane(name, configs, threads, deadline, quiet)

    groups = lane_groups(lanes, plan)
    refs = {
        name: lane.options(**_options(machine)).remote(
            name, configs, machine.threads_per_lane, finish_at, quiet
        )
        for name, configs in groups
    }
    failed = []
    try:
        for name, ref in refs.items():
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                failed.append(f"{name}: {e}")
    except KeyboardInterrupt:  # the lanes would go on training on the cluster
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise
    if failed:
        raise ValueError(f"the {'; '.join(failed)} lane failed on the cluster")
    runs = [lanes["segmenter"][0], *lanes["classifier"]]
    if not any(has_checkpoint(c) for c in runs):
        raise ValueError(
            f"the lanes finished but {Path(runs[0].out).parent} holds no checkpoint on this "
            "node: --out must be on storage every node of the cluster shares, at the same path"
        )
