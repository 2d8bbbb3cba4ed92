"""The training loop: it learns, resumes exactly, logs to TensorBoard, and fails clearly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from melanoma.config import ConfigError
from melanoma.data.synth import SynthConfig, write_synthetic
from melanoma.data.transforms import apply_input_mode, lesion_boxes
from melanoma.engine import NonFiniteLossError, Runtime, TrainConfig, fit, load_checkpoint, train
from melanoma.engine.losses import class_weights
from melanoma_cli import main


@pytest.fixture(scope="module")
def learn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learn")
    write_synthetic(root, SynthConfig(n=160, size=64, seed=11, prevalence=0.35))
    return root


def config(data: Path, out: Path, task: str, **over) -> TrainConfig:
    base = {
        "task": task,
        "epochs": 3,
        "out": str(out),
        "log_images": 4,
        "data": {
            "path": str(data),
            "image_size": 64,
            "batch_size": 16,
            "num_workers": 0,
            "val_fraction": 0.3,
        },
        "model": {"arch": "fpn", "encoder": "resnet18"} if task == "seg" else {"arch": "resnet18"},
        "optimizer": {"lr": 3e-3 if task == "seg" else 1e-3},
    }
    return TrainConfig.from_dict(base).with_overrides(over)


QUIET = Runtime(progress=False)


@pytest.mark.slow
def test_segmenter_learns(learn_root: Path, tmp_path: Path):
    result = fit(config(learn_root, tmp_path / "seg", "seg", epochs=5), QUIET)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    # Chance level: an all-lesion mask scores the mean coverage (about 0.15) as Jaccard.
    assert result.best_metrics["jaccard"] > 0.45
    # Every epoch reports the interval of the metric trials are selected on.
    best = result.best_metrics
    assert best["jaccard_low"] < best["jaccard"] < best["jaccard_high"]
    for name in (
        "config.yaml",
        "splits.json",
        "metrics.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (tmp_path / "seg" / name).is_file()


@pytest.mark.slow
def test_masked_classifier_learns(learn_root: Path, tmp_path: Path):
    cfg = config(learn_root, tmp_path / "cls", "cls", **{"epochs": 4, "input.mode": "masked"})
    result = fit(cfg, QUIET)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_metrics["auc"] > 0.75  # chance is 0.5
    assert result.best_metrics["auc_low"] < result.best_metrics["auc"] < 1.0


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(learn_root: Path, tmp_path: Path):
    cfg = config(learn_root, tmp_path / "full", "cls", **{"data.augment": 0.5, "epochs": 3})
    full = fit(cfg, QUIET)

    class Interrupt(Exception):
        pass

    def stop_after_first(metrics, checkpoint_dir):
        if metrics["epoch"] == 1:
            raise Interrupt

    cut = replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(Interrupt):
        fit(cut, Runtime(progress=False, report=stop_after_first))
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = fit(cut, QUIET, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["val"]["auc"] for h in resumed.history] == [h["val"]["auc"] for h in full.history]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_holds_scalars_images_and_hparams(learn_root: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(config(learn_root, tmp_path / "seg", "seg", epochs=1), QUIET)
    fit(config(learn_root, tmp_path / "cls", "cls", **{"epochs": 1, "input.mode": "crop"}), QUIET)
    for run, expected_images in (
        ("seg", {"val/overlays"}),
        ("cls", {"val/confusion_matrix", "val/roc", "val/pr", "val/classifier_inputs"}),
    ):
        events = EventAccumulator(str(tmp_path / run / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        tags = events.Tags()
        assert {"train/loss", "train/lr", "val/loss"} <= set(tags["scalars"])
        assert ("val/jaccard" if run == "seg" else "val/auc") in tags["scalars"]
        assert expected_images <= set(tags["images"])
        hparams = [t for t in tags["tensors"] if t.startswith("_hparams_")] or [
            t for t in events.summary_metadata if t.startswith("_hparams_")
        ]
        assert hparams, tags


def test_nan_loss_stops_with_a_clear_error(learn_root: Path, tmp_path: Path):
    cfg = config(
        learn_root,
        tmp_path / "nan",
        "cls",
        **{
            "optimizer.lr": 1e30,
            "optimizer.name": "sgd",
            "scheduler.name": "constant",
            "epochs": 2,
        },
    )
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf).*lower optimizer.lr"):
        fit(cfg, QUIET)


@pytest.mark.slow
def test_early_stopping(learn_root: Path, tmp_path: Path, monkeypatch):
    import melanoma.engine.loop as loop

    # The validation AUC never moves after epoch 1: with patience 1 the run stops after 2.
    monkeypatch.setattr(loop, "validate", lambda *a, **kw: ({"auc": 0.7, "loss": 1.0}, {}))
    cfg = config(learn_root, tmp_path / "es", "cls", **{"early_stopping": 1, "epochs": 4})
    result = fit(cfg, QUIET)
    assert result.stopped_early and [h["epoch"] for h in result.history] == [1, 2]
    assert result.best_epoch == 1


def test_checkpoint_rebuilds_the_model_and_is_weights_only(learn_root: Path, tmp_path: Path):
    from melanoma.engine.tasks import build_model

    fit(config(learn_root, tmp_path / "r", "seg", epochs=1), QUIET)
    state = load_checkpoint(tmp_path / "r")
    model = build_model(TrainConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    # A checkpoint holding a pickled module is refused.
    torch.save(
        {"format": "melanoma-checkpoint", "model": torch.nn.Linear(1, 1)}, tmp_path / "evil.pt"
    )
    with pytest.raises(ValueError, match="not a readable melanoma checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "over, message",
    [
        (
            {"optimizer.name": "rmsprop"},
            "unknown optimizer 'rmsprop'; valid: \\['sgd', 'adam', 'adamw'\\]",
        ),
        ({"model.arch": "resnet19"}, "valid classifiers"),
        ({"loss.name": "hinge"}, "unknown cls loss 'hinge'; valid: \\['ce', 'focal'\\]"),
        (
            {"input.mode": "blur"},
            "'blur' is not allowed; choose one of "
            "\\['full', 'masked', 'crop', 'mask_channel', 'dual'\\]",
        ),
        ({"optimizer.lr": -1}, "optimizer.lr must be > 0"),
        ({"data.batch_size": "many"}, "data.batch_size: expected an integer"),
        ({"metric": "jaccard"}, "not a cls metric"),
        (
            {"data.image_size": 40, "model.arch": "inception_v3"},
            "needs data.image_size >= 299.*aux_weight: 0",
        ),
        ({"optimiser.lr": 0.1}, "unknown config key\\(s\\) \\['optimiser'\\]"),
    ],
)
def test_bad_config_values_are_named(over, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, tmp_path, "cls").with_overrides(over)


def test_segmenter_size_must_be_a_multiple_of_32(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 32"):
        config(tmp_path, tmp_path, "seg").with_overrides({"data.image_size": 100})


def test_class_weights_find_the_minority():
    w = class_weights([0] * 80 + [1] * 20)
    assert w.tolist() == pytest.approx([100 / 160, 100 / 40])
    assert class_weights([0] * 20 + [1] * 80, class_weight=2.0)[0] == pytest.approx(2 * 100 / 40)
    with pytest.raises(ValueError, match="needs both classes"):
        class_weights([0, 0, 0])


def test_input_modes():
    image = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    mask[..., 2:4, 4:8] = 1
    masked = apply_input_mode(image, mask, "masked")
    assert masked[0, 0, 0, 0] == 0 and masked[0, 0, 2, 5] == pytest.approx(200 / 255)
    assert lesion_boxes(mask, 0.0).tolist() == [[4.0, 2.0, 8.0, 4.0]]
    assert lesion_boxes(mask, 0.5).tolist() == [[2.0, 1.0, 8.0, 5.0]]
    assert lesion_boxes(torch.zeros_like(mask), 0.1).tolist() == [[0.0, 0.0, 8.0, 8.0]]
    crop = apply_input_mode(image, mask, "crop", 0.0, size=16)
    assert crop.shape == (1, 3, 16, 16) and torch.allclose(crop, torch.full_like(crop, 200 / 255))
    assert apply_input_mode(image, None, "full", size=4).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="needs a mask"):
        apply_input_mode(image, None, "masked")
    with pytest.raises(ValueError, match="unknown input mode"):
        apply_input_mode(image, mask, "blur")


def test_masked_mode_without_a_mask_keeps_the_whole_image(tmp_path: Path):
    """Data sets without masks (ISIC 2018 Task 3, 2019, 2020): masked mode must not hand the
    classifier black squares; an empty mask means the whole image, as crop mode does."""
    from melanoma.data.dataset import open_data
    from melanoma.engine.tasks import make_task
    from tests.conftest import write_image

    image = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    mask[1, :, 2:4, 2:4] = 1
    out = apply_input_mode(image, mask, "masked")
    assert torch.equal(out[0], image[0].float() / 255)  # empty mask: whole image
    assert out[1, :, 0, 0].sum() == 0 and out[1, :, 3, 3].sum() > 0  # lesion kept, rest black
    # The training path: a manifest without masks, ground-truth masks, masked mode.
    rows = ["image,label"]
    for i in range(6):
        write_image(tmp_path / f"im{i}.png", (16, 16), seed=i)
        rows.append(f"im{i}.png,{i % 2}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    bundle = open_data(tmp_path, 16)
    batch = torch.utils.data.default_collate([bundle.dataset("train")[i] for i in range(2)])
    assert not batch["has_mask"].any()
    cfg = config(tmp_path, tmp_path / "r", "cls", **{"input.mode": "masked", "data.image_size": 32})
    inputs = make_task(cfg).inputs(batch, torch.device("cpu"))
    full = apply_input_mode(batch["image"], None, "full", size=32)
    assert torch.equal(inputs, full) and inputs.amax() > 0


@pytest.mark.slow
def test_out_of_fold_masks(learn_root: Path, tmp_path: Path, monkeypatch):
    import json

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "cache"))
    fit(config(learn_root, tmp_path / "seg", "seg", epochs=1), QUIET)
    cfg = config(
        learn_root,
        tmp_path / "cls",
        "cls",
        **{
            "epochs": 1,
            "input.mode": "crop",
            "input.mask_source": str(tmp_path / "seg"),
            "input.oof_folds": 2,
        },
    )
    train(cfg, QUIET)
    masks = np.load(tmp_path / "cls" / "oof_masks.npz")
    assert len(masks.files) == 160
    folds = Path(json.loads((tmp_path / "cls" / "oof_masks.json").read_text())["folds_dir"])
    assert folds.parent == tmp_path / "cache" / "oof"
    for k in (0, 1):  # one segmenter per fold, each never shown its own fold
        fold = load_checkpoint(folds / f"fold{k}" / "checkpoints" / "last.pt")
        assert fold["config"]["task"] == "seg"

    fold0 = json.loads((folds / "fold0" / "splits.json").read_text())
    fold1 = json.loads((folds / "fold1" / "splits.json").read_text())
    train0 = {e["id"] for e in fold0["splits"]["train"]}
    held0 = {e["id"] for e in fold0["splits"]["val"]}
    assert not train0 & held0 and held0 == {e["id"] for e in fold1["splits"]["train"]}

    # Another classifier run with the same segmenter (a search's next trial) reuses the
    # machine's masks: nothing is retrained, and it keeps its own copy for `evaluate`.
    fold0_file = folds / "fold0" / "checkpoints" / "last.pt"
    made = fold0_file.stat().st_mtime_ns
    other = cfg.with_overrides({"out": str(tmp_path / "cls2"), "input.crop_margin": 0.3})
    train(other, QUIET)
    assert fold0_file.stat().st_mtime_ns == made
    again = np.load(tmp_path / "cls2" / "oof_masks.npz")
    assert all(np.array_equal(masks[k], again[k]) for k in masks.files)

    # A classifier that loads its images larger (its crop cut from a larger copy) needs
    # masks at that size: predicted again, by the same fold segmenters.
    size = cfg.data.image_size
    larger = cfg.with_overrides({"out": str(tmp_path / "cls3"), "input.source_size": 2 * size})
    train(larger, QUIET)
    assert fold0_file.stat().st_mtime_ns == made
    big = np.load(tmp_path / "cls3" / "oof_masks.npz")
    assert len(big.files) == 160 and big[big.files[0]].shape == (2 * size, 2 * size)

    # The saved masks are reused only for the same segmenter checkpoint and fold count.
    from melanoma.engine.inputs import labelled, open_training_data
    from melanoma.engine.oof import segmenter_masks

    bundle = open_training_data(cfg)
    bundle = bundle.with_splits(labelled(bundle.splits))
    segmenter_masks(cfg, bundle, QUIET)
    assert fold0_file.stat().st_mtime_ns == made  # same key: reused, nothing retrained
    three = cfg.with_overrides({"input.oof_folds": 3})
    segmenter_masks(three, bundle, QUIET)
    three_dir = Path(json.loads((tmp_path / "cls" / "oof_masks.json").read_text())["folds_dir"])
    assert three_dir != folds and (three_dir / "fold2").is_dir()
    assert json.loads((tmp_path / "cls" / "oof_masks.json").read_text())["folds"] == 3
    fit(config(learn_root, tmp_path / "seg", "seg", epochs=1, seed=1), QUIET)  # retrained
    segmenter_masks(three, bundle, QUIET)
    retrained = json.loads((tmp_path / "cls" / "oof_masks.json").read_text())["folds_dir"]
    assert Path(retrained) not in (folds, three_dir)


def test_mask_source_must_be_a_segmenter(learn_root: Path, tmp_path: Path):
    fit(config(learn_root, tmp_path / "c1", "cls", epochs=1), QUIET)
    cfg = config(
        learn_root,
        tmp_path / "c2",
        "cls",
        **{"input.mode": "masked", "input.mask_source": str(tmp_path / "c1")},
    )
    with pytest.raises(ValueError, match="must be a segmenter run"):
        train(cfg, QUIET)
    # fit() itself takes the masks from its caller and says which function makes them.
    with pytest.raises(ValueError, match="melanoma.engine.train makes them"):
        fit(cfg, QUIET)


def test_cli_train_old_flag_names_and_evaluate(learn_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "cls",
            "--data",
            str(learn_root),
            "--epochs",
            "1",
            "--architecture",
            "resnet18",
            "--optimizer",
            "sgd",
            "--learning_rate",
            "0.01",
            "--momentum",
            "0.8",
            "--weight_decay",
            "0.001",
            "--class_weight",
            "2",
            "--device",
            "cpu",
            "--image_size",
            "64",
            "--batch_size",
            "8",
            "--input_mode",
            "masked",
            "--num_workers",
            "0",
            "--out",
            str(out),
            "--set",
            "scheduler.name=step",
        ]
    )
    assert code == 0
    resolved = TrainConfig.from_dict(
        __import__("yaml").safe_load((out / "config.yaml").read_text())
    )
    assert (resolved.optimizer.name, resolved.optimizer.lr, resolved.optimizer.momentum) == (
        "sgd",
        0.01,
        0.8,
    )
    assert (resolved.loss.class_weight, resolved.input.mode, resolved.scheduler.name) == (
        2.0,
        "masked",
        "step",
    )
    assert main(["train", "cls", "--data", str(learn_root), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--split", "test", "--json"]) == 0
    import json

    got = capsys.readouterr()
    metrics = json.loads(got.out)
    assert metrics["split"] == "test" and 0 <= metrics["auc"] <= 1 and metrics["n"] > 0
    assert metrics["task"] == "cls" and "deprecated" not in got.err
    # The old spelling works for one version, says so, and still checks the task.
    assert main(["evaluate", "cls", "--checkpoint", str(out), "--split", "test", "--json"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["auc"] == metrics["auc"]
    assert "`melanoma evaluate TASK --checkpoint RUN` is deprecated" in got.err
    assert "use `melanoma evaluate RUN`" in got.err
    assert main(["evaluate", "seg", "--checkpoint", str(out)]) == 2
    assert "holds a cls model" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    assert "melanoma evaluate RUN" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--checkpoint", str(out)]) == 2
    assert "expected the task seg or cls" in capsys.readouterr().err


def test_cli_bad_set_syntax(tmp_path: Path, capsys):
    assert main(["train", "seg", "--data", str(tmp_path), "--set", "optimizer.lr"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_out_of_fold_masks_use_the_segmenters_threshold(learn_root, tmp_path, monkeypatch):
    """Masks for a classifier are thresholded where the cascade will threshold them: at
    the segmenter's own ``threshold``, not at 0.5."""
    from melanoma.engine.checkpoint import BEST, CHECKPOINTS, LAST, load_checkpoint
    from melanoma.engine.inputs import labelled, open_training_data
    from melanoma.engine.run import training_data
    from melanoma.engine.tasks import rebuild_model

    monkeypatch.setenv("MELANOMA_CACHE", str(tmp_path / "cache"))
    fit(config(learn_root, tmp_path / "seg", "seg", epochs=1), QUIET)
    cls = config(
        learn_root,
        tmp_path / "cls",
        "cls",
        **{"input.mode": "crop", "input.mask_source": str(tmp_path / "seg"), "input.oof_folds": 2},
    )
    bundle = open_training_data(cls)
    val = bundle.with_splits(labelled(bundle.splits)).dataset("val")
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    state = load_checkpoint(tmp_path / "seg")
    model = rebuild_model(TrainConfig.from_dict(state["config"]), state["model"]).eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(images.float() / 255))[:, 0].numpy()
    # A threshold of the segmenter's own, where this short-trained one puts its pixels.
    threshold = float(np.quantile(prob, 0.9))
    assert ((prob > min(threshold, 0.5)) & (prob <= max(threshold, 0.5))).mean() > 0.01
    for name in (BEST, LAST):
        path = tmp_path / "seg" / CHECKPOINTS / name
        saved = torch.load(path, weights_only=True)
        saved["config"]["threshold"] = threshold
        torch.save(saved, path)
    _, masks = training_data(cls, QUIET, keep_copy=False)
    ours = np.stack([masks[val[i]["id"]] for i in range(len(val))])
    assert np.array_equal(ours, (prob > threshold).astype(np.uint8))


def test_a_one_class_validation_split_is_refused_before_training(tmp_path: Path):
    """AUC needs melanoma and benign validation images: without them no epoch could be the
    best (no best.pt); selecting on the loss works."""
    from tests.conftest import write_image

    rows = ["image,label,split"]
    for i in range(12):
        write_image(tmp_path / f"im{i}.png", (32, 32), seed=i)
        split = "val" if i >= 8 else "train"
        rows.append(f"im{i}.png,{int(i % 2 == 0 and i < 8)},{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = config(tmp_path, tmp_path / "run", "cls", epochs=1, **{"data.image_size": 32})
    with pytest.raises(ValueError, match="validation split holds benign images only .* loss"):
        fit(cfg, QUIET)
    assert not (tmp_path / "run" / "checkpoints").exists()
    by_loss = fit(replace(cfg, metric="loss"), QUIET)
    assert by_loss.best_epoch == 1 and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
