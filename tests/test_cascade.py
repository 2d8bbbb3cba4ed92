"""The cascade: equals the two models run by hand, threshold from validation only, refuses
leaking splits, exports to ONNX/torch.export that match eager, predicts over a folder."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from melanoma.cascade.build import build_cascade
from melanoma.cascade.calibration import Calibration
from melanoma.cascade.evaluate import evaluate_cascade
from melanoma.cascade.model import ProbabilityMap
from melanoma.cascade.scoring import CascadeOutputs, run_cascade
from melanoma.cascade.store import load_cascade
from melanoma.data.splits import LeakError, Splits
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.engine import Runtime, TrainConfig, fit
from melanoma.metrics.threshold import choose_threshold
from melanoma_cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cascade")
    data = root / "data"
    write_synthetic(data, SynthConfig(n=90, size=64, seed=2, prevalence=0.35))
    common = {
        "epochs": 2,
        "log_images": 0,
        "data": {
            "path": str(data),
            "image_size": 64,
            "batch_size": 16,
            "num_workers": 0,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
    }
    seg = TrainConfig.from_dict(
        {
            **common,
            "task": "seg",
            "out": str(root / "seg"),
            "model": {"arch": "fpn", "encoder": "resnet18"},
            "optimizer": {"lr": 3e-3},
        }
    )
    cls = TrainConfig.from_dict(
        {
            **common,
            "task": "cls",
            "out": str(root / "cls"),
            "model": {"arch": "resnet18"},
            "input": {"mode": "crop"},
        }
    )
    fit(seg, Runtime(progress=False))
    fit(cls, Runtime(progress=False))
    out = root / "built"
    summary = build_cascade(str(root / "seg"), str(root / "cls"), out, tta="off")
    return {"root": root, "data": data, "dir": out, "summary": summary}


def test_cascade_equals_the_models_run_by_hand(built):
    from melanoma.data.transforms import apply_input_mode
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.tasks import build_model

    cascade, meta = load_cascade(built["dir"])
    models = {}
    for task in ("seg", "cls"):
        state = load_checkpoint(built["root"] / task)
        model = build_model(TrainConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        models[task] = model.eval()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        mask = (torch.sigmoid(models["seg"](images.float() / 255)) > 0.5).to(torch.uint8)
        x = apply_input_mode(images, mask, "crop", 0.15, 64)
        expected = torch.softmax(models["cls"](x), dim=1)[:, 1]
        prob, cascade_mask = cascade(images)
        uncalibrated = cascade.classify_uncalibrated(images, mask)
    # The classifiers' probability, then the calibration the build chose (maybe none).
    assert torch.allclose(uncalibrated, expected, atol=1e-6)
    assert torch.allclose(prob, cascade.calibrate(expected), atol=1e-6)
    assert cascade.calibrate.calibration.method == meta.calibration["method"]
    assert torch.equal(cascade_mask, mask)


class _NoLesion(torch.nn.Module):
    """A segmenter that finds nothing anywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], -50.0)


def test_masked_cascade_with_an_empty_mask_classifies_the_whole_image(built, tmp_path):
    import onnxruntime as ort

    from melanoma.export import write_programs

    cascade, _ = load_cascade(built["dir"])
    from dataclasses import replace

    cascade.segmenters = torch.nn.ModuleList([_NoLesion()])
    cascade.cls_specs = [replace(spec, mode="masked") for spec in cascade.cls_specs]
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        prob, mask = cascade(images)
        whole = cascade.classify(images, None, "full")
    assert mask.sum() == 0 and torch.allclose(prob, whole, atol=1e-6)
    write_programs(cascade, images, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "cascade.onnx"))
    onnx_prob, onnx_mask = session.run(None, {"images": images.numpy()})
    assert onnx_mask.sum() == 0 and np.abs(onnx_prob - whole.numpy()).max() < 1e-4


def test_threshold_comes_from_validation_only(built, tmp_path, monkeypatch):
    import melanoma.cascade.decisions as decisions
    from melanoma.data.dataset import open_data

    cascade, meta = load_cascade(built["dir"])
    cfg = TrainConfig.from_dict(meta.classifiers[0].config)
    bundle = open_data(cfg.data.path, 64, split_config=cfg.data.split_config())
    val = run_cascade(cascade, bundle, "val")
    threshold, rule = choose_threshold(val.label, val.prob, None)
    assert meta.threshold == pytest.approx(threshold) and "validation" in meta.threshold_rule
    # What the build hands the threshold rule is the validation split, and only that.
    seen = []
    monkeypatch.setattr(
        decisions, "choose_threshold", lambda *args: seen.append(args[:2]) or (0.5, "x")
    )
    build_cascade(
        str(built["root"] / "seg"), str(built["root"] / "cls"), tmp_path / "again", tta="off"
    )
    # The validation images' own probabilities, image by image (a threshold chosen on any
    # other images, the test split's included, fails here).
    assert len(seen) == 1 and np.array_equal(seen[0][0], val.label)
    assert len(seen[0][1]) == len(val.prob) and np.allclose(seen[0][1], val.prob, atol=1e-6)


def test_build_refuses_members_that_saw_its_test_images(built, tmp_path, capsys):
    """The same settings on a data set that gained one image re-carve every split: the
    cascade's test split then holds images the members trained on, named by id. A member
    whose checkpoint records no splits cannot prove anything and is refused too."""
    from melanoma.data.synth import SynthConfig, write_synthetic

    grown = tmp_path / "grown"
    shutil.copytree(built["data"], grown)
    extra = tmp_path / "extra"
    write_synthetic(extra, SynthConfig(n=1, size=64, seed=77))
    (image,) = (extra / "ISIC-2017_Training_Data").glob("*.jpg")
    shutil.copy(image, grown / "ISIC-2017_Training_Data" / "ISIC_9999999.jpg")
    shutil.copy(
        extra / "ISIC-2017_Training_Part1_GroundTruth" / f"{image.stem}_segmentation.png",
        grown / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_9999999_segmentation.png",
    )
    with open(grown / "ISIC-2017_Training_Part3_GroundTruth.csv", "a") as fh:
        fh.write("ISIC_9999999,0.0,0.0\n")
    seg, cls = str(built["root"] / "seg"), str(built["root"] / "cls")
    args = ["cascade", "build", "--seg", seg, "--cls", cls, "--tta", "off"]
    assert main([*args, "--data", str(grown), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    found = re.search(r"image\(s\) of the cascade's (?:test|val) split were .*?: (.*?)\. ", err)
    assert found and "build from the same data" in err, err
    seen = {
        e["id"]
        for task in ("seg", "cls")
        for split in ("train", "val")
        for e in json.loads((built["root"] / task / "splits.json").read_text())["splits"][split]
    }
    named = set(found.group(1).split(", ")) - {"..."}
    assert named and named <= seen  # the ids of images a member trained or validated on
    assert not (tmp_path / "c" / "cascade.pt").exists()

    # A member checkpoint without recorded splits (and no run folder around it).
    state = torch.load(built["root"] / "cls" / "checkpoints" / "best.pt", weights_only=True)
    del state["splits"]
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    assert main([*args[:5], str(bare), *args[6:], "--out", str(tmp_path / "d")]) == 2
    assert "records no splits" in capsys.readouterr().err


def test_ensemble_selection_scores_masks_at_the_segmenters_threshold(built, tmp_path, capsys):
    """The greedy selection's validation Jaccard is the one of the masks the cascade will
    hand out: thresholded at the segmenter's own ``threshold``."""
    state = torch.load(built["root"] / "seg" / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["threshold"] = 0.8
    seg = tmp_path / "seg08.pt"
    torch.save(state, seg)
    cls = str(built["root"] / "cls")
    out = tmp_path / "c"
    build_cascade(str(seg), cls, out, ensemble_size=2, tta="off", mask_cleanup="off")
    printed = capsys.readouterr().out
    chosen = re.search(r"ensemble: segmenters .* \(validation Jaccard ([0-9.]+)\)", printed)
    meta = load_cascade(out)[1]
    assert float(chosen.group(1)) == pytest.approx(meta.val_jaccard["value"], abs=1e-4)
    at_half = load_cascade(built["dir"])[1].val_jaccard["value"]  # the same weights at 0.5
    assert abs(at_half - meta.val_jaccard["value"]) > 1e-3


def test_equal_weights_ship_every_classifier_once_and_say_so(built, tmp_path, capsys):
    """``cls_weights="equal"``: the validation-chosen cascade is the plain mean of its
    classifiers, none dropped however it scores on validation."""
    from melanoma.cascade.members import load_candidates, make_cascade, open_cascade_data

    cfg = TrainConfig.from_dict(load_checkpoint_config(built["root"] / "cls"))
    second = tmp_path / "cls2"
    fit(
        cfg.with_overrides({"epochs": 1, "log_images": 0, "seed": 7, "out": str(second)}),
        Runtime(progress=False),
    )
    seg, first = str(built["root"] / "seg"), str(built["root"] / "cls")
    with pytest.raises(ValueError, match=r"one of \['greedy', 'equal'\], got 'mean'"):
        build_cascade(seg, [first, str(second)], tmp_path / "no", cls_weights="mean")
    out = tmp_path / "equal"
    kw = {"tta": "off", "mask_cleanup": "off", "calibration": "off"}
    build_cascade(seg, [first, str(second)], out, cls_weights="equal", **kw)
    cascade, meta = load_cascade(out)
    assert [m.weight for m in meta.classifiers] == [1, 1]
    assert meta.selection["classifier_weights"] == "equal"
    bundle = open_cascade_data(meta.data, meta.input_size)
    segs = load_candidates(seg, "seg")
    singles = [
        run_cascade(make_cascade(segs, load_candidates(c, "cls"), meta.input_size), bundle, "val")
        for c in (first, str(second))
    ]
    shipped = run_cascade(cascade, bundle, "val")
    assert np.allclose(shipped.prob, (singles[0].prob + singles[1].prob) / 2, atol=1e-6)
    assert not np.allclose(singles[0].prob, singles[1].prob)  # two different members


def test_target_sensitivity_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.4, 0.6, 0.3, 0.7, 0.8, 0.9])
    threshold, _ = choose_threshold(labels, probs, 1.0)
    assert threshold == pytest.approx(0.3)
    threshold, _ = choose_threshold(labels, probs, 0.75)
    assert threshold == pytest.approx(0.7)
    # Targets whose thresholds lie on straight stretches of the ROC curve (between its
    # corners): the highest threshold reaching each, counted by hand from the four
    # melanoma scores 0.9, 0.8, 0.7, 0.3.
    for target, expected in [(0.25, 0.9), (0.5, 0.8), (0.6, 0.7), (0.76, 0.3)]:
        threshold, _ = choose_threshold(labels, probs, target)
        assert threshold == pytest.approx(expected), target
        assert (probs[labels == 1] >= threshold).mean() >= target
    with pytest.raises(ValueError, match="needs melanoma and benign"):
        choose_threshold(np.array([0, 0]), np.array([0.1, 0.2]), None)


def test_evaluation_report(built):
    from sklearn.metrics import f1_score, roc_auc_score

    from melanoma.data.io import file_sha256

    report = evaluate_cascade(built["dir"], resamples=200)
    c = report["classification"]
    for name in ("report.json", "report.md", "curves.png", "test_predictions.csv"):
        assert (built["dir"] / name).is_file()
    with open(built["dir"] / "test_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    # The figures, recomputed from the written predictions with scikit-learn.
    assert c["n"] == report["test_images"] == len(rows) > 0
    assert c["auc"]["value"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-5)
    decided = (probs >= report["threshold"]).astype(int)
    assert c["f1"]["value"] == pytest.approx(f1_score(labels, decided, zero_division=0))
    # The intervals against a bootstrap written here from the predictions alone (class-
    # stratified resamples of the test images, another seed, more resamples): seeded, so
    # deterministic; the bounds agree up to the resampling noise of 200 resamples.
    rng = np.random.default_rng(123)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    aucs, sens = [], []
    for _ in range(2000):
        rows = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs.append(roc_auc_score(labels[rows], probs[rows]))
        sens.append(decided[rows][labels[rows] == 1].mean())
    # Sensitivity moves in steps of one melanoma: its percentiles may differ by a step.
    for key, values, tol in (("auc", aucs, 0.06), ("sensitivity", sens, 1 / len(pos) + 0.01)):
        low, high = np.percentile(values, [2.5, 97.5])
        assert c[key]["low"] == pytest.approx(low, abs=tol), key
        assert c[key]["high"] == pytest.approx(high, abs=tol), key
    for key in ("specificity", "precision", "f1"):
        assert 0 <= c[key]["low"] <= c[key]["high"] <= 1, key
    assert "segmentation" in report and "classifier_with_ground_truth_masks" in report
    # Whole images are out of distribution for a crop classifier: no such column.
    assert "classifier_on_unmasked_images" not in report
    assert report["cascade_sha256"] == file_sha256(built["dir"] / "cascade.pt")
    md = (built["dir"] / "report.md").read_text()
    assert "| auc |" in md and "unmasked" not in md and "plain for precision" in md


def _rewrite_splits(directory: Path, doc: dict) -> None:
    """splits.json replaced and cascade.pt re-bound to it (as a hand-made or older cascade
    would be): what evaluate's own leak checks must still catch."""
    import hashlib

    (directory / "splits.json").write_text(json.dumps(doc))
    payload = torch.load(directory / "cascade.pt", weights_only=True)
    payload["splits_sha256"] = hashlib.sha256((directory / "splits.json").read_bytes()).hexdigest()
    torch.save(payload, directory / "cascade.pt")


def test_evaluation_refuses_a_leaking_split(built, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(built["dir"], leaky)
    doc = json.loads((leaky / "splits.json").read_text())
    doc["splits"]["test"].append(doc["splits"]["train"][0])
    _rewrite_splits(leaky, doc)
    with pytest.raises(LeakError, match="(?s)refusing to evaluate.*is also in train"):
        evaluate_cascade(leaky, resamples=10)
    # A test split that no longer matches the data is refused too.
    doc = json.loads((built["dir"] / "splits.json").read_text())
    moved = doc["splits"]["test"].pop()
    doc["splits"]["val"].append(moved)
    _rewrite_splits(leaky, doc)
    with pytest.raises(LeakError, match="split of the data now differs"):
        evaluate_cascade(leaky, resamples=10)


def test_official_test_split_with_duplicates_needs_the_drop_option(built, tmp_path, capsys):
    """ISIC 2017's official test split holds images identical to training/validation ones:
    refused by default; with --drop-test-duplicates exactly those go, and every report
    names them with their twins."""
    from tests.conftest import add_isic2017_image, write_official_isic2017

    data = write_official_isic2017(tmp_path / "isic", n=60, val=14, test=12, seed=11)
    train_img = data / "ISIC-2017_Training_Data" / "ISIC_0000003.jpg"
    val_img = data / "ISIC-2017_Validation_Data" / "ISIC_0000040.jpg"
    add_isic2017_image(data, "Test_v2", "ISIC_0000900", train_img, "1.0")
    add_isic2017_image(data, "Test_v2", "ISIC_0000901", val_img, "0.0")

    assert main(["data", "check", str(data)]) == 0
    assert "train-val 0, train-test 1, val-test 1" in capsys.readouterr().out
    assert main(["data", "split", str(data), "--out", str(tmp_path / "splits.json")]) == 0
    assert "train-val 0, train-test 1, val-test 1" in capsys.readouterr().out

    seg, cls, out = str(built["root"] / "seg"), str(built["root"] / "cls"), tmp_path / "c"
    build = ["cascade", "build", "--seg", seg, "--cls", cls, "--data", str(data)]
    assert main([*build, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "test image ISIC_0000900 has the same bytes as train:ISIC_0000003" in err
    assert "test image ISIC_0000901 has the same bytes as val:ISIC_0000040" in err
    assert "--drop-test-duplicates" in err and not (out / "cascade.pt").exists()

    assert main([*build, "--out", str(out), "--drop-test-duplicates"]) == 0
    assert main(["cascade", "evaluate", str(out), "--bootstrap", "20"]) == 2
    assert "--drop-test-duplicates" in capsys.readouterr().err
    assert (
        main(["cascade", "evaluate", str(out), "--bootstrap", "20", "--drop-test-duplicates"]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    dropped = {d["id"]: d["twin"] for d in report["dropped_test_images"]}
    assert dropped == {"ISIC_0000900": "train:ISIC_0000003", "ISIC_0000901": "val:ISIC_0000040"}
    assert report["test_images"] == report["classification"]["n"] == 12
    with open(out / "test_predictions.csv") as fh:
        evaluated = {r["id"] for r in csv.DictReader(fh)}
    assert len(evaluated) == 12 and not evaluated & set(dropped)
    md = (out / "report.md").read_text()
    assert (
        "2 test image(s) dropped" in md
        and "| ISIC_0000900 | same bytes | train:ISIC_0000003 |" in md
    )
    assert "12 test images evaluated" in md

    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["test_metrics"]["test_images"] == 12
    assert [d["id"] for d in card["test_metrics"]["dropped_test_images"]] == list(dropped)


def test_export_takes_only_its_own_report_and_says_what_it_checked_on(built, tmp_path, capsys):
    """A report.json of an earlier cascade built into the same folder is refused; an export
    whose data cannot be read is checked on random images, said on stderr and in the card;
    predict keeps the masks of two inputs with one file name apart."""
    seg, cls, c = str(built["root"] / "seg"), str(built["root"] / "cls"), tmp_path / "c"
    build_cascade(seg, cls, c, tta="off")
    evaluate_cascade(c, resamples=20)
    build_cascade(seg, cls, c, tta="off", target_sensitivity=1.0)  # rebuilt: another cascade
    assert main(["export", str(c), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "report.json does not belong to" in err and "cascade evaluate" in err
    evaluate_cascade(c, resamples=20)
    missing = tmp_path / "moved"
    assert main(["export", str(c), "--out", str(tmp_path / "e"), "--data", str(missing)]) == 0
    err = capsys.readouterr().err
    assert "checked on random images only" in err and str(missing) in err
    card = json.loads((tmp_path / "e" / "model_card.json").read_text())
    assert card["export_check"]["images_used"].startswith("8 seeded random images")
    assert (
        card["test_metrics"]["test_images"]
        == json.loads((c / "report.json").read_text())["test_images"]
    )

    ids = sorted(json.loads((c / "splits.json").read_text())["splits"]["test"], key=str)[:2]
    for folder, entry in zip(("a", "b"), ids, strict=True):
        (tmp_path / folder).mkdir()
        shutil.copy(built["data"] / entry["image"], tmp_path / folder / "same.jpg")
    out = tmp_path / "p.csv"
    args = ["predict", str(tmp_path / "e"), str(tmp_path / "a"), str(tmp_path / "b")]
    assert main([*args, "--out", str(out), "--masks-out", str(tmp_path / "m")]) == 0
    with open(out) as fh:
        rows = {Path(r["image"]).parent.name: r for r in csv.DictReader(fh)}
    assert Path(rows["a"]["mask"]).name == "a__same.jpg_mask.png"
    assert Path(rows["b"]["mask"]).name == "b__same.jpg_mask.png"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "a__same.jpg_mask.png",
        "b__same.jpg_mask.png",
    ]


def test_export_matches_eager_and_predict_reproduces_evaluation(built, tmp_path, capsys):
    import onnxruntime as ort

    evaluate_cascade(built["dir"], resamples=50)
    export = tmp_path / "export"
    assert main(["export", str(built["dir"]), "--out", str(export)]) == 0
    card = json.loads((export / "model_card.json").read_text())
    assert card["threshold"] == load_cascade(built["dir"])[1].threshold
    assert card["export_check"]["images_used"] == f"8 test images of {built['data']}"
    lines = (export / "checksums.sha256").read_text().splitlines()
    assert {line.split()[1] for line in lines} == {
        "cascade.onnx",
        "cascade.pt2",
        "model_card.json",
        "MODEL_CARD.md",
    }
    # Fresh images through ONNX Runtime vs eager PyTorch.
    cascade, _ = load_cascade(built["dir"])
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        eager = cascade(images)
    onnx_out = ort.InferenceSession(str(export / "cascade.onnx")).run(
        None, {"images": images.numpy()}
    )
    assert np.abs(onnx_out[0] - eager[0].numpy()).max() < 1e-4
    program = torch.export.load(export / "cascade.pt2").module()
    assert torch.allclose(program(images)[0], eager[0], atol=1e-5)

    # predict over a folder holding the test images and one corrupt file.
    with open(built["dir"] / "test_predictions.csv") as fh:
        expected = {r["id"]: float(r["probability"]) for r in csv.DictReader(fh)}
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in expected:
        shutil.copy(built["data"] / "ISIC-2017_Training_Data" / f"{image_id}.jpg", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "preds.csv"
    code = main(
        [
            "predict",
            str(export),
            str(folder),
            "--out",
            str(out),
            "--masks-out",
            str(tmp_path / "masks"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "1 unreadable image(s) skipped" in captured.out
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(expected) + 1
    for row in rows:
        stem = Path(row["image"]).stem
        if stem == "broken":
            assert row["error"] and row["probability"] == ""
            continue
        assert float(row["probability"]) == pytest.approx(expected[stem], abs=1e-4)
        assert Path(row["mask"]).is_file()

    # The same command where torch, the model zoos and Ray cannot be imported: what the
    # README promises for a machine with only onnxruntime, NumPy, Pillow and OpenCV.
    blocked = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH_PREDICT,
            str(export),
            str(folder),
            "--out",
            str(tmp_path / "bare.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert blocked.returncode == 0, blocked.stderr
    assert _same_probabilities(tmp_path / "bare.csv", out)


NO_TORCH_PREDICT = """
import sys

BLOCKED = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "albumentations", "ray")


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: melanoma predict must not need it")


sys.meta_path.insert(0, Block())
from melanoma_cli import main

sys.exit(main(["predict", *sys.argv[1:]]))
"""


def _same_probabilities(a: Path, b: Path) -> bool:
    with open(a) as fa, open(b) as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    return [(r["image"], r["probability"]) for r in rows_a] == [
        (r["image"], r["probability"]) for r in rows_b
    ]


def test_trained_models_rebuild_without_their_imagenet_weight_files(tmp_path, capsys):
    """Runs that started from weight files build, evaluate and export after those files
    are gone: the checkpoints hold every weight."""
    from melanoma.models import create_classifier, create_segmenter

    data = tmp_path / "data"
    write_synthetic(data, SynthConfig(n=60, size=64, seed=4, prevalence=0.35))
    seg_weights, cls_weights = tmp_path / "encoder.pth", tmp_path / "resnet18.pth"
    torch.save(create_segmenter("fpn", "resnet18").net.encoder.state_dict(), seg_weights)
    torch.save(create_classifier("resnet18", num_classes=1000).net.state_dict(), cls_weights)
    common = ["--data", str(data), "--epochs", "1", "--image_size", "64", "--num_workers", "0"]
    for task, arch, weights in (("seg", "fpn", seg_weights), ("cls", "resnet18", cls_weights)):
        extra = ["--encoder", "resnet18"] if task == "seg" else ["--input_mode", "crop"]
        run = ["train", task, *common, "--arch", arch, *extra, "--out", str(tmp_path / task)]
        assert main([*run, "--weights_path", str(weights)]) == 0
    seg_weights.unlink()
    cls_weights.unlink()
    capsys.readouterr()
    out = tmp_path / "cascade"
    seg, cls = str(tmp_path / "seg"), str(tmp_path / "cls")
    assert main(["cascade", "build", "--seg", seg, "--cls", cls, "--out", str(out)]) == 0
    assert main(["cascade", "evaluate", str(out), "--bootstrap", "10"]) == 0
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    assert main(["evaluate", cls, "--split", "test"]) == 0
    assert "error" not in capsys.readouterr().err


def test_transform_input_travels_in_the_config(tmp_path):
    """What the pretrained path sets besides weights is in the checkpoint's config."""
    from melanoma.engine.tasks import build_model, rebuild_model

    base = {"task": "cls", "data": {"path": "x", "image_size": 64}}
    plain = TrainConfig.from_dict({**base, "model": {"arch": "googlenet"}})
    assert plain.model.transform_input is False
    imagenet = TrainConfig.from_dict(
        {**base, "model": {"arch": "googlenet", "weights_path": str(tmp_path / "gone.pth")}}
    )
    assert imagenet.model.transform_input is True
    model = rebuild_model(imagenet, build_model(plain).state_dict())
    assert model.net.transform_input is True
    assert rebuild_model(plain, model.state_dict()).net.transform_input is False


def test_build_refuses_a_validation_split_of_one_class(built, tmp_path, capsys):
    from tests.conftest import write_image

    rows = ["image,label,split"]
    for i, (label, split) in enumerate([(0, "train"), (1, "train")] * 3 + [(0, "val")] * 3):
        write_image(tmp_path / f"im{i}.png", (64, 64), seed=i)
        rows.append(f"im{i}.png,{label},{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    seg, cls = str(built["root"] / "seg"), str(built["root"] / "cls")
    args = ["cascade", "build", "--seg", seg, "--cls", cls, "--data", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    assert "the val split has only benign labelled images (3)" in capsys.readouterr().err


def test_export_check_refuses_outputs_beyond_the_tolerance():
    from melanoma.export import ExportMismatchError, compare

    prob, mask = torch.tensor([0.2, 0.7]), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    same = compare((prob, mask), (prob.numpy(), mask.numpy()), "program")
    assert same == {"max_probability_difference": 0.0, "mask_pixels_flipped": 0.0}
    with pytest.raises(ExportMismatchError, match="max probability difference 1.00e-03"):
        compare((prob, mask), (prob.numpy() + 1e-3, mask.numpy()), "program")
    flipped = mask.numpy().copy()
    flipped[0, 0, :2] = 1
    with pytest.raises(ExportMismatchError, match="mask pixels flipped"):
        compare((prob, mask), (prob.numpy(), flipped), "program")


def test_greedy_selection_adds_members_only_while_validation_gains():
    from melanoma.cascade.ensemble import greedy_selection, weighted_mean

    labels = np.array([0, 0, 1, 1])
    preds = [
        np.array([0.1, 0.6, 0.5, 0.9]),  # AUC 0.75
        np.array([0.35, 0.1, 0.3, 0.4]),  # AUC 0.75, wrong on another pair
        np.array([0.9, 0.8, 0.1, 0.2]),  # AUC 0: never worth adding
    ]

    def auc(p: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, p))

    weights, score = greedy_selection(preds, auc, rounds=5)
    assert score == auc(weighted_mean(preds, weights)) == 1.0
    assert set(weights) == {0, 1} and 2 not in weights
    single, single_score = greedy_selection(preds, auc, rounds=1)
    assert single == {0: 1} and single_score == 0.75
    with pytest.raises(ValueError, match="at least one round"):
        greedy_selection(preds, auc, rounds=0)


def test_test_time_augmentation_averages_the_eight_symmetries(built):
    cascade, _ = load_cascade(built["dir"])
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        plain_seg = cascade.segment
        views, undone = [], []
        for k in range(4):
            for flip in (False, True):
                v = torch.rot90(images, k, dims=(-2, -1))
                v = torch.flip(v, dims=(-1,)) if flip else v
                p = plain_seg(v)
                p = torch.flip(p, dims=(-1,)) if flip else p
                undone.append(torch.rot90(p, -k, dims=(-2, -1)))
                views.append(v)
        mask = (plain_seg(images) > 0.5).to(torch.uint8)
        masks = []
        for k in range(4):
            for flip in (False, True):
                m = torch.rot90(mask, k, dims=(-2, -1))
                masks.append(torch.flip(m, dims=(-1,)) if flip else m)
        by_hand_cls = torch.stack(
            [cascade.classify(v, m) for v, m in zip(views, masks, strict=True)]
        ).mean(0)
        cascade.tta = True
        assert torch.allclose(cascade.segment(images), torch.stack(undone).mean(0), atol=1e-6)
        assert torch.allclose(cascade.classify(images, mask), by_hand_cls, atol=1e-6)


@torch.no_grad()
def _tta_decision_by_hand(root: Path, built_dir: Path) -> dict:
    """The per-stage TTA decision recomputed without the cascade module: the trained models
    from their checkpoints, the eight symmetries of the square written out here, Jaccard
    counted in NumPy, AUC from scikit-learn, on the validation images the build recorded."""
    from sklearn.metrics import roc_auc_score

    from melanoma.data.io import load_image, load_mask
    from melanoma.data.transforms import apply_input_mode
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.tasks import build_model

    models, configs = {}, {}
    for task in ("seg", "cls"):
        state = load_checkpoint(root / task)
        configs[task] = TrainConfig.from_dict(state["config"])
        models[task] = build_model(configs[task])
        models[task].load_state_dict(state["model"])
        models[task].eval()
    val = Splits.load(built_dir / "splits.json").entries["val"]
    images = torch.stack(
        [torch.from_numpy(load_image(e.sample.image_path, 64).copy()).permute(2, 0, 1) for e in val]
    )
    truth = np.stack([load_mask(e.sample.mask_path, 64) for e in val]).astype(bool)
    labels = np.array([e.sample.label for e in val])

    def views(x: torch.Tensor):
        """(transform, inverse) for the four rotations, each with and without a flip."""
        for k in range(4):
            for flip in (False, True):

                def forward(t, k=k, flip=flip):
                    t = torch.rot90(t, k, dims=(-2, -1))
                    return torch.flip(t, dims=(-1,)) if flip else t

                def inverse(t, k=k, flip=flip):
                    t = torch.flip(t, dims=(-1,)) if flip else t
                    return torch.rot90(t, -k, dims=(-2, -1))

                yield forward, inverse

    x = images.float() / 255
    seg_plain = torch.sigmoid(models["seg"](x))
    seg_tta = torch.stack([inv(torch.sigmoid(models["seg"](f(x)))) for f, inv in views(x)])
    masks = {
        False: (seg_plain > configs["seg"].threshold).to(torch.uint8),
        True: (seg_tta.mean(0) > configs["seg"].threshold).to(torch.uint8),
    }

    def melanoma(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        crop = apply_input_mode(x, mask, "crop", configs["cls"].input.crop_margin, 64)
        return torch.softmax(models["cls"](crop), dim=1)[:, 1].numpy()

    def melanoma_tta(mask: torch.Tensor) -> np.ndarray:
        return np.mean([melanoma(f(x), f(mask)) for f, _ in views(x)], axis=0)

    def jaccard(mask: torch.Tensor) -> float:
        pred = mask[:, 0].numpy().astype(bool)
        inter = (pred & truth).sum(axis=(1, 2))
        union = (pred | truth).sum(axis=(1, 2))
        return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())

    out = {"jaccard_without": jaccard(masks[False]), "jaccard_with": jaccard(masks[True])}
    out["use_seg"] = out["jaccard_with"] > out["jaccard_without"]
    chosen = masks[out["use_seg"]]
    out["auc_before"] = float(roc_auc_score(labels, melanoma(x, chosen)))
    out["auc_with"] = float(roc_auc_score(labels, melanoma_tta(chosen)))
    out["use_cls"] = out["auc_with"] > out["auc_before"]
    out["auc"] = out["auc_with"] if out["use_cls"] else out["auc_before"]
    out["jaccard"] = jaccard(chosen)
    return out


def test_tta_auto_decides_each_stage_on_validation(built, tmp_path, capsys):
    """``--tta auto`` keeps the segmenters' TTA only when it raises the validation Jaccard
    and the classifiers' only when it raises the validation AUC on the masks chosen; each
    stage's flag touches that stage alone; the report gives the chosen Jaccard."""
    out = tmp_path / "auto"
    args = ["cascade", "build", "--seg", str(built["root"] / "seg")]
    assert (
        main([*args, "--cls", str(built["root"] / "cls"), "--tta", "auto", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    cascade, meta = load_cascade(out)
    expected = _tta_decision_by_hand(built["root"], out)
    assert meta.tta == {"segmenter": expected["use_seg"], "classifier": expected["use_cls"]}
    assert meta.val_jaccard["value"] == pytest.approx(expected["jaccard"], abs=1e-6)
    assert meta.val_auc == pytest.approx(expected["auc"], abs=1e-6)
    check = meta.tta_check
    assert check["val_jaccard_with"] == pytest.approx(expected["jaccard_with"], abs=1e-6)
    assert check["val_jaccard_without"] == pytest.approx(expected["jaccard_without"], abs=1e-6)
    assert check["val_auc_before"] == pytest.approx(expected["auc_before"], abs=1e-6)
    assert check["val_auc_with"] == pytest.approx(expected["auc_with"], abs=1e-6)
    assert "test-time augmentation (auto): segmenters " in printed
    assert "validation Jaccard" in printed and "(95% CI" in printed
    # One stage's flag leaves the other stage's output alone.
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mask = (torch.rand(2, 1, 64, 64) > 0.5).to(torch.uint8)
    with torch.no_grad():
        cascade.seg_tta, cascade.cls_tta = False, False
        seg_plain, cls_plain = cascade.segment(images), cascade.classify(images, mask)
        cascade.seg_tta = True
        assert torch.equal(cascade.classify(images, mask), cls_plain)
        assert not torch.allclose(cascade.segment(images), seg_plain)
        cascade.seg_tta, cascade.cls_tta = False, True
        assert torch.equal(cascade.segment(images), seg_plain)
        assert not torch.allclose(cascade.classify(images, mask), cls_plain)


def test_the_cascade_record_round_trips_and_cascade_json_is_it_without_weights(built):
    import json

    from melanoma.cascade.record import CascadeRecord
    from melanoma.cascade.store import CASCADE_FILE

    payload = torch.load(built["dir"] / CASCADE_FILE, map_location="cpu", weights_only=True)
    record = CascadeRecord.from_payload(payload)
    again = record.to_payload()
    assert set(again) == set(payload)
    assert all(
        torch.equal(again["classifiers"][0]["model"][k], v)
        for k, v in payload["classifiers"][0]["model"].items()
    )
    summary = json.loads((built["dir"] / "cascade.json").read_text())
    assert summary == json.loads(json.dumps(record.summary()))
    assert all(
        set(m) == {"origin", "weight"} for m in summary["segmenters"] + summary["classifiers"]
    )
    assert summary["version"] == 5 and summary["threshold"] == record.threshold


def test_a_version_4_cascade_loads_uncalibrated_and_older_ones_are_refused(built, tmp_path):
    from melanoma.cascade.store import CASCADE_FILE

    payload = torch.load(built["dir"] / CASCADE_FILE, map_location="cpu", weights_only=True)
    old = tmp_path / "old"
    old.mkdir()
    # Version 4 had no calibration: its probability is the classifiers' own.
    v4 = {k: v for k, v in payload.items() if not k.startswith("calibration")}
    torch.save(v4 | {"version": 4}, old / CASCADE_FILE)
    cascade, meta = load_cascade(old)
    assert meta.calibration is None and cascade.calibrate.calibration.method == "none"
    for version in (3, 6):
        torch.save(payload | {"version": version}, old / CASCADE_FILE)
        with pytest.raises(ValueError, match=f"version {version} melanoma cascade.*versions 4-5"):
            load_cascade(old)
    torch.save(payload | {"format": "other"}, old / CASCADE_FILE)
    with pytest.raises(ValueError, match="not a melanoma cascade"):
        load_cascade(old)


def test_ensemble_with_tta_builds_evaluates_and_exports(built, tmp_path, capsys):
    """Two segmenters and two classifiers pooled from runs, chosen greedily on
    validation, test-time augmentation on: one graph, reports that say what was chosen."""
    common = {"epochs": 1, "log_images": 0, "seed": 7}
    for task in ("seg", "cls"):
        cfg = TrainConfig.from_dict(load_checkpoint_config(built["root"] / task))
        fit(
            cfg.with_overrides({**common, "out": str(tmp_path / f"{task}2")}),
            Runtime(progress=False),
        )
    out = tmp_path / "ensemble"
    args = ["cascade", "build", "--seg", str(built["root"] / "seg"), str(tmp_path / "seg2")]
    args += ["--cls", str(built["root"] / "cls"), str(tmp_path / "cls2")]
    assert main([*args, "--ensemble-size", "3", "--tta", "on", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[cascade] ensemble: segmenters" in printed and "(95% CI" in printed
    cascade, meta = load_cascade(out)
    assert meta.tta == {"segmenter": True, "classifier": True} and cascade.tta
    assert 1 <= sum(m.weight for m in meta.segmenters) <= 3
    assert 1 <= sum(m.weight for m in meta.classifiers) <= 3
    assert len(meta.pairs) == 4 and meta.best_pair["val_auc"] == max(
        p["val_auc"] for p in meta.pairs
    )
    from melanoma.cascade.members import open_cascade_data

    bundle = open_cascade_data(meta.data, meta.input_size)
    val = run_cascade(cascade, bundle, "val")
    from sklearn.metrics import roc_auc_score

    assert meta.val_auc == pytest.approx(roc_auc_score(val.label, val.prob))
    assert main(["cascade", "evaluate", str(out), "--bootstrap", "20"]) == 0
    md = (out / "report.md").read_text()
    assert "best single pair on validation" in md
    assert "test-time augmentation on (segmenters and classifiers)" in md
    assert "lesion masks on validation: Jaccard" in md
    assert main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert [m["origin"] for m in card["classifiers"]] == [m.origin for m in meta.classifiers]
    assert all(v.startswith("on") for v in card["test_time_augmentation"].values())


def load_checkpoint_config(run: Path) -> dict:
    from melanoma.engine.checkpoint import load_checkpoint

    return load_checkpoint(run)["config"]


def test_build_refuses_models_from_different_splits(built, tmp_path):
    state = torch.load(built["root"] / "cls" / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["data"]["split_seed"] = 99
    (tmp_path / "other").mkdir()
    torch.save(state, tmp_path / "other" / "best.pt")
    with pytest.raises(ValueError, match="different data or splits"):
        build_cascade(
            str(built["root"] / "seg"), str(tmp_path / "other" / "best.pt"), tmp_path / "x"
        )


def test_validation_with_carved_images_also_reports_theofficial_part(tmp_path):
    """With data.val_from_train the cascade's validation AUC covers carved and official
    images; the official validation images are scored on their own too."""
    from types import SimpleNamespace

    from sklearn.metrics import roc_auc_score

    from melanoma.cascade.scoring import official_part
    from melanoma.data.carve import build_splits
    from melanoma.data.check import check_dataset
    from melanoma.data.splits import SplitConfig
    from tests.conftest import write_official_isic2017

    data = write_official_isic2017(tmp_path / "isic", n=60, val=14, test=12, seed=11)
    report = check_dataset(data)
    for carve, expected in ((False, None), (True, 14)):
        config = SplitConfig(val_fraction=0.2, val_from_train=carve)
        bundle = SimpleNamespace(splits=build_splits(report, config))
        val = bundle.splits.entries["val"]
        prob = np.random.default_rng(0).random(len(val))
        no_masks = torch.zeros(len(val), 1, 2, 2, dtype=torch.uint8)
        result = CascadeOutputs(
            id=np.array([e.sample.id for e in val]),
            label=np.array([e.sample.label for e in val]),
            prob=prob,
            raw_prob=prob,
            pred_mask=no_masks,
            true_mask=no_masks,
            has_mask=np.zeros(len(val), dtype=bool),
        )
        part = official_part(result, bundle)
        if expected is None:
            assert part is None and len(val) == 14
            continue
        assert len(val) > 14 and part["images"] == 14
        official = np.array([e.sample.split == "val" for e in val])
        assert part["auc"] == roc_auc_score(result.label[official], result.prob[official])
        assert part["ci"]["low"] <= part["auc"] <= part["ci"]["high"]


def test_cross_validated_fold_models_build_an_ensemble(built, tmp_path, capsys):
    """`melanoma cv` trains a run's configuration on lesion-grouped folds of its training
    split; the folder it writes is a source of fold models for `cascade build`."""
    from sklearn.metrics import roc_auc_score

    from melanoma.engine.cv import CV_FILE

    cv = tmp_path / "cv"
    # A whole-image classifier: its folds are scored on what the cascade gives it (a
    # mask-using one on ground-truth masks is refused below).
    full = TrainConfig.from_dict(
        {
            **load_checkpoint_config(built["root"] / "cls"),
            "input": {"mode": "full"},
            "epochs": 1,
            "out": str(tmp_path / "full" / "cls"),
        }
    )
    fit(full, Runtime(progress=False))
    cls_run = str(tmp_path / "full" / "cls")
    args = ["cv", "cls", cls_run, "--folds", "2", "--epochs", "1", "--out", str(cv), "--local"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cross-validated (95% CI)" in out and re.search(r"^cls +\| +0\.\d{4} \| 0\.", out, re.M)
    summary = json.loads((cv / "cls" / CV_FILE).read_text())
    train = {
        e.sample.id for e in Splits.load(built["root"] / "cls" / "splits.json").entries["train"]
    }
    held = []
    for run in summary["runs"]:
        fold = Splits.load(Path(run) / "splits.json")
        held += [e.sample.id for e in fold.entries["val"]]
        assert load_checkpoint_config(Path(run))["epochs"] == 1
    assert sorted(held) == sorted(train)  # each training image scored once, by one fold
    assert summary["images"] == len(train) and len(summary["per_fold"]) == 2

    # A cross-validation folder as the classifier source: chosen on its pooled
    # out-of-fold predictions (the default), all its fold models as members, the threshold
    # from those predictions, validation a second check.
    from melanoma.engine.cv import load_oof_outputs

    oof_build = tmp_path / "oof"
    build = ["cascade", "build", "--seg", str(built["root"] / "seg"), "--cls", str(cv / "cls")]
    # The same folds as if a crop classifier had been scored on ground-truth masks.
    oracle = tmp_path / "oracle-cv"
    shutil.copytree(cv / "cls", oracle)
    record = json.loads((oracle / CV_FILE).read_text())
    record["config"]["input"]["mode"] = "crop"
    (oracle / CV_FILE).write_text(json.dumps(record))
    refused = ["cascade", "build", "--seg", str(built["root"] / "seg"), "--cls", str(oracle)]
    assert main([*refused, "--out", str(tmp_path / "refused")]) == 2
    assert "ground-truth masks" in capsys.readouterr().err
    assert main([*refused, "--select-on", "val", "--out", str(tmp_path / "on-val")]) == 0
    capsys.readouterr()
    # Equal weights are a validation-split hand-off: on out-of-fold folders, refused.
    assert main([*build, "--ensemble-size", "equal", "--out", str(tmp_path / "eq")]) == 2
    assert "pass --ensemble-size N" in capsys.readouterr().err
    assert main([*build, "--out", str(oof_build)]) == 0
    printed = capsys.readouterr().out
    oof = load_oof_outputs(cv / "cls")
    chosen_json = json.loads((oof_build / "cascade.json").read_text())
    selection = chosen_json["selection"]
    assert selection["set"] == "out-of-fold" and selection["images"] == len(train)
    assert selection["auc"] == pytest.approx(roc_auc_score(oof["label"], oof["prob"]))
    # The threshold: on those predictions as the cascade emits them, through the
    # calibration the build chose on them (maybe none).
    emitted = ProbabilityMap(Calibration.from_dict(chosen_json["calibration"]))(
        torch.as_tensor(oof["prob"], dtype=torch.float32)
    ).numpy()
    expected, _ = choose_threshold(oof["label"], emitted, None)
    assert chosen_json["threshold"] == pytest.approx(expected)
    assert chosen_json["calibration_check"]["set"] == "out-of-fold"
    assert "out-of-fold" in chosen_json["threshold_rule"]
    assert sorted(m["origin"] for m in chosen_json["classifiers"]) == sorted(
        str(Path(r) / "checkpoints" / "last.pt") for r in summary["runs"]
    )
    assert chosen_json["tta"] == {"segmenter": False, "classifier": False}
    assert chosen_json["best_pair"] is None and "second check" in printed
    # The threshold was fitted on single fold models; its drift as shipped is measured on
    # validation: the shipped figures are the cascade's own there.
    from melanoma.cascade.members import open_cascade_data

    drift = chosen_json["threshold_drift"]
    assert drift["fold_models"] == 2 and drift["threshold"] == chosen_json["threshold"]
    shipped, record = load_cascade(oof_build)
    val_bundle = open_cascade_data(record.data, record.input_size).with_splits(
        Splits.load(oof_build / "splits.json")
    )
    val = run_cascade(shipped, val_bundle, "val")
    flagged = val.prob >= record.threshold
    assert drift["shipped_on_val"]["sensitivity"] == pytest.approx(flagged[val.label == 1].mean())
    # ...and the fold models' are each fold model alone in the cascade, on the same masks.
    from melanoma.cascade.members import load_candidates, make_cascade

    segs = load_candidates(built["root"] / "seg", "seg")
    alone = []
    for run in summary["runs"]:
        fold = load_candidates(Path(run) / "checkpoints" / "last.pt", "cls")
        calibration = Calibration.from_dict(record.calibration)
        single = make_cascade(segs, fold, record.input_size, calibration=calibration)
        out = run_cascade(single, val_bundle, "val")
        alone.append((out.prob >= record.threshold)[out.label == 1].mean())
    assert drift["fold_models_on_val"]["sensitivity"] == pytest.approx(np.mean(alone))
    assert "fitted on single fold models" in printed
    report = evaluate_cascade(oof_build, resamples=20)
    assert "chosen on out-of-fold predictions" in (oof_build / "report.md").read_text()
    assert report["selection"]["set"] == "out-of-fold"

    # The same folder chosen on the validation split instead.
    ens = tmp_path / "ens"
    assert (
        main(
            [
                *build,
                "--ensemble-size",
                "2",
                "--tta",
                "off",
                "--out",
                str(ens),
                "--select-on",
                "val",
            ]
        )
        == 0
    )
    summary_json = json.loads((ens / "cascade.json").read_text())
    assert summary_json["selection"]["set"] == "validation"
    members = summary_json["classifiers"]
    # The chosen ensemble against the best single pair, paired on the validation images.
    versus = summary_json["vs_best_pair"]
    val_images = json.loads((ens / "splits.json").read_text())["splits"]["val"]
    assert versus["images"] == len(val_images)
    point = summary_json["val_auc"] - summary_json["best_pair"]["val_auc"]
    assert versus["difference"] == pytest.approx(point, abs=1e-6)
    # In-sample (the validation images chose the ensemble): no interval, never "separated".
    assert versus["in_sample"] is True and "low" not in versus
    printed = capsys.readouterr().out
    assert "chosen minus best single pair, validation AUC" in printed
    gain_line = next(line for line in printed.splitlines() if "best single pair, valid" in line)
    assert "in-sample" in gain_line and "separated" not in gain_line
    # The fold models enter as cv.json scored them: each fold run's last epoch.
    runs = {str(Path(r) / "checkpoints" / "last.pt") for r in summary["runs"]}
    assert members and {m["origin"] for m in members} <= runs
    assert main(["cv", "cls", str(built["root"] / "seg"), "--folds", "2", "--out", str(cv)]) == 2
    assert "holds a seg model" in capsys.readouterr().err
    # A rerun into the same folder reuses its folds only under the same plan.
    modified = {f: f.stat().st_mtime_ns for f in cv.glob("cls/fold*/checkpoints/last.pt")}
    assert main(args) == 0
    assert {f: f.stat().st_mtime_ns for f in cv.glob("cls/fold*/checkpoints/last.pt")} == modified
    capsys.readouterr()
    assert main([*args[:4], "3", *args[5:]]) == 2
    err = capsys.readouterr().err
    assert "another configuration, fold count or data" in err and "folds: 2 before, 3 now" in err
    assert main([*args[:6], "2", *args[7:]]) == 2
    assert "config.epochs: 1 before, 2 now" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_lesions(tmp_path_factory) -> dict:
    """A segmenter and a classifier on synthetic images that each show two lesions side by
    side (two images of the generator, squashed into one): a segmenter that finds both
    hands out masks of several regions, and the clean-up keeps one of them."""
    import cv2

    root = tmp_path_factory.mktemp("two_lesions")
    data = root / "data"
    write_synthetic(data, SynthConfig(n=60, size=64, seed=3, prevalence=0.35))
    paths = sorted((data / "ISIC-2017_Training_Data").glob("*.jpg"))
    masks = [
        data / "ISIC-2017_Training_Part1_GroundTruth" / f"{p.stem}_segmentation.png" for p in paths
    ]
    images = [cv2.imread(str(p)) for p in paths]
    truth = [cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) for m in masks]
    for i in range(len(paths)):
        j = (i + 1) % len(paths)
        pair = cv2.resize(np.hstack([images[i], images[j]]), (64, 64), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(paths[i]), pair, [cv2.IMWRITE_JPEG_QUALITY, 95])
        both = np.hstack([truth[i], truth[j]])
        cv2.imwrite(str(masks[i]), cv2.resize(both, (64, 64), interpolation=cv2.INTER_NEAREST))
    common = {
        "epochs": 4,
        "log_images": 0,
        "data": {
            "path": str(data),
            "image_size": 64,
            "batch_size": 8,
            "num_workers": 0,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
    }
    seg = {"arch": "fpn", "encoder": "tu-tf_efficientnet_lite0", "pretrained": True}
    fit(
        TrainConfig.from_dict(
            {**common, "task": "seg", "out": str(root / "seg"), "model": seg}
            | {"optimizer": {"lr": 3e-3}}
        ),
        Runtime(progress=False),
    )
    fit(
        TrainConfig.from_dict(
            {**common, "epochs": 1, "task": "cls", "out": str(root / "cls")}
            | {"model": {"arch": "resnet18"}}
        ),
        Runtime(progress=False),
    )
    return {"root": root, "data": data}


def test_mask_cleanup_is_decided_on_validation_and_predict_applies_it(
    two_lesions, tmp_path, capsys
):
    """``--mask-cleanup auto`` keeps the clean-up (largest region, holes filled) only when
    it raises the validation Jaccard: not here, where every image shows two lesions;
    ``on`` hands out cleaned masks in evaluation and in ``melanoma predict`` alike, while
    the classifiers still see the thresholded mask."""
    from melanoma.cascade.members import open_cascade_data
    from melanoma.metrics.segmentation import segmentation_metrics
    from melanoma.postprocess import clean_masks

    root = two_lesions["root"]
    args = ["cascade", "build", "--seg", str(root / "seg"), "--cls", str(root / "cls")]
    args += ["--tta", "off"]
    assert main([*args, "--out", str(tmp_path / "auto")]) == 0  # auto is the default
    assert "mask clean-up, largest region with holes filled (auto): " in capsys.readouterr().out
    cascade, meta = load_cascade(tmp_path / "auto")
    bundle = open_cascade_data(meta.data, meta.input_size)
    raw = run_cascade(cascade, bundle, "val")

    def jaccard(result: CascadeOutputs, masks: torch.Tensor) -> float:
        keep = result.has_mask
        return segmentation_metrics(masks[keep], result.true_mask[keep])["jaccard"]

    def clean(masks: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(clean_masks(masks.numpy()))

    without, with_ = jaccard(raw, raw.pred_mask), jaccard(raw, clean(raw.pred_mask))
    check = meta.mask_cleanup_check
    assert check["val_jaccard_without"] == pytest.approx(without)
    assert check["val_jaccard_with"] == pytest.approx(with_)
    assert with_ < without  # keeping one of two lesions loses the other
    assert not meta.mask_cleanup and not check["used"] and not cascade.mask_cleanup
    assert meta.val_jaccard["value"] == pytest.approx(without)

    assert main([*args, "--mask-cleanup", "off", "--out", str(tmp_path / "off")]) == 0
    off = load_cascade(tmp_path / "off")[1]
    assert not off.mask_cleanup and "val_jaccard_with" not in off.mask_cleanup_check

    on_dir = tmp_path / "on"
    assert main([*args, "--mask-cleanup", "on", "--out", str(on_dir)]) == 0
    cascade, meta = load_cascade(on_dir)
    assert meta.mask_cleanup and cascade.mask_cleanup
    assert meta.val_jaccard["value"] == pytest.approx(with_)
    cleaned_test = run_cascade(cascade, bundle, "test")
    cascade.mask_cleanup = False
    raw_test = run_cascade(cascade, bundle, "test")
    assert np.array_equal(cleaned_test.prob, raw_test.prob)  # classifiers: same masks
    assert torch.equal(cleaned_test.pred_mask, clean(raw_test.pred_mask))
    assert not torch.equal(cleaned_test.pred_mask, raw_test.pred_mask)

    assert main(["cascade", "evaluate", str(on_dir), "--bootstrap", "20"]) == 0
    report = json.loads((on_dir / "report.json").read_text())
    assert report["segmentation"]["jaccard"]["value"] == pytest.approx(
        jaccard(cleaned_test, cleaned_test.pred_mask)
    )
    md = (on_dir / "report.md").read_text()
    assert "lesion masks cleaned up (largest region, holes filled)" in md
    assert "mask clean-up, largest region with holes filled (on): used" in md

    export = tmp_path / "export"
    assert main(["export", str(on_dir), "--out", str(export)]) == 0
    card = json.loads((export / "model_card.json").read_text())
    assert card["mask_cleanup"]["on"]
    assert "largest 8-connected region" in card["mask_cleanup"]["rule"]
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in cleaned_test.id:
        shutil.copy(two_lesions["data"] / "ISIC-2017_Training_Data" / f"{image_id}.jpg", folder)
    masks_out = tmp_path / "masks"
    args = ["predict", str(export), str(folder), "--out", str(tmp_path / "p.csv")]
    assert main([*args, "--masks-out", str(masks_out)]) == 0
    from PIL import Image

    for image_id, expected in zip(cleaned_test.id, cleaned_test.pred_mask, strict=True):
        written = np.array(Image.open(masks_out / f"{image_id}_mask.png")) > 0
        # ONNX Runtime may flip a pixel at the threshold (the export check allows 0.1%).
        assert (written == expected[0].numpy().astype(bool)).mean() >= 0.999


def test_mask_cleanup_refuses_an_unknown_mode(built, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--mask-cleanup must be one of \['auto', 'on', 'off'\]"):
        build_cascade(
            str(built["root"] / "seg"), str(built["root"] / "cls"), tmp_path, mask_cleanup="yes"
        )
    args = ["cascade", "build", "--seg", "a", "--cls", "b", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*args, "--mask-cleanup", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_out_of_fold_selection_of_members_and_threshold_by_hand(tmp_path):
    """Greedy selection and threshold on pooled out-of-fold predictions, against a hand
    computation on eight images and three candidates (each pooled in its own order)."""
    from melanoma.cascade.oof_selection import CvCandidate, choose_classifiers

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ids = np.array([f"i{k}" for k in range(8)])
    a = np.array([0.1, 0.2, 0.6, 0.3, 0.5, 0.7, 0.8, 0.4])  # AUC 14/16
    b = np.array([0.3, 0.1, 0.2, 0.5, 0.6, 0.4, 0.9, 0.7])  # AUC 15/16: round 1
    c = np.array([0.5, 0.4, 0.1, 0.2, 0.3, 0.6, 0.7, 0.9])  # AUC 14/16
    cands = []
    for n, p in enumerate((a, b, c)):
        order = np.roll(np.arange(8), 3 * n)
        oof = {"id": ids[order], "label": labels[order], "prob": p[order]}
        cands.append(CvCandidate(tmp_path / f"cv{n}", [], oof))
    choice = choose_classifiers(cands, rounds=2, target_sensitivity=None)
    # Round 2: b+a and b+c both separate the classes (AUC 1); the first, a, is taken.
    assert choice.weights == {1: 1, 0: 1}
    # Mean of a and b: melanomas 0.55, 0.55, 0.85, 0.55 over benign 0.2, 0.15, 0.4, 0.4;
    # Youden's J is 1 first at the lowest melanoma score.
    assert choice.threshold == pytest.approx(0.55)
    r = choice.report
    assert r["auc"] == 1.0 and r["images"] == 8 and r["melanomas"] == 4
    assert [x["oof_auc"] for x in r["candidates"]] == [0.875, 0.9375, 0.875]
    assert r["vs_best_single"]["difference"] == pytest.approx(1.0 - 0.9375)
    assert "out-of-fold" in choice.rule
    # A target sensitivity of 0.75: the highest threshold reaching three of the four.
    assert choose_classifiers(cands, 2, 0.75).threshold == pytest.approx(0.55)
    one = choose_classifiers(cands, 1, None)
    assert one.weights == {1: 1} and one.threshold == pytest.approx(0.6)


def test_calibration_is_chosen_on_selection_and_travels_to_export_and_predict(
    built, tmp_path, capsys
):
    """`--calibration platt`: fitted on validation, the threshold chosen on the calibrated
    probabilities, the map inside the exported graph, so predict emits calibrated values;
    evaluation reports calibration before and after, operating points, the diagram."""
    import onnxruntime as ort

    from melanoma.cascade.calibration import calibration_line, fit_calibration
    from melanoma.cascade.members import open_cascade_data
    from melanoma.metrics.calibration import calibration_report

    out = tmp_path / "calibrated"
    build_cascade(
        str(built["root"] / "seg"), str(built["root"] / "cls"), out, tta="off", calibration="platt"
    )
    assert "[cascade] probabilities recalibrated (platt: --calibration platt)" in (
        capsys.readouterr().out
    )
    cascade, meta = load_cascade(out)
    calibration = Calibration.from_dict(meta.calibration)
    assert calibration.method == "platt" and (calibration.a, calibration.b) != (1.0, 0.0)
    assert meta.calibration_check["set"] == "validation"
    assert calibration_line(meta.calibration_check).startswith("probabilities recalibrated")

    # The map and the threshold come from the validation images, as a hand computation.
    plain, _ = load_cascade(built["dir"])
    plain.calibrate = ProbabilityMap()  # the identity
    bundle = open_cascade_data(meta.data, meta.input_size)
    raw = run_cascade(plain, bundle, "val")
    keep = raw.label >= 0
    by_hand = fit_calibration(raw.label[keep], raw.prob[keep], "platt")
    assert calibration.a == pytest.approx(by_hand.a, rel=1e-4)
    assert calibration.b == pytest.approx(by_hand.b, abs=1e-4)
    with torch.no_grad():  # as the cascade emits them: float32, through the same map
        emitted = ProbabilityMap(calibration)(torch.as_tensor(raw.prob)).numpy()
    assert np.abs(emitted - by_hand.apply(raw.prob)).max() < 1e-5
    expected, _ = choose_threshold(raw.label, emitted, None)
    assert meta.threshold == pytest.approx(expected, abs=1e-6)

    report = evaluate_cascade(out, resamples=50)
    test = report["test_calibration"]
    with open(out / "test_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in rows])
    shipped = np.array([float(r["probability"]) for r in rows])
    assert test["shipped"]["ece"]["value"] == pytest.approx(
        calibration_report(labels, shipped, resamples=10)["ece"]["value"], abs=1e-6
    )
    assert test["uncalibrated"]["log_loss"]["value"] != test["shipped"]["log_loss"]["value"]
    assert set(report["operating_points"]) == {
        "specificity_at_90",
        "specificity_at_95",
        "sensitivity_at_90",
        "sensitivity_at_95",
    }
    assert (out / "reliability.png").stat().st_size > 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    markdown = (out / "report.md").read_text()
    assert "## Calibration" in markdown and "## Operating points" in markdown
    assert "specificity at 90% sensitivity" in markdown

    # ONNX Runtime gives the calibrated probability, and predict writes it.
    export = tmp_path / "export"
    assert main(["export", str(out), "--out", str(export)]) == 0
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        eager = cascade(images)[0].numpy()
        uncalibrated = cascade.classify_uncalibrated(
            images, (cascade.segment(images) > cascade.mask_threshold).to(torch.uint8)
        ).numpy()
    assert np.abs(eager - calibration.apply(uncalibrated)).max() < 1e-5
    session = ort.InferenceSession(str(export / "cascade.onnx"))
    assert np.abs(session.run(None, {"images": images.numpy()})[0] - eager).max() < 1e-4
    card = json.loads((export / "model_card.json").read_text())
    assert card["calibration"]["method"] == "platt"
    # Operating points were read off the test ROC curve, and the card says so.
    card_md = (export / "MODEL_CARD.md").read_text()
    assert "specificity at 90% sensitivity, read off the test ROC curve*" in card_md
    assert "not a figure the shipped threshold promises" in card_md
    # The card says what it is for and not, what it learnt from, how it did per subgroup
    # and what limits it; MODEL_CARD.md says the same to people.
    assert "not a medical device" in " ".join(card["not_intended_use"])
    splits = json.loads((out / "splits.json").read_text())["splits"]
    for split in ("train", "val", "test"):
        assert card["training_data"][split]["images"] == len(splits[split])
        assert len(card["training_data"][split]["sha256"]) == 64
    assert set(card["subgroups"]) == {"age", "sex"}  # the synthetic data record both
    # Per sex: the test images and melanomas, counted by hand from the metadata CSV.
    with open(built["data"] / "ISIC-2017_Training_Data_metadata.csv") as fh:
        sex_of = {r["image_id"]: r["sex"] for r in csv.DictReader(fh)}
    by_hand: dict[str, list[int]] = {}
    for r in rows:
        counts = by_hand.setdefault(sex_of[r["id"]], [0, 0])
        counts[0] += 1
        counts[1] += int(r["label"])
    assert {g["group"]: [g["images"], g["melanomas"]] for g in card["subgroups"]["sex"]} == (
        by_hand
    )
    for g in card["subgroups"]["sex"]:  # metrics exactly where both classes reach 5
        assert ("too_small" in g) == (min(g["melanomas"], g["images"] - g["melanomas"]) < 5)
    limits = " ".join(card["limitations"])
    assert "carved from the training images" in limits and "Not analysed by site" in limits
    assert "squashed to 64x64 pixels" in limits
    md = (export / "MODEL_CARD.md").read_text()
    for heading in ("## Intended use", "## Not intended for", "## Data", "## Test results"):
        assert heading in md
    assert "### Calibration" in md and "### Subgroups" in md and "## Known limitations" in md
    assert "specificity at 95% sensitivity" in md
    folder = tmp_path / "images"
    folder.mkdir()
    for r in rows[:6]:
        shutil.copy(built["data"] / "ISIC-2017_Training_Data" / f"{r['id']}.jpg", folder)
    assert main(["predict", str(export), str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as fh:
        predicted = {Path(r["image"]).stem: float(r["probability"]) for r in csv.DictReader(fh)}
    for r in rows[:6]:
        assert predicted[r["id"]] == pytest.approx(float(r["probability"]), abs=1e-4)


def test_a_validation_copy_of_a_training_image_is_dropped_not_refused():
    """ISIC 2017's official validation split holds ISIC_0012127, byte-identical to the
    training image ISIC_0012970: the build drops that validation image (and says so)
    instead of refusing every cascade on the official splits; the same id in a member's
    training split still means other splits, and is refused."""
    from melanoma.cascade.members import Candidate, check_member_splits
    from melanoma.data.records import Sample
    from melanoma.data.splits import SplitConfig, SplitEntry

    def entry(image_id: str, sha: str) -> SplitEntry:
        return SplitEntry(Sample(image_id, Path(f"{image_id}.jpg"), label=0), sha, None)

    splits = Splits(
        root=Path("."),
        layout="isic2017",
        config=SplitConfig(),
        entries={
            "train": [entry("ISIC_0012970", "aa"), entry("t1", "bb")],
            "val": [entry("ISIC_0012127", "aa"), entry("v1", "cc")],
            "test": [entry("x1", "dd")],
        },
    )
    member_splits = {"train": {"ISIC_0012970": "aa", "t1": "bb"}, "val": {"v1": "cc"}}
    member = Candidate(TrainConfig(), {}, "runs/cls", None, member_splits)
    kept, dropped = check_member_splits([member], splits)
    assert [e.sample.id for e in kept.entries["val"]] == ["v1"]
    assert dropped == [
        {"id": "ISIC_0012127", "reason": "same bytes as a training image", "twin": "ISIC_0012970"}
    ]
    assert kept.entries["train"] == splits.entries["train"]
    recarved = {**member_splits, "train": {**member_splits["train"], "v1": "cc"}}
    with pytest.raises(LeakError, match="cascade's val split were trained on by runs/cls: v1"):
        check_member_splits([Candidate(TrainConfig(), {}, "runs/cls", None, recarved)], splits)


def test_int8_export_is_kept_within_tolerance_or_refused_naming_why(built, tmp_path, monkeypatch):
    from melanoma.export import export_cascade, validation_set
    from melanoma.export import int8 as quantised
    from melanoma.predict import INT8_FILE, predict

    # Tolerances it always meets: the kept path (file, checksums, predict --int8) runs.
    for name in ("AUC_TOLERANCE", "JACCARD_TOLERANCE", "FLIP_TOLERANCE"):
        monkeypatch.setattr(quantised, name, 2.0)
    out = tmp_path / "int8"
    q = export_cascade(built["dir"], out, int8=True)["int8"]
    # Checked on validation images outside the calibration sample.
    val_images = len(json.loads((built["dir"] / "splits.json").read_text())["splits"]["val"])
    assert 0 < q["calibration_images"] <= val_images // 2 and q["validation_images"] == val_images
    assert q["checked_images"] == val_images - q["calibration_images"]
    for key in ("auc", "jaccard"):  # lost is float minus INT8, each scored on validation
        assert q["lost"][key] == pytest.approx(q["float"][key] - q["int8"][key])
    _, record = load_cascade(built["dir"])
    d = q["decisions"]
    assert d["threshold"] == record.threshold
    # The flips, counted here from both models' outputs on the images outside the sample.
    validation = validation_set(record, None)
    images = np.stack([validation[i]["image"].numpy() for i in range(len(validation))])
    outside = np.setdiff1d(np.arange(len(images)), quantised.calibration_indices(len(images)))
    f_probs = quantised.run_model(out / "cascade.onnx", images[outside])[0]
    q_probs = quantised.run_model(out / INT8_FILE, images[outside])[0]
    flips = int(((f_probs >= record.threshold) != (q_probs >= record.threshold)).sum())
    assert d["flipped_images"] == flips and d["flip_rate"] == flips / len(outside)
    assert d["max_probability_change"] == pytest.approx(np.abs(f_probs - q_probs).max())
    assert q["kept"] and (out / INT8_FILE).is_file()
    card = (out / "MODEL_CARD.md").read_text()
    assert "## INT8 model" in card and "decisions flipped at the threshold" in card
    images = sorted((built["data"] / "ISIC-2017_Training_Data").glob("*.jpg"))[:4]
    assert INT8_FILE in (out / "checksums.sha256").read_text()
    rows = predict(out, [str(p) for p in images], tmp_path / "q.csv", int8=True)
    floats = predict(out, [str(p) for p in images], tmp_path / "f.csv")
    got = np.array([float(r["probability"]) for r in rows])
    assert np.isfinite(got).all()
    assert np.abs(got - np.array([float(r["probability"]) for r in floats])).max() < 0.2

    # Decisions it may not flip: refused on them alone.
    monkeypatch.setattr(quantised, "FLIP_TOLERANCE", -1.0)
    q = export_cascade(built["dir"], tmp_path / "flips", int8=True)["int8"]
    assert not q["kept"] and "decisions at the threshold" in q["refused"]
    assert "auc" not in q["refused"]

    # A tolerance it cannot meet: the INT8 file is not shipped, the card and predict say why.
    monkeypatch.setattr(quantised, "AUC_TOLERANCE", -1.0)
    refused = tmp_path / "refused"
    q = export_cascade(built["dir"], refused, int8=True)["int8"]
    assert not q["kept"] and q["file"] is None and "auc" in q["refused"]
    assert not (refused / INT8_FILE).exists()
    assert "refused, not shipped" in (refused / "MODEL_CARD.md").read_text()
    with pytest.raises(FileNotFoundError, match="its export refused it"):
        predict(refused, [str(images[0])], tmp_path / "r.csv", int8=True)
    with pytest.raises(FileNotFoundError, match="exported without --int8"):
        plain = tmp_path / "plain"
        export_cascade(built["dir"], plain)
        predict(plain, [str(images[0])], tmp_path / "p.csv", int8=True)


def test_int8_folds_each_activation_into_its_convolution(built, tmp_path):
    """A ReLU or ReLU6 (Clip) right after a convolution leaves the INT8 graph: the
    convolution's quantised output takes the activated range (from 0) instead, so ONNX
    Runtime never dequantises the raw convolution output to float for the activation,
    and the 256 levels cover only the values that survive it."""
    import onnx

    from melanoma.export import export_cascade
    from melanoma.export.int8 import quantize, run_model

    def activations_after_conv(graph) -> int:
        """ReLU/Clip nodes fed by a convolution, through quantise/dequantise pairs."""
        made_by = {out: node for node in graph.node for out in node.output}
        qdq = ("DequantizeLinear", "QuantizeLinear")

        def source(name: str) -> str:
            while name in made_by and made_by[name].op_type in qdq:
                name = made_by[name].input[0]
            return made_by[name].op_type if name in made_by else "input"

        return sum(
            n.op_type in ("Relu", "Clip") and source(n.input[0]) == "Conv" for n in graph.node
        )

    export_cascade(built["dir"], tmp_path / "float")
    plain = onnx.load(str(tmp_path / "float" / "cascade.onnx")).graph
    assert activations_after_conv(plain) > 0, "the tiny cascade's ResNet-18 has conv + ReLU"
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 64, 64), dtype=np.uint8)
    quantize(tmp_path / "float" / "cascade.onnx", tmp_path / "q.onnx", images)
    quantised = onnx.load(str(tmp_path / "q.onnx")).graph
    assert activations_after_conv(quantised) == 0
    assert any(n.op_type == "Relu" for n in quantised.node)  # those after a residual sum stay
    # The logits keep full resolution: no softmax reads a dequantised (256-level) tensor.
    made_by = {out: node for node in quantised.node for out in node.output}
    softmax = [n for n in quantised.node if n.op_type == "Softmax"]
    assert softmax and all(
        made_by[n.input[0]].op_type != "DequantizeLinear" for n in softmax if n.input[0] in made_by
    )
    probs, _ = run_model(tmp_path / "q.onnx", images)
    assert len(np.unique(probs)) == len(probs)  # no two images tied by rounding


def test_an_unchosen_larger_candidate_does_not_set_the_input_size(built, tmp_path):
    """A 128 px candidate that is not chosen leaves the cascade at its members' 64 px, with
    the threshold and figures of the cascade built without it."""
    from dataclasses import replace

    from melanoma.cascade.members import load_candidates

    seg = load_candidates(built["root"] / "seg", "seg")[0]
    cls = load_candidates(built["root"] / "cls", "cls")[0]
    config = replace(cls.config, input=replace(cls.config.input, source_size=128))
    assert config.load_size == 128
    # The classifier and its mirror (the two output rows swapped: probability 1 - p), one
    # of which ranks validation at AUC >= 0.5; then a constant one (every weight zero,
    # AUC 0.5) at 128 px, listed last, so never the first best pair.
    head = [k for k, v in cls.state.items() if v.ndim and v.shape[0] == 2][-2:]
    mirror = replace(
        cls, state={**cls.state, **{k: cls.state[k].flip(0) for k in head}}, origin="mirror"
    )
    flat = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in cls.state.items()}
    big = replace(cls, config=config, state=flat, origin="big")
    small = [cls, mirror]
    alone = build_cascade(seg, small, tmp_path / "alone", tta="off", calibration="off")
    both = build_cascade(seg, [*small, big], tmp_path / "both", tta="off", calibration="off")
    _, record = load_cascade(tmp_path / "both")
    assert [m.origin for m in record.classifiers] != ["big"]
    assert record.input_size == 64
    for key in ("val_auc", "threshold"):
        assert both[key] == alone[key]


def test_evaluate_and_export_refuse_a_splits_file_that_is_not_the_builds(built, tmp_path):
    """splits.json is bound to cascade.pt by its SHA-256: the same splits rewritten (here
    only re-indented) or another build's file is refused by evaluate and export."""
    from melanoma.export import export_cascade
    from melanoma.predict import predict

    copy = tmp_path / "copy"
    shutil.copytree(built["dir"], copy)
    export = tmp_path / "export"
    export_cascade(copy, export, check_images=2)
    onnx_file = export / "cascade.onnx"
    written = onnx_file.stat().st_mtime_ns
    doc = json.loads((copy / "splits.json").read_text())
    (copy / "splits.json").write_text(json.dumps(doc, indent=2))
    with pytest.raises(LeakError, match="refusing to evaluate .*replaced or edited.*rebuild"):
        evaluate_cascade(copy, resamples=10)
    with pytest.raises(LeakError, match="refusing to export .*replaced or edited"):
        export_cascade(copy, export)
    assert onnx_file.stat().st_mtime_ns == written  # refused before writing anything
    # A program that is not the one its card describes (an export killed between the
    # two) is refused by predict.
    image = next(built["data"].glob("ISIC-2017_Training_Data/*.jpg"))
    assert predict(export, [str(image)], tmp_path / "ok.csv")[0]["error"] == ""
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="is not the model its model_card.json describes"):
        predict(export, [str(image)], tmp_path / "p.csv")
    (copy / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match="splits.json is missing"):
        evaluate_cascade(copy, resamples=10)


def test_evaluate_writes_challenge_submission_files_the_report_agrees_with(built, tmp_path):
    """`cascade evaluate --submission DIR`: every test image's probability (the threshold
    mapped to the scorer's 0.5) and its mask at the image's own size."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    copy = tmp_path / "copy"
    shutil.copytree(built["dir"], copy)
    out = tmp_path / "submission"
    args = ["cascade", "evaluate", str(copy), "--bootstrap", "20", "--submission", str(out)]
    assert main(args) == 0
    report = json.loads((copy / "report.json").read_text())
    with open(copy / "test_predictions.csv") as fh:
        predictions = {r["id"]: r for r in csv.DictReader(fh)}
    with open(out / "classification.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["image"] for r in rows) == sorted(predictions)
    labels = [int(predictions[r["image"]]["label"]) for r in rows]
    written = [float(r["melanoma"]) for r in rows]
    auc = report["classification"]["auc"]["value"]
    assert roc_auc_score(labels, written) == pytest.approx(auc, abs=1e-6)
    flagged = [float(r["melanoma"]) > 0.5 for r in rows]  # the scorer's rule
    assert flagged == [predictions[r["image"]]["melanoma"] == "1" for r in rows]
    masks = sorted((out / "segmentation").glob("*_segmentation.png"))
    assert len(masks) == len(rows)
    image = next(built["data"].glob(f"ISIC-2017_Training_Data/{rows[0]['image']}.jpg"))
    assert Image.open(out / "segmentation" / f"{rows[0]['image']}_segmentation.png").size == (
        Image.open(image).size
    )


def test_the_int8_check_leaves_out_validation_copies_the_build_dropped(built):
    """The validation images the export calibrates and checks INT8 on are the build's:
    without the copies of training images it dropped (the members trained on them)."""
    from dataclasses import replace

    from melanoma.export import validation_set

    _, record = load_cascade(built["dir"])
    everything = validation_set(record, None)
    ids = [everything[i]["id"] for i in range(len(everything))]
    dropped = replace(record, dropped_val=[{"id": ids[0], "reason": "x", "twin": "y"}])
    kept = validation_set(dropped, None)
    assert [kept[i]["id"] for i in range(len(kept))] == ids[1:]
