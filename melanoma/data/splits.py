"""Stratified, grouped train/val/test splits, written with the content hash of every file.

Rules, in order:
1. Official splits the layout provides (ISIC 2017 Training/Validation/Test, ...) are kept.
2. Splits the layout lacks are carved from the training pool, stratified by melanoma label;
   with ``val_from_train`` a validation share is carved beside an official validation split
   too, and every entry keeps its official split so either part can be scored alone.
3. Images of one lesion or patient (the layout's group id) and byte-identical images form
   one unit that always lands in one split. A unit that official splits already put on two
   sides is reported as a leak, never silently moved.
Carving is our own greedy allocation rather than sklearn's StratifiedGroupKFold, whose
fold sizes can only approximate a fraction such as 0.15.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from melanoma.data.check import CheckReport
from melanoma.data.io import file_sha256
from melanoma.data.records import SPLITS, Sample, count_cross_split
from melanoma.files import write_json

SPLITS_VERSION = 1
DROP_OPTION = "--drop-test-duplicates"


@dataclass(frozen=True)
class SplitConfig:
    """How to carve the splits a layout does not provide."""

    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    keep_official: bool = True
    # Beside an official validation split, also carve val_fraction of the images from the
    # training pool into validation (lesion-grouped, stratified): ISIC 2017's official 150
    # hold 30 melanomas, too few to choose trials, ensembles or thresholds on.
    val_from_train: bool = False

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} "
                "leaves too little for training; keep the sum below 0.9"
            )

    # The split settings as a train config's ``data`` section and a cascade's record name
    # them: the one place where SplitConfig is written out and read back.
    RECORD_NAMES = {
        "seed": "split_seed",
        "val_fraction": "val_fraction",
        "test_fraction": "test_fraction",
        "keep_official": "keep_official",
        "val_from_train": "val_from_train",
    }

    def to_record(self) -> dict:
        """The settings under their ``data`` names (``split_seed``, ...)."""
        return {name: getattr(self, field) for field, name in self.RECORD_NAMES.items()}

    @classmethod
    def from_record(cls, record) -> SplitConfig:
        """From a mapping or object with the ``data`` names; absent ones keep defaults
        (older records lack ``val_from_train``; train configs never set keep_official)."""
        get = record.get if isinstance(record, dict) else lambda k, d: getattr(record, k, d)
        defaults = cls()
        return cls(**{f: get(name, getattr(defaults, f)) for f, name in cls.RECORD_NAMES.items()})

    def cache_key(self) -> dict:
        """The settings in a cache key; an option left at its default is left out, so a
        new option does not invalidate the caches made before it existed."""
        key = asdict(self)
        if not self.val_from_train:
            del key["val_from_train"]
        return key

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_record().items())


@dataclass(frozen=True)
class SplitEntry:
    sample: Sample
    image_sha256: str
    mask_sha256: str | None


class LeakError(ValueError):
    """The test split shares images, ids or groups with the data the search sees."""


def _describe_leak(leak: dict) -> str:
    what = {"same id": "is also in", "same bytes": "has the same bytes as"}.get(leak["reason"])
    if what:
        return f"test image {leak['id']} {what} {leak['twin']}"
    return (
        f"test image {leak['id']} shares {leak['reason'].removeprefix('same ')} with {leak['twin']}"
    )


@dataclass
class Splits:
    """The assignment of every usable sample to train, val or test."""

    root: Path
    layout: str
    config: SplitConfig
    entries: dict[str, list[SplitEntry]]
    leaks: list[dict] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    # Test images removed because they leak into train/val (--drop-test-duplicates).
    dropped_test: list[dict] = field(default_factory=list)

    def samples(self, split: str) -> list[Sample]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        return [e.sample for e in self.entries[split]]

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split, items in self.entries.items():
            labels = Counter(e.sample.label for e in items)
            out[split] = {
                "images": len(items),
                "melanoma": labels.get(1, 0),
                "benign": labels.get(0, 0),
                "unlabelled": labels.get(None, 0),
            }
        return out

    def test_leaks(self) -> list[dict]:
        """Every test image that shares its id, its bytes or its lesion group with a train or
        val image: ``{"id", "twin", "reason"}``, one entry per test image (first reason)."""
        seen: dict[str, dict[str, str]] = {"id": {}, "group": {}, "sha256": {}}
        for split in ("train", "val"):
            for e in self.entries[split]:
                seen["id"].setdefault(e.sample.id, f"{split}:{e.sample.id}")
                seen["sha256"].setdefault(e.image_sha256, f"{split}:{e.sample.id}")
                if e.sample.group:
                    seen["group"].setdefault(e.sample.group, f"{split}:{e.sample.id}")
        found = []
        for e in self.entries["test"]:
            s = e.sample
            if s.id in seen["id"]:
                found.append({"id": s.id, "twin": seen["id"][s.id], "reason": "same id"})
            elif e.image_sha256 in seen["sha256"]:
                found.append(
                    {"id": s.id, "twin": seen["sha256"][e.image_sha256], "reason": "same bytes"}
                )
            elif s.group and s.group in seen["group"]:
                found.append(
                    {
                        "id": s.id,
                        "twin": seen["group"][s.group],
                        "reason": f"same lesion group {s.group!r}",
                    }
                )
        return found

    def assert_test_isolated(self) -> None:
        """Raise LeakError if any test image's id, group or content also appears in train/val."""
        found = self.test_leaks()
        if found:
            lines = "\n  ".join(_describe_leak(leak) for leak in found)
            raise LeakError(
                f"the test split leaks into the search data ({len(found)} test image(s)):\n"
                f"  {lines}\n"
                f"Pass {DROP_OPTION} (cascade build and cascade evaluate) to evaluate on the other "
                "test images: exactly these are dropped, and the report lists each with its twin."
            )

    def drop_test_leaks(self) -> Splits:
        """These splits without the test images that leak (see ``test_leaks``); the dropped
        ones are recorded in ``dropped_test`` so reports can list them."""
        found = self.test_leaks()
        gone = {leak["id"] for leak in found}
        entries = {
            **self.entries,
            "test": [e for e in self.entries["test"] if e.sample.id not in gone],
        }
        return replace(self, entries=entries, dropped_test=[*self.dropped_test, *found])

    def isolated(self, drop_test_duplicates: bool = False) -> Splits:
        """These splits with a test split that shares nothing with train/val: leaking test
        images dropped when asked to, else a LeakError that lists them."""
        if drop_test_duplicates:
            return self.drop_test_leaks()
        self.assert_test_isolated()
        return self

    def cross_split_duplicates(self) -> dict[str, int]:
        """Per pair of splits, how many sets of identical images or lesion groups span both."""
        keyed = [
            (split, key)
            for split, items in self.entries.items()
            for e in items
            for key in (
                f"sha:{e.image_sha256}",
                f"group:{e.sample.group}" if e.sample.group else None,
            )
            if key
        ]
        return count_cross_split(keyed, SPLITS)

    def verify_files(self, splits: tuple[str, ...] = SPLITS) -> list[str]:
        """Recompute the hashes of the files on disk; list every file that changed."""
        changed = []
        for split in splits:
            for e in self.entries[split]:
                if file_sha256(e.sample.image_path) != e.image_sha256:
                    changed.append(str(e.sample.image_path))
                if e.mask_sha256 and file_sha256(e.sample.mask_path) != e.mask_sha256:
                    changed.append(str(e.sample.mask_path))
        return changed

    # ---------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return str(Path(p).resolve().relative_to(self.root.resolve()))
            except ValueError:
                return str(Path(p).resolve())

        return {
            "version": SPLITS_VERSION,
            "dataset": {"root": str(self.root.resolve()), "layout": self.layout},
            "config": asdict(self.config),
            "counts": self.counts(),
            "leaks": self.leaks,
            "excluded": self.excluded,
            "dropped_test": self.dropped_test,
            "splits": {
                split: [
                    {
                        "id": e.sample.id,
                        "image": rel(e.sample.image_path),
                        "mask": rel(e.sample.mask_path),
                        "label": e.sample.label,
                        "diagnosis": e.sample.diagnosis,
                        "group": e.sample.group,
                        "official_split": e.sample.split,
                        "image_sha256": e.image_sha256,
                        "mask_sha256": e.mask_sha256,
                    }
                    for e in items
                ]
                for split, items in self.entries.items()
            },
        }

    def hashes(self) -> dict[str, dict[str, str]]:
        """Split to {image id: image SHA-256}: what a checkpoint records of the images its
        model was trained, validated and tested on."""
        return {
            split: {e.sample.id: e.image_sha256 for e in items}
            for split, items in self.entries.items()
        }

    def save(self, path: Path) -> None:
        write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path, root: Path | None = None) -> Splits:
        """Read a splits.json; ``root`` overrides the data location recorded in it."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read splits file {path}: {err}") from err
        if doc.get("version") != SPLITS_VERSION:
            raise ValueError(
                f"{path} has splits version {doc.get('version')!r}, expected {SPLITS_VERSION}; "
                "regenerate it with `melanoma data split`"
            )
        base = Path(root) if root else Path(doc["dataset"]["root"])

        def entry(d: dict) -> SplitEntry:
            sample = Sample(
                id=d["id"],
                image_path=base / d["image"],
                mask_path=base / d["mask"] if d["mask"] else None,
                label=d["label"],
                diagnosis=d["diagnosis"],
                group=d["group"],
                split=d["official_split"],
            )
            return SplitEntry(sample, d["image_sha256"], d["mask_sha256"])

        return cls(
            root=base,
            layout=doc["dataset"]["layout"],
            config=SplitConfig(**doc["config"]),
            entries={s: [entry(d) for d in doc["splits"][s]] for s in SPLITS},
            leaks=doc.get("leaks", []),
            excluded=doc.get("excluded", []),
            dropped_test=doc.get("dropped_test", []),
        )


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
    return Splits(
        report.root, report.layout, config, entries, leaks, [str(p) for p in report.problems]
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
