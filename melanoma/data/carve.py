"""Carving splits and folds: images of one lesion or patient, and byte-identical images,
form units; units are allocated to val and test per label stratum, and the training split
is cut into stratified, grouped folds.

Carving is our own greedy allocation rather than sklearn's StratifiedGroupKFold, whose
fold sizes can only approximate a fraction such as 0.15.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np

from melanoma.data.check import CheckReport
from melanoma.data.records import SPLITS, Sample
from melanoma.data.splits import SplitConfig, SplitEntry, Splits


def units(samples: list[Sample], content: dict[str, str]) -> list[list[Sample]]:
    """Samples that must stay in one split: those sharing a group id or identical bytes,
    as the connected components of the graph linking each sample to the first one that
    shares a key with it. Units come in the order of their first sample, each in input
    order."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    first: dict[tuple[str, str], int] = {}
    edges: list[tuple[int, int]] = []
    for i, s in enumerate(samples):
        keys = [("group", s.group)] if s.group else []
        if s.id in content:
            keys.append(("sha", content[s.id]))
        for key in keys:
            edges.append((first.setdefault(key, i), i))
    n = len(samples)
    pairs = np.array(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    members: dict[int, list[Sample]] = defaultdict(list)
    for i, s in enumerate(samples):
        members[int(label[i])].append(s)
    return list(members.values())


def assign_splits(
    samples: list[Sample], config: SplitConfig, content: dict[str, str] | None = None
) -> tuple[dict[str, str], list[dict]]:
    """Map sample id to split; also return the leaks official splits already contain."""
    content = content or {}
    lesions = units(samples, content)
    official = {s.split for s in samples if s.split} if config.keep_official else set()
    to_carve = [
        s for s in ("val", "test") if s not in official or (s == "val" and config.val_from_train)
    ]

    assignment: dict[str, str] = {}
    leaks: list[dict] = []
    pool: list[list[Sample]] = []
    for unit in lesions:
        fixed = {s.split for s in unit if s.split and s.split in official}
        if len(fixed) > 1:
            leaks.append(
                {
                    "splits": sorted(fixed),
                    "ids": sorted(s.id for s in unit),
                    "reason": "same group or identical image content in different official splits",
                }
            )
        if fixed and fixed != {"train"}:
            for s in unit:
                assignment[s.id] = s.split if s.split in official else sorted(fixed)[0]
        else:
            pool.append(unit)

    # Targets are fractions of the whole data set, per label stratum.
    totals = Counter(s.label for s in samples)
    fractions = {"val": config.val_fraction, "test": config.test_fraction}
    rng = np.random.default_rng(config.seed)
    strata: dict[int | None, list[list[Sample]]] = defaultdict(list)
    for unit in sorted(pool, key=lambda u: min(s.id for s in u)):
        labels = [s.label for s in unit if s.label is not None]
        strata[max(labels) if labels else None].append(unit)
    # The permutations are drawn in the order they always were, so data sets whose units
    # hold one label keep their splits; units holding a melanoma are placed before the
    # benign ones (unlabelled units, which no labelled target counts, first of all).
    orders = {
        label: rng.permutation(len(strata[label]))
        for label in sorted(strata, key=lambda v: -1 if v is None else v)
    }
    placed: Counter = Counter()  # (split, label) -> images placed so far
    for label in sorted(strata, key=lambda v: -2 if v is None else -v):
        units_here = strata[label]
        counts = Counter()
        # A melanoma unit counts its melanomas (a patient's other images ride along, and
        # are taken off the benign targets); other units count their images.
        targets = {n: round(fractions[n] * totals[label]) - placed[n, label] for n in to_carve}
        for i in orders[label]:
            unit = units_here[i]
            dest = next((n for n in to_carve if counts[n] < targets[n]), "train")
            counts[dest] += sum(s.label == label for s in unit)
            for s in unit:
                assignment[s.id] = dest
                placed[dest, s.label] += 1
    return assignment, leaks


def build_splits(report: CheckReport, config: SplitConfig) -> Splits:
    """Assign every usable sample of a checked data set to a split, with file hashes."""
    content = {i: info.image_sha256 for i, info in report.info.items()}
    assignment, leaks = assign_splits(report.samples, config, content)
    entries: dict[str, list[SplitEntry]] = {s: [] for s in SPLITS}
    for s in report.samples:
        info = report.info[s.id]
        entries[assignment[s.id]].append(SplitEntry(s, info.image_sha256, info.mask_sha256))
    _refuse_empty(entries, report.samples, config, content)
    return Splits(
        report.root, report.layout, config, entries, leaks, [str(p) for p in report.problems]
    )


def _refuse_empty(
    entries: dict[str, list[SplitEntry]],
    samples: list[Sample],
    config: SplitConfig,
    content: dict[str, str],
) -> None:
    """A split the data was large enough to fill but which got no image: its units (one
    patient's or lesion's images, identical files) are too large, and every model
    trained or scored on it would be silently wrong."""
    official = {s.split for s in samples if s.split} if config.keep_official else set()
    totals = Counter(s.label for s in samples)
    # What the carve aims at: its own per-label targets, or the official split's images.
    wanted = {
        "train": int(any(s.split in (None, "train") for s in samples) or "train" in official),
        **{
            name: sum(round(fraction * n) for n in totals.values())
            for name, fraction in (("val", config.val_fraction), ("test", config.test_fraction))
        },
    }
    empty = [name for name in SPLITS if not entries[name] and wanted[name] >= 1]
    if not empty:
        return
    sizes = sorted((len(u) for u in units(samples, content)), reverse=True)
    given = f" (official splits given: {', '.join(sorted(official))})" if official else ""
    raise ValueError(
        f"split {', '.join(empty)} got no images{given}: the {len(samples)} images form "
        f"{len(sizes)} units that must each stay in one split (images sharing a patient or "
        f"lesion id, or identical bytes), and the largest holds {sizes[0]} images. Check the "
        "group column (patient_id or lesion_id) and the duplicate-content warnings of "
        "`melanoma data check`; a data set needs several units per split"
    )


def fold_splits(splits: Splits, folds: int, seed: int) -> list[Splits]:
    """``folds`` assignments of the training split: each holds one fold out as ``val``;
    ``test`` is kept, the original ``val`` dropped (no fold model sees it)."""
    train = splits.entries["train"]
    content = {e.sample.id: e.image_sha256 for e in train}
    group_of = {
        s.id: n for n, unit in enumerate(units([e.sample for e in train], content)) for s in unit
    }
    groups = [group_of[e.sample.id] for e in train]
    labels = [e.sample.label if e.sample.label is not None else -1 for e in train]
    if len(set(groups)) < folds:
        raise ValueError(
            f"{folds} folds need at least {folds} lesions in the training split, found "
            f"{len(set(groups))}; use fewer folds or more data"
        )
    from sklearn.model_selection import StratifiedGroupKFold

    cut = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for fit_rows, held_rows in cut.split(np.zeros(len(train)), labels, groups):
        entries = {
            "train": [train[i] for i in fit_rows],
            "val": [train[i] for i in held_rows],
            "test": splits.entries["test"],
        }
        out.append(replace(splits, entries=entries))
    return out
