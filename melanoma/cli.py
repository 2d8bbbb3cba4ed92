"""The `melanoma` command: the only place that parses arguments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm


def _progress(desc: str):
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total, desc=desc, unit="img", file=sys.stderr, leave=False, disable=None
            )
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return update


# ------------------------------------------------------------------------------ data
def _cmd_synth(args: argparse.Namespace) -> int:
    from melanoma.data.synth import SynthConfig, write_synthetic

    config = SynthConfig(n=args.n, size=args.size, seed=args.seed, prevalence=args.prevalence)
    summary = write_synthetic(Path(args.out), config)
    print(
        f"wrote {summary['n']} synthetic images ({summary['melanoma']} melanoma) "
        f"at {args.size}x{args.size} in the ISIC 2017 layout to {args.out}"
    )
    return 0


def _print_summary(summary: dict) -> None:
    cov = summary["mask_coverage"]
    print(f"layout:        {summary['layout']} ({summary['root']})")
    excluded = f" usable ({summary['excluded']} excluded)" if summary["excluded"] else ""
    print(f"images:        {summary['images']}{excluded}")
    print(f"masks:         {summary['masks']}")
    print(f"melanoma:      {summary['melanoma']}")
    print(f"benign:        {summary['benign']}")
    if summary["unlabelled"]:
        print(f"unlabelled:    {summary['unlabelled']} (segmentation only)")
    labelled = summary["melanoma"] + summary["benign"]
    if labelled:
        print(f"prevalence:    {summary['melanoma'] / max(1, labelled):.1%}")
    print(f"diagnoses:     {', '.join(f'{k} {v}' for k, v in summary['diagnoses'].items()) or '-'}")
    print(
        f"official splits: {', '.join(f'{k} {v}' for k, v in summary['official_splits'].items())}"
    )
    _print_cross_split(summary["cross_split_duplicates"], "official splits")
    if cov["mean"] is not None:
        print(
            f"mask coverage: mean {cov['mean']:.3f}, min {cov['min']:.3f}, max {cov['max']:.3f}, "
            f"empty {cov['empty_masks']}"
        )
    sizes = ", ".join(f"{k} ({v})" for k, v in summary["image_sizes"].items())
    print(
        f"image sizes:   {sizes}"
        + (
            f" ... {summary['distinct_image_sizes']} distinct"
            if summary["distinct_image_sizes"] > 5
            else ""
        )
    )


def _cmd_check(args: argparse.Namespace) -> int:
    from melanoma.data.check import check_dataset

    report = check_dataset(
        Path(args.data),
        args.layout,
        on_bad="skip",
        strict=args.strict,
        progress=_progress("checking"),
        external_paths=args.external_paths,
    )
    summary = report.summary()
    if args.json:
        print(
            json.dumps(
                {
                    **summary,
                    "problems": [str(p) for p in report.problems],
                    "excluded_ids": [s.id for s in report.excluded],
                },
                indent=1,
            )
        )
    else:
        _print_summary(summary)
        for p in report.problems:
            print(f"{'warning' if p.severity == 'warning' else 'bad'}: {p}")
    failing = report.problems if args.strict else report.errors
    if failing and args.on_bad == "fail":
        print(
            f"{len(failing)} bad file(s) found in {args.data}; fix them, or use --on-bad skip "
            "to exclude them",
            file=sys.stderr,
        )
        return 1
    if failing:
        print(
            f"{len(report.excluded)} sample(s) excluded; {len(report.samples)} usable",
            file=sys.stderr,
        )
    if not report.samples:
        print(f"no usable samples in {args.data}", file=sys.stderr)
        return 1
    return 0


def _split_config(args: argparse.Namespace):
    from melanoma.data.splits import SplitConfig

    return SplitConfig(
        seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        keep_official=not args.ignore_official_splits,
        val_from_train=args.val_from_train,
    )


def _cmd_split(args: argparse.Namespace) -> int:
    from melanoma.data.check import check_dataset
    from melanoma.data.splits import build_splits

    report = check_dataset(
        Path(args.data),
        args.layout,
        on_bad=args.on_bad,
        progress=_progress("checking"),
        external_paths=args.external_paths,
    )
    splits = build_splits(report, _split_config(args))
    splits.save(Path(args.out))
    _print_splits(splits)
    print(f"wrote {args.out}")
    return 0


def _print_cross_split(counts: dict[str, int], where: str) -> None:
    pairs = ", ".join(f"{pair} {n}" for pair, n in counts.items())
    print(f"cross-split duplicates ({where}; identical images or shared lesions): {pairs}")


def _print_splits(splits) -> None:
    for name, c in splits.counts().items():
        print(f"{name:5s}: {c['images']:6d} images, {c['melanoma']:5d} melanoma")
    _print_cross_split(splits.cross_split_duplicates(), "these splits")
    for leak in splits.leaks:
        print(f"warning: official splits {leak['splits']} share {leak['ids']}: {leak['reason']}")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from melanoma.data.cache import prepare_cache

    info = prepare_cache(
        Path(args.data),
        args.size,
        Path(args.out),
        layout=args.layout,
        on_bad=args.on_bad,
        split_config=_split_config(args),
        workers=args.workers,
        progress=_progress("caching"),
        external_paths=args.external_paths,
    )
    for name, c in info["splits"].items():
        print(f"{name:5s}: {c['images']:6d} images, {c['melanoma']:5d} melanoma")
    print(
        f"cached {info['images']} images at {info['size']}x{info['size']} "
        f"({info['bytes'] / 2**20:.0f} MiB) in {info['cache']}"
    )
    return 0


# ----------------------------------------------------------------------------- train
# Old research-repo flag names keep working; each maps to one config key.
TRAIN_FLAGS = {
    "data": "data.path",
    "layout": "data.layout",
    "epochs": "epochs",
    "encoder": "model.encoder",
    "arch": "model.arch",
    "optimizer": "optimizer.name",
    "learning_rate": "optimizer.lr",
    "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay",
    "class_weight": "loss.class_weight",
    "loss": "loss.name",
    "device": "device",
    "input_mode": "input.mode",
    "mask_source": "input.mask_source",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "augment": "data.augment",
    "on_bad": "data.on_bad",
    "pretrained": "model.pretrained",
    "weights_path": "model.weights_path",
    "seed": "seed",
    "out": "out",
}


def resolve_train_config(task: str, experiment: str | None, overrides: dict):
    """YAML (a train config, or the ``train`` section of a search experiment), then
    overrides; returns the validated TrainConfig."""
    from experiments import resolve
    from melanoma.config import ConfigError, apply_overrides, load_yaml
    from melanoma.engine.config import TrainConfig

    base: dict = {}
    if experiment:
        base = load_yaml(resolve(experiment))
        if "train" in base:
            base = base["train"]
    if base.get("task", task) != task:
        raise ConfigError(
            f"{experiment} is a {base['task']!r} experiment but `train {task}` was asked for"
        )
    base["task"] = task
    return TrainConfig.from_dict(apply_overrides(base, overrides))


def _set_overrides(items: list[str] | None, example: str) -> dict:
    """``--set KEY=VALUE`` items as dotted-key overrides (values parsed as YAML)."""
    from melanoma.config import ConfigError, parse_value

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (for example {example}), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def _overrides(args: argparse.Namespace) -> dict:
    out = {
        key: getattr(args, flag)
        for flag, key in TRAIN_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    return {**out, **_set_overrides(args.set, "optimizer.lr=0.01")}


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from melanoma.engine.config import TrainConfig
    from melanoma.engine.loop import CHECKPOINTS
    from melanoma.engine.run import train

    overrides = _overrides(args)
    config = resolve_train_config(args.task, args.experiment, overrides)
    if config.out == TrainConfig().out and "out" not in overrides:
        # Neither the experiment nor the command line named a run directory: make a new one.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = replace(config, out=f"runs/{args.task}-{config.model.arch}-{stamp}")
    last = Path(config.out) / CHECKPOINTS / "last.pt"
    if last.is_file() and not args.resume:
        raise FileExistsError(
            f"{config.out} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    print(f"run directory: {config.out}")
    result = train(config, resume=args.resume)
    best = result.best_metrics.get(config.metric)
    print(
        f"best val {config.metric}: {best:.4f} at epoch {result.best_epoch}"
        if isinstance(best, float)
        else f"best val {config.metric}: {best} at epoch {result.best_epoch}"
    )
    print(
        f"checkpoints, metrics.json and TensorBoard logs in {result.run_dir} "
        f"(tensorboard --logdir {result.run_dir})"
    )
    return 0


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"{k:32s} {v:.4f}")
        else:
            print(f"{k:32s} {v}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from melanoma.engine.evaluate import evaluate_run

    metrics = evaluate_run(
        Path(args.checkpoint), task=args.task, data=args.data, split=args.split, device=args.device
    )
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print(f"{args.task} metrics on the {args.split} split of {metrics['data']}:")
        _print_metrics({k: v for k, v in metrics.items() if k not in ("data",)})
    return 0


def _cv_label(source: str, origin: str) -> str:
    """A search trial's id, or the name of a run directory (given as such or by a file)."""
    path = Path(source)
    if not path.exists():
        return origin.rsplit("/", 1)[-1]
    path = path.resolve()
    return path.parent.parent.name if path.is_file() else path.name


def _cmd_cv(args: argparse.Namespace) -> int:
    from melanoma.cascade.build import candidates
    from melanoma.engine.cv import cross_validate

    out = Path(args.out)
    rows = []
    for source in args.source:
        for cand in candidates(source, args.task, args.top_k, args.storage):
            config = cand.config
            if args.data:
                config = replace(config, data=replace(config.data, path=args.data))
            if args.epochs:
                config = replace(config, epochs=args.epochs)
            label = _cv_label(source, cand.origin)
            print(f"[cv] {cand.origin}: {args.folds} folds into {out / label}", flush=True)
            summary = cross_validate(config, args.folds, out / label)
            rows.append((label, cand, summary))
    print(
        f"\n{'candidate':24} | {'selected on':>11} | {'cross-validated (95% CI)':>26} | "
        f"folds: mean +- sd (in {out})"
    )
    for label, cand, s in rows:
        ci = f" ({s['ci']['low']:.3f}-{s['ci']['high']:.3f})" if s["ci"] else ""
        chosen = f"{cand.val_metric:.4f}" if cand.val_metric is not None else "-"
        print(
            f"{label:24} | {chosen:>11} | {s['value']:.4f}{ci:>20} | "
            f"{s['fold_mean']:.4f} +- {s['fold_sd']:.4f}"
        )
    return 0


# ---------------------------------------------------------------------------- search
def _cmd_search_run(args: argparse.Namespace) -> int:
    from experiments import resolve
    from search.experiment import load_experiment
    from search.runner import run_search

    overrides = {}
    if args.num_samples is not None:
        overrides["search.num_samples"] = args.num_samples
    if args.data is not None:
        overrides["train.data.path"] = args.data
    overrides.update(_set_overrides(args.set, "train.optimizer.lr=0.01"))
    exp = load_experiment(resolve(args.experiment), overrides)
    if exp.task != args.task:
        raise ValueError(
            f"{args.experiment} is a {exp.task!r} experiment but `search {args.task}` was asked for"
        )
    name = args.name or exp.name
    storage = args.storage or exp.storage
    uses_masks = exp.train.input.mode != "full" or any(p.key == "input.mode" for p in exp.space)
    if uses_masks and exp.train.input.mask_source != "gt":
        from melanoma.engine.oof import prepare_segmenter_masks

        # Once here rather than in the first trials at once (they would wait on the lock).
        print(f"[search] out-of-fold masks from {exp.train.input.mask_source}", flush=True)
        prepare_segmenter_masks(exp.train)
    run_search(exp, name=name, storage=storage, address=args.address, verbose=args.verbose)
    return _print_results(name, storage, top=10)


def _cmd_search_resume(args: argparse.Namespace) -> int:
    from search.runner import resume_search

    resume_search(args.name, storage=args.storage, address=args.address, verbose=args.verbose)
    return _print_results(args.name, args.storage, top=10)


def _print_results(
    name: str,
    storage: str,
    top: int | None = None,
    csv_path: str | None = None,
    as_json: bool = False,
) -> int:
    from search.runner import to_json, trial_table, write_csv

    rows, exp = trial_table(name, storage)
    if csv_path:
        write_csv(rows, Path(csv_path))
        print(f"wrote {len(rows)} trials to {csv_path}")
    if as_json:
        print(to_json(rows))
        return 0
    metric = exp.metric
    keys = [p.key for p in exp.space]
    header = ["trial_id", "state", "epochs", metric, "95% CI", *keys]
    shown = rows[:top] if top else rows
    for r in shown:
        low, high = r.get("ci_low"), r.get("ci_high")
        r["95% CI"] = f"{low:.3f}-{high:.3f}" if low is not None else "-"
    table = [[_fmt(r.get(k)) for k in header] for r in shown]
    widths = [
        max(len(h), *(len(row[i]) for row in table)) if table else len(h)
        for i, h in enumerate(header)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if top and len(rows) > top:
        print(f"... {len(rows) - top} more (melanoma search results {name})")
    best = next((r for r in rows if r.get(metric) is not None), None)
    if best:
        print(
            f"best trial {best['trial_id']}: {metric} {best[metric]:.4f} "
            f"(95% CI {best.get('95% CI', '-')}) at epoch {best['best_epoch']}"
        )
        print(f"best checkpoint: {best['checkpoint']}")
        close = [
            r["trial_id"]
            for r in rows[1:]
            if r.get(metric) is not None
            and best.get("ci_low") is not None
            and best["ci_low"] <= r[metric] <= best["ci_high"]
        ]
        if close:
            print(
                f"{len(close)} other trial(s) lie inside the best one's interval "
                f"({', '.join(close[:5])}{', ...' if len(close) > 5 else ''}): validation does "
                "not separate them; compare them with `melanoma cv` or a larger validation split"
            )
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _cmd_search_results(args: argparse.Namespace) -> int:
    return _print_results(args.name, args.storage, csv_path=args.csv, as_json=args.json)


# --------------------------------------------------------------------------- cascade
def _cmd_cascade_build(args: argparse.Namespace) -> int:
    from melanoma.cascade.build import build_cascade

    build_cascade(
        args.seg,
        args.cls,
        Path(args.out),
        top_k=args.top_k,
        storage=args.storage,
        target_sensitivity=args.target_sensitivity,
        data=args.data,
        drop_test_duplicates=args.drop_test_duplicates,
        ensemble_size=args.ensemble_size,
        tta=args.tta,
    )
    return 0


def _cmd_cascade_evaluate(args: argparse.Namespace) -> int:
    from melanoma.cascade.evaluate import evaluate_cascade

    report = evaluate_cascade(
        Path(args.dir),
        data=args.data,
        resamples=args.bootstrap,
        drop_test_duplicates=args.drop_test_duplicates,
    )
    print((Path(args.dir) / "report.md").read_text())
    print(
        f"report: {Path(args.dir) / 'report.md'} and report.json; "
        f"curves: {Path(args.dir) / 'curves.png'}"
    )
    return 0 if report else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from melanoma.export import export_cascade

    card = export_cascade(Path(args.dir), Path(args.out))
    check = card["export_check"]
    print(f"exported to {args.out}: cascade.onnx, cascade.pt2, model_card.json, checksums.sha256")
    print(
        f"checked on {check['images']} images: "
        f"ONNX max |dp| {check['onnxruntime']['max_probability_difference']:.1e}, "
        f"torch.export max |dp| {check['torch_export']['max_probability_difference']:.1e} "
        f"(tolerance {check['probability_tolerance']:.0e})"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from melanoma.predict import predict

    rows = predict(
        Path(args.model),
        args.inputs,
        Path(args.out),
        masks_out=args.masks_out,
        batch_size=args.batch_size,
    )
    bad = sum(1 for r in rows if r["error"])
    print(
        f"wrote {len(rows) - bad} predictions to {args.out}"
        + (f"; {bad} unreadable image(s) skipped" if bad else "")
    )
    return 0 if len(rows) > bad else 1


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from melanoma.quickstart import run_quickstart

    run_quickstart(
        Path(args.out),
        experiments=Path(args.experiments) if args.experiments else None,
        seed=args.seed,
    )
    return 0


# ------------------------------------------------------------------------------ parser
def _add_data_source(p: argparse.ArgumentParser) -> None:
    from melanoma.data.layouts import LAYOUTS

    p.add_argument("data", help="dataset directory (or manifest CSV)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), help="dataset layout (default: detect)")
    p.add_argument(
        "--external-paths",
        action="store_true",
        help="allow a manifest to name files outside its folder (refused by default)",
    )


def _add_on_bad(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-bad",
        choices=["fail", "skip"],
        default="fail",
        help="fail on bad samples (default) or exclude and list them",
    )


def _add_split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument(
        "--ignore-official-splits",
        action="store_true",
        help="carve all splits anew even where the layout has official ones",
    )
    p.add_argument(
        "--val-from-train",
        action="store_true",
        help="also carve --val-fraction from training into validation beside an official "
        "validation split (config: data.val_from_train)",
    )


def _add_drop_test_duplicates(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--drop-test-duplicates",
        action="store_true",
        help="drop the test images that share bytes, an id or a lesion with train/val "
        "(listed in the report) instead of refusing the test split",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melanoma", description=__doc__)
    from melanoma import __version__

    parser.add_argument("--version", action="version", version=f"melanoma-search {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate, check, split and cache datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser("synth", help="write synthetic dermoscopy data in the ISIC 2017 layout")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prevalence", type=float, default=0.2, help="fraction of melanoma (default 0.2)"
    )
    p.set_defaults(func=_cmd_synth)

    p = data_sub.add_parser("check", help="validate a dataset and print a summary")
    _add_data_source(p)
    _add_on_bad(p)
    p.add_argument(
        "--strict", action="store_true", help="treat warnings (duplicate content) as bad"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_check)

    p = data_sub.add_parser("split", help="write stratified, grouped splits with file hashes")
    _add_data_source(p)
    _add_on_bad(p)
    _add_split_options(p)
    p.add_argument("--out", default="splits.json")
    p.set_defaults(func=_cmd_split)

    p = data_sub.add_parser("prepare", help="decode and resize once into a memory-mapped cache")
    _add_data_source(p)
    _add_on_bad(p)
    _add_split_options(p)
    p.add_argument("--size", type=int, required=True, help="square side in pixels")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train one segmenter or classifier locally (no Ray)")
    p.add_argument("task", choices=["seg", "cls"])
    p.add_argument(
        "--experiment", help="YAML train config (or search experiment: its train section)"
    )
    p.add_argument("--data", help="dataset directory, manifest CSV or prepared cache")
    p.add_argument("--layout", help="dataset layout (default: detect)")
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--arch",
        "--architecture",
        dest="arch",
        help="segmenter architecture (seg) or classifier name (cls)",
    )
    p.add_argument("--encoder", help="segmenter encoder (any SMP encoder, or tu-<timm model>)")
    p.add_argument("--optimizer", help="sgd, adam or adamw")
    p.add_argument("--learning_rate", "--lr", dest="learning_rate", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight_decay", type=float)
    p.add_argument("--class_weight", type=float, help="multiplies the minority class's weight")
    p.add_argument("--loss")
    p.add_argument("--input_mode", choices=["full", "masked", "crop"])
    p.add_argument("--mask_source", help="'gt' or a segmenter run directory (out-of-fold masks)")
    p.add_argument("--image_size", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--num_workers", type=int)
    p.add_argument("--augment", type=float, help="augmentation strength in [0, 1]")
    p.add_argument("--on_bad", "--on-bad", dest="on_bad", choices=["fail", "skip"])
    p.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="ImageNet weights from local files (see README)",
    )
    p.add_argument("--weights_path")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", help="run directory (default runs/<task>-<arch>-<time>)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key, e.g. --set scheduler.name=step (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=_cmd_train)

    search = sub.add_parser("search", help="hyperparameter search with Ray Tune + Optuna + ASHA")
    search_sub = search.add_subparsers(dest="search_command", required=True)
    for task in ("seg", "cls"):
        p = search_sub.add_parser(
            task, help=f"search {'segmenters' if task == 'seg' else 'classifiers'}"
        )
        p.add_argument(
            "--experiment",
            required=True,
            help="experiment YAML, or the name of a shipped one (quickstart, seg_search, ...)",
        )
        p.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
        p.add_argument("--num-samples", type=int, help="number of trials (overrides the YAML)")
        p.add_argument("--name", help="search name (default: the experiment's name)")
        p.add_argument("--storage", help="results root, a local path or s3://... (default: YAML)")
        p.add_argument("--data", help="dataset path (overrides train.data.path)")
        p.add_argument("--verbose", type=int, default=0, help="Tune's own console output (0-3)")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="any experiment key, e.g. --set train.data.image_size=128 or "
            "--set search.max_epochs=10 (repeatable); the resolved experiment is written "
            "to the search's experiment.yaml",
        )
        p.set_defaults(func=_cmd_search_run, task=task)
    p = search_sub.add_parser("resume", help="finish an interrupted search")
    p.add_argument("name")
    p.add_argument("--storage", default="runs/search")
    p.add_argument("--address")
    p.add_argument("--verbose", type=int, default=0)
    p.set_defaults(func=_cmd_search_resume)
    p = search_sub.add_parser("results", help="trials sorted by the metric, best checkpoint")
    p.add_argument("name")
    p.add_argument("--storage", default="runs/search")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_search_results)

    cascade = sub.add_parser(
        "cascade", help="assemble and evaluate the segmenter + classifier cascade"
    )
    cascade_sub = cascade.add_subparsers(dest="cascade_command", required=True)
    p = cascade_sub.add_parser(
        "build", help="pick the best pair on validation, choose the threshold"
    )
    p.add_argument(
        "--seg",
        required=True,
        nargs="+",
        help="segmenter search name(s), run director(ies) or checkpoint(s)",
    )
    p.add_argument(
        "--cls",
        required=True,
        nargs="+",
        help="classifier search name(s), run director(ies) or checkpoint(s)",
    )
    p.add_argument("--top-k", type=int, default=1, help="evaluate the K x K best pairs end to end")
    p.add_argument(
        "--ensemble-size",
        type=int,
        default=1,
        help="rounds of greedy ensemble selection over the top-k models of each search "
        "(members chosen with replacement on validation; 1: the best single pair)",
    )
    p.add_argument(
        "--tta",
        choices=["auto", "on", "off"],
        default="auto",
        help="test-time flips and rotations in both stages (auto: when validation AUC gains)",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        help="threshold for this validation sensitivity (default: max balanced accuracy)",
    )
    p.add_argument("--storage", default="runs/search")
    p.add_argument("--data", help="dataset (default: the one the models were trained on)")
    p.add_argument("--out", required=True)
    _add_drop_test_duplicates(p)
    p.set_defaults(func=_cmd_cascade_build)
    p = cascade_sub.add_parser("evaluate", help="test-split report with 95%% intervals")
    p.add_argument("dir")
    p.add_argument("--data")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    _add_drop_test_duplicates(p)
    p.set_defaults(func=_cmd_cascade_evaluate)

    p = sub.add_parser("export", help="write the cascade as ONNX + torch.export, checked")
    p.add_argument("dir", help="a `cascade build` directory")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="melanoma probability and lesion mask per image")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="an exported cascade directory")
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--masks-out", help="folder for the lesion masks (PNG, original size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("quickstart", help="synthetic data to exported cascade, end to end")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument(
        "--experiments",
        help="folder with quickstart.yaml and quickstart_cls.yaml (default: the shipped ones)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="another synthetic data set and search seed (default: the experiments' own, 0)",
    )
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser(
        "cv", help="k-fold cross-validation of candidates on the training split (fold models)"
    )
    p.add_argument("task", choices=["seg", "cls"])
    p.add_argument(
        "source", nargs="+", help="search name(s) (their --top-k best trials), run directories"
    )
    p.add_argument("--folds", type=int, default=5, help="lesion-grouped, stratified folds")
    p.add_argument("--top-k", type=int, default=1, help="trials of each search to validate")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the candidate's own)")
    p.add_argument("--storage", default="runs/search")
    p.add_argument("--data", help="dataset (default: the one the candidates were trained on)")
    p.add_argument("--out", required=True, help="one folder per candidate, one run per fold")
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("evaluate", help="metrics of a trained run on a split")
    p.add_argument("task", choices=["seg", "cls"])
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--data", help="dataset (default: the run's data.path)")
    p.add_argument("--split", choices=["val", "test", "train"], default="val")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from melanoma.data.check import DataError
    from melanoma.engine.loop import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NonFiniteLossError,
        RuntimeError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
