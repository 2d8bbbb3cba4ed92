"""`melanoma run --address`: the probe, the lanes and the end (build, evaluation, export)
as Ray tasks on a cluster's workers, one task per lane with that lane's cores (and GPU).
More workers buy more classifier seeds trained at once, not a longer wait
(search.plan.cluster_machine counts them from the nodes alive when the command starts).

Every node must see ``--out`` and the data at the same paths (shared storage): checked
by a task before anything is probed. The lanes' deadlines are wall-clock times, so the
nodes' clocks must agree (NTP)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from melanoma_cli.probing import PROBE_TIMEOUT_S

SHARED_CHECK = ".shared-check"


def connect_cluster(address: str, on_gpu: bool = True):
    """Join the cluster (``auto`` or HOST:PORT; a Ray this process already started is
    used as it is: its own log_to_driver then decides whether the lanes' lines show)
    and count its lanes from the alive nodes; ``on_gpu`` False (``device: cpu``) plans
    without the GPUs."""
    import ray

    from search.plan import cluster_machine
    from search.runner import connect

    connect(address, log_to_driver=True)  # the lanes' epoch lines reach this terminal
    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    if not on_gpu:
        nodes = [{k: v for k, v in n.items() if k != "GPU"} for n in nodes]
    return cluster_machine(nodes)


def join(address: str, on_gpu: bool, out: Path, configs: dict):
    """The cluster's machine, said, with its workers' view of ``out`` and the data
    checked before anything is probed."""
    machine = connect_cluster(address, on_gpu)
    print(
        f"[run] cluster {address}: {machine.cpus} CPUs, {machine.gpus} GPUs; "
        f"{machine.lanes} lane(s) of {machine.threads_per_lane} thread(s)",
        flush=True,
    )
    paths = sorted({v for c in configs.values() for v in c.path_values().values()})
    check_shared(out, paths, machine)
    return machine


def options(plan_or_machine) -> dict:
    """One lane's Ray resources, as the plan was made for (its threads, a GPU or not)."""
    return {
        "num_cpus": plan_or_machine.threads_per_lane,
        "num_gpus": 1 if plan_or_machine.gpus else 0,
    }


def check_shared(out: Path, paths: list[str], machine) -> None:
    """Refuse, before anything trains, a cluster whose workers do not see ``out`` (a
    token this driver writes there) and the data ``paths`` at the same paths."""
    import ray

    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    (out / SHARED_CHECK).write_text(token)

    @ray.remote(max_retries=0, num_cpus=0)
    def sees(out: str, paths: list[str]) -> list[str]:
        check = Path(out) / SHARED_CHECK
        missing = [p for p in paths if not Path(p).exists()]
        if not check.is_file() or check.read_text() != token:
            missing.insert(0, out)
        return missing

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # One task pinned to every alive node: any of them may take a lane.
    refs = [
        sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(out), paths)
        for n in ray.nodes()
        if n.get("Alive")
    ]
    try:
        missing = sorted({p for m in ray.get(refs, timeout=PROBE_TIMEOUT_S) for p in m})
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise ValueError(
            f"the cluster's nodes did not answer the shared-storage check within "
            f"{PROBE_TIMEOUT_S} s ({type(e).__name__}); check its workers; nothing was trained"
        ) from None
    finally:
        (out / SHARED_CHECK).unlink(missing_ok=True)
    if missing:
        raise ValueError(
            f"a worker does not see {', '.join(missing)}: --out and the data must be on "
            "storage every node of the cluster shares, at the same paths; nothing was trained"
        )


def measure_on_cluster(machine):
    """A ``measure`` for probing.probe: both models timed at once, each in a task with
    one lane's resources on whichever worker Ray places it (not held side by side on
    one node, as the one-machine probe is)."""
    import ray

    from melanoma_cli.probing import lane_costs

    @ray.remote(max_retries=0)
    def timed(config, threads, batch):
        from melanoma.engine.loop import resolve_device

        return lane_costs(config, threads, str(resolve_device(config.device)), batch)

    def measure(configs: dict, threads: int, batch) -> dict:
        refs = {
            t: timed.options(**options(machine)).remote(configs[t], threads, batch) for t in configs
        }
        try:
            return {t: ray.get(ref, timeout=PROBE_TIMEOUT_S) for t, ref in refs.items()}
        except ray.exceptions.GetTimeoutError:
            for ref in refs.values():
                ray.cancel(ref, force=True)
            raise ValueError(
                f"the probe got no timing within {PROBE_TIMEOUT_S} s on the cluster; "
                "nothing was trained"
            ) from None

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


def _wait(refs: dict) -> None:
    """Every task's end; Ctrl-C cancels them (they would go on training on the cluster)."""
    import ray

    failed = []
    try:
        for name, ref in refs.items():
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                failed.append(f"{name!r} ({e})")
    except KeyboardInterrupt:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        raise
    if failed:
        raise ValueError(
            f"on the cluster, the task {'; '.join(failed)} failed. Its worker's log is under "
            "/tmp/ray/session_latest/logs on that node (or in the Ray dashboard); the same "
            "command again resumes from the last finished epoch"
        )


def run_lanes_on_cluster(lanes: dict[str, list], plan, seconds_left: float, quiet) -> None:
    """Each lane a Ray task, all at once, ending in time for the plan's end; refused when
    they finished but this node cannot see the segmenter's checkpoint."""
    import ray

    from melanoma_cli.lanes import has_checkpoint, train_lane

    finish_at = time.time() + seconds_left - plan.finish_s - plan.budget_s * 0.02
    seg_share = plan.segmenter.seconds / (plan.segmenter.seconds + plan.classifier.seconds)

    # A lost worker's task is retried once: train_lane resumes its runs from last.pt.
    @ray.remote(max_retries=1)
    def lane(name, configs, threads, deadline, quiet):
        if name == "lane":  # one lane: the segmenter's time share, then the seeds
            split = time.time() + seg_share * (deadline - time.time())
            train_lane("segmenter", configs[:1], threads, split, quiet)
            train_lane("classifier", configs[1:], threads, deadline, quiet)
        else:
            train_lane(name, configs, threads, deadline, quiet)

    _wait(
        {
            name: lane.options(**options(plan)).remote(
                name, configs, plan.threads_per_lane, finish_at, quiet
            )
            for name, configs in lane_groups(lanes, plan)
        }
    )
    # Each lane's first run trains at least an epoch (it is never dropped).
    firsts = [configs[0] for _, configs in lane_groups(lanes, plan)]
    unseen = [c.out for c in firsts if not has_checkpoint(c)]
    if unseen:
        raise ValueError(
            f"the lanes finished but {', '.join(unseen)} hold no checkpoint on this node: "
            "--out must be on storage every node of the cluster shares, at the same path"
        )


def on_cluster(plan):
    """``call(fn, *args)`` running ``fn`` as a task with one lane's resources: the end
    (build, evaluation, export) on a worker like the lanes', where the plan priced it."""
    import ray

    def call(fn, *args, **kwargs):
        ref = ray.remote(max_retries=0)(fn).options(**options(plan)).remote(*args, **kwargs)
        _wait({fn.__name__: ref})
        return ray.get(ref)

    return call
