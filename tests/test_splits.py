"""Splits: deterministic, stratified, grouped, official splits kept, leaks refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from melanoma.data.carve import assign_splits, build_splits
from melanoma.data.check import check_dataset
from melanoma.data.records import Sample
from melanoma.data.splits import LeakError, SplitConfig, Splits


def samples(n: int, prevalence: float = 0.2, groups: int | None = None, split=None) -> list[Sample]:
    out = []
    for i in range(n):
        label = int(i % round(1 / prevalence) == 0)
        group = f"g{i % groups}" if groups else None
        out.append(Sample(f"id{i:04d}", Path(f"{i}.jpg"), label=label, group=group, split=split))
    return out


def test_deterministic_and_seed_dependent():
    data = samples(500)
    a, _ = assign_splits(data, SplitConfig(seed=1))
    b, _ = assign_splits(data, SplitConfig(seed=1))
    c, _ = assign_splits(data, SplitConfig(seed=2))
    assert a == b
    assert a != c


def test_fractions_and_stratification():
    data = samples(1000, prevalence=0.2)
    assignment, _ = assign_splits(data, SplitConfig(val_fraction=0.15, test_fraction=0.2))
    for split, fraction in (("val", 0.15), ("test", 0.2)):
        members = [s for s in data if assignment[s.id] == split]
        assert len(members) == pytest.approx(1000 * fraction, abs=2)
        assert sum(s.label for s in members) == pytest.approx(200 * fraction, abs=1)


def test_groups_never_cross_splits():
    data = samples(600, groups=150)
    assignment, leaks = assign_splits(data, SplitConfig(seed=4))
    by_group: dict[str, set[str]] = {}
    for s in data:
        by_group.setdefault(s.group, set()).add(assignment[s.id])
    assert all(len(v) == 1 for v in by_group.values())
    assert not leaks
    assert {"train", "val", "test"} == set(assignment.values())


def test_identical_content_stays_together():
    data = samples(200)
    content = {s.id: s.id for s in data}
    content["id0001"] = content["id0002"] = "same-bytes"
    for seed in range(10):
        assignment, _ = assign_splits(data, SplitConfig(seed=seed), content)
        assert assignment["id0001"] == assignment["id0002"]


def _report(data: list[Sample], content: dict[str, str]):
    from melanoma.data.check import CheckReport, SampleInfo

    info = {s.id: SampleInfo(content[s.id], (64, 64)) for s in data}
    return CheckReport("isic2020", Path("."), data, info, [], has_masks=False)


def test_a_split_left_empty_by_one_giant_unit_is_refused():
    """Files that compress to the same bytes link every patient into one unit: it would
    all go to validation, and training would see nothing."""
    data = samples(400, groups=100)
    content = {s.id: f"sha-{s.id}" for s in data}
    build_splits(_report(data, content), SplitConfig())  # distinct files: carved
    for i in range(100):  # one image of each of the 100 patients shares one file's bytes
        content[f"id{i:04d}"] = "same-bytes"
    with pytest.raises(ValueError, match=r"split train, test got no images.*largest holds 400"):
        build_splits(_report(data, content), SplitConfig())


def test_official_splits_kept_and_missing_test_carved_from_train():
    data = samples(300, split="train") + [
        Sample(f"v{i}", Path(f"v{i}.jpg"), label=i % 2, split="val") for i in range(40)
    ]
    assignment, _ = assign_splits(data, SplitConfig(test_fraction=0.1))
    assert all(assignment[f"v{i}"] == "val" for i in range(40))
    test = [i for i, s in assignment.items() if s == "test"]
    assert len(test) == pytest.approx(34, abs=2) and all(i.startswith("id") for i in test)
    ignored, _ = assign_splits(data, SplitConfig(keep_official=False))
    assert any(ignored[f"v{i}"] != "val" for i in range(40))


def test_val_from_train_carves_validation_beside_the_official_one():
    data = samples(300, split="train", groups=200) + [
        Sample(f"v{i}", Path(f"v{i}.jpg"), label=i % 2, split="val") for i in range(40)
    ]
    config = SplitConfig(val_fraction=0.2, test_fraction=0.1, val_from_train=True)
    assignment, leaks = assign_splits(data, config)
    assert not leaks
    assert all(assignment[f"v{i}"] == "val" for i in range(40))
    carved = [s for s in data if s.id.startswith("id") and assignment[s.id] == "val"]
    # About 0.2 of all 340 images, per label, on top of the official 40; groups kept whole.
    assert len(carved) == pytest.approx(68, abs=3)
    assert sum(s.label for s in carved) == pytest.approx(0.2 * sum(s.label for s in data), abs=2)
    for group in {s.group for s in carved}:
        assert {assignment[s.id] for s in data if s.group == group} == {"val"}
    assert sum(a == "test" for a in assignment.values()) == pytest.approx(34, abs=3)
    # Without the option the official validation is the whole validation split.
    plain, _ = assign_splits(data, SplitConfig(val_fraction=0.2, test_fraction=0.1))
    assert sorted(i for i, a in plain.items() if a == "val") == sorted(f"v{i}" for i in range(40))


def test_val_from_train_is_recorded_and_reaches_the_data_config(synth_root, tmp_path: Path):
    from melanoma.engine.config import DataConfig

    config = DataConfig(val_fraction=0.2, val_from_train=True).split_config()
    assert config == SplitConfig(val_fraction=0.2, val_from_train=True)
    build_splits(check_dataset(synth_root), config).save(tmp_path / "splits.json")
    assert Splits.load(tmp_path / "splits.json").config == config
    # Files written before the option existed read as without it.
    doc = json.loads((tmp_path / "splits.json").read_text())
    del doc["config"]["val_from_train"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert Splits.load(tmp_path / "old.json").config.val_from_train is False


def test_leak_across_official_splits_is_reported_not_moved():
    data = [
        Sample("a", Path("a.jpg"), label=0, group="lesion-1", split="train"),
        Sample("b", Path("b.jpg"), label=0, group="lesion-1", split="test"),
        *samples(50, split="train"),
    ]
    assignment, leaks = assign_splits(data, SplitConfig())
    assert (assignment["a"], assignment["b"]) == ("train", "test")
    assert leaks and leaks[0]["ids"] == ["a", "b"]


def test_splits_file_round_trip_and_hashes(synth_root: Path, tmp_path: Path):
    splits = build_splits(check_dataset(synth_root), SplitConfig(seed=3))
    splits.save(tmp_path / "splits.json")
    loaded = Splits.load(tmp_path / "splits.json")
    assert loaded.counts() == splits.counts()
    assert sum(c["images"] for c in loaded.counts().values()) == 24
    doc = json.loads((tmp_path / "splits.json").read_text())
    entry = doc["splits"]["test"][0]
    assert len(entry["image_sha256"]) == 64 and entry["image"].startswith(
        "ISIC-2017_Training_Data/"
    )
    assert loaded.verify_files() == []
    loaded.assert_test_isolated()


def test_verify_files_names_changed_files(synth_copy: Path, tmp_path: Path):
    splits = build_splits(check_dataset(synth_copy), SplitConfig())
    victim = splits.entries["test"][0].sample.image_path
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert splits.verify_files() == [str(victim)]


def test_assert_test_isolated_refuses_a_leak(synth_root: Path):
    splits = build_splits(check_dataset(synth_root), SplitConfig())
    leaked = splits.entries["train"][0]
    splits.entries["test"].append(leaked)
    with pytest.raises(LeakError, match=f"test image {leaked.sample.id} is also in train"):
        splits.assert_test_isolated()


def test_real_isic2017_larger_validation(real_isic2017: Path):
    splits = build_splits(check_dataset(real_isic2017), SplitConfig(seed=0, val_from_train=True))
    counts = splits.counts()
    official = [e for e in splits.entries["val"] if e.sample.split == "val"]
    assert len(official) == 150
    # 0.15 of the 404 melanomas carved beside the official 30.
    assert counts["val"]["melanoma"] == 30 + round(0.15 * 404)
    assert sum(c["images"] for c in counts.values()) == 2150
    splits.assert_test_isolated()


def test_bad_split_config_values():
    with pytest.raises(ValueError, match="val_fraction must be strictly between 0 and 1"):
        SplitConfig(val_fraction=0)
    with pytest.raises(ValueError, match="leaves too little for training"):
        SplitConfig(val_fraction=0.5, test_fraction=0.45)


def test_load_rejects_bad_files(tmp_path: Path):
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read splits file"):
        Splits.load(tmp_path / "s.json")
    (tmp_path / "s.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="regenerate it"):
        Splits.load(tmp_path / "s.json")


def test_unknown_split_name(synth_root: Path):
    splits = build_splits(check_dataset(synth_root), SplitConfig())
    with pytest.raises(ValueError, match="valid splits"):
        splits.samples("validation")


@pytest.mark.real_data
def test_real_isic2017_splits(real_isic2017: Path):
    splits = build_splits(check_dataset(real_isic2017), SplitConfig(seed=0))
    counts = splits.counts()
    assert counts["val"] == {"images": 150, "melanoma": 30, "benign": 120, "unlabelled": 0}
    assert counts["train"]["images"] + counts["test"]["images"] == 2000
    assert counts["test"]["melanoma"] == round(0.15 * 404)
    # The byte-identical training/validation pair is reported, never hidden.
    assert splits.leaks and splits.leaks[0]["ids"] == ["ISIC_0012127", "ISIC_0012970"]
    splits.assert_test_isolated()


def test_split_settings_are_written_and_read_in_one_place():
    """A train config's data section, a cascade's record and a cache key all come from
    SplitConfig; records without the newer options read back with their defaults."""
    from melanoma.engine.config import DataConfig

    config = SplitConfig(seed=3, val_fraction=0.2, test_fraction=0.1, val_from_train=True)
    assert SplitConfig.from_record(config.to_record()) == config
    data = DataConfig(path="x", split_seed=3, val_fraction=0.2, test_fraction=0.1)
    assert data.split_config() == SplitConfig(seed=3, val_fraction=0.2, test_fraction=0.1)
    old = {"split_seed": 3, "val_fraction": 0.2, "test_fraction": 0.1}  # before val_from_train
    assert SplitConfig.from_record(old) == data.split_config()
    # The cache key of a default option is the key made before that option existed.
    assert "val_from_train" not in data.split_config().cache_key()
    assert config.cache_key()["val_from_train"] is True
    assert "split_seed=3" in config.describe() and "val_from_train=True" in config.describe()


def test_isic2020_sized_index_stays_grouped_by_patient_and_stratified():
    """33,126 images of about 2,000 patients (ISIC 2020's shape, 1.8% melanoma): no patient
    on both sides of a split or of a fold, and the melanoma rate carried into each."""
    import time
    from collections import defaultdict

    import numpy as np

    from melanoma.data.carve import fold_splits
    from melanoma.data.splits import SplitEntry

    rng = np.random.default_rng(0)
    n, patients = 33_126, 2_056
    patient = rng.integers(0, patients, n)
    label = (rng.random(n) < 0.0176).astype(int)
    samples = [
        Sample(f"ISIC_{i:07d}", Path(f"{i}.jpg"), label=int(label[i]), group=f"IP_{patient[i]}")
        for i in range(n)
    ]
    started = time.perf_counter()
    assignment, leaks = assign_splits(samples, SplitConfig(seed=1))
    split_s = time.perf_counter() - started
    assert leaks == [] and len(assignment) == n
    sides = defaultdict(set)
    for s in samples:
        sides[s.group].add(assignment[s.id])
    assert all(len(v) == 1 for v in sides.values())  # each patient on one side
    for name in ("val", "test"):
        held = [s for s in samples if assignment[s.id] == name]
        # Patients are whole units, so a split lands near its fraction, not on it.
        assert 0.10 < len(held) / n < 0.20
        assert 0.5 < np.mean([s.label for s in held]) / label.mean() < 1.5
    by_split = defaultdict(list)
    for s in samples:
        by_split[assignment[s.id]].append(SplitEntry(s, f"sha-{s.id}", None))
    splits = Splits(Path("."), "isic2020", SplitConfig(seed=1), dict(by_split))
    started = time.perf_counter()
    folds = fold_splits(splits, 5, seed=0)
    fold_s = time.perf_counter() - started
    held_patients = [{e.sample.group for e in f.entries["val"]} for f in folds]
    for f, held in zip(folds, held_patients, strict=True):
        assert not held & {e.sample.group for e in f.entries["train"]}
    assert sum(len(h) for h in held_patients) == len(set().union(*held_patients))
    # Printed, never asserted: timings vary 2-3x from day to day.
    print(f"split {split_s:.1f} s, 5 folds {fold_s:.1f} s for {n} images")
