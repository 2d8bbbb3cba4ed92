"""Data layer: readers for ISIC layouts, validation, splits, cache, datasets, synthetic data.

Names load on first use, so that ``melanoma.data.io`` (image decoding, all that
``melanoma predict`` needs) imports without torch.
"""

from __future__ import annotations

from melanoma.lazy import lazy_exports

_EXPORTS = {
    "Cache": "melanoma.data.cache",
    "is_cache": "melanoma.data.cache",
    "prepare_cache": "melanoma.data.cache",
    "ON_BAD": "melanoma.data.check",
    "CheckReport": "melanoma.data.check",
    "DataError": "melanoma.data.check",
    "check_dataset": "melanoma.data.check",
    "CacheSource": "melanoma.data.dataset",
    "DataBundle": "melanoma.data.dataset",
    "LesionDataset": "melanoma.data.dataset",
    "RawSource": "melanoma.data.dataset",
    "open_data": "melanoma.data.dataset",
    "LAYOUTS": "melanoma.data.layouts",
    "detect_layout": "melanoma.data.layouts",
    "read_layout": "melanoma.data.layouts",
    "SPLITS": "melanoma.data.records",
    "Problem": "melanoma.data.records",
    "ReadResult": "melanoma.data.records",
    "Sample": "melanoma.data.records",
    "LeakError": "melanoma.data.splits",
    "SplitConfig": "melanoma.data.splits",
    "Splits": "melanoma.data.splits",
    "assign_splits": "melanoma.data.carve",
    "build_splits": "melanoma.data.carve",
    "SynthConfig": "melanoma.data.synth",
    "write_synthetic": "melanoma.data.synth",
    "IMAGENET": "melanoma.data.transforms",
    "Normalization": "melanoma.data.transforms",
    "Preprocess": "melanoma.data.transforms",
    "build_augmentation": "melanoma.data.transforms",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
