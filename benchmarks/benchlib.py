"""What the real-data benchmarks share: the shipped experiments, one segmenter per run,
a checkpoint's predictions on the search's splits, ensembles of predictions, paired
comparisons, and scoring on an out-of-distribution set through the cascade.

Imported as ``benchlib`` by the scripts beside it (``python benchmarks/NAME.py`` puts
this folder first on the path); not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

SEGMENTER_EXPERIMENT = {
    "isic2017_cpu_cls": "isic2017_cpu_seg",
    "isic2017_gpu_cls": "isic2017_gpu_seg",
}


def base_experiment(name: str) -> dict:
    """The shipped experiment as a plain dict."""
    from experiments import resolve

    return yaml.safe_load(resolve(name).read_text())


def train_segmenter(args, tmp: Path, log) -> Path:
    """One segmenter of the shipped segmenter experiment at ``args.image_size``, whose masks
    every mask-using classifier of the run trains (out of fold), validates and is tested on
    (``args``: data, experiment, image_size, seg_epochs)."""
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import train

    name = SEGMENTER_EXPERIMENT.get(args.experiment, "isic2017_cpu_seg")
    config = json.loads(json.dumps(base_experiment(name)["train"]))
    config["data"] = {**config["data"], "path": args.data, "image_size": args.image_size}
    config.update(epochs=args.seg_epochs, log_images=0, out=str(tmp / "segmenter"))
    started = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        result = train(TrainConfig.from_dict(config), Runtime(progress=False))
    print(
        f"segmenter ({name}, {args.seg_epochs} epochs): validation Jaccard "
        f"{result.best_metrics[result.metric]:.4f}, {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return Path(config["out"])


def predictions(checkpoint: Path, split: str) -> dict[str, np.ndarray]:
    """A checkpoint's melanoma probabilities on ``split`` of its data as split for the
    search (a fold model on the official validation and test splits too), on the masks it
    ran on (predicted on val and test when it names a segmenter)."""
    from melanoma.engine.checkpoint import load_checkpoint
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.evaluate import score_split
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import training_data

    state = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    whole = config.with_overrides({"data.folds": 0, "data.fold": 0})
    bundle, masks = training_data(whole, Runtime(progress=False), keep_copy=False)
    _, out = score_split(config, state["model"], bundle, split, "cpu", masks=masks)
    ids = np.array([e.sample.id for e in bundle.splits.entries[split]])
    return {"id": ids, "label": out["labels"], "prob": out["probs"]}


def pair(a: dict, b: dict):
    """(ids, a's probabilities, b's) on a's images in a's order."""
    from melanoma.metrics.paired import aligned

    return aligned(a["id"], a["prob"], b["id"], b["prob"])


def mean_of(parts: list[dict], weights: list[float] | None = None) -> dict:
    """The weighted mean probability of several models' predictions of the same images."""
    weights = weights or [1.0] * len(parts)
    first = parts[0]
    total = sum(w * pair(first, p)[2] for p, w in zip(parts, weights, strict=True))
    return {"id": first["id"], "label": first["label"], "prob": total / sum(weights)}


def auc(pred: dict) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(pred["label"], pred["prob"]))


def compare(preds: dict, other: dict) -> dict:
    """The paired bootstrap of AUC(preds) minus AUC(other) on the images both scored."""
    from melanoma.metrics.paired import paired_difference

    _, a, b = pair(preds, other)
    return paired_difference(preds["label"], a, b)


def paired_summary(vs: list[dict]) -> dict:
    """Seeds' paired comparisons in one record: the differences and bounds, and how many
    seeds gained (``above``), gained with the interval above zero (``separated``) and lost
    with it below zero (``below``)."""
    return {
        "difference": [v["difference"] for v in vs],
        "low": [v["low"] for v in vs],
        "high": [v["high"] for v in vs],
        "above": sum(v["difference"] > 0 for v in vs),
        "separated": sum(v["low"] > 0 for v in vs),
        "below": sum(v["high"] < 0 for v in vs),
    }


def interval(vs: dict) -> str:
    return f"{vs['difference']:+.4f} ({vs['low']:+.3f} to {vs['high']:+.3f})"


def run_exp(exp_dict: dict, reuse: bool = False) -> tuple[list[dict], float]:
    """Run one experiment; its trials with a checkpoint (best first) and the wall time.
    ``reuse``: an experiment already in its storage is read, not run again, its wall time
    taken from its files (:func:`stored_wall`)."""
    from search.experiment import experiment_from_dict
    from search.results import trial_table
    from search.runner import run_search
    from search.store import search_path

    exp = experiment_from_dict(exp_dict)
    root = Path(search_path(exp.storage, exp.name))
    if reuse and root.exists():
        wall = stored_wall(root)
    else:
        started = time.perf_counter()
        run_search(exp)
        wall = time.perf_counter() - started
    rows, _ = trial_table(exp.name, exp.storage)
    unfinished = [r["trial_id"] for r in rows if r["state"] in ("RUNNING", "PENDING", "PAUSED")]
    if unfinished:
        raise RuntimeError(
            f"{exp.name} in {exp.storage} was interrupted (trials {', '.join(unfinished)} "
            "unfinished); remove that folder to run it again, or resume it with "
            "`melanoma search resume`"
        )
    return [r for r in rows if r["checkpoint"]], wall


def stored_wall(root: Path) -> float:
    """A finished run's wall time read from its files: the first written to the last."""
    times = [p.stat().st_mtime for p in Path(root).rglob("*") if p.is_file()]
    if not times:
        raise FileNotFoundError(f"{root} holds no files to reuse; run it again")
    return max(times) - min(times)


def checkpoint_file(row: dict) -> Path:
    from trainables.train_loop import CHECKPOINT_FILE

    return Path(row["checkpoint"]) / CHECKPOINT_FILE


def write_json(path: Path, payload: dict) -> None:
    """Write whole or not at all: a run killed mid-write keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(payload, indent=1))
    os.replace(part, path)


class Ham:
    """An out-of-distribution set read from its manifest.csv (``image,label,...``), decoded
    once per size (the cascade's input size) and kept in memory; the segmenter's masks
    kept per size too (one segmenter per run)."""

    def __init__(self, root: Path, limit: int | None = None):
        self.root = Path(root)
        with open(self.root / "manifest.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("label", "") in ("0", "1")]
        if limit and limit < len(rows):
            rows = _subset(rows, limit)
        self.paths = [self.root / r["image"] for r in rows]
        self.ids = [r.get("id") or Path(r["image"]).stem for r in rows]
        self.labels = np.array([int(r["label"]) for r in rows])
        if len(set(self.labels.tolist())) < 2:
            raise ValueError(f"{root}: the scored images need melanomas and benign lesions")
        self._images: dict[int, object] = {}
        self._masks: dict[int, object] = {}
        self.decode_s: dict[int, float] = {}

    def images(self, size: int):
        """(N, 3, S, S) uint8, each image read as ``melanoma predict`` reads it."""
        from melanoma.data.io import load_image

        if size not in self._images:
            started = time.perf_counter()
            out = np.empty((len(self.paths), 3, size, size), dtype=np.uint8)
            for i, path in enumerate(self.paths):
                out[i] = load_image(path, size).transpose(2, 0, 1)
            self._images[size] = out
            self.decode_s[size] = time.perf_counter() - started
        return self._images[size]

    def masks(self, cascade, batch: int):
        """The cascade's thresholded lesion masks (N, 1, S, S), as its forward makes them;
        the same segmenter for every arm of a run, so made once per input size."""
        import torch

        size = cascade.input_size
        if size not in self._masks:
            images = self.images(size)
            out = np.empty((len(images), 1, size, size), dtype=np.uint8)
            with torch.inference_mode():
                for i in range(0, len(images), batch):
                    x = torch.from_numpy(images[i : i + batch])
                    mask = cascade.segment(x) > cascade.mask_threshold
                    out[i : i + batch] = mask.to(torch.uint8).numpy()
            self._masks[size] = out
        return self._masks[size]


def _subset(rows: list[dict], limit: int) -> list[dict]:
    """About ``limit`` rows spread evenly over each label's rows in turn (a quick look, never
    the figure to report), in the manifest's order."""
    keep = []
    for label in ("0", "1"):
        of = [i for i, r in enumerate(rows) if r["label"] == label]
        n = max(1, round(limit * len(of) / len(rows)))
        keep += [of[int(j * len(of) / n)] for j in range(min(n, len(of)))]
    return [rows[i] for i in sorted(keep)]


def cascade_size(segmenter: Path, checkpoints: list[Path]) -> int:
    """The input size ``cascade build`` gives a cascade of these members: the largest
    size any of them loads its images at."""
    from melanoma.cascade.members import load_candidates

    members = [*load_candidates(segmenter, "seg")]
    for c in checkpoints:
        members += load_candidates(c, "cls")
    return max(c.config.load_size for c in members)


def ham_predictions(
    segmenter: Path, checkpoint: Path, ham: Ham, batch: int = 64, input_size: int | None = None
) -> dict:
    """The melanoma probability of every ``ham`` image from the cascade of ``segmenter`` and
    the classifier of ``checkpoint``, as ``cascade build`` would assemble the pair; at
    ``input_size`` when given (an ensemble's, whose members are weighted means of such
    single-classifier cascades at one input: ``Cascade._classify_once``)."""
    import torch

    from melanoma.cascade.members import load_candidates, make_cascade

    segs, clss = load_candidates(segmenter, "seg"), load_candidates(checkpoint, "cls")
    size = input_size or max(c.config.load_size for c in [*segs, *clss])
    cascade = make_cascade(segs, clss, size)
    images = ham.images(size)
    masks = ham.masks(cascade, batch) if cascade.needs_mask else None
    probs = np.empty(len(images), dtype=np.float64)
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch])
            m = torch.from_numpy(masks[i : i + batch]) if masks is not None else None
            probs[i : i + batch] = cascade.classify(x, m).numpy()
        # The cached masks give exactly what the cascade's own forward gives.
        check = cascade(torch.from_numpy(images[:4]))[0].numpy()
    if not np.allclose(check, probs[:4], atol=1e-5):
        raise AssertionError(f"HAM scoring differs from the cascade's forward: {check}")
    return {"id": np.array(ham.ids), "label": ham.labels, "prob": probs, "input_size": size}


def onnxruntime_rates(
    models: dict[str, Path], images: np.ndarray, batch: int = 16, repeats: int = 3, seconds=2.0
) -> dict[str, float]:
    """Images per second of each ONNX Runtime model over the same decoded images at
    ``batch``: the models take turns, ``repeats`` times for ``seconds`` each, and the
    median is kept, so a drift of the machine's speed falls on every model alike."""
    import onnxruntime as ort

    x = np.concatenate([images] * (batch // len(images) + 1))[:batch]
    sessions = {}
    for name, path in models.items():
        sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sessions[name].run(None, {"images": x})  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, session in sessions.items():
            done, started = 0, time.perf_counter()
            while done == 0 or time.perf_counter() - started < seconds:
                session.run(None, {"images": x})
                done += batch
            rates[name].append(done / (time.perf_counter() - started))
    return {name: statistics.median(r) for name, r in rates.items()}
