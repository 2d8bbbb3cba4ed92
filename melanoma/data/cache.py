"""A decoded, resized, memory-mapped copy of a data set, so training never decodes JPEGs.

Layout of a cache directory:
  index.json    what is in it: size, source, one record per row (id, split, label, hashes)
  images.npy    uint8 (N, S, S, 3), memory-mapped by every reader (one copy per node)
  masks.npy     uint8 (N, S, S) with 0/1 values; rows without a mask are zero
  splits.json   the split assignment with content hashes, as `melanoma data split` writes
index.json is written last, so an interrupted prepare leaves no cache that looks complete;
while a build runs, building.json says what it decodes and filled.npy which rows it has,
so the same prepare run again decodes only the rows left.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from melanoma.data.carve import build_splits
from melanoma.data.check import check_dataset
from melanoma.data.io import load_image, load_mask
from melanoma.data.records import gc_paused
from melanoma.data.splits import SplitConfig, Splits

CACHE_VERSION = 2  # 2: masks resized with pixel-centre nearest neighbour (io.resize_mask)
INDEX = "index.json"


def is_cache(path: Path) -> bool:
    return (Path(path) / INDEX).is_file()


def prepare_cache(
    root: Path,
    size: int,
    out: Path,
    *,
    layout: str | None = None,
    on_bad: str = "fail",
    split_config: SplitConfig | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    external_paths: bool = False,
) -> dict:
    """Validate, split, decode and resize ``root`` into ``out``; return the cache summary."""
    if not 16 <= size <= 2048:
        raise ValueError(f"cache size must be between 16 and 2048 pixels, got {size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not is_cache(out) and not _building(out):
        raise FileExistsError(
            f"{out} exists and is not a melanoma cache; choose an empty or new directory"
        )
    report = check_dataset(
        root, layout, on_bad=on_bad, workers=workers, external_paths=external_paths
    )
    splits = build_splits(report, split_config or SplitConfig())
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)

    rows = [e for split in ("train", "val", "test") for e in splits.entries[split]]
    split_of = {e.sample.id: split for split, items in splits.entries.items() for e in items}
    n = len(rows)
    filled = _open_arrays(out, rows, size)
    todo = np.flatnonzero(filled == 0)
    empty_mask = np.zeros((size, size), np.uint8)
    with _RowWriter(out / "images.npy") as images, _RowWriter(out / "masks.npy") as masks:

        def fill(i: int) -> None:
            sample = rows[i].sample
            images.write(i, load_image(sample.image_path, size))
            masks.write(i, load_mask(sample.mask_path, size) if rows[i].mask_sha256 else empty_mask)
            # After the row: a build killed here decodes this row again, never skips it.
            # (Written pages outlive a killed process; a machine crash may lose them.)
            filled[i] = 1

        with ThreadPoolExecutor(workers or 4) as pool:
            for done, _ in enumerate(pool.map(fill, todo), start=n - len(todo) + 1):
                if progress:
                    progress(done, n)
    filled.flush()

    splits.save(out / "splits.json")
    index = {
        "version": CACHE_VERSION,
        "size": size,
        "n": n,
        "source": {"root": str(Path(root).resolve()), "layout": report.layout},
        "summary": report.summary(),
        "samples": [
            {
                "row": i,
                "id": e.sample.id,
                "split": split_of[e.sample.id],
                "label": e.sample.label,
                "diagnosis": e.sample.diagnosis,
                "group": e.sample.group,
                "has_mask": e.mask_sha256 is not None,
                "image_sha256": e.image_sha256,
            }
            for i, e in enumerate(rows)
        ],
    }
    (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    for name in (BUILDING, FILLED):
        (out / name).unlink(missing_ok=True)
    return {
        "cache": str(out),
        "size": size,
        "images": n,
        "splits": splits.counts(),
        "bytes": (out / "images.npy").stat().st_size + (out / "masks.npy").stat().st_size,
    }


BUILDING = "building.json"  # what a build in progress decodes: a rerun of it resumes
FILLED = "filled.npy"  # uint8 (N,): 1 for every row decoded so far


def _building(out: Path) -> bool:
    return (out / BUILDING).is_file()


def _read_key(out: Path) -> dict | None:
    try:
        return json.loads((out / BUILDING).read_text())
    except (OSError, json.JSONDecodeError):  # a build killed while writing it: start over
        return None


def _open_arrays(out: Path, rows: list, size: int):
    """The cache's arrays and which of their rows are filled: those of an interrupted
    build of the same rows at the same size (resumed), else new ones."""
    key = {
        "version": CACHE_VERSION,
        "size": size,
        "rows": hashlib.sha256(
            json.dumps([(e.sample.id, e.image_sha256, e.mask_sha256) for e in rows]).encode()
        ).hexdigest(),
    }
    n = len(rows)
    shapes = {"images.npy": (n, size, size, 3), "masks.npy": (n, size, size), FILLED: (n,)}
    resumed = _building(out) and _read_key(out) == key and all((out / f).is_file() for f in shapes)
    if resumed:
        arrays = [np.load(out / f, mmap_mode="r+") for f in shapes]
        resumed = all(a.shape == shape for a, shape in zip(arrays, shapes.values(), strict=True))
    if not resumed:
        (out / INDEX).unlink(missing_ok=True)
        (out / BUILDING).write_text(json.dumps(key) + "\n")
        arrays = [
            np.lib.format.open_memmap(out / f, mode="w+", dtype=np.uint8, shape=shape)
            for f, shape in shapes.items()
        ]
    for a in arrays[:2]:
        a.flush()  # the headers on disk; rows go through _RowWriter
    return arrays[2]


class _RowWriter:
    """Writes rows of a ``.npy`` file in place with ``pwrite``. Rows written through a
    memory map stay mapped in the builder, so its resident memory grew with the whole
    cache (9.2 GB at 33,126 images of 256 px); written this way they go to the page cache,
    which the kernel writes back and reclaims."""

    def __init__(self, path: Path) -> None:
        probe = np.load(path, mmap_mode="r")
        self.path, self.offset, self.row_shape = path, probe.offset, probe.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape))
        self.size_bytes = self.offset + self.row_bytes * probe.shape[0]
        del probe
        self.fd = os.open(path, os.O_RDWR)

    def write(self, i: int, row: np.ndarray) -> None:
        assert row.shape == self.row_shape and row.dtype == np.uint8, (row.shape, row.dtype)
        data = np.ascontiguousarray(row).tobytes()
        view, at = memoryview(data), self.offset + i * self.row_bytes
        while view:  # a regular file takes all at once unless the disk is full
            try:
                written = os.pwrite(self.fd, view, at)
            except OSError as err:
                raise OSError(
                    err.errno,
                    f"could not write row {i} of {self.path} ({err.strerror}); this file "
                    f"alone needs {self.size_bytes / 2**20:.0f} MB: free the space, or set "
                    "MELANOMA_CACHE (or --out) to a larger disk",
                ) from err
            if written == 0:
                raise OSError(f"could not write row {i} of {self.path}: is the disk full?")
            view, at = view[written:], at + written

    def __enter__(self) -> _RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                os.fsync(self.fd)  # on disk before index.json says the cache is whole
        finally:
            os.close(self.fd)


@dataclass
class Cache:
    """A prepared cache, opened read-only."""

    path: Path
    index: dict

    @classmethod
    def open(cls, path: Path) -> Cache:
        path = Path(path)
        if not is_cache(path):
            raise FileNotFoundError(
                f"{path} is not a prepared cache (no {INDEX}); create one with "
                f"`melanoma data prepare DATA_DIR --size S --out {path}`"
            )
        with gc_paused():  # one record per image: 33,126 in ISIC 2020
            index = json.loads((path / INDEX).read_text())
        if index.get("version") != CACHE_VERSION:
            raise ValueError(
                f"cache {path} has version {index.get('version')}, expected {CACHE_VERSION}; "
                "prepare it again"
            )
        return cls(path, index)

    @property
    def size(self) -> int:
        return int(self.index["size"])

    def splits(self) -> Splits:
        return Splits.load(self.path / "splits.json", root=Path(self.index["source"]["root"]))

    def rows(self, split: str) -> list[int]:
        return [r["row"] for r in self.index["samples"] if r["split"] == split]


def _fingerprint(root: Path, exclude: Path) -> list:
    """Every file's relative path, size and modification time: a changed, added or removed
    file gives another cache. ``exclude`` (the cache itself, if it lies inside) is skipped."""
    rows = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and Path(directory, d).resolve() != exclude.resolve()
        )
        for name in sorted(files):
            if name.startswith("."):
                continue
            stat = os.stat(os.path.join(directory, name))
            rows.append(
                [
                    os.path.relpath(os.path.join(directory, name), root),
                    stat.st_size,
                    stat.st_mtime_ns,
                ]
            )
    return rows


def _external_fingerprint(root: Path, layout: str | None) -> list:
    """Path, size and modification time of every image and mask the data set's index names
    outside ``root`` (``external_paths``): the folder walk cannot see them change."""
    from melanoma.data.layouts import read_layout

    rows = []
    for sample in read_layout(root, layout).samples:
        for path in (sample.image_path, sample.mask_path):
            if path is None:
                continue
            path = Path(path).resolve()
            if path.is_relative_to(root):
                continue
            try:
                stat = path.stat()
            except OSError:  # missing: the check that follows names it
                rows.append([str(path), None, None])
                continue
            rows.append([str(path), stat.st_size, stat.st_mtime_ns])
    return sorted(rows)


def node_cache(
    root: Path,
    size: int,
    *,
    layout: str | None = None,
    on_bad: str = "fail",
    split_config: SplitConfig | None = None,
    cache_dir: Path | None = None,
    external_paths: bool = False,
) -> Path:
    """The decoded cache of the raw data set ``root`` at ``size``, made once per machine
    and shared by every trial and worker on it (they memory-map the same files).

    It lives under ``$MELANOMA_CACHE/decoded/`` (default ``~/.cache/melanoma``), keyed by
    the data set's path, its files' sizes and times, the size and the split settings. A
    file lock makes concurrent trials wait for the one that decodes instead of decoding
    too; the cache appears by rename, so nobody reads half of one.
    """
    import shutil
    import sys

    from melanoma.config import cache_root

    root = Path(root).resolve()
    base = Path(cache_dir or cache_root())
    key = {
        "version": CACHE_VERSION,
        "root": str(root),
        "size": size,
        "layout": layout,
        "on_bad": on_bad,
        "split": (split_config or SplitConfig()).cache_key(),
        "external_paths": external_paths,
        "files": _fingerprint(root, exclude=base),
    }
    if external_paths:
        key["external_files"] = _external_fingerprint(root, layout)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = base / "decoded"
    target = base / f"{root.name}-{size}px-{digest}"
    if is_cache(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(base / f"{target.name}.lock"):  # one decoder per machine, any OS
        if is_cache(target):  # another process made it while we waited
            return target
        print(
            f"[data] decoding {root} at {size} px into {target} (once per machine)",
            file=sys.stderr,
            flush=True,
        )
        # Built under a name of its own (the lock keeps it to one builder), so that a build
        # killed or interrupted midway resumes there (prepare_cache's building.json) instead
        # of decoding everything again; a build that fails with an error starts over.
        tmp = base / f".building-{target.name}"
        # What the build is of, but for its files: a stale build (files changed since) of
        # the same data set and settings is told apart from one a run may still resume.
        owner = {k: v for k, v in key.items() if k not in ("files", "external_files")}
        _owner_file(tmp).write_text(json.dumps(owner, sort_keys=True))
        try:
            prepare_cache(
                root,
                size,
                tmp,
                layout=layout,
                on_bad=on_bad,
                split_config=split_config,
                external_paths=external_paths,
            )
            os.rename(tmp, target)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            _owner_file(tmp).unlink(missing_ok=True)
            raise
        _owner_file(tmp).unlink(missing_ok=True)
    _drop_stale_builds(base, json.dumps(owner, sort_keys=True), keep=target.name)
    return target


def _owner_file(build: Path) -> Path:
    return build.with_name(build.name + ".owner.json")


def _drop_stale_builds(base: Path, owner: str, keep: str) -> None:
    """Killed builds of the same data set with the same settings, for files that have
    changed since (another digest): no run will resume them, and each may be as large as
    the cache. One whose lock another process holds is still being built, and is left."""
    import shutil

    for record in base.glob(".building-*.owner.json"):
        build = record.with_name(record.name.removesuffix(".owner.json"))
        name = build.name.removeprefix(".building-")
        try:
            if name == keep or record.read_text() != owner:
                continue
            with FileLock(base / f"{name}.lock", timeout=0):
                shutil.rmtree(build, ignore_errors=True)
                record.unlink(missing_ok=True)
        except OSError:  # held by a builder (filelock's Timeout), or not ours to open
            continue
