"""Data layer: readers for ISIC layouts, validation, splits, cache, datasets, synthetic data."""

from melanoma.data.cache import Cache, is_cache, prepare_cache
from melanoma.data.check import ON_BAD, CheckReport, DataError, check_dataset
from melanoma.data.dataset import CacheSource, DataBundle, LesionDataset, RawSource, open_data
from melanoma.data.layouts import LAYOUTS, detect_layout, read_layout
from melanoma.data.records import SPLITS, Problem, ReadResult, Sample
from melanoma.data.splits import LeakError, SplitConfig, Splits, assign_splits, build_splits
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.data.transforms import IMAGENET, Normalization, Preprocess, build_augmentation

__all__ = [
    "IMAGENET",
    "LAYOUTS",
    "ON_BAD",
    "SPLITS",
    "Cache",
    "CacheSource",
    "CheckReport",
    "DataBundle",
    "DataError",
    "LeakError",
    "LesionDataset",
    "Normalization",
    "Preprocess",
    "Problem",
    "RawSource",
    "ReadResult",
    "Sample",
    "SplitConfig",
    "Splits",
    "SynthConfig",
    "assign_splits",
    "build_augmentation",
    "build_splits",
    "check_dataset",
    "detect_layout",
    "is_cache",
    "open_data",
    "prepare_cache",
    "read_layout",
    "write_synthetic",
]
