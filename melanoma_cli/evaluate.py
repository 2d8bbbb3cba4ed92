"""melanoma evaluate: one trained model's metrics on a split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from melanoma_cli.common import deprecated, print_metrics


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from melanoma.engine.evaluate import evaluate_run

    run, task = _run_and_task(args)
    split, device = args.split, args.device
    metrics = evaluate_run(Path(run), task=task, data=args.data, split=split, device=device)
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print(f"{metrics['task']} metrics on the {args.split} split of {metrics['data']}:")
        print_metrics({k: v for k, v in metrics.items() if k not in ("data", "task")})
    return 0


def _run_and_task(args: argparse.Namespace) -> tuple[str, str | None]:
    """``evaluate RUN`` (the task is the checkpoint's); the old ``evaluate TASK
    --checkpoint RUN`` still works for this version, with a warning, and checks the task."""
    if args.checkpoint is not None:
        if args.run not in ("seg", "cls"):
            raise ValueError(
                f"with --checkpoint, expected the task seg or cls before it, got {args.run!r}; "
                "use `melanoma evaluate RUN`"
            )
        deprecated("melanoma evaluate TASK --checkpoint RUN", "melanoma evaluate RUN")
        return args.checkpoint, args.run
    if args.run is None:
        raise ValueError("evaluate needs a run: `melanoma evaluate RUN` (a run directory or .pt)")
    return args.run, None


def register(sub) -> None:
    """Add `evaluate`."""
    p = sub.add_parser(
        "evaluate",
        help="metrics of a trained run on a split",
        description="Score one trained segmenter or classifier on a split of its data set "
        "(the split the run recorded, checked image by image).",
    )
    p.add_argument(
        "run", nargs="?", metavar="RUN", help="a `melanoma train` run directory or checkpoint"
    )
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)  # old spelling, deprecated
    p.add_argument("--data", help="dataset (default: the run's data.path)")
    p.add_argument("--split", choices=["val", "test", "train"], default="val", help="the split")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)
