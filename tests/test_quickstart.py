"""The main job end to end, shrunk: two tiny searches, cascade, evaluation, export, predict."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def shrink(src: Path, dst: Path) -> None:
    exp = yaml.safe_load(src.read_text())
    exp["train"]["data"]["path"] = "synthetic:80:64:0"
    exp["train"]["data"]["image_size"] = 32 if exp["task"] == "seg" else 48
    exp["search"].update(num_samples=2, max_epochs=2)
    exp["search"]["scheduler"] = {"name": "fifo"}
    dst.write_text(yaml.safe_dump(exp, sort_keys=False))


def test_quickstart_end_to_end(tmp_path: Path, monkeypatch, capsys):
    import ray

    from melanoma.cli import main

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MELANOMA_FAIL_ONCE_MARKER", raising=False)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    for name in ("quickstart.yaml", "quickstart_cls.yaml"):
        shrink(EXPERIMENTS / name, experiments / name)
    out = tmp_path / "qs"
    try:
        assert main(["quickstart", "--out", str(out), "--experiments", str(experiments)]) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert "quickstart finished" in printed and "test AUC" in printed
    report = json.loads((out / "cascade" / "report.json").read_text())
    assert report["test_images"] > 0 and "auc" in report["classification"]
    card = json.loads((out / "export" / "model_card.json").read_text())
    assert card["input"]["shape"][-1] == 48
    with open(out / "predictions.csv") as fh:
        predicted = {Path(r["image"]).stem: float(r["probability"]) for r in csv.DictReader(fh)}
    with open(out / "cascade" / "test_predictions.csv") as fh:
        evaluated = {r["id"]: float(r["probability"]) for r in csv.DictReader(fh)}
    # The exported model reproduces the evaluation's test probabilities.
    assert predicted.keys() == evaluated.keys()
    assert all(abs(predicted[k] - evaluated[k]) < 1e-4 for k in evaluated)
    assert len(os.listdir(out / "masks")) == len(evaluated)
