"""Readers for the official ISIC challenge layouts, 2016 to 2020."""

from __future__ import annotations

import csv
from pathlib import Path

from melanoma.data.labels import parse_binary_label
from melanoma.data.layouts.common import (
    LabelRow,
    Part,
    first_file,
    groups_from,
    index_images,
    join_split,
    label_row,
    masks_in,
    metadata_csv,
    read_csv,
    read_parts,
    require_columns,
    rows_to_labels,
)
from melanoma.data.records import Problem, ReadResult, Sample


# --------------------------------------------------------------------------- ISIC 2016
def read_isic2016(root: Path) -> ReadResult:
    def part(tag: str, split: str) -> Part:
        images_dir = root / f"ISBI2016_ISIC_Part3_{tag}_Data"
        if not images_dir.is_dir():
            images_dir = root / f"ISBI2016_ISIC_Part1_{tag}_Data"
        masks = root / f"ISBI2016_ISIC_Part1_{tag}_GroundTruth"
        return Part(
            images_dir,
            split,
            root / f"ISBI2016_ISIC_Part3_{tag}_GroundTruth.csv",
            _isic2016_labels,
            mask_for=masks_in(masks, "_Segmentation.png"),
        )

    samples, problems = read_parts([part("Training", "train"), part("Test", "test")])
    return ReadResult("isic2016", root, samples, problems)


def _isic2016_labels(csv_path: Path) -> tuple[dict[str, LabelRow | None], list[Problem]]:
    # The 2016 CSVs have no header: "ISIC_0000000,benign" (training) or ",0.0" (test).
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        raw = [r for r in csv.reader(fh) if r]
    if raw and raw[0][0].strip().lower() in ("image_id", "image", "id", "name"):
        raw = raw[1:]
    rows = []
    for n, r in enumerate(raw, start=1):
        value = r[1] if len(r) > 1 else ""
        rows.append((n, r[0].strip(), lambda v=value: label_row(parse_binary_label(v), None)))
    return rows_to_labels(rows, csv_path)


# --------------------------------------------------------------------------- ISIC 2017
_ISIC2017_SPLITS = (
    ("Training", "train"),
    ("Validation", "val"),
    ("Test_v2", "test"),
    ("Test", "test"),
)


def read_isic2017(root: Path) -> ReadResult:
    def part(tag: str, split: str) -> Part:
        metadata = root / f"ISIC-2017_{tag}_Data_metadata.csv"
        return Part(
            root / f"ISIC-2017_{tag}_Data",
            split,
            root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv",
            _isic2017_labels,
            mask_for=masks_in(root / f"ISIC-2017_{tag}_Part1_GroundTruth", "_segmentation.png"),
            metadata=lambda: metadata_csv(
                metadata, "image_id", {"age": "age_approximate", "sex": "sex"}
            ),
        )

    samples, problems = read_parts(part(tag, split) for tag, split in _ISIC2017_SPLITS)
    return ReadResult("isic2017", root, samples, problems)


def _isic2017_labels(csv_path: Path) -> tuple[dict[str, LabelRow | None], list[Problem]]:
    columns, rows = read_csv(csv_path)
    require_columns(csv_path, columns, ("image_id", "melanoma", "seborrheic_keratosis"))

    def make(row: dict[str, str]) -> LabelRow:
        mel = parse_binary_label(row["melanoma"])
        sk = parse_binary_label(row["seborrheic_keratosis"])
        if mel and sk:
            raise ValueError("both melanoma and seborrheic_keratosis are 1")
        diagnosis = "melanoma" if mel else "seborrheic_keratosis" if sk else "nevus"
        return LabelRow(mel, diagnosis)

    return rows_to_labels(
        ((n + 2, r["image_id"], lambda r=r: make(r)) for n, r in enumerate(rows)), csv_path
    )


# --------------------------------------------------------------------- ISIC 2018 / 2019
def _one_hot_labels(
    csv_path: Path, groups: dict[str, str]
) -> tuple[dict[str, LabelRow | None], list[Problem]]:
    """Task 3 ground truth: one column per diagnosis, one-hot; melanoma is MEL."""
    columns, rows = read_csv(csv_path)
    require_columns(csv_path, columns, ("image", "MEL"))
    classes = [c for c in columns if c != "image"]

    def make(row: dict[str, str]) -> LabelRow:
        values = {c: float(row[c] or 0) for c in classes}
        hot = [c for c, v in values.items() if v >= 0.5]
        if len(hot) != 1:
            raise ValueError(f"expected exactly one diagnosis column set to 1, got {hot or 'none'}")
        return LabelRow(int(hot[0] == "MEL"), hot[0], groups.get(row["image"]))

    return rows_to_labels(
        ((n + 2, r["image"], lambda r=r: make(r)) for n, r in enumerate(rows)), csv_path
    )


def read_isic2018(root: Path) -> ReadResult:
    samples: dict[str, Sample] = {}
    problems: list[Problem] = []
    groups = groups_from(root / "ISIC2018_Task3_Training_LesionGroupings.csv", "image", "lesion_id")
    for tag, split in (("Training", "train"), ("Validation", "val"), ("Test", "test")):
        mask_dir = root / f"ISIC2018_Task1_{tag}_GroundTruth"

        def mask_for(i: str, d: Path = mask_dir) -> Path | None:
            p = d / f"{i}_segmentation.png"
            return p if p.is_file() else None

        t3_dir = root / f"ISIC2018_Task3_{tag}_Input"
        if t3_dir.is_dir():
            truth = f"ISIC2018_Task3_{tag}_GroundTruth"
            csv_path = first_file(root / truth / f"{truth}.csv", root / f"{truth}.csv")
            labels = None
            if csv_path is not None:
                labels, found = _one_hot_labels(csv_path, groups)
                problems += found
            got, found = join_split(t3_dir, labels, csv_path, split, mask_for=mask_for)
            problems += found
            samples.update((s.id, s) for s in got)
        t1_dir = root / f"ISIC2018_Task1-2_{tag}_Input"
        if t1_dir.is_dir():
            # Task 1 images carry masks but no diagnosis: usable for the segmenter only.
            for image_id, path in index_images(t1_dir).items():
                if image_id not in samples:
                    samples[image_id] = Sample(
                        image_id, path, mask_dir / f"{image_id}_segmentation.png", split=split
                    )
    return ReadResult("isic2018", root, list(samples.values()), problems)


def read_isic2019(root: Path) -> ReadResult:
    def part(tag: str, split: str) -> Part:
        meta_csv = root / f"ISIC_2019_{tag}_Metadata.csv"
        groups = groups_from(meta_csv, "image", "lesion_id")
        fields = {"age": "age_approximate", "sex": "sex", "site": "anatom_site_general"}
        return Part(
            root / f"ISIC_2019_{tag}_Input",
            split,
            root / f"ISIC_2019_{tag}_GroundTruth.csv",
            lambda csv_path: _one_hot_labels(csv_path, groups),
            metadata=lambda: metadata_csv(meta_csv, "image", fields),
            metadata_first=True,
        )

    samples, problems = read_parts([part("Training", "train"), part("Test", "test")])
    return ReadResult("isic2019", root, samples, problems, has_masks=False)


# --------------------------------------------------------------------------- ISIC 2020
ISIC2020_CSVS = (
    "train.csv",
    "ISIC_2020_Training_GroundTruth_v2.csv",
    "ISIC_2020_Training_GroundTruth.csv",
)
_ISIC2020_IMAGE_DIRS = (
    "train",
    "jpeg/train",
    "ISIC_2020_Training_JPEG/train",
    "ISIC_2020_Training_JPEG",
)


def read_isic2020(root: Path) -> ReadResult:
    csv_path = first_file(*(root / c for c in ISIC2020_CSVS))
    assert csv_path is not None, "detect() guarantees the CSV"
    images_dir = next(
        (root / d for d in _ISIC2020_IMAGE_DIRS if (root / d).is_dir()), root / "train"
    )
    columns, rows = read_csv(csv_path)
    require_columns(csv_path, columns, ("image_name", "target"))

    def make(row: dict[str, str]) -> LabelRow:
        diagnosis = row.get("diagnosis") or None
        return LabelRow(parse_binary_label(row["target"]), diagnosis, row.get("patient_id") or None)

    labels, problems = rows_to_labels(
        ((n + 2, r["image_name"], lambda r=r: make(r)) for n, r in enumerate(rows)), csv_path
    )
    metadata, found = metadata_csv(
        csv_path,
        "image_name",
        {"age": "age_approx", "sex": "sex", "site": "anatom_site_general_challenge"},
    )
    samples, joined = join_split(images_dir, labels, csv_path, None, metadata=metadata)
    return ReadResult("isic2020", root, samples, problems + found + joined, has_masks=False)
