"""The `melanoma` command: the composition root, the only place that parses arguments
and the only package that composes the library (`melanoma`) with `search`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from melanoma_cli import cascade, data, export, quickstart, search, train

STAGES = (data, train, search, cascade, export, quickstart)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, one module per pipeline stage."""
    from melanoma import __version__
    from melanoma_cli.common import Parser

    parser = Parser(prog="melanoma", description=__doc__)
    parser.add_argument("--version", action="version", version=f"melanoma-search {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        stage.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from melanoma.data.check import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # RuntimeError covers the engine's NonFiniteLossError (not imported here: `predict`
    # must run without torch).
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
