"""The splits record: which image is in which split, with the content hash of every file,
its leak checks and its file. ``carve`` decides the assignment.

Rules the assignment follows, in order:
1. Official splits the layout provides (ISIC 2017 Training/Validation/Test, ...) are kept.
2. Splits the layout lacks are carved from the training pool, stratified by melanoma label;
   with ``val_from_train`` a validation share is carved beside an official validation split
   too, and every entry keeps its official split so either part can be scored alone.
3. Images of one lesion or patient (the layout's group id) and byte-identical images form
   one unit that always lands in one split. A unit that official splits already put on two
   sides is reported as a leak, never silently moved.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from melanoma.data.io import file_sha256
from melanoma.data.records import SPLITS, Sample, count_cross_split, gc_paused
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
            with gc_paused():
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

        with gc_paused():
            entries = {s: [entry(d) for d in doc["splits"][s]] for s in SPLITS}
        return cls(
            root=base,
            layout=doc["dataset"]["layout"],
            config=SplitConfig(**doc["config"]),
            entries=entries,
            leaks=doc.get("leaks", []),
            excluded=doc.get("excluded", []),
            dropped_test=doc.get("dropped_test", []),
        )
