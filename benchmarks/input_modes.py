"""Does the lesion mask help the classifier? The whole image against each mask-using input
mode, on images nobody chose on.

    python benchmarks/input_modes.py --data ../shared/data/isic2017 [--seeds 0 1 2]
        [--epochs 4] [--image-size 64] [--source-size 128]
        [--modes full crop masked mask_channel dual] [--experiment isic2017_cpu_cls]
        [--segmenter RUN] [--seg-epochs 4] [--json out.json] [--log train.log]
        [--keep DIR]
    # GPU-sized: --image-size 224 --source-size 448 --epochs 12 --seg-epochs 10
    #            --experiment isic2017_gpu_cls

On the real ISIC 2017 images, through the project's own training (``melanoma.engine.run.
train``, in this process, no search), one classifier per mode and seed from the shipped
experiment's train config, each for ``--epochs`` epochs: ``full`` (the whole image),
``crop`` and ``dual`` cutting the lesion crop from a ``--source-size`` copy (the detail the
downsized image lost), ``masked`` and ``mask_channel``. Every mask-using mode trains on the
out-of-fold masks of one segmenter (trained once for the run, ``--seg-epochs`` at
``--image-size``, or ``--segmenter RUN``) and is validated and tested on that segmenter's
predicted masks, as the cascade runs it. Each model's best epoch (on validation) is scored
once on the lesion-grouped test split carved from the training images, which nothing chose
on: its AUC and the paired bootstrap of its AUC minus ``full``'s on the same images, with
the 95% interval, per seed and over seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODES = ("full", "crop", "masked", "mask_channel", "dual")
CROP_MODES = ("crop", "dual")


def _real_search():
    """The sibling benchmark, whose segmenter, scoring and experiment helpers this reuses."""
    path = Path(__file__).with_name("real_search.py")
    spec = importlib.util.spec_from_file_location("bench_real_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_config(base: dict, mode: str, seed: int, args, out: Path) -> dict:
    """The shipped experiment's train config for one mode and seed at the benchmark's
    sizes; mask-using modes on the segmenter's masks, crops from the source size."""
    config = json.loads(json.dumps(base["train"]))
    config.update(task="cls", seed=seed, epochs=args.epochs, log_images=0, out=str(out))
    config["data"] = {**config["data"], "path": args.data, "image_size": args.image_size}
    config["input"] = {
        **config.get("input", {}),
        "mode": mode,
        "mask_source": "gt" if mode == "full" else args.mask_source,
        "source_size": args.source_size if mode in CROP_MODES else None,
    }
    return config


def run_mode(base: dict, mode: str, seed: int, args, tmp: Path, log, bench) -> dict:
    """Train one mode's classifier; its validation and held-out predictions and cost."""
    from melanoma.engine.checkpoint import BEST, CHECKPOINTS
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import train

    out = tmp / f"{mode}-{seed}"
    config = TrainConfig.from_dict(train_config(base, mode, seed, args, out))
    started = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        train(config, Runtime(progress=False))
        wall = time.perf_counter() - started
        best = out / CHECKPOINTS / BEST
        val, test = bench.predictions(best, "val"), bench.predictions(best, "test")
    return {"val": val, "test": test, "wall_s": wall}


def run_seed(base: dict, seed: int, args, tmp: Path, log, bench) -> dict[str, dict]:
    from melanoma.metrics.paired import aligned, paired_difference

    trained = {m: run_mode(base, m, seed, args, tmp, log, bench) for m in args.modes}
    reference = trained["full"]["test"]
    results = {}
    for mode, t in trained.items():
        record = {
            "seed": seed,
            "val_auc": bench.auc(t["val"]),
            "test_auc": bench.auc(t["test"]),
            "wall_s": t["wall_s"],
            "test": {k: t["test"][k].tolist() for k in ("id", "label", "prob")},
        }
        line = ""
        if mode != "full":
            ours, full = t["test"], reference
            _, a, b = aligned(ours["id"], ours["prob"], full["id"], full["prob"])
            vs = paired_difference(t["test"]["label"], a, b)
            record["vs_full"] = vs
            line = f", minus full {vs['difference']:+.4f} ({vs['low']:+.3f} to {vs['high']:+.3f})"
        results[mode] = record
        print(
            f"seed {seed} {mode:12}: val {record['val_auc']:.4f}, held-out "
            f"{record['test_auc']:.4f}{line}; {record['wall_s']:.0f} s",
            flush=True,
        )
    return results


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per mode over seeds: held-out AUC, paired gain over ``full`` (how often positive,
    how often its interval excludes zero), validation AUC, cost."""
    summary = {}
    for mode, rs in runs.items():
        vs = [r["vs_full"] for r in rs if r.get("vs_full")]
        summary[mode] = {
            "test_auc": [r["test_auc"] for r in rs],
            "val_auc": [r["val_auc"] for r in rs],
            "gain_vs_full": [v["difference"] for v in vs],
            "wins": sum(v["difference"] > 0 for v in vs),
            "separated_wins": sum(v["low"] > 0 for v in vs),
            "separated_losses": sum(v["high"] < 0 for v in vs),
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
        }
    return summary


def print_table(summary: dict, seeds: int, bench) -> None:
    print(
        f"{'mode':12} | {'held-out AUC, mean (min-max)':>30} | {'paired gain vs full':>34} | "
        f"{'wins':>5} | {'interval > 0':>12} | {'interval < 0':>12} | "
        f"{'val AUC, mean':>13} | {'wall s':>6}"
    )
    print("-" * 148)
    for mode, s in summary.items():
        tests = bench.mean_range(s["test_auc"])
        counts = [
            "-" if mode == "full" else f"{s[key]}/{seeds}"
            for key in ("wins", "separated_wins", "separated_losses")
        ]
        print(
            f"{mode:12} | {tests:>30} | {bench.spread(s['gain_vs_full']):>34} | {counts[0]:>5} | "
            f"{counts[1]:>12} | {counts[2]:>12} | {statistics.mean(s['val_auc']):13.4f} | "
            f"{s['wall_s']:6.0f}"
        )
    print(
        "wins: seeds where the mode's held-out AUC is above full's on the same images; "
        "interval > 0 / < 0: seeds whose paired 95% interval excludes zero that way"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the ISIC 2017 folder")
    parser.add_argument("--experiment", default="isic2017_cpu_cls")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--source-size", type=int, default=128, help="crop and dual: cut the crop from this size"
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--segmenter", type=Path, help="a segmenter run to reuse")
    parser.add_argument("--seg-epochs", type=int, default=4, help="epochs of the segmenter trained")
    parser.add_argument("--log", type=Path, default=None, help="training output (default: hidden)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--keep", type=Path, help="keep the segmenter and every classifier run in this folder"
    )
    args = parser.parse_args()
    if "full" not in args.modes:
        parser.error("--modes must include full: every mode is compared with it")
    if args.source_size < args.image_size:
        parser.error(f"--source-size must be at least --image-size ({args.image_size})")
    args.modes = ["full", *[m for m in args.modes if m != "full"]]
    bench = _real_search()
    base = bench.base_experiment(args.experiment)
    if base["task"] != "cls":
        parser.error(f"--experiment {args.experiment} is a {base['task']} search; give a cls one")

    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    log = open(args.log or "/dev/null", "w")  # noqa: SIM115 - held for the whole run
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        args.mask_source = str(args.segmenter or bench.train_segmenter(args, where, log))
        for seed in args.seeds:
            for mode, record in run_seed(base, seed, args, where, log, bench).items():
                runs[mode].append(record)
    log.close()
    masks = args.segmenter or f"a segmenter trained for {args.seg_epochs} epochs"
    print(
        f"\n{args.experiment}'s train config on {args.data}: {args.epochs} epochs at "
        f"{args.image_size} px, crops from {args.source_size} px; seeds {args.seeds}; masks "
        f"predicted by {masks}\n"
    )
    summary = summarise(runs)
    print_table(summary, len(args.seeds), bench)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
