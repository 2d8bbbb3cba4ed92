"""Every number is what the shipped cascade would score (issue 33): choices made on the
inputs the cascade will see, weights and sizes as chosen, records that cannot go stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from melanoma.data.records import Sample
from melanoma.data.splits import SplitEntry


def _entry(i: int, sha: str, group: str | None = None) -> SplitEntry:
    return SplitEntry(Sample(f"ISIC_{i:07d}", Path(f"/x/{i}.jpg"), group=group), sha, None)


def test_out_of_fold_mask_folds_keep_byte_copies_together():
    """A byte copy under another id and lesion id gets its mask from a segmenter that
    trained on neither copy (the cross-validation folds already group so)."""
    from melanoma.engine.oof import mask_folds

    entries = [_entry(i, f"sha{i}", group=f"lesion{i}") for i in range(12)]
    entries.append(_entry(99, "sha3", group="lesion99"))  # the bytes of image 3, other lesion
    entries.append(_entry(98, "sha98", group="lesion5"))  # another image of lesion 5
    folds = mask_folds(entries, 3)
    position = {e.sample.id: n for n, e in enumerate(entries)}
    for fit, held in folds:
        held_ids = {entries[i].sample.id for i in held}
        fit_ids = {entries[i].sample.id for i in fit}
        for a, b in (("ISIC_0000003", "ISIC_0000099"), ("ISIC_0000005", "ISIC_0000098")):
            assert (a in held_ids) == (b in held_ids), (a, b, held_ids)
            assert not ({a, b} & held_ids and {a, b} & fit_ids)
    assert sorted(np.concatenate([h for _, h in folds]).tolist()) == sorted(position.values())


def test_fold_models_carry_the_weight_chosen_for_their_candidate():
    """A 5-fold and a 3-fold candidate chosen with equal weight ship with equal weight."""
    from melanoma.cascade.oof_selection import fold_model_weights

    for weights, folds in (({0: 1, 1: 1}, {0: 5, 1: 3}), ({0: 2, 1: 1}, {0: 2, 1: 3})):
        per_model = fold_model_weights(weights, folds)
        shipped = {i: per_model[i] * folds[i] for i in weights}
        total, chosen = sum(shipped.values()), sum(weights.values())
        assert {i: shipped[i] / total for i in weights} == {
            i: w / chosen for i, w in weights.items()
        }
        assert all(isinstance(w, int) and w > 0 for w in per_model.values())
    assert fold_model_weights({3: 2}, {3: 4}) == {3: 2}  # one candidate: its own weight


def test_cross_validation_selected_on_the_loss_scores_its_folds(synth_root, tmp_path):
    """`metric: loss` trained every fold and then raised KeyError: folds were scored
    without the loss function."""
    import pytest

    from melanoma.engine.config import TrainConfig
    from melanoma.engine.cv import cross_validate
    from melanoma.engine.loop import Runtime

    config = TrainConfig.from_dict(
        {
            "task": "cls",
            "metric": "loss",
            "epochs": 1,
            "log_images": 0,
            "out": str(tmp_path / "run"),
            "model": {"arch": "resnet18", "pretrained": False},
            "data": {"path": str(synth_root), "image_size": 32, "batch_size": 8},
        }
    )
    summary = cross_validate({"x": config}, 2, tmp_path / "cv", Runtime(progress=False))["x"]
    assert summary["metric"] == "loss" and len(summary["per_fold"]) == 2
    assert all(np.isfinite(summary["per_fold"])) and min(summary["per_fold"]) > 0
    assert summary["value"] == pytest.approx(np.mean(summary["per_fold"]))


def test_choosing_on_out_of_fold_predictions_made_on_true_masks_is_refused():
    import pytest

    from melanoma.cascade.oof_selection import CvCandidate, refuse_oracle_masks

    def candidate(mode: str, source: str) -> CvCandidate:
        config = {"task": "cls", "input": {"mode": mode, "mask_source": source}}
        return CvCandidate(Path(f"cv-{mode}-{source}"), [], {}, config)

    refuse_oracle_masks([candidate("full", "gt"), candidate("crop", "runs/seg")])
    with pytest.raises(ValueError, match="ground-truth masks.*--select-on val") as err:
        refuse_oracle_masks([candidate("full", "gt"), candidate("dual", "gt")])
    assert "cv-dual-gt" in str(err.value) and "cv-full-gt" not in str(err.value)


def test_a_paired_comparison_refuses_an_image_named_twice():
    import pytest

    from melanoma.metrics.paired import aligned

    with pytest.raises(ValueError, match="more than once.*'b'"):
        aligned(["a", "b", "b"], [0.1, 0.2, 0.3], ["a", "b", "c"], [0.1, 0.2, 0.3])
    ids, a, b = aligned(["a", "b"], [0.1, 0.2], ["b", "a"], [0.7, 0.6])
    assert ids.tolist() == ["a", "b"] and b.tolist() == [0.6, 0.7]


def test_cv_paired_comparison_uses_the_candidates_threshold(tmp_path, capsys):
    """Sensitivity compared between cross-validated candidates at their own threshold,
    not at 0.5."""
    from melanoma.engine.cv import OOF_OUTPUTS
    from melanoma.metrics.paired import paired_difference
    from melanoma_cli.train import _print_cv_paired

    ids = np.array([f"i{k}" for k in range(40)])
    labels = np.array([0, 1] * 20)
    rng = np.random.default_rng(0)
    probs = {"a": rng.random(40) * 0.3 + labels * 0.1, "b": rng.random(40) * 0.3}
    for name, p in probs.items():
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / OOF_OUTPUTS, id=ids, label=labels, prob=p)
    summary = {"metric": "sensitivity", "config": {"threshold": 0.2}}
    rows = [("a", None, {**summary, "value": 0.9}), ("b", None, {**summary, "value": 0.5})]
    _print_cv_paired(tmp_path, rows, "cls")
    out = capsys.readouterr().out
    at_own = paired_difference(labels, probs["a"], probs["b"], "sensitivity", threshold=0.2)
    at_half = paired_difference(labels, probs["a"], probs["b"], "sensitivity")
    assert at_own["difference"] != at_half["difference"]
    assert f"difference {at_own['difference']:+.4f}" in out


def _outputs(ids, labels, probs):
    import torch

    from melanoma.cascade.scoring import CascadeOutputs

    n = len(ids)
    masks = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    return CascadeOutputs(
        np.array(ids),
        np.array(labels),
        np.array(probs, dtype=float),
        np.array(probs, dtype=float),
        masks,
        masks,
        np.zeros(n, dtype=bool),
    )


def test_the_ensembles_gain_is_measured_over_labelled_validation_images_alone():
    """A validation image without a diagnosis (a manifest allows it) crashed the build."""
    from melanoma.cascade.scoring import in_sample_gain as _vs_best_pair

    ids = ["a", "b", "c", "d", "e"]
    chosen = _outputs(ids, [0, 1, -1, 0, 1], [0.1, 0.9, 0.5, 0.2, 0.8])
    pair = _outputs(ids, [0, 1, -1, 0, 1], [0.3, 0.7, 0.5, 0.8, 0.6])
    gain = _vs_best_pair(chosen, pair)
    assert gain["images"] == 4 and gain["in_sample"]
    assert gain["difference"] == 1.0 - 0.5  # AUC 1 against 2 of 4 pairs ranked


def test_a_record_is_replaced_whole_or_not_at_all(tmp_path):
    import pytest

    from melanoma.files import replace_atomically, write_json

    path = tmp_path / "cv.json"
    write_json(path, {"runs": [1, 2]})

    def dies_half_way(tmp: Path) -> None:
        tmp.write_text('{"runs": [')
        raise KeyboardInterrupt  # the process killed mid-write

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, dies_half_way)
    assert path.read_text() == '{\n "runs": [\n  1,\n  2\n ]\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["cv.json"]  # no temporary left behind
    replace_atomically(tmp_path / "x.npz", lambda tmp: np.savez(tmp, a=np.arange(3)))
    assert np.load(tmp_path / "x.npz")["a"].tolist() == [0, 1, 2]  # savez kept the name


def test_a_truncated_out_of_fold_key_is_remade_not_fatal(tmp_path):
    """A cache key cut short (a run killed while writing it) broke every later run until
    deleted by hand; it now reads as absent, so the masks are made again."""
    from melanoma.engine.oof import _load_masks, _save_masks

    masks = {"a": np.ones((4, 4), dtype=np.uint8)}
    key = {"segmenter": "seg.pt", "folds": 3, "size": 64}
    path = tmp_path / "oof_masks_64.npz"
    _save_masks(path, key, masks)
    assert _load_masks(path, key)["a"].sum() == 16
    key_file = path.with_suffix(".json")
    key_file.write_text(key_file.read_text()[:10])
    assert _load_masks(path, key) is None
    _save_masks(path, key, masks)
    assert _load_masks(path, key) is not None


def test_members_on_the_same_files_under_another_folder_are_one_data_set():
    """A moved or re-mounted data set (another node's mount) is the same data by content;
    a real difference of the test split is still refused."""
    from dataclasses import replace

    import pytest

    from melanoma.cascade.members import Candidate, check_same_data
    from melanoma.engine.config import TrainConfig

    splits = {"train": {"a": "h1", "b": "h2"}, "val": {"c": "h3"}, "test": {"d": "h4"}}

    def member(task: str, path: str, recorded=splits) -> Candidate:
        config = TrainConfig.from_dict({"task": task, "out": "x", "data": {"path": path}})
        return Candidate(config, {}, f"{task}@{path}", None, recorded)

    check_same_data(member("seg", "/mnt/node1/isic"), member("cls", "/data/isic"))
    # The classifier records its labelled images only: a test image without a diagnosis
    # is in the segmenter's test split alone.
    unlabelled = {**splits, "test": {"d": "h4", "e": "h5"}}
    check_same_data(member("seg", "/data/isic", unlabelled), member("cls", "/data/isic"))
    other = {**splits, "test": {"d": "h9"}}  # the same id with other bytes
    with pytest.raises(ValueError, match="different data or splits.*1 images of one"):
        check_same_data(member("seg", "/data/isic"), member("cls", "/data/isic", other))
    # Without recorded splits, only the folder can tell.
    with pytest.raises(ValueError, match="the data folders /a and /b"):
        check_same_data(member("seg", "/a", None), member("cls", "/b", None))
    seeded = member("cls", "/data/isic")
    seeded = replace(
        seeded, config=replace(seeded.config, data=replace(seeded.config.data, split_seed=9))
    )
    with pytest.raises(ValueError, match="split settings differ"):
        check_same_data(member("seg", "/data/isic"), seeded)


class _Recorder(torch.nn.Module):
    """A classifier that keeps what it was given and answers 'benign'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return torch.zeros(x.shape[0], 2)


@pytest.mark.parametrize("mode", ["full", "masked", "crop", "mask_channel", "dual"])
def test_the_cascade_gives_a_classifier_what_training_gave_it(synth_root, mode):
    """The same images through training's path (the dataset at the member's load size,
    the task's inputs) and through the cascade's (the files loaded as `predict` loads them,
    the classifier spec the build writes) reach the classifier bit for bit."""
    from torch.utils.data import default_collate

    from melanoma.cascade.members import classifier_spec
    from melanoma.cascade.model import Cascade, SegmenterSpec
    from melanoma.data.io import load_image
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.inputs import open_training_data
    from melanoma.engine.tasks import make_task

    source = 64 if mode in ("crop", "dual") else None
    config = TrainConfig.from_dict(
        {
            "task": "cls",
            "out": "x",
            "model": {"arch": "resnet18", "pretrained": False},
            "data": {"path": str(synth_root), "image_size": 32},
            "input": {"mode": mode, "source_size": source, "crop_margin": 0.2},
        }
    )
    bundle = open_training_data(config)
    dataset = bundle.dataset("val")
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["mask"].flatten(1).any(dim=1).all()  # lesions to mask and crop
    trained_on = make_task(config).inputs(batch, torch.device("cpu"))

    files = {e.sample.id: e.sample.image_path for e in bundle.splits.entries["val"]}
    loaded = torch.stack(
        [
            torch.from_numpy(
                np.ascontiguousarray(load_image(files[i], config.load_size).transpose(2, 0, 1))
            )
            for i in batch["id"]
        ]
    )
    assert torch.equal(loaded, batch["image"])
    recorder = _Recorder()
    cascade = Cascade(
        [torch.nn.Identity()],
        [recorder],
        input_size=config.load_size,
        seg_specs=[SegmenterSpec(32)],
        cls_specs=[classifier_spec(config)],
    )
    with torch.no_grad():
        cascade.classify_uncalibrated(loaded, batch["mask"])
    assert torch.equal(recorder.seen, trained_on)


def test_out_of_fold_masks_of_another_segmenter_than_the_shipped_one_are_named():
    from melanoma.cascade.oof_selection import CvCandidate, mask_source_warnings

    def candidate(mode: str, source: str) -> CvCandidate:
        config = {"task": "cls", "input": {"mode": mode, "mask_source": source}}
        return CvCandidate(Path(f"cv-{mode}"), [], {}, config)

    shipped = ["/runs/seg/checkpoints/best.pt"]
    assert mask_source_warnings([candidate("crop", shipped[0])], shipped) == []
    assert mask_source_warnings([candidate("full", "/runs/other.pt")], shipped) == []
    (line,) = mask_source_warnings([candidate("dual", "/runs/other.pt")], shipped)
    assert "cv-dual" in line and "/runs/other.pt" in line and "--seg /runs/other.pt" in line


def test_masks_are_resized_at_pixel_centres_like_the_image_on_every_path():
    """Training's cv2 resize and the graph's torch resize sample a mask at pixel centres,
    so the mask stays aligned with the image (cv2's INTER_NEAREST samples at corners)."""
    from melanoma.data.io import resize_mask
    from melanoma.data.transforms import resize_mask_tensor

    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[13:17, 13:17] = 1  # output pixels 4 and 5 are each two-thirds lesion
    expected = np.zeros((16, 16), dtype=np.uint8)
    expected[4:6, 4:6] = 1
    assert np.array_equal(resize_mask(mask, 16), expected)
    graph = resize_mask_tensor(torch.from_numpy(mask)[None, None], 16)[0, 0].numpy()
    assert np.array_equal(graph.astype(np.uint8), expected)


def test_the_same_segmenter_under_a_relative_path_is_not_named(tmp_path, monkeypatch):
    """Found running the CLI: `--seg runs/seg` against a cv folder that recorded the
    absolute path warned of another segmenter."""
    from melanoma.cascade.oof_selection import CvCandidate, mask_source_warnings

    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "runs" / "seg.pt")
    config = {"task": "cls", "input": {"mode": "dual", "mask_source": absolute}}
    candidate = CvCandidate(Path("cv"), [], {}, config)
    assert mask_source_warnings([candidate], ["runs/seg.pt"]) == []
    assert mask_source_warnings([candidate], ["runs/other.pt"])
