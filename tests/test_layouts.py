"""Every reader on a small fixture laid out as the official download is."""

from __future__ import annotations

from pathlib import Path

import pytest

from melanoma.data.layouts import LAYOUTS, detect_layout, read_layout
from tests.conftest import write_image, write_mask


def by_id(result):
    return {s.id: s for s in result.samples}


def test_isic2016(tmp_path: Path):
    for i, tag in enumerate(("Training", "Test")):
        for j in range(2):
            image_id = f"ISIC_00{i}{j}"
            write_image(
                tmp_path / f"ISBI2016_ISIC_Part1_{tag}_Data" / f"{image_id}.jpg", seed=10 * i + j
            )
            write_mask(
                tmp_path / f"ISBI2016_ISIC_Part1_{tag}_GroundTruth" / f"{image_id}_Segmentation.png"
            )
    # Official training CSV: no header, benign/malignant. Test CSV: 0.0/1.0.
    (tmp_path / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").write_text(
        "ISIC_0000,benign\nISIC_0001,malignant\n"
    )
    (tmp_path / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").write_text(
        "ISIC_0010,0.0\nISIC_0011,1.0\n"
    )
    assert detect_layout(tmp_path) == "isic2016"
    result = read_layout(tmp_path)
    assert not result.problems
    s = by_id(result)
    assert [s[i].label for i in ("ISIC_0000", "ISIC_0001", "ISIC_0010", "ISIC_0011")] == [
        0,
        1,
        0,
        1,
    ]
    assert s["ISIC_0010"].split == "test" and s["ISIC_0000"].split == "train"
    assert s["ISIC_0001"].mask_path.name == "ISIC_0001_Segmentation.png"


def test_isic2017_with_superpixels_and_test_split(tmp_path: Path):
    for tag, ids in (("Training", ("ISIC_1", "ISIC_2", "ISIC_3")), ("Test_v2", ("ISIC_9",))):
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        for n, image_id in enumerate(ids):
            write_image(tmp_path / f"ISIC-2017_{tag}_Data" / f"{image_id}.jpg", seed=n + len(tag))
            # Official downloads ship superpixel PNGs beside the images: never samples.
            write_mask(tmp_path / f"ISIC-2017_{tag}_Data" / f"{image_id}_superpixels.png")
            write_mask(
                tmp_path / f"ISIC-2017_{tag}_Part1_GroundTruth" / f"{image_id}_segmentation.png"
            )
            rows.append(f"{image_id},{1.0 if n == 0 else 0.0},{1.0 if n == 1 else 0.0}")
        (tmp_path / f"ISIC-2017_{tag}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    result = read_layout(tmp_path, "isic2017")
    assert not result.problems
    s = by_id(result)
    assert sorted(s) == ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_9"]
    assert (s["ISIC_1"].label, s["ISIC_1"].diagnosis) == (1, "melanoma")
    assert (s["ISIC_2"].label, s["ISIC_2"].diagnosis) == (0, "seborrheic_keratosis")
    assert (s["ISIC_3"].label, s["ISIC_3"].diagnosis) == (0, "nevus")
    assert s["ISIC_9"].split == "test"


def test_isic2018_task1_and_task3(tmp_path: Path):
    # Task 3 images with one-hot labels and lesion groups; one of them also has a Task 1 mask.
    t3 = tmp_path / "ISIC2018_Task3_Training_Input"
    for n, image_id in enumerate(("ISIC_a", "ISIC_b", "ISIC_c")):
        write_image(t3 / f"{image_id}.jpg", seed=n)
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth"
    gt.mkdir()
    (gt / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
        "ISIC_a,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
        "ISIC_b,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
        "ISIC_c,0.0,0.0,1.0,0.0,0.0,0.0,0.0\n"
    )
    (tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\nISIC_a,HAM_1,histo\nISIC_b,HAM_1,histo\n"
        "ISIC_c,HAM_2,histo\n"
    )
    write_mask(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_a_segmentation.png")
    # A Task 1 image: mask, no diagnosis.
    write_image(tmp_path / "ISIC2018_Task1-2_Training_Input" / "ISIC_t1.jpg", seed=9)
    write_mask(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_t1_segmentation.png")
    assert detect_layout(tmp_path) == "isic2018"
    result = read_layout(tmp_path)
    assert not result.problems
    s = by_id(result)
    assert (s["ISIC_a"].label, s["ISIC_a"].diagnosis, s["ISIC_a"].group) == (1, "MEL", "HAM_1")
    assert (s["ISIC_c"].label, s["ISIC_c"].diagnosis) == (0, "BCC")
    assert s["ISIC_a"].mask_path is not None and s["ISIC_b"].mask_path is None
    assert s["ISIC_t1"].label is None and s["ISIC_t1"].mask_path.is_file()


def test_isic2019_one_hot_with_unk_and_lesion_ids(tmp_path: Path):
    for n, image_id in enumerate(("ISIC_1", "ISIC_2")):
        write_image(tmp_path / "ISIC_2019_Training_Input" / f"{image_id}.jpg", seed=n)
    (tmp_path / "ISIC_2019_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
        "ISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
        "ISIC_2,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
    )
    (tmp_path / "ISIC_2019_Training_Metadata.csv").write_text(
        "image,age_approx,anatom_site_general,lesion_id,sex\n"
        "ISIC_1,55,anterior torso,BCN_7,male\nISIC_2,30,,,female\n"
    )
    result = read_layout(tmp_path)
    assert result.layout == "isic2019" and not result.problems and not result.has_masks
    s = by_id(result)
    assert (s["ISIC_1"].label, s["ISIC_1"].group) == (0, "BCN_7")
    assert (s["ISIC_2"].label, s["ISIC_2"].group) == (1, None)


def test_isic2020_groups_by_patient(tmp_path: Path):
    for n, image_id in enumerate(("ISIC_1", "ISIC_2", "ISIC_3")):
        write_image(tmp_path / "train" / f"{image_id}.jpg", seed=n)
    (tmp_path / "train.csv").write_text(
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
        "benign_malignant,target\n"
        "ISIC_1,IP_1,male,45,torso,nevus,benign,0\n"
        "ISIC_2,IP_1,male,45,torso,melanoma,malignant,1\n"
        "ISIC_3,IP_2,female,50,head,unknown,benign,0\n"
    )
    result = read_layout(tmp_path)
    assert result.layout == "isic2020" and not result.problems
    s = by_id(result)
    assert [s[i].label for i in ("ISIC_1", "ISIC_2", "ISIC_3")] == [0, 1, 0]
    assert s["ISIC_1"].group == s["ISIC_2"].group == "IP_1"
    assert s["ISIC_2"].diagnosis == "melanoma"


def test_research_layout(tmp_path: Path):
    for n, name in enumerate(("a", "b", "c")):
        write_image(tmp_path / "images_all" / f"{name}.jpg", seed=n)
        write_mask(tmp_path / "masks_all" / f"{name}.png")
    (tmp_path / "train_data.csv").write_text("name,class\na.jpg,benign\nb.jpg,malignant\n")
    (tmp_path / "test_data.csv").write_text("name,class\nc.jpg,benign\n")
    result = read_layout(tmp_path)
    assert result.layout == "research" and not result.problems
    s = by_id(result)
    assert (s["b"].label, s["b"].split, s["c"].split) == (1, "train", "test")
    assert s["a"].mask_path == tmp_path / "masks_all" / "a.png"


def test_manifest_csv(tmp_path: Path):
    write_image(tmp_path / "img" / "x.png", seed=1)
    write_image(tmp_path / "img" / "y.png", seed=2)
    write_mask(tmp_path / "msk" / "x.png")
    (tmp_path / "manifest.csv").write_text(
        "image,mask,label,group\nimg/x.png,msk/x.png,1,patient-1\nimg/y.png,,benign,patient-2\n"
    )
    for root in (tmp_path, tmp_path / "manifest.csv"):
        result = read_layout(root)
        assert result.layout == "manifest" and not result.problems
        s = by_id(result)
        assert (s["x"].label, s["x"].group, s["x"].mask_path) == (
            1,
            "patient-1",
            tmp_path / "msk" / "x.png",
        )
        assert (s["y"].label, s["y"].mask_path) == (0, None)


def test_manifest_bad_rows_are_named(tmp_path: Path):
    write_image(tmp_path / "a.png", seed=1)
    (tmp_path / "manifest.csv").write_text(
        "image,mask,label\na.png,,maybe\nmissing.png,,1\na.png,,0\n"
    )
    problems = read_layout(tmp_path).problems
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["bad label row", "duplicate id", "missing image"]
    text = "\n".join(str(p) for p in problems)
    assert "line 2 (a): unrecognised label 'maybe'" in text and "missing.png" in text
    assert "line 4: 'a' listed twice" in text


def test_manifest_paths_outside_its_folder_are_refused_unless_allowed(tmp_path: Path, capsys):
    from melanoma.data.check import DataError, check_dataset
    from melanoma_cli import main

    data, other = tmp_path / "data", tmp_path / "other"
    write_image(data / "a.png", seed=1)
    write_image(other / "b.png", seed=2)
    (data / "manifest.csv").write_text(
        f"image,label,id\na.png,0,a\n../other/b.png,1,b\n{other / 'b.png'},0,c\n/etc/hostname,1,d\n"
    )
    with pytest.raises(DataError) as err:
        check_dataset(data)
    text = str(err.value)
    assert text.count("outside the data set") == 3
    assert f"b: {other / 'b.png'} is not inside {data}" in text and "--external-paths" in text
    assert "/etc/hostname is not inside" in text
    report = check_dataset(data, on_bad="skip")
    assert [s.id for s in report.samples] == ["a"]
    assert main(["data", "check", str(data), "--external-paths", "--on-bad", "skip"]) == 0
    out = capsys.readouterr().out
    # Allowed: the files elsewhere are read (and /etc/hostname is no image).
    assert "outside the data set" not in out and "hostname: unreadable image" in out
    assert "images:        3 usable (1 excluded)" in out


def test_manifest_missing_column_says_what_is_expected(tmp_path: Path):
    (tmp_path / "manifest.csv").write_text("path,target\na.png,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['image', 'label'\]"):
        read_layout(tmp_path)


def test_unrecognised_directory_lists_known_layouts(tmp_path: Path):
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError) as err:
        detect_layout(tmp_path)
    for name in LAYOUTS:
        assert name in str(err.value)
    assert "manifest.csv" in str(err.value)


def test_ambiguous_directory_asks_for_layout(tmp_path: Path):
    (tmp_path / "ISIC-2017_Training_Data").mkdir()
    (tmp_path / "images_all").mkdir()
    with pytest.raises(ValueError, match="--layout"):
        detect_layout(tmp_path)


def test_unknown_layout_name_lists_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="valid layouts: .*isic2017.*manifest"):
        read_layout(tmp_path, "isic2042")


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_layout(Path("/nonexistent/data"))
