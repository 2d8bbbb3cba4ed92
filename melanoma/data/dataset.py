"""Torch datasets over either the raw layout or a prepared cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from melanoma.data.cache import Cache, is_cache, node_cache
from melanoma.data.carve import build_splits
from melanoma.data.check import check_dataset
from melanoma.data.io import load_image, load_mask
from melanoma.data.records import SPLITS, Sample
from melanoma.data.splits import SplitConfig, Splits
from melanoma.data.synth import SYNTHETIC_PREFIX, materialize_synthetic


@dataclass(frozen=True)
class Item:
    """What one row of a source holds before augmentation."""

    image: np.ndarray  # uint8 (S, S, 3)
    mask: np.ndarray | None  # uint8 0/1 (S, S), None when the sample has no mask
    label: int | None
    id: str


class RawSource:
    """Decodes and resizes files on every access (what the cache saves us from)."""

    def __init__(self, samples: list[Sample], size: int, has_mask: list[bool] | None = None):
        self.samples = samples
        self.size = size
        self.has_mask = has_mask or [s.mask_path is not None for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int | None]:
        return [s.label for s in self.samples]

    def get(self, i: int) -> Item:
        s = self.samples[i]
        mask = load_mask(s.mask_path, self.size) if self.has_mask[i] else None
        return Item(load_image(s.image_path, self.size), mask, s.label, s.id)


class CacheSource:
    """Rows of a prepared cache; memory maps are opened lazily in each worker process."""

    def __init__(self, cache: Cache, rows: list[int]):
        self.path = cache.path
        self.size = cache.size
        self.rows = rows
        records = cache.index["samples"]
        self._meta = [records[r] for r in rows]
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self) -> list[int | None]:
        return [m["label"] for m in self._meta]

    def __getstate__(self) -> dict:
        # Never pickle an open memmap into DataLoader workers or Ray tasks.
        return {**self.__dict__, "_images": None, "_masks": None}

    def get(self, i: int) -> Item:
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
            self._masks = np.load(self.path / "masks.npy", mmap_mode="r")
        row, meta = self.rows[i], self._meta[i]
        mask = np.array(self._masks[row]) if meta["has_mask"] else None
        return Item(np.array(self._images[row]), mask, meta["label"], meta["id"])


class LesionDataset(Dataset):
    """Items as tensors: image uint8 (3, S, S), mask uint8 (1, S, S), label (-1 if unknown).

    Indices may encode an epoch (``epoch * len(self) + i``, as ``EpochSampler`` yields):
    augmentation is then seeded by (seed, epoch, i), so a run gives the same batches
    whatever the number of loader workers, and a resumed run continues exactly.
    ``mask_override`` replaces ground-truth masks (for example by out-of-fold predictions).
    """

    def __init__(
        self,
        source: RawSource | CacheSource,
        augment: A.Compose | None = None,
        seed: int = 0,
        mask_override: dict[str, np.ndarray] | None = None,
    ):
        self.source = source
        self.augment = augment
        self.seed = seed
        self.mask_override = mask_override

    def __len__(self) -> int:
        return len(self.source)

    def labels(self) -> list[int | None]:
        return self.source.labels()

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(int(index), len(self.source))
        item = self.source.get(i)
        image, mask = item.image, item.mask
        if self.mask_override is not None and item.id in self.mask_override:
            mask = self.mask_override[item.id]
        has_mask = mask is not None
        if mask is None:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        if self.augment is not None:
            self.augment.set_random_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None],
            "has_mask": has_mask,
            "label": -1 if item.label is None else item.label,
            "id": item.id,
        }


class EpochSampler(Sampler[int]):
    """Seeded per-epoch shuffling, sharded over ``world_size`` ranks, epoch encoded in the index.

    Every rank sees the same number of indices (the permutation is padded by wrapping), as
    DDP requires; ``set_epoch`` must be called before each epoch.
    """

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = len(self) * self.world_size
        order = (order * (total // self.n + 1))[:total]
        base = self.epoch * self.n
        return iter([base + i for i in order[self.rank :: self.world_size]])


@dataclass
class DataBundle:
    """Splits plus a way to get a dataset per split, from a cache or from raw files."""

    splits: Splits
    size: int
    cache: Cache | None = None

    def source(self, split: str) -> RawSource | CacheSource:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        entries = self.splits.entries[split]
        if self.cache is not None:
            row_of = {r["id"]: r["row"] for r in self.cache.index["samples"]}
            return CacheSource(self.cache, [row_of[e.sample.id] for e in entries])
        return RawSource(
            [e.sample for e in entries], self.size, [e.mask_sha256 is not None for e in entries]
        )

    def dataset(self, split: str, augment: A.Compose | None = None, **kwargs) -> LesionDataset:
        return LesionDataset(self.source(split), augment, **kwargs)

    def with_splits(self, splits: Splits) -> DataBundle:
        """The same data with another assignment (for example cross-validation folds)."""
        return DataBundle(splits, self.size, self.cache)


def open_data(
    path: Path,
    size: int,
    *,
    layout: str | None = None,
    on_bad: str = "fail",
    split_config: SplitConfig | None = None,
    decode_once: bool = False,
    external_paths: bool = False,
) -> DataBundle:
    """Open a prepared cache (``size`` must match), validate and split a raw data set, or
    generate one (``synthetic:N[:SIZE[:SEED]]``). ``decode_once`` reads a raw data set
    through this machine's shared decoded cache (``node_cache``), made on first use."""
    if str(path).startswith(SYNTHETIC_PREFIX):
        path = materialize_synthetic(str(path))
    path = Path(path)
    if decode_once and not is_cache(path):
        path = node_cache(
            path,
            size,
            layout=layout,
            on_bad=on_bad,
            split_config=split_config,
            external_paths=external_paths,
        )
    if is_cache(path):
        cache = Cache.open(path)
        if cache.size != size:
            raise ValueError(
                f"cache {path} holds {cache.size}x{cache.size} images but image_size={size} was "
                f"asked for; prepare a cache at {size} or set image_size to {cache.size}"
            )
        splits = cache.splits()
        if split_config is not None and splits.config != split_config:
            raise ValueError(
                f"cache {path} was split with {splits.config.describe()} but "
                f"{split_config.describe()} was asked for; set data.split_seed and the "
                "fractions to the cache's, or prepare a cache with these settings"
            )
        return DataBundle(splits, size, cache)
    report = check_dataset(path, layout, on_bad=on_bad, external_paths=external_paths)
    return DataBundle(build_splits(report, split_config or SplitConfig()), size)
