"""melanoma run: a data folder to an evaluated, exported cascade within a wall-clock budget.

Stages, each recorded in ``OUT/run.json`` when it ends (a rerun of the same command goes
on from the first unfinished one, a run inside a stage from its last epoch):
check (the data, refused as ``data check`` refuses it), plan (the probe, then
``plan.json``), train (segmenter and classifier lanes), build, evaluate, export.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path

from melanoma_cli import cluster
from melanoma_cli.common import deprecated
from melanoma_cli.lanes import lane_configs, mmss, run_lanes
from melanoma_cli.probing import probe
from melanoma_cli.run_end import finish

RUN_FILE = "run.json"
PLAN_FILE = "plan.json"
STAGES = ("check", "plan", "train", "build", "evaluate", "export")
EXPERIMENTS = {"seg": "isic2017_cpu_seg", "cls": "isic2017_cpu_cls"}


class RunRecord:
    """``OUT/run.json``: what the run was asked (refused when a rerun asks otherwise) and
    each finished stage's planned and actual seconds."""

    def __init__(self, out: Path, inputs: dict):
        self.path = Path(out) / RUN_FILE
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            then = self.data["inputs"]
            changed = {
                k: (then.get(k), inputs.get(k))
                for k in [*then, *(k for k in inputs if k not in then)]
                if then.get(k) != inputs.get(k)
            }
            if changed:
                what = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
                raise ValueError(
                    f"{out} holds a run asked otherwise ({what}); rerun it as it was asked, "
                    "or pass --out NEW_DIR"
                )
        else:
            self.data = {"inputs": inputs, "stages": {}}
        self.earlier_s = 0.0  # what killed runs spent in the stage now running
        # Measured once, before this run writes anything under OUT (plan.json, logs).
        self.interrupted_s = self._interrupted()

    def save(self) -> None:
        from melanoma.files import write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def begin(self, stage: str) -> None:
        """Mark ``stage`` running, so that a run killed inside it counts its time."""
        self.earlier_s = self.interrupted_s if self.running == stage else 0.0
        self.data["running"] = {"stage": stage, "since": time.time() - self.earlier_s}
        if stage not in ("check", "plan"):  # the plan may still refuse the budget
            self.save()

    def finish(self, stage: str, actual_s: float, planned_s: float | None, **extra) -> None:
        actual_s += self.earlier_s
        self.data["stages"][stage] = {"actual_s": actual_s, "planned_s": planned_s, **extra}
        self.data.pop("running", None)
        self.earlier_s = self.interrupted_s = 0.0
        # Nothing is written until a plan holds: a run refused at its data check or its
        # budget leaves nothing that would refuse the corrected command.
        if stage != "check":
            self.save()

    @property
    def running(self) -> str | None:
        return (self.data.get("running") or {}).get("stage")

    def _interrupted(self) -> float:
        """Seconds a killed run spent in its unfinished stage: from the stage's start to
        the newest file the run wrote (its checkpoints and logs, written every epoch).
        Both times come from this machine's clock and files: an OUT copied without its
        timestamps counts from whenever the copy was made, and on a cluster the file
        times are the shared storage's, so its clock must agree with this one."""
        if self.running is None:
            return 0.0
        since = self.data["running"]["since"]
        newest = max(f.stat().st_mtime for f in self.path.parent.rglob("*") if f.is_file())
        return max(0.0, newest - since)

    @property
    def spent_s(self) -> float:
        finished = sum(s["actual_s"] for s in self.data["stages"].values())
        return finished + (self.interrupted_s if self.running else 0.0)


class Clock:
    """The budget as it runs down: seconds left, and a line saying where the run is."""

    def __init__(self, budget_s: float, spent_s: float):
        self.budget_s, self.started = budget_s, time.time() - spent_s

    def elapsed(self) -> float:
        return time.time() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def line(self, stage: str, detail: str = "") -> str:
        return (
            f"[run] {stage}{': ' + detail if detail else ''} | {mmss(self.elapsed())} elapsed, "
            f"{mmss(max(self.left(), 0))} left of {mmss(self.budget_s)}"
        )


def base_configs(data: str, seed: int, experiments: dict[str, str]) -> dict:
    """Each task's train config from its experiment (YAML, then these overrides): the data
    folder, the seed, and the classifier on whole images (search.plan's rule)."""
    from experiments import resolve
    from search.experiment import load_experiment

    out = {}
    for task, name in experiments.items():
        overrides = {"train.data.path": data, "train.seed": seed, "train.log_images": 0}
        if task == "cls":
            overrides |= {"train.input.mode": "full", "train.input.mask_source": "gt"}
        exp = load_experiment(resolve(name), overrides)
        if exp.task != task:
            raise ValueError(
                f"--{task}-experiment {name} is a {exp.task} experiment; give a {task} one"
            )
        out[task] = exp.train
    return out


def check_data(config) -> dict:
    """The data's splits as training will see them; bad files refused before anything
    trains, as ``melanoma data check`` reports them."""
    from melanoma.data.check import check_dataset
    from melanoma.data.dataset import open_data
    from melanoma.data.synth import SYNTHETIC_PREFIX, materialize_synthetic

    d = config.data
    path = Path(materialize_synthetic(d.path) if d.path.startswith(SYNTHETIC_PREFIX) else d.path)
    if not path.exists():
        raise ValueError(f"DATA {d.path}: no such folder; give the data set's folder")
    report = check_dataset(path, d.layout, on_bad="skip", external_paths=d.external_paths)
    if report.errors:
        shown = "\n  ".join(str(p) for p in report.errors[:5])
        raise ValueError(
            f"{len(report.errors)} bad file(s) in {d.path}:\n  {shown}\nfix or remove them "
            f"(melanoma data check {d.path} lists them all); nothing was trained"
        )
    bundle = open_data(path, d.image_size, layout=d.layout, split_config=d.split_config())
    entries = bundle.splits.entries
    labelled = {s: sum(e.sample.label is not None for e in entries[s]) for s in entries}
    if min(labelled.get("train", 0), labelled.get("val", 0), labelled.get("test", 0)) == 0:
        raise ValueError(
            f"{d.path}: the run needs labelled training, validation and test images, got "
            f"{labelled}; add diagnoses or change the experiment's split fractions"
        )
    files = [e.sample.image_path for e in entries["train"][:16]]
    return {
        "images": {s: len(v) for s, v in entries.items()},
        "labelled": labelled,
        "files": [str(f) for f in files],
    }


def print_plan(plan, costs: dict) -> None:
    s, c = plan.segmenter, plan.classifier
    print(
        f"[plan] probe at {costs['size']} px, per image: segmenter {costs['seg_train_s']:.3f} s, "
        f"classifier {costs['cls_train_s']:.3f} s a training step; cost grows as size^"
        f"{costs['exponent']:.2f}",
        flush=True,
    )
    print(
        f"[plan] {plan.lanes} lane(s), {plan.threads_per_lane} thread(s) each, {plan.size} px\n"
        f"[plan] segmenter: {s.epochs} epochs, about {s.seconds / 60:.0f} min ({s.why})\n"
        f"[plan] classifier: {c.runs} run(s) of {c.epochs} epochs, about {c.seconds / 60:.0f} "
        f"min ({c.why})\n"
        f"[plan] build, evaluate, export: about {plan.finish_s / 60:.0f} min, TTA "
        f"{'on' if plan.tta else 'off'}",
        flush=True,
    )
    for note in plan.notes:
        print(f"[plan] {note}", flush=True)


def _machine(address: str | None, configs: dict, out: Path):
    """This machine, or the cluster at ``address``; GPUs only when the runs train on one
    (`device: cpu` plans as a CPU machine)."""
    from melanoma.engine.loop import resolve_device
    from search.plan import Machine

    on_gpu = str(resolve_device(configs["cls"].device)).startswith("cuda")
    if address:
        return cluster.join(address, on_gpu, out, configs)
    return Machine(cpus=multiprocessing.cpu_count(), gpus=_gpus() if on_gpu else 0)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_pipeline(
    data: str,
    budget: str,
    out: Path,
    *,
    seed: int = 0,
    quiet: bool = False,
    experiments: dict[str, str] | None = None,
    started: float | None = None,
    address: str | None = None,
) -> dict:
    """Every stage of the run, from where an earlier run of the same command stopped;
    the budget counts from ``started`` (default: now), plus what earlier runs spent. With
    ``address``, the probe and the lanes run on that Ray cluster (melanoma_cli.cluster)."""
    started = time.time() if started is None else started
    from melanoma.files import write_json
    from search.plan import Plan, check_machine, make_plan, parse_budget

    out = Path(out)
    experiments = experiments or EXPERIMENTS
    budget_s = parse_budget(budget)
    configs = base_configs(data, seed, experiments)
    if address:  # the workers run elsewhere: every path absolute
        out = out.resolve()
        configs = {t: c.with_absolute_paths(Path.cwd()) for t, c in configs.items()}
    record = RunRecord(
        out,
        {"data": data, "budget_s": budget_s, "seed": seed, "experiments": experiments}
        # A plan made for a cluster's lanes is not this machine's (absent: one machine).
        | ({"address": address} if address else {}),
    )
    if record.running:
        print(
            f"[run] an earlier run stopped inside {record.running} after "
            f"{mmss(record.interrupted_s)}; that time counts against the budget",
            flush=True,
        )
    clock = Clock(budget_s, record.spent_s + time.time() - started)
    machine = _machine(address, configs, out)

    def stage(name: str, planned: float | None, work):
        if record.done(name):
            print(f"[run] {name}: done in an earlier run", flush=True)
            return record.data["stages"][name].get("result")
        print(clock.line(name), flush=True)
        record.begin(name)
        started = time.time()
        result = work()
        record.finish(name, time.time() - started, planned, result=result)
        return result

    found = stage("check", None, lambda: check_data(configs["cls"]))

    def planning():
        measure = cluster.measure_on_cluster(machine) if address else None
        costs = probe(configs, found, machine, measure=measure)
        plan = make_plan(budget_s, machine, costs, clock.elapsed())
        return {"plan": plan.to_dict(), "costs": asdict(costs)}

    planned = stage("plan", None, planning)
    plan = Plan.from_dict(planned["plan"])
    check_machine(plan, machine)
    write_json(out / PLAN_FILE, planned)
    print_plan(plan, planned["costs"])
    # On a cluster each lane's task is given its own GPU: no device to pin here.
    lanes = lane_configs(configs, plan, out, 0 if address else machine.gpus)
    train_s = max(plan.segmenter.seconds, plan.classifier.seconds)

    def train() -> None:
        if address:
            return cluster.run_lanes_on_cluster(lanes, plan, clock.left(), quiet)
        return run_lanes(lanes, plan, clock.left(), quiet)

    stage("train", train_s, train)
    return finish(
        out, plan, lanes, clock, record, stage, cluster.on_cluster(plan) if address else None
    )


def _cmd_run(args: argparse.Namespace) -> int:
    experiments = {"seg": args.seg_experiment, "cls": args.cls_experiment}
    data = args.data
    if args.data_flag is not None:
        if data is not None:
            raise ValueError(f"two data sets given ({data!r} and --data {args.data_flag!r})")
        deprecated("melanoma run --data DATA", "melanoma run DATA")
        data = args.data_flag
    if data is None:
        raise ValueError("run needs a data set: `melanoma run DATA --budget 90m --out DIR`")
    run_pipeline(
        data,
        args.budget,
        Path(args.out),
        seed=args.seed,
        quiet=args.quiet,
        experiments=experiments,
        started=getattr(args, "started", None),
        address=args.address,
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="a data folder to an exported cascade within a time budget",
        description="Check the data, plan the budget, train a segmenter and a seed "
        "ensemble of classifiers, build, evaluate once on the test split and export; a "
        "rerun with the same --out goes on where a stopped one was.",
    )
    p.add_argument(
        "data", nargs="?", metavar="DATA", help="the data set's folder (or synthetic:N:SIZE:SEED)"
    )
    p.add_argument("--data", dest="data_flag", help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--budget", required=True, help="wall-clock budget: 90m, 1h30m, 600s")
    p.add_argument("--out", required=True, help="where the run writes (a rerun goes on there)")
    p.add_argument("--seed", type=int, default=0, help="the first run's seed; the others count up")
    p.add_argument(
        "--seg-experiment", default=EXPERIMENTS["seg"], help="the segmenter's experiment YAML"
    )
    p.add_argument(
        "--cls-experiment", default=EXPERIMENTS["cls"], help="the classifier's experiment YAML"
    )
    p.add_argument("--quiet", action="store_true", help="stage lines only, no epoch lines")
    p.add_argument(
        "--address",
        help="a Ray cluster (auto or HOST:PORT) whose workers train the lanes; --out and "
        "the data must be on storage every node shares (default: this machine)",
    )
    p.set_defaults(func=_cmd_run)
