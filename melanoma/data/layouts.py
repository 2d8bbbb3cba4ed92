"""Readers for the official ISIC layouts, the old research layout and a generic manifest CSV.

Every reader turns a directory into the same ``Sample`` records. Problems found in the
index files (label rows for missing images, images without labels, duplicate ids,
unparsable labels) are returned, not raised, so ``check`` can list them all at once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from melanoma.data.io import IMAGE_EXTENSIONS
from melanoma.data.labels import parse_binary_label
from melanoma.data.metadata import Metadata, parse_metadata
from melanoma.data.records import Problem, ReadResult, Sample

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
    *,
    images: dict[str, Path],
    labels: dict[str, LabelRow | None] | None,
    labels_csv: Path | None,
    images_dir: Path,
    mask_for: Callable[[str], Path | None],
    split: str | None,
    unlabelled_ok: bool = False,
    metadata: dict[str, Metadata] | None = None,
) -> tuple[list[Sample], list[Problem]]:
    """Join an image folder with its label table (and metadata, where the layout has it),
    reporting both kinds of orphan."""
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


def _metadata_csv(
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


def _rows_to_labels(
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


# --------------------------------------------------------------------------- ISIC 2016
def _read_isic2016(root: Path) -> ReadResult:
    samples: list[Sample] = []
    problems: list[Problem] = []
    for tag, split in (("Training", "train"), ("Test", "test")):
        images_dir = root / f"ISBI2016_ISIC_Part3_{tag}_Data"
        if not images_dir.is_dir():
            images_dir = root / f"ISBI2016_ISIC_Part1_{tag}_Data"
        if not images_dir.is_dir():
            continue
        masks_dir = root / f"ISBI2016_ISIC_Part1_{tag}_GroundTruth"
        csv_path = root / f"ISBI2016_ISIC_Part3_{tag}_GroundTruth.csv"
        labels = None
        if csv_path.is_file():
            # The 2016 CSVs have no header: "ISIC_0000000,benign" (training) or ",0.0" (test).
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                raw = [r for r in csv.reader(fh) if r]
            if raw and raw[0][0].strip().lower() in ("image_id", "image", "id", "name"):
                raw = raw[1:]
            rows = []
            for n, r in enumerate(raw, start=1):
                value = r[1] if len(r) > 1 else ""
                rows.append(
                    (n, r[0].strip(), lambda v=value: _label_row(parse_binary_label(v), None))
                )
            labels, found = _rows_to_labels(rows, csv_path)
            problems += found
        got, found = join_split(
            images=index_images(images_dir),
            labels=labels,
            labels_csv=csv_path,
            images_dir=images_dir,
            mask_for=lambda i, d=masks_dir: d / f"{i}_Segmentation.png" if d.is_dir() else None,
            split=split,
        )
        samples += got
        problems += found
    return ReadResult("isic2016", root, samples, problems)


def _label_row(label: int | None, diagnosis: str | None, group: str | None = None) -> LabelRow:
    if diagnosis is None and label is not None:
        diagnosis = "melanoma" if label == 1 else "benign"
    return LabelRow(label, diagnosis, group)


# --------------------------------------------------------------------------- ISIC 2017
_ISIC2017_SPLITS = (
    ("Training", "train"),
    ("Validation", "val"),
    ("Test_v2", "test"),
    ("Test", "test"),
)


def _read_isic2017(root: Path) -> ReadResult:
    samples: list[Sample] = []
    problems: list[Problem] = []
    for tag, split in _ISIC2017_SPLITS:
        images_dir = root / f"ISIC-2017_{tag}_Data"
        if not images_dir.is_dir():
            continue
        masks_dir = root / f"ISIC-2017_{tag}_Part1_GroundTruth"
        csv_path = root / f"ISIC-2017_{tag}_Part3_GroundTruth.csv"
        labels = None
        if csv_path.is_file():
            columns, rows = read_csv(csv_path)
            _require_columns(csv_path, columns, ("image_id", "melanoma", "seborrheic_keratosis"))

            def make(row: dict[str, str]) -> LabelRow:
                mel = parse_binary_label(row["melanoma"])
                sk = parse_binary_label(row["seborrheic_keratosis"])
                if mel and sk:
                    raise ValueError("both melanoma and seborrheic_keratosis are 1")
                diagnosis = "melanoma" if mel else "seborrheic_keratosis" if sk else "nevus"
                return LabelRow(mel, diagnosis)

            labels, found = _rows_to_labels(
                ((n + 2, r["image_id"], lambda r=r: make(r)) for n, r in enumerate(rows)), csv_path
            )
            problems += found
        metadata, found = _metadata_csv(
            root / f"ISIC-2017_{tag}_Data_metadata.csv",
            "image_id",
            {"age": "age_approximate", "sex": "sex"},
        )
        problems += found
        got, found = join_split(
            images=index_images(images_dir),
            labels=labels,
            labels_csv=csv_path,
            images_dir=images_dir,
            mask_for=lambda i, d=masks_dir: d / f"{i}_segmentation.png" if d.is_dir() else None,
            split=split,
            metadata=metadata,
        )
        samples += got
        problems += found
    return ReadResult("isic2017", root, samples, problems)


def _require_columns(path: Path, columns: list[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {columns}. "
            f"Expected at least {list(required)}."
        )


# --------------------------------------------------------------------- ISIC 2018 / 2019
def _one_hot_labels(
    csv_path: Path, groups: dict[str, str]
) -> tuple[dict[str, LabelRow], list[Problem]]:
    """Task 3 ground truth: one column per diagnosis, one-hot; melanoma is MEL."""
    columns, rows = read_csv(csv_path)
    _require_columns(csv_path, columns, ("image", "MEL"))
    classes = [c for c in columns if c != "image"]

    def make(row: dict[str, str]) -> LabelRow:
        values = {c: float(row[c] or 0) for c in classes}
        hot = [c for c, v in values.items() if v >= 0.5]
        if len(hot) != 1:
            raise ValueError(f"expected exactly one diagnosis column set to 1, got {hot or 'none'}")
        return LabelRow(int(hot[0] == "MEL"), hot[0], groups.get(row["image"]))

    return _rows_to_labels(
        ((n + 2, r["image"], lambda r=r: make(r)) for n, r in enumerate(rows)), csv_path
    )


def _groups_from(csv_path: Path, id_column: str, group_column: str) -> dict[str, str]:
    if not csv_path.is_file():
        return {}
    columns, rows = read_csv(csv_path)
    if id_column not in columns or group_column not in columns:
        return {}
    return {r[id_column]: r[group_column] for r in rows if r.get(group_column)}


def _first_file(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _read_isic2018(root: Path) -> ReadResult:
    samples: dict[str, Sample] = {}
    problems: list[Problem] = []
    groups = _groups_from(
        root / "ISIC2018_Task3_Training_LesionGroupings.csv", "image", "lesion_id"
    )
    for tag, split in (("Training", "train"), ("Validation", "val"), ("Test", "test")):
        mask_dir = root / f"ISIC2018_Task1_{tag}_GroundTruth"

        def mask_for(i: str, d: Path = mask_dir) -> Path | None:
            p = d / f"{i}_segmentation.png"
            return p if p.is_file() else None

        t3_dir = root / f"ISIC2018_Task3_{tag}_Input"
        if t3_dir.is_dir():
            csv_path = _first_file(
                root
                / f"ISIC2018_Task3_{tag}_GroundTruth"
                / f"ISIC2018_Task3_{tag}_GroundTruth.csv",
                root / f"ISIC2018_Task3_{tag}_GroundTruth.csv",
            )
            labels = None
            if csv_path is not None:
                labels, found = _one_hot_labels(csv_path, groups)
                problems += found
            got, found = join_split(
                images=index_images(t3_dir),
                labels=labels,
                labels_csv=csv_path,
                images_dir=t3_dir,
                mask_for=mask_for,
                split=split,
            )
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


def _read_isic2019(root: Path) -> ReadResult:
    samples: list[Sample] = []
    problems: list[Problem] = []
    for tag, split in (("Training", "train"), ("Test", "test")):
        images_dir = root / f"ISIC_2019_{tag}_Input"
        if not images_dir.is_dir():
            continue
        groups = _groups_from(root / f"ISIC_2019_{tag}_Metadata.csv", "image", "lesion_id")
        metadata, found = _metadata_csv(
            root / f"ISIC_2019_{tag}_Metadata.csv",
            "image",
            {"age": "age_approximate", "sex": "sex", "site": "anatom_site_general"},
        )
        problems += found
        csv_path = _first_file(root / f"ISIC_2019_{tag}_GroundTruth.csv")
        labels = None
        if csv_path is not None:
            labels, found = _one_hot_labels(csv_path, groups)
            problems += found
        got, found = join_split(
            images=index_images(images_dir),
            labels=labels,
            labels_csv=csv_path,
            images_dir=images_dir,
            mask_for=lambda i: None,
            split=split,
            metadata=metadata,
        )
        samples += got
        problems += found
    return ReadResult("isic2019", root, samples, problems, has_masks=False)


# --------------------------------------------------------------------------- ISIC 2020
_ISIC2020_CSVS = (
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


def _read_isic2020(root: Path) -> ReadResult:
    csv_path = _first_file(*(root / c for c in _ISIC2020_CSVS))
    assert csv_path is not None, "detect() guarantees the CSV"
    images_dir = next(
        (root / d for d in _ISIC2020_IMAGE_DIRS if (root / d).is_dir()), root / "train"
    )
    columns, rows = read_csv(csv_path)
    _require_columns(csv_path, columns, ("image_name", "target"))

    def make(row: dict[str, str]) -> LabelRow:
        diagnosis = row.get("diagnosis") or None
        return LabelRow(parse_binary_label(row["target"]), diagnosis, row.get("patient_id") or None)

    labels, problems = _rows_to_labels(
        ((n + 2, r["image_name"], lambda r=r: make(r)) for n, r in enumerate(rows)), csv_path
    )
    metadata, found = _metadata_csv(
        csv_path,
        "image_name",
        {"age": "age_approx", "sex": "sex", "site": "anatom_site_general_challenge"},
    )
    samples, joined = join_split(
        images=index_images(images_dir),
        labels=labels,
        labels_csv=csv_path,
        images_dir=images_dir,
        mask_for=lambda i: None,
        split=None,
        metadata=metadata,
    )
    return ReadResult("isic2020", root, samples, problems + found + joined, has_masks=False)


# ------------------------------------------------------------------ old research layout
def _read_research(root: Path) -> ReadResult:
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
        _require_columns(csv_path, columns, ("name", "class"))

        def make(row: dict[str, str]) -> LabelRow:
            return _label_row(parse_binary_label(row["class"]), row["class"].lower())

        labels, found = _rows_to_labels(
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
            images=split_images,
            labels=labels,
            labels_csv=csv_path,
            images_dir=root / "images_all",
            mask_for=lambda i: mask_index.get(i, masks_dir / f"{i}.png"),
            split=split,
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


def _read_manifest(root: Path) -> ReadResult:
    csv_path = root if root.is_file() else root / MANIFEST_NAME
    base = csv_path.parent
    columns, rows = read_csv(csv_path)
    _require_columns(csv_path, columns, ("image", "label"))
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


# ------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], ReadResult]


def _has(root: Path, *globs: str) -> bool:
    return root.is_dir() and any(any(root.glob(g)) for g in globs)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "isic2016",
            "ISBI2016_ISIC_Part{1,3}_{Training,Test}_* folders and CSVs",
            lambda r: _has(r, "ISBI2016_ISIC_Part*_Data"),
            _read_isic2016,
        ),
        Layout(
            "isic2017",
            "ISIC-2017_{Training,Validation,Test_v2}_Data, _Part1_GroundTruth, _Part3_...csv",
            lambda r: _has(r, "ISIC-2017_*_Data"),
            _read_isic2017,
        ),
        Layout(
            "isic2018",
            "ISIC2018_Task1-2_*_Input, ISIC2018_Task1_*_GroundTruth, ISIC2018_Task3_*",
            lambda r: _has(r, "ISIC2018_Task*_Input"),
            _read_isic2018,
        ),
        Layout(
            "isic2019",
            "ISIC_2019_Training_Input and ISIC_2019_Training_GroundTruth.csv",
            lambda r: _has(r, "ISIC_2019_*_Input"),
            _read_isic2019,
        ),
        Layout(
            "isic2020",
            "train.csv (image_name, patient_id, target) and train/ or jpeg/train/",
            lambda r: _first_file(*(r / c for c in _ISIC2020_CSVS)) is not None,
            _read_isic2020,
        ),
        Layout(
            "research",
            "images_all/, masks_all/, train_data.csv and test_data.csv (name,class)",
            lambda r: (r / "images_all").is_dir(),
            _read_research,
        ),
        Layout(
            "manifest",
            "manifest.csv with columns image,mask,label[,group,split,diagnosis,id]",
            lambda r: (r.is_file() and r.suffix == ".csv") or (r / MANIFEST_NAME).is_file(),
            _read_manifest,
        ),
    )
}


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``; raise with the candidates when none or several match."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data path {root} does not exist")
    matches = [name for name, layout in LAYOUTS.items() if layout.detect(root)]
    if len(matches) == 1:
        return matches[0]
    known = "\n".join(f"  {n}: {lay.description}" for n, lay in LAYOUTS.items())
    if not matches:
        raise ValueError(
            f"could not recognise the dataset layout of {root}. Known layouts:\n{known}\n"
            "Arrange the data in one of them, or write a manifest.csv (image,mask,label) and "
            "pass its path."
        )
    raise ValueError(
        f"{root} matches several layouts {matches}; "
        f"choose one with --layout {{{','.join(matches)}}}"
    )


def read_layout(root: Path, layout: str | None = None) -> ReadResult:
    """Read ``root`` with the named layout, or the detected one when ``layout`` is None."""
    root = Path(root)
    name = layout or detect_layout(root)
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; valid layouts: {sorted(LAYOUTS)}")
    if not root.exists():
        raise FileNotFoundError(f"data path {root} does not exist")
    return LAYOUTS[name].read(root)
