"""melanoma quickstart: synthetic data to an exported cascade, end to end."""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from melanoma_cli.cascade import AUTO, resolve_candidates, weighting


def _seeded(path: Path, seed: int | None):
    """The experiment at ``path``, with another synthetic data set and search seed."""
    from melanoma.data.synth import SYNTHETIC_PREFIX, parse_synthetic
    from search.experiment import load_experiment

    if seed is None:
        return load_experiment(path)
    data = load_experiment(path).train.data.path
    overrides = {"train.seed": seed, "search.searcher.seed": seed}
    if data.startswith(SYNTHETIC_PREFIX):
        c = parse_synthetic(data)
        overrides["train.data.path"] = f"{SYNTHETIC_PREFIX}{c.n}:{c.size}:{seed}"
    return load_experiment(path, overrides)


def run_quickstart(out: Path, experiments: Path | None = None, seed: int | None = None) -> dict:
    """Segmenter and classifier searches on synthetic data, then the cascade built on
    validation, evaluated on the held-out test split, exported and used for prediction.
    ``experiments``: a folder with quickstart.yaml and quickstart_cls.yaml (default: the
    shipped ones, found from any working directory). ``seed``: another synthetic data set
    and search seed than the experiments' own."""
    from melanoma.cascade.build import build_cascade
    from melanoma.cascade.evaluate import evaluate_cascade
    from melanoma.export import export_cascade
    from melanoma.predict import predict
    from search.runner import run_search
    from search.store import search_path

    started = time.perf_counter()
    out = Path(out)
    storage = str(out / "search")
    from experiments import bundled

    files = (
        bundled()
        if experiments is None
        else {n: Path(experiments) / f"{n}.yaml" for n in ("quickstart", "quickstart_cls")}
    )
    seg = _seeded(files["quickstart"], seed)
    cls = _seeded(files["quickstart_cls"], seed)
    for exp in (seg, cls):
        if Path(search_path(storage, exp.name)).exists():
            raise FileExistsError(
                f"{out} already holds a quickstart; remove it or pass --out NEW_DIR"
            )
    print("== 1/5 segmenter search", flush=True)
    run_search(seg, storage=storage)
    print("== 2/5 classifier search", flush=True)
    run_search(cls, storage=storage)
    print("== 3/5 cascade: best pair and threshold on validation", flush=True)
    cascade_dir = out / "cascade"
    # No test-time augmentation here: eight passes per image cost the quickstart ~35 s
    # (measured) for a gain inside the validation interval. Real builds default to auto.
    # The hand-off `cascade build` makes by default: the best few segmenter trials; the
    # classifier search's default trial and its best others, at equal weights.
    clss = resolve_candidates([cls.name], "cls", AUTO, storage, "anchored")
    rounds, weights = weighting(AUTO, [cls.name], clss, "anchored")
    build_cascade(
        resolve_candidates([seg.name], "seg", AUTO, storage),
        clss,
        cascade_dir,
        tta="off",
        ensemble_size=rounds,
        cls_weights=weights,
    )
    print("== 4/5 evaluation on the held-out test split", flush=True)
    report = evaluate_cascade(cascade_dir)
    print("== 5/5 export and predict", flush=True)
    export_dir = out / "export"
    export_cascade(cascade_dir, export_dir)
    from melanoma.data.synth import materialize_synthetic

    data_root = materialize_synthetic(cls.train.data.path)
    with open(cascade_dir / "test_predictions.csv", newline="") as fh:
        test_ids = [row["id"] for row in csv.DictReader(fh)]
    images = [str(data_root / "ISIC-2017_Training_Data" / f"{i}.jpg") for i in test_ids]
    predict(export_dir, images, out / "predictions.csv", masks_out=out / "masks")
    c = report["classification"]
    print(f"\nquickstart finished in {time.perf_counter() - started:.0f} s")
    print(
        f"test AUC {c['auc']['value']:.3f} (95% CI {c['auc']['low']:.3f}-{c['auc']['high']:.3f}), "
        f"sensitivity {c['sensitivity']['value']:.3f}, specificity {c['specificity']['value']:.3f}"
    )
    print(f"report:       {cascade_dir / 'report.md'}")
    print(f"TensorBoard:  tensorboard --logdir {storage}")
    print(f"exported:     {export_dir} (melanoma predict {export_dir} IMAGES... --out preds.csv)")
    print(f"predictions:  {out / 'predictions.csv'} (test images), masks in {out / 'masks'}")
    return report


def _cmd_quickstart(args: argparse.Namespace) -> int:
    run_quickstart(
        Path(args.out),
        experiments=Path(args.experiments) if args.experiments else None,
        seed=args.seed,
    )
    return 0


def register(sub) -> None:
    """Add this stage's subcommands."""
    p = sub.add_parser("quickstart", help="synthetic data to exported cascade, end to end")
    p.add_argument("--out", default="runs/quickstart", help="every stage's output, in one folder")
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
