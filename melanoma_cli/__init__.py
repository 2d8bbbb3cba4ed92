"""The `melanoma` command: the composition root, the only place that parses arguments
and the only package that composes the library (`melanoma`) with `search`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from melanoma_cli import cascade, data, evaluate, export, quickstart, run, search, serve, train

STAGES = (data, train, evaluate, search, cascade, export, serve, quickstart, run)
DESCRIPTION = (
    "Search, build and ship a two-stage melanoma classifier for dermoscopy images: a "
    "segmenter finds the lesion, a classifier reads it. Start with `melanoma quickstart` "
    "(synthetic data, end to end) or `melanoma run DIR --budget 90m --out OUT` (your "
    "data, within a time budget); `melanoma COMMAND --help` says what each step does."
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, one module per pipeline stage."""
    from melanoma import __version__
    from melanoma_cli.common import Parser

    parser = Parser(prog="melanoma", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"melanoma-search {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of every error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        stage.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    started = time.time()  # `melanoma run`'s budget counts from here
    from melanoma.errors import MelanomaError

    args = build_parser().parse_args(argv)
    args.started = started
    try:
        return args.func(args)
    # The project's own refusals (bad data, config, paths, a diverged loss) say what to
    # fix in one line; DataError is a ValueError. Anything else is a bug: its traceback
    # stays. --debug keeps the traceback of every error.
    except (ValueError, FileNotFoundError, FileExistsError, MelanomaError) as err:
        if args.debug:
            raise
        from melanoma.data.check import DataError

        print(f"error: {err}", file=sys.stderr)
        print("(run `melanoma --debug ...` for the traceback)", file=sys.stderr)
        return 1 if isinstance(err, DataError) else 2


if __name__ == "__main__":
    sys.exit(main())
