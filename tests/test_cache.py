"""The cache holds exactly what direct decoding gives, and datasets read both the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from melanoma.data.cache import Cache, is_cache, prepare_cache
from melanoma.data.dataset import open_data
from melanoma.data.io import load_image, load_mask
from melanoma.data.transforms import IMAGENET, Preprocess, build_augmentation
from melanoma_cli import main


@pytest.fixture(scope="module")
def cache_dir(synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(synth_root, 32, out)
    return out


def test_cache_pixels_equal_direct_decoding(synth_root: Path, cache_dir: Path):
    cached = open_data(cache_dir, 32)
    raw = open_data(synth_root, 32)
    assert cached.splits.counts() == raw.splits.counts()
    for split in ("train", "val", "test"):
        a, b = cached.dataset(split), raw.dataset(split)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x["id"] == y["id"] and x["label"] == y["label"]
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])


def test_resize_filters(synth_root: Path):
    path = next((synth_root / "ISIC-2017_Training_Data").glob("*.jpg"))
    img = load_image(path, 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    mask = load_mask(next((synth_root / "ISIC-2017_Training_Part1_GroundTruth").glob("*.png")), 32)
    assert set(np.unique(mask)) <= {0, 1}  # nearest neighbour keeps masks binary
    assert load_image(path, 128).shape == (128, 128, 3)  # enlarging works too


def test_items_are_uint8_tensors(cache_dir: Path):
    item = open_data(cache_dir, 32).dataset("train")[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (1, 32, 32) and item["has_mask"]
    assert item["label"] in (0, 1)


def test_augmentation_moves_image_and_mask_together(cache_dir: Path):
    bundle = open_data(cache_dir, 32)
    source = bundle.source("train")

    class MaskAsImage:
        """A source whose image is the mask itself, so misalignment shows."""

        def __len__(self):
            return len(source)

        def get(self, i):
            item = source.get(i)
            return type(item)(
                np.repeat(item.mask[..., None] * 255, 3, axis=2), item.mask, 0, item.id
            )

    from melanoma.data.dataset import LesionDataset

    ds = LesionDataset(MaskAsImage(), build_augmentation(1.0))
    agreement = []
    for i in range(len(ds)):
        item = ds[i]
        agreement.append(((item["image"][0] > 127) == (item["mask"][0] > 0)).float().mean().item())
    assert min(agreement) > 0.95
    assert set(torch.unique(ds[0]["mask"]).tolist()) <= {0, 1}


def test_augmentation_strength_validated():
    assert build_augmentation(0.0) is None
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        build_augmentation(1.5)


def test_preprocess_is_the_one_normalisation():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = Preprocess(IMAGENET)(x)
    expected = (1.0 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    assert torch.allclose(out[0, :, 0, 0], expected)
    assert torch.allclose(Preprocess(IMAGENET)(x.float() / 255), out)


def test_size_mismatch_and_not_a_cache(cache_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="holds 32x32 images but image_size=64"):
        open_data(cache_dir, 64)
    with pytest.raises(FileNotFoundError, match="melanoma data prepare"):
        Cache.open(tmp_path)


def test_a_cache_refuses_other_split_settings(cache_dir: Path):
    from melanoma.data.splits import SplitConfig

    assert open_data(cache_dir, 32, split_config=SplitConfig()).splits.config == SplitConfig()
    with pytest.raises(
        ValueError,
        match=r"was split with split_seed=0, val_fraction=0.15.* but split_seed=3, "
        r"val_fraction=0.2.* was asked for",
    ):
        open_data(cache_dir, 32, split_config=SplitConfig(seed=3, val_fraction=0.2))


def test_prepare_refuses_a_foreign_directory(synth_root: Path, tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a melanoma cache"):
        prepare_cache(synth_root, 32, tmp_path)


def test_prepare_cli(synth_root: Path, tmp_path: Path, capsys):
    assert (
        main(["data", "prepare", str(synth_root), "--size", "24", "--out", str(tmp_path / "c")])
        == 0
    )
    assert "cached 24 images at 24x24" in capsys.readouterr().out
    cache = Cache.open(tmp_path / "c")
    assert (
        cache.size == 24
        and len(cache.rows("train")) + len(cache.rows("val")) + len(cache.rows("test")) == 24
    )
    assert (
        main(["data", "prepare", str(synth_root), "--size", "8", "--out", str(tmp_path / "d")]) == 2
    )
    assert "between 16 and 2048" in capsys.readouterr().err


def test_cache_source_pickles_without_memmap(cache_dir: Path):
    import pickle

    source = open_data(cache_dir, 32).source("train")
    source.get(0)
    clone = pickle.loads(pickle.dumps(source))
    assert clone._images is None
    assert np.array_equal(clone.get(0).image, source.get(0).image)


def test_node_cache_decodes_once_per_machine_and_follows_the_files(
    synth_copy: Path, tmp_path: Path, monkeypatch
):
    import os
    import threading

    import melanoma.data.cache as cache_module

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "machine"))
    calls = []
    real_prepare = cache_module.prepare_cache

    def counting_prepare(*args, **kwargs):
        calls.append(args[0])
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(cache_module, "prepare_cache", counting_prepare)
    # Four trials start at once on one machine: one decodes, three wait and share it.
    bundles = [None] * 4

    def trial(i):
        bundles[i] = open_data(synth_copy, 32, decode_once=True)

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    paths = {b.cache.path for b in bundles}
    assert len(paths) == 1
    cached = next(iter(paths))
    assert cached.parent == tmp_path / "machine" / "decoded"
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".building-")]
    # The same pixels as decoding the files directly.
    raw = open_data(synth_copy, 32)
    a, b = raw.dataset("train", None), bundles[0].dataset("train", None)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
    # Another size, other split settings or a changed file: another cache.
    assert open_data(synth_copy, 64, decode_once=True).cache.path != cached
    image = next(p for p in sorted(synth_copy.rglob("*.jpg")))
    os.utime(image, ns=(1, 1))
    assert open_data(synth_copy, 32, decode_once=True).cache.path != cached
    assert len(calls) == 3
    # A prepared cache is used as it is.
    assert open_data(cached, 32, decode_once=True).cache.path == cached


def test_training_reads_raw_files_when_the_cache_is_off(synth_root: Path, tmp_path, monkeypatch):
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.inputs import open_training_data

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "machine"))
    base = {"task": "seg", "data": {"path": str(synth_root), "image_size": 32}}
    base["model"] = {"arch": "fpn", "encoder": "resnet18"}
    on = open_training_data(TrainConfig.from_dict(base))
    assert on.cache is not None and on.cache.path.parent == tmp_path / "machine" / "decoded"
    base["data"]["cache"] = False
    off = open_training_data(TrainConfig.from_dict(base))
    assert off.cache is None
    assert off.splits.counts() == on.splits.counts()


def test_node_cache_follows_files_outside_the_data_set(tmp_path: Path, monkeypatch):
    """With data.external_paths a manifest names images elsewhere: changing one of them
    makes another cache, as changing a file inside the data set's folder does."""
    import os

    from tests.conftest import write_image, write_mask

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "machine"))
    data, other = tmp_path / "data", tmp_path / "elsewhere"
    rows = ["image,mask,label"]
    for i in range(12):
        where = data if i % 2 else other
        write_image(where / f"i{i}.png", size=(40, 40), seed=i)
        write_mask(where / f"i{i}_m.png", size=(40, 40))
        prefix = "" if i % 2 else f"{other}/"
        rows.append(f"{prefix}i{i}.png,{prefix}i{i}_m.png,{i % 3 == 0:d}")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    first = open_data(data, 32, decode_once=True, external_paths=True)
    again = open_data(data, 32, decode_once=True, external_paths=True)
    assert again.cache.path == first.cache.path  # nothing changed: the same cache
    write_image(other / "i0.png", size=(40, 40), seed=99)  # new pixels outside the folder
    os.utime(other / "i0.png", ns=(5, 5))
    changed = open_data(data, 32, decode_once=True, external_paths=True)
    assert changed.cache.path != first.cache.path

    def pixels(cache):
        row = next(r["row"] for r in cache.index["samples"] if r["id"] == "i0")
        return np.load(cache.path / "images.npy", mmap_mode="r")[row]

    assert not np.array_equal(pixels(changed.cache), pixels(first.cache))


def test_a_killed_machine_cache_build_resumes_where_it_stopped(
    synth_copy: Path, tmp_path: Path, monkeypatch
):
    """The cache a training run builds for itself (once per machine): stopped midway, the
    next run decodes only the rows left, and nothing reads the half-built one."""
    import threading

    import melanoma.data.cache as cache_module

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "machine"))
    calls = {"n": 0, "limit": 7}
    lock = threading.Lock()  # the cache decodes in several threads

    def load(path, size):
        with lock:
            calls["n"] += 1
            if calls["n"] > calls["limit"]:
                raise KeyboardInterrupt("killed")
        return load_image(path, size)

    monkeypatch.setattr(cache_module, "load_image", load)
    with pytest.raises(KeyboardInterrupt):
        open_data(synth_copy, 32, decode_once=True)
    decoded = tmp_path / "machine" / "decoded"
    assert not [p for p in decoded.iterdir() if is_cache(p)]
    calls.update(n=0, limit=10**9)
    bundle = open_data(synth_copy, 32, decode_once=True)
    assert calls["n"] == bundle.cache.index["n"] - 7
    assert [p.name for p in decoded.iterdir() if p.is_dir()] == [bundle.cache.path.name]
    raw = open_data(synth_copy, 32).dataset("train", None)
    cached = bundle.dataset("train", None)
    assert len(raw) == len(cached) > 0
    assert all(torch.equal(raw[i]["image"], cached[i]["image"]) for i in range(len(raw)))
    # A build that fails with an error is removed: the next one starts clean.
    monkeypatch.setattr(cache_module, "load_image", lambda path, size: 1 / 0)
    (synth_copy / "extra.txt").write_text("another file: another cache")
    with pytest.raises(ZeroDivisionError):
        open_data(synth_copy, 32, decode_once=True)
    assert [p.name for p in decoded.iterdir() if p.is_dir()] == [bundle.cache.path.name]
    # Killed, then the files changed: the next build is another cache, and the killed
    # one, which no run can resume, is removed once it is made.
    monkeypatch.setattr(cache_module, "load_image", load)
    calls.update(n=0, limit=3)
    with pytest.raises(KeyboardInterrupt):
        open_data(synth_copy, 32, decode_once=True)
    building = [p for p in decoded.iterdir() if p.is_dir() and p.name.startswith(".building-")]
    assert len(building) == 1
    (synth_copy / "extra.txt").write_text("changed again")
    calls.update(n=0, limit=10**9)
    newer = open_data(synth_copy, 32, decode_once=True)
    left = sorted(p.name for p in decoded.iterdir() if p.is_dir())
    assert left == sorted([bundle.cache.path.name, newer.cache.path.name])
    assert not list(decoded.glob(".building-*.owner.json"))


def test_a_killed_cache_build_resumes_and_is_never_read_half_written(
    synth_root: Path, synth_copy: Path, cache_dir: Path, tmp_path, monkeypatch
):
    import melanoma.data.cache as cache_module

    calls = {"n": 0}

    def dies_after(limit):
        def load(path, size):
            calls["n"] += 1
            if calls["n"] > limit:
                raise KeyboardInterrupt("killed")
            return load_image(path, size)

        return load

    out = tmp_path / "cache"
    monkeypatch.setattr(cache_module, "load_image", dies_after(5))
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(synth_root, 32, out, workers=1)
    # Half written: not a cache, and nothing opens it as one.
    with pytest.raises(FileNotFoundError, match="is not a prepared cache"):
        Cache.open(out)
    assert int(np.load(out / "filled.npy").sum()) == 5
    # The same build again decodes only the rows it had not, and equals a clean build.
    calls["n"] = 0
    monkeypatch.setattr(cache_module, "load_image", dies_after(10**9))
    info = prepare_cache(synth_root, 32, out, workers=1)
    assert calls["n"] == info["images"] - 5
    assert np.array_equal(np.load(out / "images.npy"), np.load(cache_dir / "images.npy"))
    assert np.array_equal(np.load(out / "masks.npy"), np.load(cache_dir / "masks.npy"))
    assert not (out / "filled.npy").exists() and not (out / "building.json").exists()
    assert Cache.open(out).size == 32
    # A build of another size does not take those rows: it decodes every one.
    calls["n"] = 0
    monkeypatch.setattr(cache_module, "load_image", dies_after(3))
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(synth_root, 48, out, workers=1)
    calls["n"] = 0
    monkeypatch.setattr(cache_module, "load_image", dies_after(10**9))
    assert prepare_cache(synth_root, 32, out, workers=1)["images"] == calls["n"]
    # One file's bytes changed after a kill: no row of the killed build is taken.
    calls["n"] = 0
    monkeypatch.setattr(cache_module, "load_image", dies_after(4))
    copy_out = tmp_path / "copy-cache"
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(synth_copy, 32, copy_out, workers=1)
    changed = sorted((synth_copy / "ISIC-2017_Training_Data").glob("*.jpg"))[-1]
    changed.write_bytes(changed.read_bytes() + b"\0")  # still a readable JPEG, other bytes
    calls["n"] = 0
    monkeypatch.setattr(cache_module, "load_image", dies_after(10**9))
    assert prepare_cache(synth_copy, 32, copy_out, workers=1)["images"] == calls["n"]
