"""Synthetic data: deterministic, in the ISIC 2017 layout, with a learnable class signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from melanoma.data.layouts import read_layout
from melanoma.data.synth import SynthConfig, generate_sample, write_synthetic
from melanoma_cli import main


def test_deterministic_and_prefix_stable(tmp_path: Path):
    write_synthetic(tmp_path / "a", SynthConfig(n=6, size=48, seed=7))
    write_synthetic(tmp_path / "b", SynthConfig(n=9, size=48, seed=7))
    write_synthetic(tmp_path / "c", SynthConfig(n=6, size=48, seed=8))
    name = "ISIC-2017_Training_Data/ISIC_0000004.jpg"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_layout_is_read_as_isic2017(tmp_path: Path):
    write_synthetic(tmp_path, SynthConfig(n=10, size=40, seed=1, prevalence=0.5))
    result = read_layout(tmp_path)
    assert result.layout == "isic2017" and not result.problems
    assert len(result.samples) == 10 and all(s.mask_path.is_file() for s in result.samples)


def test_class_signal_is_real_but_overlapping():
    def features(melanoma: bool, n: int = 60):
        area, colour_spread = [], []
        for i in range(n):
            image, mask = generate_sample(np.random.default_rng([int(melanoma), i]), 64, melanoma)
            inside = image[mask > 0].astype(float)
            area.append((mask > 0).mean())
            colour_spread.append(inside.std(axis=0).mean())
        return np.array(area), np.array(colour_spread)

    mel_area, mel_spread = features(True)
    ben_area, ben_spread = features(False)
    assert mel_area.mean() > 1.3 * ben_area.mean()
    assert mel_spread.mean() > ben_spread.mean()
    # Overlap: some benign lesions are larger than some melanomas.
    assert ben_area.max() > mel_area.min()


def test_prevalence(tmp_path: Path):
    summary = write_synthetic(tmp_path, SynthConfig(n=300, size=32, seed=0, prevalence=0.2))
    assert 0.13 < summary["melanoma"] / 300 < 0.27


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be at least 1"),
        ({"size": 8}, "size must be between"),
        ({"prevalence": 1.0}, "prevalence must be strictly between"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)


def test_cli(tmp_path: Path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "5", "--size", "32"]) == 0
    assert "wrote 5 synthetic images" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "-1"]) == 2
    assert "n must be at least 1" in capsys.readouterr().err


def test_split_cli(tmp_path: Path, capsys):
    main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "20", "--size", "32"])
    out = tmp_path / "splits.json"
    assert (
        main(["data", "split", str(tmp_path / "d"), "--out", str(out), "--test-fraction", "0.2"])
        == 0
    )
    assert out.is_file() and "test :" in capsys.readouterr().out
