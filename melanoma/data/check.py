"""Validation of a dataset: every image decoded, every mask checked, every index cross-checked."""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from melanoma.data.io import ImageDecodeError, MaskValueError, file_sha256, read_mask
from melanoma.data.layouts import read_layout
from melanoma.data.metadata import coverage as metadata_coverage
from melanoma.data.records import SPLITS, Problem, Sample, count_cross_split

ON_BAD = ("fail", "skip")


class DataError(ValueError):
    """The data set has bad samples and the policy is to fail."""

    def __init__(self, problems: list[Problem], root: Path):
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{len(problems)} bad sample(s) in {root}:\n{listing}{more}\n"
            "Fix or remove these files, or pass --on-bad skip to exclude them and go on."
        )


@dataclass(frozen=True)
class SampleInfo:
    """What decoding one sample told us."""

    image_sha256: str
    image_size: tuple[int, int] | None  # (width, height)
    mask_sha256: str | None = None
    mask_coverage: float | None = None


@dataclass
class CheckReport:
    """Usable samples, their content facts, and everything that was wrong."""

    layout: str
    root: Path
    samples: list[Sample]
    info: dict[str, SampleInfo]
    problems: list[Problem]
    has_masks: bool
    excluded: list[Sample] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def summary(self) -> dict:
        """Counts a user wants to see before training on the data."""
        labels = Counter(s.label for s in self.samples)
        masks = [self.info[s.id] for s in self.samples if self.info[s.id].mask_sha256]
        coverage = np.array([m.mask_coverage for m in masks], dtype=float)
        sizes = Counter(
            f"{i.image_size[0]}x{i.image_size[1]}" for i in self.info.values() if i.image_size
        )
        splits = Counter(s.split or "unassigned" for s in self.samples)
        # Identical images or lesion groups that official splits put on two sides.
        keyed = [
            (s.split, key)
            for s in self.samples
            if s.split
            for key in (f"sha:{self.info[s.id].image_sha256}", s.group and f"group:{s.group}")
            if key
        ]
        return {
            "layout": self.layout,
            "root": str(self.root),
            "images": len(self.samples),
            "masks": len(masks),
            "melanoma": labels.get(1, 0),
            "benign": labels.get(0, 0),
            "unlabelled": labels.get(None, 0),
            "diagnoses": dict(
                Counter(s.diagnosis for s in self.samples if s.diagnosis).most_common()
            ),
            "official_splits": dict(splits),
            "cross_split_duplicates": count_cross_split(keyed, SPLITS),
            "mask_coverage": {
                "mean": float(coverage.mean()) if len(coverage) else None,
                "min": float(coverage.min()) if len(coverage) else None,
                "max": float(coverage.max()) if len(coverage) else None,
                "empty_masks": int((coverage == 0).sum()),
            },
            "metadata": metadata_coverage([s.metadata for s in self.samples]),
            "image_sizes": dict(sizes.most_common(5)),
            "distinct_image_sizes": len(sizes),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "excluded": len(self.excluded),
        }


def _inspect(sample: Sample) -> tuple[SampleInfo | None, list[Problem]]:
    problems: list[Problem] = []
    try:
        data = sample.image_path.read_bytes()
    except OSError as err:
        return None, [Problem(sample.image_path, "unreadable image", str(err), sample.id)]
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if img.format == "JPEG":
                # At an eighth of the size: every byte is still decoded, so a truncated
                # file is still caught, about four times faster on 4000 px files.
                img.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()  # a decode: catches truncated files that open() alone accepts
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        kind = "truncated image" if "truncated" in str(err).lower() else "unreadable image"
        return None, [Problem(sample.image_path, kind, f"cannot decode: {err}", sample.id)]
    info = SampleInfo(digest, size)
    if sample.mask_path is None:
        return info, problems
    if not sample.mask_path.is_file():
        return info, [
            Problem(
                sample.mask_path,
                "missing mask",
                f"no mask for image {sample.image_path.name}",
                sample.id,
            )
        ]
    try:
        binary = read_mask(sample.mask_path)
    except MaskValueError as err:
        return info, [Problem(sample.mask_path, "non-binary mask", str(err), sample.id)]
    except ImageDecodeError as err:
        return info, [Problem(sample.mask_path, "unreadable mask", str(err), sample.id)]
    mask_size = (binary.shape[1], binary.shape[0])
    if mask_size != size:
        problems.append(
            Problem(
                sample.mask_path,
                "mask size mismatch",
                f"mask is {mask_size[0]}x{mask_size[1]} but image {sample.image_path.name} "
                f"is {size[0]}x{size[1]}",
                sample.id,
            )
        )
    return SampleInfo(digest, size, file_sha256(sample.mask_path), float(binary.mean())), problems


def _outside(sample: Sample, root: Path) -> list[Problem]:
    """Problems for the files of ``sample`` that lie outside ``root``. Paths are normalised
    without following links, so a data folder that is itself a symlink stays inside."""
    base = os.path.normpath(os.path.abspath(root))
    found = []
    for path in (sample.image_path, sample.mask_path):
        if path is None:
            continue
        full = os.path.normpath(os.path.abspath(path))
        if os.path.commonpath([base, full]) != base:
            found.append(
                Problem(
                    Path(full),
                    "outside the data set",
                    f"{sample.id}: {full} is not inside {base}; files elsewhere are refused so "
                    "that an index file cannot read arbitrary files. Move the data under "
                    f"{base}, or allow it with --external-paths (data.external_paths: true)",
                    sample.id,
                )
            )
    return found


def check_dataset(
    root: Path,
    layout: str | None = None,
    *,
    on_bad: str = "fail",
    strict: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    external_paths: bool = False,
) -> CheckReport:
    """Read and fully validate a dataset.

    With ``on_bad="fail"`` any problem raises ``DataError`` naming every bad file; with
    ``"skip"`` bad samples are excluded and listed in the report. Warnings (duplicate image
    content) never exclude a sample; ``strict=True`` makes them fail like errors. Files
    outside the data set's folder (a manifest naming ``../x`` or ``/etc/passwd``) are
    refused unless ``external_paths``.
    """
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    result = read_layout(Path(root), layout)
    problems = list(result.problems)

    samples = _readable_candidates(result, problems, external_paths)
    info, bad_ids = _inspect_all(samples, problems, workers, progress)
    problems += _duplicate_content(samples, info)

    usable = [s for s in samples if s.id not in bad_ids and s.id in info]
    excluded = [s for s in samples if s.id in bad_ids or s.id not in info]
    report = CheckReport(
        result.layout, result.root, usable, info, problems, result.has_masks, excluded
    )
    failing = report.problems if strict else report.errors
    if failing and on_bad == "fail":
        raise DataError(failing, result.root)
    return report


def _readable_candidates(result, problems: list, external_paths: bool) -> list[Sample]:
    """Samples with a unique id and files inside the data set (others become problems)."""
    ids = Counter(s.id for s in result.samples)
    samples = []
    for s in result.samples:
        outside = [] if external_paths else _outside(s, result.root)
        if outside:
            problems += outside
        elif ids[s.id] > 1:
            problems.append(
                Problem(
                    s.image_path, "duplicate id", f"id {s.id!r} appears {ids[s.id]} times", s.id
                )
            )
        else:
            samples.append(s)
    return samples


def _inspect_all(samples, problems: list, workers: int | None, progress):
    """Decode and hash every sample's files in threads; (info by id, ids with problems)."""
    info: dict[str, SampleInfo] = {}
    bad_ids: set[str] = set()
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:  # PIL decoding and hashing release the GIL
        for n, (sample, (sample_info, found)) in enumerate(
            zip(samples, pool.map(_inspect, samples), strict=True), start=1
        ):
            if sample_info is not None:
                info[sample.id] = sample_info
            if found:
                problems += found
                bad_ids.add(sample.id)
            if progress:
                progress(n, len(samples))
    return info, bad_ids


def _duplicate_content(samples, info: dict) -> list[Problem]:
    """A warning for each image whose bytes an earlier image already has.

    Not an error: both files are valid images. The splitter keeps identical content on one
    side of every split it makes, and reports pairs that official splits put on two sides,
    because that is a leak the user must hear about."""
    first_with_hash: dict[str, str] = {}
    found = []
    for s in samples:
        if s.id not in info:
            continue
        digest = info[s.id].image_sha256
        if digest in first_with_hash:
            found.append(
                Problem(
                    s.image_path,
                    "duplicate image content",
                    f"same bytes as {first_with_hash[digest]}",
                    s.id,
                    severity="warning",
                )
            )
        else:
            first_with_hash[digest] = s.id
    return found
