"""`check` on a clean data set, and on every kind of bad input, each named in the output."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.data.check import DataError, check_dataset
from melanoma_cli import main

TRAIN = "ISIC-2017_Training_Data"
MASKS = "ISIC-2017_Training_Part1_GroundTruth"
CSV = "ISIC-2017_Training_Part3_GroundTruth.csv"


def image(root: Path, i: int) -> Path:
    return root / TRAIN / f"ISIC_{i:07d}.jpg"


def mask(root: Path, i: int) -> Path:
    return root / MASKS / f"ISIC_{i:07d}_segmentation.png"


def test_clean_synthetic_data_passes(synth_root: Path):
    report = check_dataset(synth_root)
    summary = report.summary()
    assert summary["images"] == summary["masks"] == 24
    assert summary["melanoma"] + summary["benign"] == 24
    assert summary["errors"] == summary["warnings"] == 0
    assert 0 < summary["mask_coverage"]["min"] <= summary["mask_coverage"]["max"] < 1
    assert summary["image_sizes"] == {"64x64": 24}


def truncate(root: Path) -> str:
    path = image(root, 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "truncated image"


def garbage(root: Path) -> str:
    image(root, 0).write_bytes(b"this is not a jpeg at all")
    return "unreadable image"


def drop_mask(root: Path) -> str:
    mask(root, 0).unlink()
    return "missing mask"


def resize_mask(root: Path) -> str:
    Image.open(mask(root, 0)).resize((20, 20), Image.NEAREST).save(mask(root, 0))
    return "mask size mismatch"


def grey_mask(root: Path) -> str:
    m = np.asarray(Image.open(mask(root, 0))).copy()
    m[:4, :4] = 128
    Image.fromarray(m).save(mask(root, 0))
    return "non-binary mask"


def orphan_label(root: Path) -> str:
    with open(root / CSV, "a") as fh:
        fh.write("ISIC_9999999,1.0,0.0\n")
    return "missing image"


def unlabelled_image(root: Path) -> str:
    shutil.copy(image(root, 1), root / TRAIN / "ISIC_7777777.jpg")
    return "no label"


def duplicate_row(root: Path) -> str:
    with open(root / CSV, "a") as fh:
        fh.write("ISIC_0000000,0.0,0.0\n")
    return "duplicate id"


def bad_label_value(root: Path) -> str:
    text = (
        (root / CSV)
        .read_text()
        .replace("ISIC_0000000,0.0", "ISIC_0000000,maybe")
        .replace("ISIC_0000000,1.0", "ISIC_0000000,maybe")
    )
    (root / CSV).write_text(text)
    return "bad label row"


@pytest.mark.parametrize(
    "damage",
    [
        truncate,
        garbage,
        drop_mask,
        resize_mask,
        grey_mask,
        orphan_label,
        duplicate_row,
        bad_label_value,
    ],
)
def test_each_bad_input_fails_and_is_named(synth_copy: Path, damage, capsys):
    kind = damage(synth_copy)
    with pytest.raises(DataError) as err:
        check_dataset(synth_copy)
    assert kind in str(err.value)
    assert "--on-bad skip" in str(err.value)
    report = check_dataset(synth_copy, on_bad="skip")
    assert [p.kind for p in report.errors] == [kind]
    assert main(["data", "check", str(synth_copy)]) == 1
    out = capsys.readouterr()
    assert f"bad: {report.errors[0].path}: {kind}" in out.out
    # With skip the bad sample is excluded and the rest stays usable.
    assert main(["data", "check", str(synth_copy), "--on-bad", "skip"]) == 0
    assert "excluded" in capsys.readouterr().err


def test_a_large_jpeg_is_checked_at_its_full_size_and_refused_when_cut_near_its_end(
    synth_copy: Path,
):
    """The check decodes JPEGs at an eighth of their size: it must still record the real
    size and still catch a file cut short by a few bytes."""
    big = Image.open(image(synth_copy, 0)).resize((1600, 1200), Image.BICUBIC)
    big.save(image(synth_copy, 0), quality=90)
    Image.open(mask(synth_copy, 0)).resize((1600, 1200), Image.NEAREST).save(mask(synth_copy, 0))
    report = check_dataset(synth_copy)
    assert report.info["ISIC_0000000"].image_size == (1600, 1200) and not report.problems
    data = image(synth_copy, 0).read_bytes()
    image(synth_copy, 0).write_bytes(data[: len(data) - 40])
    report = check_dataset(synth_copy, on_bad="skip")
    assert [(p.kind, p.sample_id) for p in report.errors] == [("truncated image", "ISIC_0000000")]


def test_a_bad_label_row_names_its_line_and_image(synth_copy: Path, capsys):
    bad_label_value(synth_copy)
    assert main(["data", "check", str(synth_copy)]) == 1
    assert "line 2 (ISIC_0000000): unrecognised label 'maybe'" in capsys.readouterr().out


def test_image_without_label_row(synth_copy: Path):
    unlabelled_image(synth_copy)
    report = check_dataset(synth_copy, on_bad="skip")
    # The copy is also identical content, so it is excluded for its missing label only.
    assert [p.kind for p in report.errors] == ["no label"]
    assert "ISIC_7777777.jpg" in str(report.errors[0].path)


def test_three_defects_all_named_at_once(synth_copy: Path, capsys):
    truncate(synth_copy)
    mask(synth_copy, 1).unlink()
    orphan_label(synth_copy)
    assert main(["data", "check", str(synth_copy)]) == 1
    out = capsys.readouterr().out
    assert "ISIC_0000000.jpg: truncated image" in out
    assert "ISIC_0000001_segmentation.png: missing mask" in out
    assert "label row for 'ISIC_9999999'" in out


def test_duplicate_content_is_a_warning_unless_strict(synth_copy: Path, capsys):
    shutil.copy(image(synth_copy, 0), image(synth_copy, 1))
    report = check_dataset(synth_copy)
    assert [p.kind for p in report.warnings] == ["duplicate image content"]
    assert "same bytes as ISIC_0000000" in str(report.warnings[0])
    assert len(report.samples) == 12  # a warning never excludes a sample
    assert main(["data", "check", str(synth_copy)]) == 0
    assert "warning:" in capsys.readouterr().out
    assert main(["data", "check", str(synth_copy), "--strict"]) == 1
    with pytest.raises(DataError, match="duplicate image content"):
        check_dataset(synth_copy, strict=True)


def test_skip_excludes_exactly_the_bad_samples(synth_copy: Path):
    truncate(synth_copy)
    drop_mask(synth_copy)  # same sample 0
    grey_mask_root = synth_copy
    m = np.asarray(Image.open(mask(grey_mask_root, 2))).copy()
    m[0, 0] = 7
    Image.fromarray(m).save(mask(grey_mask_root, 2))
    report = check_dataset(synth_copy, on_bad="skip")
    assert sorted(s.id for s in report.excluded) == ["ISIC_0000000", "ISIC_0000002"]
    assert len(report.samples) == 10


def test_masks_with_0_1_values_are_binary(synth_copy: Path):
    m = (np.asarray(Image.open(mask(synth_copy, 0))) > 0).astype(np.uint8)
    Image.fromarray(m).save(mask(synth_copy, 0))
    assert check_dataset(synth_copy).summary()["masks"] == 12


def test_bad_on_bad_value():
    with pytest.raises(ValueError, match="on_bad must be one of"):
        check_dataset(Path("."), on_bad="ignore")


def test_json_output(synth_root: Path, capsys):
    import json

    assert main(["data", "check", str(synth_root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 24 and doc["problems"] == []


@pytest.mark.real_data
def test_real_isic2017(real_isic2017: Path, capsys):
    assert main(["data", "check", str(real_isic2017)]) == 0
    out = capsys.readouterr().out
    assert "images:        2150\n" in out
    assert "masks:         2150\n" in out
    assert "melanoma:      404\n" in out
    # The real download holds one byte-identical pair across training and validation.
    assert "ISIC_0012127.jpg: duplicate image content: same bytes as ISIC_0012970" in out


@pytest.mark.real_data
def test_real_isic2017_with_defects(real_isic2017: Path, tmp_path: Path, capsys):
    copy = tmp_path / "isic2017"
    shutil.copytree(real_isic2017, copy)
    for p in copy.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    truncate(copy)
    mask(copy, 1).unlink()
    orphan_label(copy)
    assert main(["data", "check", str(copy)]) == 1
    out = capsys.readouterr().out
    for name in ("ISIC_0000000.jpg", "ISIC_0000001_segmentation.png", "ISIC_9999999"):
        assert name in out
