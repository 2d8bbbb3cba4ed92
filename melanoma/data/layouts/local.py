"""Readers for the project's own folders: the old research repo's layout and a manifest
CSV."""

from __future__ import annotations

import os
from pathlib import Path

from melanoma.data.labels import parse_binary_label
from melanoma.data.layouts.common import (
    LabelRow,
    index_images,
    join_split,
    label_row,
    read_csv,
    read_metadata,
    require_columns,
    rows_to_labels,
)
from melanoma.data.metadata import Metadata
from melanoma.data.records import Problem, ReadResult, Sample


# ------------------------------------------------------------------ old research layout
def read_research(root: Path) -> ReadResult:
    images = index_images(root / "images_all")
    masks_dir = root / "masks_all"
    mask_index: dict[str, Path] = {}
    if masks_dir.is_dir():
        for entry in os.scandir(masks_dir):
            stem = os.path.splitext(entry.name)[0]
            for suffix in ("_segmentation", "_Segmentation", "_mask"):
                stem = stem.removesuffix(suffix)
            mask_index[stem] = Path(entry.path)
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name, split in (("train_data.csv", "train"), ("test_data.csv", "test")):
        csv_path = root / name
        if not csv_path.is_file():
            continue
        columns, rows = read_csv(csv_path)
        require_columns(csv_path, columns, ("name", "class"))

        def make(row: dict[str, str]) -> LabelRow:
            return label_row(parse_binary_label(row["class"]), row["class"].lower())

        labels, found = rows_to_labels(
            (
                (n + 2, os.path.splitext(r["name"])[0], lambda r=r: make(r))
                for n, r in enumerate(rows)
            ),
            csv_path,
        )
        problems += found
        for image_id in list(labels):
            if image_id in seen:
                problems.append(
                    Problem(
                        csv_path,
                        "duplicate id",
                        f"{image_id!r} is also listed in {seen[image_id]}",
                        image_id,
                    )
                )
                del labels[image_id]
            else:
                seen[image_id] = name
        split_images = {i: p for i, p in images.items() if i in labels}
        got, found = join_split(
            root / "images_all",
            labels,
            csv_path,
            split,
            mask_for=lambda i: mask_index.get(i, masks_dir / f"{i}.png"),
            images=split_images,
        )
        samples += got
        problems += found
    for image_id, path in images.items():
        if image_id not in seen:
            problems.append(
                Problem(
                    path,
                    "no label",
                    "image is in neither train_data.csv nor test_data.csv",
                    image_id,
                )
            )
    return ReadResult("research", root, samples, problems)


# ----------------------------------------------------------------------- manifest CSV
MANIFEST_NAME = "manifest.csv"


def read_manifest(root: Path) -> ReadResult:
    csv_path = root if root.is_file() else root / MANIFEST_NAME
    base = csv_path.parent
    columns, rows = read_csv(csv_path)
    require_columns(csv_path, columns, ("image", "label"))
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    # Optional columns age, sex, site: the fields of the data set's metadata.
    fields = [f for f in ("age", "sex", "site") if f in columns]
    for n, row in enumerate(rows, start=2):
        image = base / row["image"]
        image_id = row.get("id") or Path(row["image"]).stem
        if image_id in seen:
            problems.append(
                Problem(csv_path, "duplicate id", f"line {n}: {image_id!r} listed twice", image_id)
            )
            continue
        seen.add(image_id)
        try:
            label = parse_binary_label(row["label"]) if row["label"] != "" else None
            split = row.get("split") or None
            sample = Sample(
                id=image_id,
                image_path=image,
                mask_path=base / row["mask"] if row.get("mask") else None,
                label=label,
                diagnosis=row.get("diagnosis") or None,
                group=row.get("group") or None,
                split=split,
                metadata=_manifest_metadata(row, fields, image_id, n, csv_path, problems),
            )
        except ValueError as err:
            problems.append(
                Problem(csv_path, "bad label row", f"line {n} ({image_id}): {err}", image_id)
            )
            continue
        if not image.is_file():
            problems.append(
                Problem(csv_path, "missing image", f"line {n}: no image at {image}", image_id)
            )
            continue
        samples.append(sample)
    has_masks = "mask" in columns and any(s.mask_path for s in samples)
    return ReadResult("manifest", base, samples, problems, has_masks=has_masks)


def _manifest_metadata(
    row: dict[str, str], fields: list[str], image_id: str, line: int, csv_path: Path, problems
) -> Metadata | None:
    if not fields:
        return None
    found, bad = read_metadata([(line, image_id, {f: row[f] for f in fields})], csv_path)
    problems += bad
    return found[image_id]
