"""Assemble a cascade from searches or runs: best pair on validation, threshold on validation."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from melanoma.cascade.model import Cascade
from melanoma.data.dataset import DataBundle, open_data
from melanoma.data.splits import SplitConfig
from melanoma.engine.checkpoint import load_checkpoint
from melanoma.engine.config import TrainConfig
from melanoma.engine.tasks import rebuild_model

FORMAT = "melanoma-cascade"
VERSION = 1
CASCADE_FILE = "cascade.pt"


@dataclass
class Candidate:
    config: TrainConfig
    state: dict
    origin: str
    val_metric: float | None


def candidates(source: str, task: str, top_k: int, storage: str) -> list[Candidate]:
    """The best ``top_k`` models of a search (by name), or the one model of a run/checkpoint."""
    path = Path(source)
    if path.exists():
        state = load_checkpoint(path)
        config = TrainConfig.from_dict(state["config"])
        if config.task != task:
            raise ValueError(
                f"{source} holds a {config.task} model where a {task} model was expected"
            )
        return [Candidate(config, state["model"], state["path"], state.get("best_value"))]
    from search.runner import trial_table
    from trainables.train_loop import CHECKPOINT_FILE

    rows, exp = trial_table(source, storage)
    if exp.task != task:
        raise ValueError(
            f"search {source!r} searched {exp.task} models where {task} models were expected"
        )
    out = []
    for row in rows:
        if row.get("checkpoint") and len(out) < top_k:
            state = load_checkpoint(Path(row["checkpoint"]) / CHECKPOINT_FILE)
            out.append(
                Candidate(
                    TrainConfig.from_dict(state["config"]),
                    state["model"],
                    f"{source}/{row['trial_id']}",
                    row.get(exp.metric),
                )
            )
    if not out:
        raise ValueError(f"search {source!r} has no trial with a checkpoint yet")
    return out


def make_cascade(seg: Candidate, cls: Candidate, input_size: int) -> Cascade:
    return Cascade(
        rebuild_model(seg.config, seg.state),
        rebuild_model(cls.config, cls.state),
        input_size=input_size,
        seg_size=seg.config.data.image_size,
        cls_size=cls.config.data.image_size,
        input_mode=cls.config.input.mode,
        crop_margin=cls.config.input.crop_margin,
        mask_threshold=seg.config.threshold,
    ).eval()


def split_config(config: TrainConfig) -> SplitConfig:
    d = config.data
    return SplitConfig(
        seed=d.split_seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction
    )


def open_cascade_data(
    data: dict, size: int, *, path: str | None = None, on_bad: str | None = None
) -> DataBundle:
    """The data set a cascade records (``payload["data"]``), split as it was built;
    ``path`` and ``on_bad`` replace the recorded ones."""
    return open_data(
        path or data["path"],
        size,
        layout=data["layout"],
        on_bad=on_bad or data["on_bad"],
        split_config=SplitConfig(
            seed=data["split_seed"],
            val_fraction=data["val_fraction"],
            test_fraction=data["test_fraction"],
        ),
        external_paths=data.get("external_paths", False),
    )


def check_same_data(seg: TrainConfig, cls: TrainConfig) -> None:
    keys = ("path", "layout", "split_seed", "val_fraction", "test_fraction")
    a = {k: getattr(seg.data, k) for k in keys}
    b = {k: getattr(cls.data, k) for k in keys}
    if a != b:
        raise ValueError(
            "the segmenter and the classifier were trained on different data or splits "
            f"({a} vs {b}); "
            "a cascade needs one test split that neither model saw"
        )


@torch.no_grad()
def run_cascade(
    cascade: Cascade,
    bundle: DataBundle,
    split: str,
    batch_size: int = 16,
    mode: str | None = None,
    gt_masks: bool = False,
) -> dict[str, np.ndarray]:
    """Probabilities, labels and masks over a split (labelled images only for the labels)."""
    dataset = bundle.dataset(split)
    probs, labels, ids, pred_masks, true_masks, has_mask = [], [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        images = torch.stack([it["image"] for it in items])
        true = torch.stack([it["mask"] for it in items])
        mask = (cascade.segment(images) > cascade.mask_threshold).to(torch.uint8)
        use = true if gt_masks else mask
        m = mode or cascade.input_mode
        probs.append(cascade.classify(images, use if m != "full" else None, m).numpy())
        labels += [it["label"] for it in items]
        ids += [it["id"] for it in items]
        pred_masks.append(mask)
        true_masks.append(true)
        has_mask += [it["has_mask"] for it in items]
    return {
        "prob": np.concatenate(probs),
        "label": np.array(labels),
        "id": np.array(ids),
        "pred_mask": torch.cat(pred_masks),
        "true_mask": torch.cat(true_masks),
        "has_mask": np.array(has_mask, dtype=bool),
    }


def choose_threshold(
    labels: np.ndarray, probs: np.ndarray, target_sensitivity: float | None
) -> tuple[float, str]:
    """On validation only: the threshold of maximum balanced accuracy (Youden's J), or the
    highest threshold whose sensitivity reaches ``target_sensitivity``."""
    keep = labels >= 0
    labels, probs = labels[keep], probs[keep]
    if len(np.unique(labels)) < 2:
        raise ValueError(
            "the validation split needs melanoma and benign images to choose a threshold"
        )
    fpr, tpr, thresholds = roc_curve(labels, probs)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if target_sensitivity is not None:
        ok = np.nonzero(tpr >= target_sensitivity)[0]
        return float(
            thresholds[ok[0]]
        ), f"highest threshold with validation sensitivity >= {target_sensitivity}"
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]), "maximum validation balanced accuracy (Youden's J)"


def _require_both_classes(bundle: DataBundle, split: str) -> None:
    labels = [e.sample.label for e in bundle.splits.entries[split] if e.sample.label is not None]
    if len(set(labels)) < 2:
        have = f"only {'melanoma' if labels and labels[0] else 'benign'}" if labels else "no"
        raise ValueError(
            f"the {split} split has {have} labelled images ({len(labels)}); a cascade needs "
            f"melanoma and benign {split} images to choose the pair and the threshold: add "
            "data, or raise data.val_fraction when the split is carved from training"
        )


def build_cascade(
    seg_source: str,
    cls_source: str,
    out: Path,
    *,
    top_k: int = 1,
    storage: str = "runs/search",
    target_sensitivity: float | None = None,
    data: str | None = None,
    drop_test_duplicates: bool = False,
) -> dict:
    """Pick the pair with the best validation AUC end to end, choose the threshold on
    validation, and write ``out/cascade.pt`` plus the splits it was chosen on.
    ``drop_test_duplicates`` removes the test images that share bytes, an id or a lesion
    with train/val (else such a test split is refused); the splits record which."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    segs = candidates(seg_source, "seg", top_k, storage)
    clss = candidates(cls_source, "cls", top_k, storage)
    for s, c in itertools.product(segs, clss):
        check_same_data(s.config, c.config)
    base = clss[0].config
    input_size = max(
        max(s.config.data.image_size for s in segs), max(c.config.data.image_size for c in clss)
    )
    path = data or base.data.path
    data_meta = {
        "path": str(path),
        "layout": base.data.layout,
        "on_bad": base.data.on_bad,
        "split_seed": base.data.split_seed,
        "val_fraction": base.data.val_fraction,
        "test_fraction": base.data.test_fraction,
        "external_paths": base.data.external_paths,
    }
    bundle = open_cascade_data(data_meta, input_size)
    bundle = bundle.with_splits(bundle.splits.isolated(drop_test_duplicates))
    for leak in bundle.splits.dropped_test:
        print(
            f"[cascade] test image {leak['id']} dropped ({leak['reason']} as {leak['twin']})",
            flush=True,
        )
    _require_both_classes(bundle, "val")
    tried = []
    for s, c in itertools.product(segs, clss):
        cascade = make_cascade(s, c, input_size)
        result = run_cascade(cascade, bundle, "val")
        keep = result["label"] >= 0
        auc = float(roc_auc_score(result["label"][keep], result["prob"][keep]))
        tried.append(
            {
                "segmenter": s.origin,
                "classifier": c.origin,
                "val_auc": auc,
                "_pair": (s, c),
                "_result": result,
            }
        )
        print(f"[cascade] {s.origin} + {c.origin}: validation AUC {auc:.4f}", flush=True)
    best = max(tried, key=lambda t: t["val_auc"])
    s, c = best["_pair"]
    threshold, rule = choose_threshold(
        best["_result"]["label"], best["_result"]["prob"], target_sensitivity
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle.splits.save(out / "splits.json")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "segmenter": {"config": s.config.to_dict(), "model": s.state, "origin": s.origin},
        "classifier": {"config": c.config.to_dict(), "model": c.state, "origin": c.origin},
        "input_size": input_size,
        "threshold": threshold,
        "threshold_rule": rule,
        "val_auc": best["val_auc"],
        "pairs": [{k: v for k, v in t.items() if not k.startswith("_")} for t in tried],
        "data": data_meta,
        "splits_sha256": hashlib.sha256((out / "splits.json").read_bytes()).hexdigest(),
        "dropped_test": bundle.splits.dropped_test,
    }
    torch.save(payload, out / CASCADE_FILE)
    summary = {
        k: payload[k]
        for k in ("input_size", "threshold", "threshold_rule", "val_auc", "pairs", "dropped_test")
    }
    summary.update(segmenter=s.origin, classifier=c.origin)
    (out / "cascade.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"[cascade] chose {s.origin} + {c.origin} (validation AUC {best['val_auc']:.4f}); "
        f"threshold {threshold:.4f} ({rule}); written to {out}",
        flush=True,
    )
    return summary


def load_cascade(directory: Path) -> tuple[Cascade, dict]:
    """The Cascade module and its metadata from a ``cascade build`` directory."""
    path = Path(directory) / CASCADE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with `melanoma cascade build`")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ValueError(f"{path} is not a version-{VERSION} melanoma cascade")
    seg = Candidate(
        TrainConfig.from_dict(payload["segmenter"]["config"]),
        payload["segmenter"]["model"],
        payload["segmenter"]["origin"],
        None,
    )
    cls = Candidate(
        TrainConfig.from_dict(payload["classifier"]["config"]),
        payload["classifier"]["model"],
        payload["classifier"]["origin"],
        None,
    )
    return make_cascade(seg, cls, payload["input_size"]), payload
