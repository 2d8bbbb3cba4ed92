"""The main job end to end, as a user runs it: the shipped experiments, from a directory
outside the checkout, on a second data seed (the README's figures use seed 0)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quickstart_end_to_end_learns_the_task(tmp_path: Path, monkeypatch, capfd):
    import ray

    from melanoma_cli import main

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MELANOMA_FAIL_ONCE_MARKER", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the shipped experiments are found from any directory
    try:
        assert main(["quickstart", "--out", "qs", "--seed", "1"]) == 0
    finally:
        ray.shutdown()
    out, err = capfd.readouterr()
    assert "quickstart finished" in out
    assert "Traceback" not in out + err and "ERROR" not in err, err[-3000:]
    qs = elsewhere / "qs"
    report = json.loads((qs / "cascade" / "report.json").read_text())
    auc = report["classification"]["auc"]
    # The synthetic task is learnable in the quickstart's budget, and the test split is
    # large enough for the 95% interval to say so.
    assert report["test_images"] >= 100 and auc["low"] > 0.5, auc
    assert f"test AUC {auc['value']:.3f} (95% CI {auc['low']:.3f}-{auc['high']:.3f})" in out
    card = json.loads((qs / "export" / "model_card.json").read_text())
    assert card["input"]["shape"][-1] == 64
    with open(qs / "predictions.csv") as fh:
        predicted = {Path(r["image"]).stem: float(r["probability"]) for r in csv.DictReader(fh)}
    with open(qs / "cascade" / "test_predictions.csv") as fh:
        evaluated = {r["id"]: float(r["probability"]) for r in csv.DictReader(fh)}
    # The exported model reproduces the evaluation's test probabilities.
    assert predicted.keys() == evaluated.keys()
    assert all(abs(predicted[k] - evaluated[k]) < 1e-4 for k in evaluated)
    assert len(os.listdir(qs / "masks")) == len(evaluated)
