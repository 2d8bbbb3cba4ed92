"""Readers for the official ISIC layouts, the old research layout and a generic manifest CSV.

Every reader turns a directory into the same ``Sample`` records. Problems found in the
index files (label rows for missing images, images without labels, duplicate ids,
unparsable labels) are returned, not raised, so ``check`` can list them all at once.
This module holds the table of layouts; ``isic`` and ``local`` hold the readers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from melanoma.data.layouts.common import first_file
from melanoma.data.layouts.isic import (
    ISIC2020_CSVS,
    read_isic2016,
    read_isic2017,
    read_isic2018,
    read_isic2019,
    read_isic2020,
)
from melanoma.data.layouts.local import MANIFEST_NAME, read_manifest, read_research
from melanoma.data.records import ReadResult

__all__ = ["LAYOUTS", "MANIFEST_NAME", "Layout", "detect_layout", "read_layout"]


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
            read_isic2016,
        ),
        Layout(
            "isic2017",
            "ISIC-2017_{Training,Validation,Test_v2}_Data, _Part1_GroundTruth, _Part3_...csv",
            lambda r: _has(r, "ISIC-2017_*_Data"),
            read_isic2017,
        ),
        Layout(
            "isic2018",
            "ISIC2018_Task1-2_*_Input, ISIC2018_Task1_*_GroundTruth, ISIC2018_Task3_*",
            lambda r: _has(r, "ISIC2018_Task*_Input"),
            read_isic2018,
        ),
        Layout(
            "isic2019",
            "ISIC_2019_Training_Input and ISIC_2019_Training_GroundTruth.csv",
            lambda r: _has(r, "ISIC_2019_*_Input"),
            read_isic2019,
        ),
        Layout(
            "isic2020",
            "train.csv (image_name, patient_id, target) and train/ or jpeg/train/",
            lambda r: first_file(*(r / c for c in ISIC2020_CSVS)) is not None,
            read_isic2020,
        ),
        Layout(
            "research",
            "images_all/, masks_all/, train_data.csv and test_data.csv (name,class)",
            lambda r: (r / "images_all").is_dir(),
            read_research,
        ),
        Layout(
            "manifest",
            "manifest.csv with columns image,mask,label[,group,split,diagnosis,id]",
            lambda r: (r.is_file() and r.suffix == ".csv") or (r / MANIFEST_NAME).is_file(),
            read_manifest,
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
