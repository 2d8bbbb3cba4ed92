"""Age, sex and anatomical site: read from every layout that has them, normalised, bad
values named by image; and the subgroup tables built from them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from melanoma.data.layouts import read_layout
from melanoma.data.metadata import (
    Metadata,
    age_band,
    coverage,
    parse_age,
    parse_metadata,
    parse_sex,
    parse_site,
    subgroup_fields,
)
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.metrics.subgroups import subgroup_report
from melanoma_cli import main
from tests.conftest import SHARED_ISIC2017

REAL = SHARED_ISIC2017


def test_values_are_normalised_and_bad_ones_name_the_image():
    assert parse_age("55", "a") == 55.0 and parse_age("unknown", "a") is None
    assert parse_age("", "a") is None and parse_age(" 37.5 ", "a") == 37.5
    assert parse_sex("F", "a") == "female" and parse_sex("male", "a") == "male"
    assert parse_sex("", "a") == "unknown" and parse_sex("NA", "a") == "unknown"
    assert parse_site("anterior torso", "a") == "torso"  # ISIC 2019
    assert parse_site("torso", "a") == "torso"  # ISIC 2020
    assert parse_site("Head/Neck", "a") == "head/neck"
    assert parse_site("", "a") == "unknown"
    with pytest.raises(ValueError, match=r"image ISIC_1: age 'abc' is not a number of years"):
        parse_age("abc", "ISIC_1")
    with pytest.raises(ValueError, match=r"image ISIC_1: age '130' is outside 0-120"):
        parse_age("130", "ISIC_1")
    with pytest.raises(ValueError, match=r"image ISIC_2: sex 'x' is not one of female/f, male/m"):
        parse_sex("x", "ISIC_2")
    with pytest.raises(ValueError, match=r"image ISIC_3: anatomical site 'elbow' is not one"):
        parse_site("elbow", "ISIC_3")
    # A bad value makes that field unknown and comes back as an error naming the image.
    meta, errors = parse_metadata("ISIC_4", {"age": "abc", "sex": "female"})
    assert meta == Metadata(age=None, sex="female", site=None, has_age=True)
    assert errors == [
        "image ISIC_4: age 'abc' is not a number of years (expected 0-120, or empty/unknown)"
    ]
    assert [age_band(a) for a in (None, 5, 30, 44.9, 60, 75, 90)] == [
        "unknown",
        "<30",
        "30-44",
        "30-44",
        "60-74",
        "75+",
        "75+",
    ]
    assert subgroup_fields(None) == {}
    assert subgroup_fields(meta) == {"age": "unknown", "sex": "female"}


def _rewrite(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


def test_isic2017_metadata_is_read_and_bad_values_are_flagged_by_image(tmp_path, capsys):
    data = tmp_path / "isic2017"
    write_synthetic(data, SynthConfig(n=12, size=32, seed=0))
    path = data / "ISIC-2017_Training_Data_metadata.csv"
    with open(path) as fh:
        rows = list(csv.reader(fh))
    rows[1][1], rows[2][2] = "abc", "x"  # image 0: a bad age, image 1: a bad sex
    del rows[4]  # image 3: no metadata row at all
    _rewrite(path, rows[0], rows[1:])
    result = read_layout(data)
    by_id = {s.id: s.metadata for s in result.samples}
    assert len(by_id) == 12  # bad metadata excludes nobody
    assert by_id["ISIC_0000000"].age is None and by_id["ISIC_0000000"].has_age
    assert by_id["ISIC_0000001"].sex == "unknown"
    assert by_id["ISIC_0000003"] == Metadata(sex="unknown", has_age=True)
    assert by_id["ISIC_0000003"].site is None  # ISIC 2017 records no site
    bad = [p for p in result.problems if p.kind == "bad metadata"]
    assert [(p.sample_id, p.severity) for p in bad] == [
        ("ISIC_0000000", "warning"),
        ("ISIC_0000001", "warning"),
    ]
    assert "line 2: image ISIC_0000000: age 'abc'" in bad[0].message

    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr()
    assert "bad metadata: line 3: image ISIC_0000001: sex 'x'" in out.out + out.err
    assert "site:          not recorded" in out.out
    counts = coverage([by_id[i] for i in sorted(by_id)])
    assert counts["sex"]["known"] + counts["sex"]["unknown"] == 12
    assert f"sex:           {counts['sex']['known']} of 12 known" in out.out


def test_manifest_and_isic2020_metadata_columns(tmp_path):
    from PIL import Image

    images = tmp_path / "m"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(images / f"i{i}.jpg")
    _rewrite(
        images / "manifest.csv",
        ["image", "label", "age", "sex", "site"],
        [
            ["i0.jpg", "1", "40", "f", "back"],
            ["i1.jpg", "0", "", "M", "palms/soles"],
            ["i2.jpg", "0", "abc", "", ""],
        ],
    )
    result = read_layout(images)
    got = {s.id: s.metadata for s in result.samples}
    assert got["i0"] == Metadata(40.0, "female", "torso", True)
    assert got["i1"] == Metadata(None, "male", "palms/soles", True)
    assert got["i2"] == Metadata(None, "unknown", "unknown", True)
    assert [p.sample_id for p in result.problems if p.kind == "bad metadata"] == ["i2"]

    root = tmp_path / "isic2020"
    (root / "train").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8)).save(root / "train" / f"ISIC_{i}.jpg")
    _rewrite(
        root / "train.csv",
        [
            "image_name",
            "patient_id",
            "sex",
            "age_approx",
            "anatom_site_general_challenge",
            "target",
        ],
        [
            ["ISIC_0", "P1", "male", "45.0", "upper extremity", "0"],
            ["ISIC_1", "P2", "", "", "", "1"],
        ],
    )
    got = {s.id: s.metadata for s in read_layout(root).samples}
    assert got["ISIC_0"] == Metadata(45.0, "male", "upper extremity", True)
    assert got["ISIC_1"] == Metadata(None, "unknown", "unknown", True)


def test_subgroup_tables_match_a_hand_count_and_name_small_groups():
    # 12 women (6 melanomas), 4 men (1 melanoma): the men are too small for metrics.
    labels = np.array([1] * 6 + [0] * 6 + [1] + [0] * 3)
    probs = np.array(
        [0.9, 0.8, 0.7, 0.6, 0.4, 0.3] + [0.5, 0.2, 0.1, 0.35, 0.25, 0.05] + [0.6] + [0.2] * 3
    )
    sex = ["female"] * 12 + ["male"] * 4
    report = subgroup_report(
        labels, probs, {"sex": sex}, threshold=0.45, resamples=200, min_per_class=5
    )
    women, men = report["sex"]
    assert (women["group"], women["images"], women["melanomas"]) == ("female", 12, 6)
    assert women["prevalence"] == 0.5
    # At 0.45: melanomas 0.9 0.8 0.7 0.6 caught, 0.4 0.3 missed; benign 0.5 a false alarm.
    assert women["sensitivity"]["value"] == pytest.approx(4 / 6)
    assert women["specificity"]["value"] == pytest.approx(5 / 6)
    # AUC by hand: pairs (melanoma, benign) ranked right, out of 36.
    right = sum(m > b for m in probs[:6] for b in probs[6:12])
    assert women["auc"]["value"] == pytest.approx(right / 36)
    assert women["auc"]["low"] <= women["auc"]["value"] <= women["auc"]["high"]
    assert (men["images"], men["melanomas"]) == (4, 1)
    assert "fewer than 5 melanomas or benign images" in men["too_small"] and "auc" not in men
    with pytest.raises(ValueError, match="names 3 images, the labels 16"):
        subgroup_report(labels, probs, {"sex": sex[:3]}, threshold=0.5)


@pytest.mark.real_data
@pytest.mark.skipif(not REAL.is_dir(), reason="the real ISIC 2017 data is not beside the checkout")
def test_every_real_isic2017_image_has_an_age_and_a_sex_or_an_explicit_unknown():
    result = read_layout(REAL)
    assert len(result.samples) == 2150
    assert not [p for p in result.problems if p.kind == "bad metadata"]
    for sample in result.samples:
        m = sample.metadata
        assert m is not None and m.has_age and m.sex in ("female", "male", "unknown")
        assert m.age is None or 0 <= m.age <= 120
        assert m.site is None  # ISIC 2017 does not record the site
    counts = coverage([s.metadata for s in result.samples])
    assert counts["sex"]["values"] == {"female": 930, "male": 990, "unknown": 230}
    assert counts["age"]["unknown"] == 257
