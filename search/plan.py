"""How ``melanoma run`` spends a wall-clock budget: pure rules, budget and machine in, a
plan out (tested without training). Each rule says which measurement it follows
(docs/running.md lists them with their figures).

- **Lanes.** The segmenter and a whole-image classifier do not depend on each other, so
  they train at once, each on its share of the cores (two one-thread trials at a time
  took 48 s where one two-thread trial at a time took 84 s: docs/getting-started.md).
- **Whole images.** The classifier sees the whole image: controlled for resolution, the
  mask's gain was mostly resolution (docs/results.md, "Does the lesion mask help"), and a
  mask-using classifier would first need three out-of-fold segmenters.
- **Resolution before repetitions, up to a point.** The largest image size at which both
  lanes train at least ``MIN_EPOCHS`` epochs, at most ``CPU_MAX_SIZE`` without a GPU;
  more time then buys more classifier runs (a seed ensemble, averaged at equal weights
  as the budget curve measured it) of at least ``RUN_EPOCHS`` epochs, time left over
  lengthening them.
- **Default settings, not a search,** at the budgets a CPU affords (the budget curve,
  docs/results.md); ``melanoma search`` stays for larger budgets.
- **The end is reserved first**: build, evaluation and export, estimated from the
  measured inference cost, with the images they score and the classifier members the
  plan trains, plus ``SLACK`` of the budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

SIZES = (64, 96, 128, 160, 192, 224, 256)
# Without a GPU the plan stops at 192 px and buys seeds: on ISIC 2017 here, one 256 px
# classifier of 12 epochs (the 90-minute run of 2026-12-07, about 75 min of a lane, TTA
# off) reached held-out AUC 0.798, one 192 px run of 8 epochs (23 min, with TTA) 0.802:
# the same AUC for a third of the time (docs/results.md; each scored once, not paired).
# One size serves both models (a cascade of mixed sizes would meet the preprocessing gap
# of issue 33 item 5); the 192 px segmenter of 8 epochs reached held-out Jaccard 0.837,
# the 256 px one of that 90-minute run 0.834. Unmeasured on a GPU, where the field trains
# at 224 px and more.
CPU_MAX_SIZE = 192
MIN_EPOCHS = 6  # below this at 64 px the plan is cut down and says so; below 2, refused
# A seed ensemble's runs are at least this long; time that buys no further run lengthens
# them. A guess: one 192 px run (seed 2) peaked on validation at epoch 5 of 8, which does
# not show that a 6-epoch run matches it.
RUN_EPOCHS = 6
MAX_RUNS = 5
SLACK = 0.03  # of the budget, kept back for what the estimates miss
FINISH_FIXED_S = (
    120.0  # export: two programs traced and checked, INT8 calibrated (103 s at 64 px, loaded)
)
FINISH_PASSES = 3  # build, evaluation and export each score the images again
TTA_VIEWS = 8


class PlanError(ValueError):
    """The budget cannot hold what the run needs; the message says what would."""


@dataclass(frozen=True)
class Machine:
    """What trains: CPU cores, GPUs, and how many runs may train at once. On a Ray
    cluster (:func:`cluster_machine`) the lanes and their threads come from its nodes."""

    cpus: int
    gpus: int = 0
    cluster_lanes: int = 0  # a cluster's lanes; 0 on one machine
    cluster_threads: int = 0

    @property
    def lanes(self) -> int:
        """Runs that train at once: segmenter and classifier side by side when there are
        two GPUs, or (without a GPU) two cores; one GPU trains one run at a time. On a
        cluster, one lane for the segmenter and the others for classifier seeds."""
        if self.cluster_lanes:
            return self.cluster_lanes
        if self.gpus:
            return 2 if self.gpus >= 2 else 1
        return 2 if self.cpus >= 2 else 1

    @property
    def threads_per_lane(self) -> int:
        return self.cluster_threads or max(1, self.cpus // self.lanes)

    @property
    def classifier_lanes(self) -> int:
        """Lanes that train classifier seeds at once (with one lane, it is shared)."""
        return max(1, self.lanes - 1)


def cluster_machine(nodes: list[dict[str, float]]) -> Machine:
    """A Ray cluster's lanes from its alive nodes' resources (``{"CPU": 16, "GPU": 2}``
    each): one per GPU, or without GPUs two per node of the smallest node's cores, as one
    machine has; at most one segmenter lane and ``MAX_RUNS`` classifier lanes. Each lane's
    threads fit on every node, so any node can take any lane."""
    cpus = [int(n.get("CPU", 0)) for n in nodes]
    gpus = [int(n.get("GPU", 0)) for n in nodes]
    if not nodes or max(cpus) < 1:
        raise PlanError(f"the cluster has no node with a CPU (nodes: {nodes}); start its workers")
    if sum(gpus):
        threads = max(1, min(c // g for c, g in zip(cpus, gpus, strict=True) if g))
        lanes = sum(gpus)
    else:
        threads = max(1, min(c for c in cpus if c) // 2)
        lanes = sum(c // threads for c in cpus)
    return Machine(sum(cpus), sum(gpus), max(1, min(1 + MAX_RUNS, lanes)), threads)


@dataclass(frozen=True)
class Costs:
    """Measured before planning, per lane's share of the machine: seconds per image of a
    training step and of an inference pass for each task at ``size``, per image decoded,
    and the images the run sees. Other sizes scale as ``(s / size) ** exponent``, the
    exponent measured between two probed sizes: small images use a CPU less well, so the
    cost grows slower than the pixels (at most 2, pixels; at least 1)."""

    size: int
    seg_train_s: float
    seg_infer_s: float
    cls_train_s: float
    cls_infer_s: float
    decode_s: float
    train_images: int
    val_images: int
    test_images: int
    exponent: float = 2.0

    def scale(self, size: int) -> float:
        return (size / self.size) ** self.exponent

    def epoch_s(self, task: str, size: int) -> float:
        """One epoch of ``task`` at ``size``: its training steps and its validation pass
        (images are decoded once per run, counted in :meth:`start_s`)."""
        scale = self.scale(size)
        train, infer = (
            (self.seg_train_s, self.seg_infer_s)
            if task == "seg"
            else (self.cls_train_s, self.cls_infer_s)
        )
        return scale * (self.train_images * train + self.val_images * infer)

    def start_s(self) -> float:
        """What a run costs before its first epoch: decoding its images."""
        return self.decode_s * (self.train_images + self.val_images + self.test_images)

    def finish_s(self, tta: bool, size: int, members: int) -> float:
        """Build, evaluation and export: the segmenter and every classifier member over
        validation and test, each pass ``TTA_VIEWS`` times with TTA."""
        scale = self.scale(size)
        per_image = scale * (self.seg_infer_s + members * self.cls_infer_s)
        views = TTA_VIEWS if tta else 1
        images = self.val_images + self.test_images
        return FINISH_FIXED_S + FINISH_PASSES * views * images * per_image


@dataclass(frozen=True)
class Lane:
    task: str
    size: int
    epochs: int
    runs: int
    seconds: float  # planned wall time, runs one after another
    why: str


@dataclass(frozen=True)
class Plan:
    budget_s: float
    lanes: int
    threads_per_lane: int
    size: int
    segmenter: Lane
    classifier: Lane
    tta: bool
    finish_s: float
    notes: tuple[str, ...] = ()
    gpus: int | None = None  # of the machine planned for (None: a plan from before 2026-12-08)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        d = dict(d)
        d["segmenter"], d["classifier"] = Lane(**d["segmenter"]), Lane(**d["classifier"])
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


def size_exponent(small: tuple[int, float], large: tuple[int, float]) -> float:
    """How cost grows with image size, from two (size, seconds) probes: between 1 and 2."""
    (s1, c1), (s2, c2) = small, large
    if s2 <= s1 or c1 <= 0 or c2 <= 0:
        return 2.0
    return min(2.0, max(1.0, math.log(c2 / c1) / math.log(s2 / s1)))


def parse_budget(text: str) -> float:
    """Seconds from ``90m``, ``1h30m``, ``45s``, ``2h`` or a bare number of minutes."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 60
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or parts is None or not any(parts.groups()):
        raise PlanError(f"--budget {text!r} is not a duration; write it as 90m, 1h30m, 2h or 600s")
    h, m, s = (float(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def make_plan(budget_s: float, machine: Machine, costs: Costs, spent_s: float = 0.0) -> Plan:
    """The plan for ``budget_s`` seconds of which ``spent_s`` are already gone (data check,
    the probe): lanes, image size, epochs and runs, TTA, the reserved end."""
    left = budget_s * (1 - SLACK) - spent_s
    notes = []
    if machine.lanes == 1:
        notes.append("one lane: the segmenter, then the classifier, on the whole machine")
    # The size and the cut-down advice come from two lanes' worth of the machine; more
    # classifier lanes then add seeds at that size only where both models keep the
    # epochs the plan aims for (their end scores every member: it must not cost the
    # segmenter its size).
    narrow = _two_lanes(machine)
    for size in sorted(plan_sizes(machine), reverse=True):
        fits = _lanes_at(size, left, narrow, costs)
        if fits is not None and min(fits[0].epochs, fits[1].epochs) >= MIN_EPOCHS:
            for lanes in range(machine.lanes, narrow.lanes, -1):  # the widest that holds
                wide = _lanes_at(size, left, _with_lanes(machine, lanes), costs)
                if wide is not None and min(wide[0].epochs, wide[1].epochs) >= MIN_EPOCHS:
                    fits = wide
                    break
            break
    else:
        size = SIZES[0]
        fits = _lanes_at(size, left, narrow, costs)
        need = _needed_s(size, MIN_EPOCHS, narrow, costs) + spent_s
        if fits is None or min(fits[0].epochs, fits[1].epochs) < 2:
            raise PlanError(
                f"--budget {budget_s / 60:.0f}m leaves {max(left, 0) / 60:.1f} min to train "
                f"here, too little for 2 epochs of each model at {size} px; give --budget "
                f"{math.ceil(need / 60 / (1 - SLACK))}m or more"
            )
        notes.append(
            f"cut down: {fits[0].epochs} segmenter and {fits[1].epochs} classifier epochs at "
            f"{size} px, below the {MIN_EPOCHS} the plan aims for; --budget "
            f"{math.ceil(need / 60 / (1 - SLACK))}m would give {MIN_EPOCHS}"
        )
    seg, cls, tta, finish = fits
    return Plan(
        budget_s,
        machine.lanes,
        machine.threads_per_lane,
        size,
        seg,
        cls,
        tta,
        finish,
        tuple(notes),
        machine.gpus,
    )


def check_machine(plan: Plan, machine: Machine) -> None:
    """Refuse to train a stored plan on a machine of another shape (lanes, threads, GPU
    or not): its sizes, epochs and lanes were priced for the one it was made on."""
    made = (plan.lanes, plan.threads_per_lane, None if plan.gpus is None else bool(plan.gpus))
    now = (
        machine.lanes,
        machine.threads_per_lane,
        None if plan.gpus is None else bool(machine.gpus),
    )
    if made != now:
        what = "lanes, threads per lane, GPUs"
        raise PlanError(
            f"the stored plan was made for {made} ({what}), this machine or cluster is {now}; "
            "rerun it where it was planned, or pass --out NEW_DIR"
        )


def _two_lanes(machine: Machine) -> Machine:
    """``machine`` with at most one classifier lane (a cluster's lanes cut to two)."""
    return _with_lanes(machine, 2) if machine.cluster_lanes > 2 else machine


def _with_lanes(machine: Machine, lanes: int) -> Machine:
    """A cluster ``machine`` planned as if it had ``lanes`` lanes (its extra ones idle)."""
    if not machine.cluster_lanes:
        return machine
    return Machine(machine.cpus, machine.gpus, lanes, machine.cluster_threads)


def plan_sizes(machine: Machine) -> tuple[int, ...]:
    """The image sizes a plan chooses from on ``machine``."""
    return SIZES if machine.gpus else tuple(s for s in SIZES if s <= CPU_MAX_SIZE)


def _lanes_at(size: int, left: float, machine: Machine, costs: Costs):
    """The two lanes at ``size`` with ``left`` seconds, or None when not even the end fits."""
    for tta in (True, False):
        fitted = _reserved_end(size, left, tta, machine, costs)
        if fitted is None:  # the end with TTA may not fit where the end without it does
            continue
        finish, (seg_epochs, epochs, runs) = fitted
        # TTA only when its end costs at most a tenth of what is left: its gain is small.
        if tta and finish > 0.1 * left:
            continue
        seg = Lane(
            "seg",
            size,
            seg_epochs,
            1,
            _lane_s("seg", size, seg_epochs, 1, costs),
            "the segmenter experiment's train config, every epoch the lane holds",
        )
        cls = Lane(
            "cls",
            size,
            epochs,
            runs,
            _lane_s("cls", size, epochs, _per_lane(runs, machine), costs),
            "the classifier experiment's train config on whole images"
            + (f"; {runs} seeds, a seed ensemble, averaged" if runs > 1 else "")
            + (
                f"; {min(runs, machine.classifier_lanes)} lanes at once"
                if min(runs, machine.classifier_lanes) > 1
                else ""
            ),
        )
        return seg, cls, tta, finish
    return None


def _reserved_end(size: int, left: float, tta: bool, machine: Machine, costs: Costs):
    """(finish seconds, (segmenter epochs, classifier epochs, runs)): the end reserved for
    as few classifier members as cover the runs its remaining time buys (the end scores
    every member: reserving for ``MAX_RUNS`` when one run trains left minutes unspent).
    Fewer members reserved buy at least as many runs, so the first that covers them
    wins; None when not even the end fits."""
    for members in range(1, MAX_RUNS + 1):
        finish = costs.finish_s(tta, size, members)
        train = left - finish
        if train <= 0:
            return None
        lanes = _train_lanes(train, size, machine, costs)
        if lanes[2] <= members:
            return finish, lanes
    raise AssertionError("runs never exceed MAX_RUNS")


def _train_lanes(train: float, size: int, machine: Machine, costs: Costs):
    """(segmenter epochs, classifier epochs, classifier runs) in ``train`` seconds: each
    classifier lane trains its seeds one after another, the lanes at once."""
    seg_time, cls_time = (train, train) if machine.lanes >= 2 else _split(train, size, costs)
    seg_epochs = _epochs(seg_time, "seg", size, costs, runs=1)
    one_run = _epochs(cls_time, "cls", size, costs, runs=1)
    per_lane = 1
    if one_run >= 2 * RUN_EPOCHS:
        per_lane = max(1, _fit_runs(cls_time, size, costs))  # a seed ensemble in each lane
    # More classifier lanes train seeds at once, each only when it gets RUN_EPOCHS.
    lanes = machine.classifier_lanes if one_run >= RUN_EPOCHS else 1
    runs = min(MAX_RUNS, lanes * per_lane)
    epochs = _epochs(cls_time, "cls", size, costs, runs=_per_lane(runs, machine))
    return seg_epochs, epochs, runs


def _per_lane(runs: int, machine: Machine) -> int:
    """The classifier runs the busiest classifier lane trains one after another."""
    return math.ceil(runs / machine.classifier_lanes)


def _split(train: float, size: int, costs: Costs) -> tuple[float, float]:
    """One lane: time shared between the two models in proportion to their epoch cost,
    so each gets the same number of epochs."""
    seg, cls = costs.epoch_s("seg", size), costs.epoch_s("cls", size)
    return train * seg / (seg + cls), train * cls / (seg + cls)


def _epochs(seconds: float, task: str, size: int, costs: Costs, runs: int) -> int:
    per_run = seconds / runs - costs.start_s()
    return max(0, math.floor(per_run / costs.epoch_s(task, size)))


def _fit_runs(seconds: float, size: int, costs: Costs) -> int:
    """Runs of ``RUN_EPOCHS`` epochs that fit in ``seconds``."""
    per_run = costs.start_s() + RUN_EPOCHS * costs.epoch_s("cls", size)
    return math.floor(seconds / per_run)


def _lane_s(task: str, size: int, epochs: int, runs: int, costs: Costs) -> float:
    return runs * (costs.start_s() + epochs * costs.epoch_s(task, size))


def _needed_s(size: int, epochs: int, machine: Machine, costs: Costs) -> float:
    seg = costs.start_s() + epochs * costs.epoch_s("seg", size)
    cls = costs.start_s() + epochs * costs.epoch_s("cls", size)
    train = max(seg, cls) if machine.lanes >= 2 else seg + cls
    # As _lanes_at reserves it: at MIN_EPOCHS (at most RUN_EPOCHS) one lane holds one
    # run, and no other lane trains a seed of fewer than RUN_EPOCHS: one member.
    return train + costs.finish_s(False, size, 1)
