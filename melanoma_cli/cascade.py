"""melanoma cascade build | evaluate."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from melanoma_cli.common import SEARCH_STORAGE, _add_drop_test_duplicates

AUTO = "auto"
EQUAL = "equal"
HANDOFFS = ("anchored", "best")  # what a search name hands on: see resolve_candidates


def handoff_size(trials: int) -> int:
    """How many of a search's best trials a cascade build takes by default: a third of
    the trials that have a checkpoint, at least 1 and at most 5 (a search of 8 trials
    hands on its best 3). One pick chosen on 30 validation melanomas is mostly noise; an
    ensemble of the few best is what the search's own benchmark supports."""
    return max(1, min(5, math.ceil(trials / 3)))


def ensemble_rounds(candidates: int) -> int:
    """Greedy ensemble rounds by default: 2k - 1 for k classifier candidates (a member
    may be chosen more than once), at most 9; one candidate, no ensemble."""
    return max(1, min(9, 2 * candidates - 1))


def resolve_candidates(
    sources: list[str], task: str, top_k: int | str, storage: str, how: str = "best"
) -> list:
    """Candidates from paths (checkpoints, runs, cross-validation folders) and search names
    (``top_k`` of their trials; ``auto``: :func:`handoff_size` of the search's trials):
    the one place where a search name becomes checkpoints. ``how="best"`` takes the
    best trials by validation; ``anchored`` the default trial (trial 0) and the best
    others, so that what a search hands on always holds the experiment's own settings."""
    from melanoma.cascade.members import load_candidates

    if top_k != AUTO and top_k < 1:
        raise ValueError(f"--top-k must be at least 1 or auto, got {top_k}")
    if how not in HANDOFFS:
        raise ValueError(f"--handoff must be one of {list(HANDOFFS)}, got {how!r}")
    out = []
    for source in sources:
        if Path(source).exists():
            out += load_candidates(source, task)
            continue
        from search.results import ranked_checkpoints
        from search.store import load_search_experiment, search_path

        try:
            load_search_experiment(source, storage)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{source} is neither a checkpoint, run directory or cross-validation folder "
                f"nor a search in {search_path(storage, source)}; check the name or --storage"
            ) from None
        ranked = ranked_checkpoints(source, task, storage)
        k = handoff_size(len(ranked)) if top_k == AUTO else top_k
        picked, line = handoff(ranked, k, anchored=how == "anchored")
        print(f"[cascade] {source}: {line}", flush=True)
        for path, origin, value, _ in picked:
            out += load_candidates(path, task, origin, value)
    return out


def handoff(ranked: list[tuple], k: int, anchored: bool) -> tuple[list[tuple], str]:
    """The ``k`` trials a search hands on, best first, and the line that says which:
    the best ``k``, or (``anchored``) the default trial and the best ``k - 1`` others."""
    n = len(ranked)
    if not anchored:
        return ranked[:k], f"the best {min(k, n)} of its {n} trials"
    default = [r for r in ranked if r[3]][:1]
    if not default:
        return (
            ranked[:k],
            f"the best {min(k, n)} of its {n} trials (no default trial with a checkpoint: "
            "none kept one, or default_first is off)",
        )
    others = [r for r in ranked if r is not default[0]][: k - 1]
    picked = sorted(default + others, key=ranked.index)
    if len(picked) == 1:
        return picked, f"the default trial alone (1 of its {n} trials)"
    best = "the best other" if len(others) == 1 else f"the best {len(others)} others"
    return picked, f"the default trial and {best} of its {n} trials"


def weighting(size: int | str, cls_sources: list[str], clss: list, how: str) -> tuple[int, str]:
    """(greedy rounds, classifier weights) for ``--ensemble-size``: ``equal`` weighs every
    classifier candidate once (the segmenters still get 2k - 1 greedy rounds); ``auto``
    does so for an anchored search hand-off (the budget curve's anchored arm) and else
    runs 2k - 1 greedy rounds over both; a count runs that many."""
    searched = any(not Path(s).exists() for s in cls_sources)
    if size == EQUAL or (size == AUTO and searched and how == "anchored"):
        # The rounds still choose the segmenters, greedily, as before equal weights.
        rounds = ensemble_rounds(len(clss))
        print(
            f"[cascade] {len(clss)} classifier candidate(s) at equal weights; segmenters: "
            f"greedy ensemble of {rounds} round(s)",
            flush=True,
        )
        return rounds, "equal"
    if size == AUTO:
        size = ensemble_rounds(len(clss))
        print(
            f"[cascade] greedy ensemble of {size} round(s) over {len(clss)} classifier "
            "candidate(s) (--ensemble-size auto)",
            flush=True,
        )
    return size, "greedy"


def _sources(sources: list[str], task: str, top_k: int, storage: str, how: str = "best") -> list:
    """Cross-validation folders as they are, when every source is one (the build can then
    choose on their out-of-fold predictions); else the candidates they resolve to."""
    from melanoma.engine.cv import fold_runs

    if all(Path(s).is_dir() and fold_runs(Path(s)) is not None for s in sources):
        return [Path(s) for s in sources]
    return resolve_candidates(sources, task, top_k, storage, how)


def _cmd_cascade_build(args: argparse.Namespace) -> int:
    from melanoma.cascade.build import build_cascade

    segs = _sources(args.seg, "seg", args.top_k, args.storage)
    clss = _sources(args.cls, "cls", args.top_k, args.storage, args.handoff)
    rounds, weights = weighting(args.ensemble_size, args.cls, clss, args.handoff)
    build_cascade(
        segs,
        clss,
        Path(args.out),
        select_on=args.select_on,
        target_sensitivity=args.target_sensitivity,
        data=args.data,
        drop_test_duplicates=args.drop_test_duplicates,
        ensemble_size=rounds,
        tta=args.tta,
        mask_cleanup=args.mask_cleanup,
        calibration=args.calibration,
        cls_weights=weights,
    )
    return 0


def _cmd_cascade_evaluate(args: argparse.Namespace) -> int:
    from melanoma.cascade.evaluate import evaluate_cascade

    evaluate_cascade(
        Path(args.dir),
        data=args.data,
        resamples=args.bootstrap,
        drop_test_duplicates=args.drop_test_duplicates,
        submission=args.submission,
    )
    print((Path(args.dir) / "report.md").read_text())
    print(
        f"report: {Path(args.dir) / 'report.md'} and report.json; "
        f"curves: {Path(args.dir) / 'curves.png'}"
    )
    return 0  # a scoring failure raises, and main turns it into a message and 2


def _add_sources(p) -> None:
    """``cascade build``'s candidates: where they come from and how they are weighed."""
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
    p.add_argument(
        "--top-k",
        type=_count_or_auto,
        default=AUTO,
        help="the K best trials of each search are candidates (auto, the default: a third "
        "of its trials, 1 to 5)",
    )
    p.add_argument(
        "--handoff",
        choices=HANDOFFS,
        default="anchored",
        help="which trials of a --cls search are candidates: anchored (the default): the "
        "search's default trial and the best others by validation, --top-k in all; best: "
        "the --top-k best",
    )
    p.add_argument(
        "--ensemble-size",
        type=_ensemble_size,
        default=AUTO,
        help="rounds of greedy ensemble selection over the candidates (members chosen with "
        "replacement on the selection set; 1: the best single pair); equal: every "
        "classifier candidate at one weight; auto, the default: equal for an anchored "
        "search hand-off, else 2k - 1 rounds for k classifier candidates, at most 9",
    )


def register(sub) -> None:
    """Add this stage's subcommands."""
    cascade = sub.add_parser(
        "cascade", help="assemble and evaluate the segmenter + classifier cascade"
    )
    cascade_sub = cascade.add_subparsers(dest="cascade_command", required=True)
    p = cascade_sub.add_parser(
        "build",
        help="choose the segmenter and classifier members, threshold and calibration",
        description="Assemble the cascade from trained models: a search hands on its "
        "default trial and its best others, averaged at equal weights (--handoff, "
        "--ensemble-size); cross-validation folders (`melanoma cv`) are chosen on their "
        "pooled out-of-fold predictions of the training images, leaving the validation "
        "split as an untouched second check (--select-on); other sources on the "
        "validation split. Then the threshold (max balanced accuracy or "
        "--target-sensitivity) and the calibration are fitted on the same selection set. "
        "The test split is not read: `cascade evaluate` scores it once.",
    )
    _add_sources(p)
    for flag, text in (
        (
            "--tta",
            "test-time flips and rotations (auto: per stage, the segmenters' when the "
            "validation Jaccard gains, then the classifiers' when the validation AUC gains)",
        ),
        (
            "--mask-cleanup",
            "keep each output mask's largest region, holes filled (auto: when the "
            "validation Jaccard gains)",
        ),
    ):
        p.add_argument(flag, choices=["auto", "on", "off"], default="auto", help=text)
    p.add_argument(
        "--select-on",
        choices=["auto", "oof", "val"],
        default="auto",
        help="what chooses the classifiers, their weights and the threshold: the pooled "
        "out-of-fold predictions of `melanoma cv` folders (oof; then nothing is chosen on "
        "validation, TTA and clean-up stay off unless on), or the validation split (val); "
        "auto: oof when every --cls is a cross-validation folder",
    )
    p.add_argument(
        "--calibration",
        choices=["auto", "platt", "temperature", "isotonic", "off"],
        default="auto",
        help="map the melanoma probability to the observed rate on the selection set, in "
        "the exported graph too (auto: Platt scaling when it lowers the cross-fitted "
        "log-loss there)",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        help="threshold for this validation sensitivity (default: max balanced accuracy)",
    )
    p.add_argument("--storage", default=SEARCH_STORAGE, help="the searches' root folder or URI")
    p.add_argument("--data", help="dataset (default: the one the models were trained on)")
    p.add_argument("--out", required=True, help="the new cascade directory")
    _add_drop_test_duplicates(p)
    p.set_defaults(func=_cmd_cascade_build)
    _register_evaluate(cascade_sub)


def _register_evaluate(cascade_sub) -> None:
    p = cascade_sub.add_parser("evaluate", help="test-split report with 95%% intervals")
    p.add_argument("dir", metavar="CASCADE", help="a `cascade build` directory")
    p.add_argument("--data", help="the data set, where it has moved (default: the recorded path)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument(
        "--submission",
        type=Path,
        help="also write the test predictions as ISIC Challenge submission files (a "
        "classification CSV, mask PNGs at each image's size) into this new folder",
    )
    _add_drop_test_duplicates(p)
    p.set_defaults(func=_cmd_cascade_evaluate)


def _count_or_auto(value: str) -> int | str:
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or auto, got {value!r}"
        ) from None


def _ensemble_size(value: str) -> int | str:
    if value == EQUAL:
        return EQUAL
    try:
        return _count_or_auto(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, auto or equal, got {value!r}"
        ) from None
