"""What every layout reader shares: CSV and folder indexing, label rows, the join of an
image folder with its label table, and metadata."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from melanoma.data.io import IMAGE_EXTENSIONS
from melanoma.data.metadata import Metadata, parse_metadata
from melanoma.data.records import Problem, Sample

# Files that sit beside the images in official downloads but are not dermoscopy images.
_NOT_IMAGES = ("_superpixels", "_segmentation", "_Segmentation", "_mask")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV with a header row (BOM tolerated) into its columns and row dicts."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        columns = [c.strip() for c in (reader.fieldnames or [])]
    return columns, rows


def index_images(folder: Path) -> dict[str, Path]:
    """Map image id (file stem) to path for every image file directly inside ``folder``."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        if not entry.is_file() or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if any(stem.endswith(s) for s in _NOT_IMAGES):
            continue
        found[stem] = Path(entry.path)
    return found


@dataclass(frozen=True)
class LabelRow:
    label: int | None
    diagnosis: str | None = None
    group: str | None = None


def join_split(
    images_dir: Path,
    labels: dict[str, LabelRow | None] | None,
    labels_csv: Path | None,
    split: str | None,
    *,
    mask_for: Callable[[str], Path | None] = lambda image_id: None,
    metadata: dict[str, Metadata] | None = None,
    images: dict[str, Path] | None = None,
    unlabelled_ok: bool = False,
) -> tuple[list[Sample], list[Problem]]:
    """Join an image folder (``images``, or every image in ``images_dir``) with its label
    table (and metadata, where the layout has it), reporting both kinds of orphan."""
    if images is None:
        images = index_images(images_dir)
    samples: list[Sample] = []
    problems: list[Problem] = []
    if labels is not None:
        for image_id in labels:
            if image_id not in images:
                problems.append(
                    Problem(
                        labels_csv or images_dir,
                        "missing image",
                        f"label row for {image_id!r} but no image {image_id}.* in {images_dir}",
                        image_id,
                    )
                )
    for image_id, path in images.items():
        if labels is not None and image_id in labels and labels[image_id] is None:
            continue  # its label row is bad and already reported
        row = labels.get(image_id) if labels is not None else None
        if row is None and labels is not None and not unlabelled_ok:
            problems.append(
                Problem(path, "no label", f"image has no row in {labels_csv}", image_id)
            )
            continue
        samples.append(
            Sample(
                id=image_id,
                image_path=path,
                mask_path=mask_for(image_id),
                label=row.label if row else None,
                diagnosis=row.diagnosis if row else None,
                group=row.group if row else None,
                split=split,
                metadata=_metadata_of(image_id, metadata),
            )
        )
    return samples, problems


def _metadata_of(image_id: str, metadata: dict[str, Metadata] | None) -> Metadata | None:
    """An image's metadata; an image the metadata table leaves out has every field the
    table records as unknown."""
    if metadata is None:
        return None
    if image_id in metadata:
        return metadata[image_id]
    template = next(iter(metadata.values()), Metadata())
    return Metadata(
        sex=None if template.sex is None else "unknown",
        site=None if template.site is None else "unknown",
        has_age=template.has_age,
    )


def read_metadata(
    rows: Iterable[tuple[int, str, dict[str, str | None]]], csv_path: Path
) -> tuple[dict[str, Metadata], list[Problem]]:
    """Image id -> Metadata from (line, id, raw field values) rows; a value that cannot be
    read is a warning naming the image and line (the image stays usable, that field
    unknown)."""
    out: dict[str, Metadata] = {}
    problems = []
    for line, image_id, raw in rows:
        out[image_id], errors = parse_metadata(image_id, raw)
        problems += [
            Problem(csv_path, "bad metadata", f"line {line}: {e}", image_id, severity="warning")
            for e in errors
        ]
    return out, problems


def metadata_csv(
    path: Path | None, id_column: str, columns: dict[str, str]
) -> tuple[dict[str, Metadata] | None, list[Problem]]:
    """Metadata from a CSV whose ``columns`` map our field names (age, sex, site) to its
    own; the fields it lacks stay None. None when there is no such file."""
    if path is None or not path.is_file():
        return None, []
    header, rows = read_csv(path)
    present = {ours: theirs for ours, theirs in columns.items() if theirs in header}
    if id_column not in header or not present:
        return None, []
    return read_metadata(
        (
            (n + 2, r[id_column], {ours: r[theirs] for ours, theirs in present.items()})
            for n, r in enumerate(rows)
        ),
        path,
    )


def rows_to_labels(
    rows: Iterable[tuple[int, str, Callable[[], LabelRow]]], csv_path: Path
) -> tuple[dict[str, LabelRow | None], list[Problem]]:
    """Build id -> LabelRow, reporting duplicate ids and unparsable rows with their line."""
    labels: dict[str, LabelRow | None] = {}
    problems: list[Problem] = []
    for line, image_id, make in rows:
        if not image_id:
            problems.append(Problem(csv_path, "bad label row", f"line {line}: empty image id"))
            continue
        if image_id in labels:
            problems.append(
                Problem(
                    csv_path, "duplicate id", f"line {line}: {image_id!r} listed twice", image_id
                )
            )
            continue
        try:
            labels[image_id] = make()
        except ValueError as err:
            problems.append(
                Problem(csv_path, "bad label row", f"line {line} ({image_id}): {err}", image_id)
            )
            # Remember the id so its image is not reported a second time as unlabelled.
            labels[image_id] = None
    return labels, problems


def label_row(label: int | None, diagnosis: str | None, group: str | None = None) -> LabelRow:
    if diagnosis is None and label is not None:
        diagnosis = "melanoma" if label == 1 else "benign"
    return LabelRow(label, diagnosis, group)


def require_columns(path: Path, columns: list[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {columns}. "
            f"Expected at least {list(required)}."
        )


def groups_from(csv_path: Path, id_column: str, group_column: str) -> dict[str, str]:
    if not csv_path.is_file():
        return {}
    columns, rows = read_csv(csv_path)
    if id_column not in columns or group_column not in columns:
        return {}
    return {r[id_column]: r[group_column] for r in rows if r.get(group_column)}


def first_file(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def masks_in(folder: Path, suffix: str) -> Callable[[str], Path | None]:
    """An image id's mask path in ``folder`` (``<id><suffix>``), None when there is no
    such folder."""
    return lambda image_id: folder / f"{image_id}{suffix}" if folder.is_dir() else None


Labels = tuple[dict[str, LabelRow | None], list[Problem]]


@dataclass(frozen=True)
class Part:
    """One split's folder of an official layout: its images, label table and masks."""

    images_dir: Path
    split: str | None
    labels_csv: Path | None
    read_labels: Callable[[Path], Labels]
    mask_for: Callable[[str], Path | None] = lambda image_id: None
    metadata: Callable[[], tuple[dict[str, Metadata] | None, list[Problem]]] = lambda: (None, [])
    # ISIC 2019's reader has always listed metadata problems before label problems.
    metadata_first: bool = False


def read_parts(parts: Iterable[Part]) -> tuple[list[Sample], list[Problem]]:
    """Join every part whose image folder exists with its labels (when its table exists)
    and metadata."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for part in parts:
        if not part.images_dir.is_dir():
            continue
        labels, label_problems = None, []
        if part.labels_csv is not None and part.labels_csv.is_file():
            labels, label_problems = part.read_labels(part.labels_csv)
        metadata, metadata_problems = part.metadata()
        first, then = (metadata_problems, label_problems)[:: 1 if part.metadata_first else -1]
        problems += first + then
        got, found = join_split(
            part.images_dir,
            labels,
            part.labels_csv,
            part.split,
            mask_for=part.mask_for,
            metadata=metadata,
        )
        samples += got
        problems += found
    return samples, problems
