"""Does the lesion mask help the classifier? The whole image against each mask-using input
mode, on images nobody chose on, with the resolution held fixed by two control arms, and
scored out of distribution on HAM10000 through the cascade as it ships.

    python benchmarks/input_modes.py --data ../shared/data/isic2017 [--seeds 0 1 2]
        [--epochs 4] [--image-size 64] [--source-size 128]
        [--arms full crop masked mask_channel dual full@128 dual@64/64]
        [--ham ../shared/data/ham10000] [--experiment isic2017_cpu_cls]
        [--segmenter RUN] [--seg-epochs 4] [--json out.json] [--log train.log]
        [--keep DIR] [--threads 1]
    python benchmarks/input_modes.py --tables out.json   # its tables, a cut-short seed too
    # GPU-sized: --image-size 224 --source-size 448 --epochs 12 --seg-epochs 10
    #            --experiment isic2017_gpu_cls

On the real ISIC 2017 images, through the project's own training (``melanoma.engine.run.
train``, in this process, no search), one classifier per arm and seed from the shipped
experiment's train config, each for ``--epochs`` epochs. An arm is an input mode at sizes,
named ``MODE@SIZE`` or, for the crop modes, ``MODE@SIZE/SOURCE`` (the crop cut from a
``SOURCE`` px copy): a bare ``MODE`` is at ``--image-size`` (crops from
``--source-size``), ``full@S`` the whole image at S px, ``crop@S`` / ``dual@S`` a crop cut
from the S px image itself. The default arms are ``full`` (the whole image), ``crop`` and
``dual`` (their crop from the ``--source-size`` copy: the detail the downsized image
lost), ``masked``, ``mask_channel``, and two controls for that extra detail: ``full`` at
the source size (the whole image with every pixel the crop could use) and ``dual`` with
its crop cut from the image size (the mask's help without the larger copy). Every
mask-using arm trains on the out-of-fold masks of one segmenter (trained once for the run,
``--seg-epochs`` at ``--image-size``, or ``--segmenter RUN``) and is validated and tested
on that segmenter's predicted masks, as the cascade runs it. Each model's best epoch (on
validation) is scored once on the lesion-grouped test split carved from the training
images, which nothing chose on: its AUC and the paired bootstrap of its AUC minus
``full``'s (at ``--image-size``) on the same images with the 95% interval, and, where the
arm loads its images at another size, minus ``full`` at that size (``full@128`` for
``dual@64/128``: the same pixels in, the mask's help alone).

``--ham DIR`` (a folder with ``manifest.csv``: ``image,label,...``) also scores every arm
there, never choosing anything on it: the run's segmenter and the arm's classifier put
together by ``melanoma.cascade.members.make_cascade`` at the cascade's input size (the
largest size a member loads at, as ``cascade build`` sets it), no TTA, no calibration, on
images read by ``melanoma.data.io.load_image`` at that size (as ``melanoma predict``
reads them), mask-using arms on the segmenter's thresholded masks. The images are decoded
once per size and reused by every arm and seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib as bench
from benchlib import Ham, compare, ham_predictions, interval, paired_summary

from melanoma.names import CROP_MODES

MODES = ("full", "crop", "masked", "mask_channel", "dual")
SETS = ("test", "ham")  # the carved ISIC 2017 test split; HAM10000 (out of distribution)


@dataclass(frozen=True)
class Arm:
    """One classifier of the comparison: an input mode at a size, the crop modes with the
    size of the copy their crop is cut from."""

    mode: str
    size: int
    source: int | None = None  # crop modes only

    @property
    def load_size(self) -> int:
        """The size its images (and masks) are loaded at."""
        return self.source or self.size

    @property
    def name(self) -> str:
        if self.mode in CROP_MODES:
            return f"{self.mode}@{self.size}/{self.load_size}"
        return f"{self.mode}@{self.size}"


def parse_arm(spec: str, image_size: int, source_size: int) -> Arm:
    """``MODE``, ``MODE@SIZE`` or ``MODE@SIZE/SOURCE`` (crop modes) as an Arm; a bare mode is
    at ``image_size``, its crop from ``source_size``; ``MODE@SIZE`` crops from SIZE itself."""
    mode, at, sizes = spec.partition("@")
    if mode not in MODES:
        raise ValueError(f"arm {spec!r}: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not at:
        return Arm(mode, image_size, source_size if mode in CROP_MODES else None)
    parts = sizes.split("/")
    if len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"arm {spec!r}: write MODE@SIZE or MODE@SIZE/SOURCE, sizes in px")
    if len(parts) == 2 and mode not in CROP_MODES:
        raise ValueError(
            f"arm {spec!r}: only {' and '.join(CROP_MODES)} cut a crop from a larger copy; "
            f"write {mode}@{parts[0]}"
        )
    size = int(parts[0])
    source = int(parts[-1]) if mode in CROP_MODES else None
    if source is not None and source < size:
        raise ValueError(f"arm {spec!r}: the crop's source ({source}) is smaller than {size}")
    if mode != "full" and size != image_size:
        raise ValueError(
            f"arm {spec!r}: mask-using arms run at --image-size ({image_size}), the size the "
            "segmenter's masks are made at; only full takes another size"
        )
    return Arm(mode, size, source)


def default_arms(image_size: int, source_size: int) -> list[str]:
    """Every mode, and the two resolution controls (when the source is larger)."""
    controls = [f"full@{source_size}", f"dual@{image_size}/{image_size}"]
    return [*MODES, *(controls if source_size > image_size else [])]


def parse_arms(specs: list[str], image_size: int, source_size: int) -> list[Arm]:
    """The arms in order, duplicates dropped, the reference (``full`` at the image size)
    first; raises ValueError when it is missing or a spec is bad."""
    arms = list(dict.fromkeys(parse_arm(s, image_size, source_size) for s in specs))
    ref = reference(image_size)
    if ref not in arms:
        raise ValueError(f"the arms must include {ref.name} (full): every arm is compared with it")
    return [ref, *[a for a in arms if a != ref]]


def reference(image_size: int) -> Arm:
    return Arm("full", image_size)


def same_pixels(arm: Arm, arms: list[Arm]) -> Arm | None:
    """The whole-image arm that loads images at this arm's load size (the resolution
    control), when the run has it; None for whole-image arms."""
    if arm.mode == "full":
        return None
    control = Arm("full", arm.load_size)
    return control if control in arms else None


def arm_config(base: dict, arm: Arm, seed: int, args, out: Path) -> dict:
    """The shipped experiment's train config for one arm and seed; mask-using modes on the
    segmenter's masks, crops from the arm's source size."""
    config = json.loads(json.dumps(base["train"]))
    config.update(task="cls", seed=seed, epochs=args.epochs, log_images=0, out=str(out))
    config["data"] = {**config["data"], "path": args.data, "image_size": arm.size}
    config["input"] = {
        **config.get("input", {}),
        "mode": arm.mode,
        "mask_source": "gt" if arm.mode == "full" else args.mask_source,
        "source_size": arm.source if arm.mode in CROP_MODES else None,
    }
    return config


def run_arm(base: dict, arm: Arm, seed: int, args, tmp: Path, log, bench, ham) -> dict:
    """Train one arm's classifier; its validation, held-out and HAM predictions and cost."""
    from melanoma.engine.checkpoint import BEST, CHECKPOINTS
    from melanoma.engine.config import TrainConfig
    from melanoma.engine.loop import Runtime
    from melanoma.engine.run import train

    out = tmp / f"{arm.name.replace('@', '-').replace('/', '-')}-{seed}"
    config = TrainConfig.from_dict(arm_config(base, arm, seed, args, out))
    started = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        train(config, Runtime(progress=False))
        wall = time.perf_counter() - started
        best = out / CHECKPOINTS / BEST
        result = {"val": bench.predictions(best, "val"), "test": bench.predictions(best, "test")}
        if ham is not None:
            started = time.perf_counter()
            result["ham"] = ham_predictions(Path(args.segmenter_run), best, ham)
            result["ham_s"] = time.perf_counter() - started
    return {**result, "wall_s": wall}


def records_of(trained: dict[Arm, dict], seed: int, bench, echo: bool = True) -> dict[str, dict]:
    """Each arm's figures for one seed: AUCs, paired differences against ``full`` at the
    image size and against ``full`` at the arm's load size, on each scored set (those
    trained so far: a control not trained yet is left out); ``echo`` prints a line each."""
    arms = list(trained)
    ref = arms[0]
    results = {}
    for arm, t in trained.items():
        control = same_pixels(arm, arms)
        record = {
            "seed": seed,
            "arm": arm.name,
            "mode": arm.mode,
            "image_size": arm.size,
            "load_size": arm.load_size,
            "val_auc": bench.auc(t["val"]),
            "test_auc": bench.auc(t["test"]),
            "wall_s": t["wall_s"],
            "test": {k: t["test"][k].tolist() for k in ("id", "label", "prob")},
        }
        if control is not None:
            record["control"] = control.name
        scored = [s for s in SETS if s in t]
        for s in scored:
            if s != "test":
                record[f"{s}_auc"] = bench.auc(t[s])
            if arm != ref:
                record[f"{s}_vs_full"] = compare(t[s], trained[ref][s])
            if control is not None:
                # The same pixels in: for an arm loading at the image size, that is full.
                record[f"{s}_vs_control"] = (
                    record[f"{s}_vs_full"] if control == ref else compare(t[s], trained[control][s])
                )
        if "ham" in t:
            record["ham_s"] = t["ham_s"]
            record["ham_input_size"] = t["ham"]["input_size"]
            record["ham_prob"] = [round(float(p), 6) for p in t["ham"]["prob"]]
        results[arm.name] = record
        line = "".join(
            f"; {s} {record[f'{s}_auc']:.4f}"
            + "".join(
                f", minus {what} {interval(record[key])}"
                for what, key in (
                    (ref.name, f"{s}_vs_full"),
                    (record.get("control"), f"{s}_vs_control"),
                )
                if key in record and (key.endswith("_full") or what != ref.name)
            )
            for s in scored
        )
        if not echo:
            continue
        print(
            f"seed {seed} {arm.name:16}: val {record['val_auc']:.4f}{line}; "
            f"{record['wall_s']:.0f} s",
            flush=True,
        )
    return results


def summarise_arms(runs: dict[str, list[dict]]) -> dict:
    """Per arm over seeds, on each scored set: AUC, paired gain over ``full`` at the image
    size and over ``full`` at the arm's load size (how often positive, how often its
    interval excludes zero either way); validation AUC and cost."""
    summary = {}
    for name, rs in runs.items():
        if not rs:
            continue
        s = {
            "val_auc": [r["val_auc"] for r in rs],
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
            "control": rs[0].get("control"),
        }
        for which in SETS:
            if f"{which}_auc" not in rs[0]:
                continue
            s[f"{which}_auc"] = [r[f"{which}_auc"] for r in rs]
            for against in ("full", "control"):
                vs = [r[f"{which}_vs_{against}"] for r in rs if r.get(f"{which}_vs_{against}")]
                if vs:
                    s[f"{which}_vs_{against}"] = paired_summary(vs)
        if "ham_s" in rs[0]:
            s["ham_s"] = statistics.mean(r["ham_s"] for r in rs)
        summary[name] = s
    return summary


TITLES = {
    "test": "held-out: the lesion-grouped test split carved from the ISIC 2017 training images",
    "ham": "out of distribution: HAM10000 + ISIC 2018 Task 3 test, through the cascade",
}


def _gain(vs: dict | None, seeds: int) -> tuple[str, str, str]:
    """(gain over seeds, or the one seed's with its interval; wins; interval>0/<0 counts)."""
    if not vs:
        return "-", "-", "-"
    if len(vs["difference"]) == 1:
        g = f"{vs['difference'][0]:+.4f} ({vs['low'][0]:+.3f} to {vs['high'][0]:+.3f})"
    else:
        g = _spread(vs["difference"])
    return g, f"{vs['above']}/{seeds}", f"{vs['separated']}/{vs['below']}"


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):+.4f} ({min(values):+.4f} to {max(values):+.4f})"


def _mean_range(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def print_arm_table(summary: dict, seeds: int, which: str = "test", ref: str | None = None) -> None:
    """One scored set's table: AUC, gain over ``full`` at the image size (``ref``, the
    first arm) and over ``full`` at the arm's load size, the same pixels in."""
    ref = ref or next(iter(summary))
    arms = {n: s for n, s in summary.items() if f"{which}_auc" in s}
    if not arms:
        return
    auc_head = "AUC, mean (min-max)" if seeds > 1 else "AUC"
    gain_head = ", mean (min-max)" if seeds > 1 else " (95% CI)"
    cost = "ham s" if which == "ham" else "wall s"
    print(f"{TITLES[which]} ({seeds} seed{'s' if seeds > 1 else ''})")
    print(
        f"{'arm':16} | {auc_head:>24} | {f'minus {ref}{gain_head}':>36} | {'>0':>4} | "
        f"{'CI >0/<0':>8} | {'control':>9} | {f'minus control{gain_head}':>36} | {'>0':>4} | "
        f"{'CI >0/<0':>8} | {'val AUC':>7} | {cost:>6}"
    )
    print("-" * 187)
    for name, s in arms.items():
        auc = _mean_range(s[f"{which}_auc"]) if seeds > 1 else f"{s[f'{which}_auc'][0]:.4f}"
        g1, w1, c1 = _gain(s.get(f"{which}_vs_full"), seeds)
        g2, w2, c2 = _gain(s.get(f"{which}_vs_control"), seeds)
        control = s.get("control") or "-"
        print(
            f"{name:16} | {auc:>24} | {g1:>36} | {w1:>4} | {c1:>8} | {control:>9} | {g2:>36} | "
            f"{w2:>4} | {c2:>8} | {statistics.mean(s['val_auc']):7.4f} | "
            f"{s.get('ham_s' if which == 'ham' else 'wall_s', 0):6.0f}"
        )
    print(
        f"control: full at the arm's load size, the same pixels in ({ref} itself for an arm "
        "at the image size; '-': not run); >0: seeds where the arm's AUC is above the "
        "other's on the same images; CI >0/<0: seeds whose paired 95% interval excludes "
        "zero that way\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the ISIC 2017 folder")
    parser.add_argument("--experiment", default="isic2017_cpu_cls")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--source-size", type=int, default=128, help="crop and dual: cut the crop from this size"
    )
    parser.add_argument(
        "--arms",
        "--modes",
        nargs="+",
        help="MODE, MODE@SIZE or MODE@SIZE/SOURCE (default: every mode, full at the source "
        "size and dual cropping from the image size)",
    )
    parser.add_argument("--ham", type=Path, help="also score every arm on this manifest.csv set")
    parser.add_argument("--ham-limit", type=int, help="score only this many of its images")
    parser.add_argument("--segmenter", type=Path, help="a segmenter run to reuse")
    parser.add_argument("--seg-epochs", type=int, default=4, help="epochs of the segmenter trained")
    parser.add_argument("--log", type=Path, default=None, help="training output (default: hidden)")
    parser.add_argument("--json", type=Path, help="results, rewritten after every seed")
    parser.add_argument(
        "--keep", type=Path, help="keep the segmenter and every classifier run in this folder"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default torch's: every core; 1 where other work shares them, "
        "whose threads would otherwise wait on each other)",
    )
    parser.add_argument(
        "--tables", type=Path, help="print the tables of a --json results file (its seeds so far)"
    )
    args = parser.parse_args()
    if args.tables is not None:
        return print_tables(json.loads(args.tables.read_text()))
    if args.data is None:
        parser.error("--data is required (the ISIC 2017 folder), or give --tables RESULTS")
    if args.image_size < 1 or args.epochs < 1:
        parser.error("--image-size and --epochs must be at least 1")
    if args.source_size < args.image_size:
        parser.error(f"--source-size must be at least --image-size ({args.image_size})")
    try:
        arms = parse_arms(
            args.arms or default_arms(args.image_size, args.source_size),
            args.image_size,
            args.source_size,
        )
    except ValueError as err:
        parser.error(str(err))
    if args.ham is not None and not (args.ham / "manifest.csv").is_file():
        parser.error(f"--ham {args.ham} has no manifest.csv (image,label,... per image)")
    base = bench.base_experiment(args.experiment)
    if base["task"] != "cls":
        parser.error(f"--experiment {args.experiment} is a {base['task']} search; give a cls one")
    ham = Ham(args.ham, args.ham_limit) if args.ham is not None else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    runs: dict[str, list[dict]] = {a.name: [] for a in arms}
    log = open(args.log or "/dev/null", "w")  # noqa: SIM115 - held for the whole run
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        args.segmenter_run = args.segmenter or bench.train_segmenter(args, where, log)
        args.mask_source = str(args.segmenter_run)
        for seed in args.seeds:
            trained = {}
            for arm in arms:
                trained[arm] = run_arm(base, arm, seed, args, where, log, bench, ham)
                if args.json and arm != arms[-1]:  # the seed so far, should it be cut short
                    partial = records_of(trained, seed, bench, echo=False)
                    so_far = {
                        n: [*rs, *([partial[n]] if n in partial else [])] for n, rs in runs.items()
                    }
                    wall = time.perf_counter() - started
                    write_json(args, arms, so_far, ham, wall, partial=(seed, list(partial)))
            for name, record in records_of(trained, seed, bench).items():
                runs[name].append(record)
            if args.json:
                write_json(args, arms, runs, ham, time.perf_counter() - started)
    log.close()
    masks = args.segmenter or f"a segmenter trained for {args.seg_epochs} epochs"
    print(
        f"\n{args.experiment}'s train config on {args.data}: {args.epochs} epochs; arms "
        f"{', '.join(a.name for a in arms)}; seeds {args.seeds}; masks predicted by {masks}"
        f"{f'; scored on {args.ham} too ({len(ham.ids)} images)' if ham else ''}\n"
    )
    summary = summarise_arms(runs)
    for which in SETS:
        print_arm_table(summary, len(args.seeds), which)
    return 0


def print_tables(results: dict) -> int:
    """The tables of a results file written by --json, over the seeds it holds."""
    settings = results["settings"]
    print(
        f"{settings['experiment']}'s train config on {settings['data']}: {settings['epochs']} "
        f"epochs; seeds {settings['seeds_done']} of {settings['seeds']}\n"
    )
    if settings.get("in_progress"):
        p = settings["in_progress"]
        print(f"(seed {p['seed']} cut short: only {', '.join(p['arms'])} of it)\n")
    seeds = max(len(s["val_auc"]) for s in results["summary"].values())
    for which in SETS:
        print_arm_table(results["summary"], seeds, which)
    return 0


def write_json(
    args, arms: list[Arm], runs: dict, ham: Ham | None, wall: float, partial=None
) -> None:
    """The settings, the summary and every record so far (rewritten after each arm);
    ``partial``: (seed, arms done) of a seed still running, whose records are included."""
    done = {n: rs for n, rs in runs.items() if rs}
    seeds = sorted({r["seed"] for rs in done.values() for r in rs})
    payload = {
        "settings": {
            "data": str(args.data),
            "experiment": args.experiment,
            "epochs": args.epochs,
            "image_size": args.image_size,
            "source_size": args.source_size,
            "seg_epochs": args.seg_epochs,
            "segmenter": str(args.segmenter_run),
            "seeds": args.seeds,
            "seeds_done": [x for x in seeds if partial is None or x != partial[0]],
            "in_progress": None if partial is None else {"seed": partial[0], "arms": partial[1]},
            "threads": args.threads,
            "arms": [a.name for a in arms],
            "wall_s": wall,
        },
        "summary": summarise_arms(done),
        "runs": done,
    }
    if ham is not None:
        payload["ham"] = {
            "path": str(ham.root),
            "id": ham.ids,
            "label": ham.labels.tolist(),
            "decode_s": ham.decode_s,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    sys.exit(main())
