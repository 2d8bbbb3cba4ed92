"""Helpers the command modules share."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from search.experiment import DEFAULT_STORAGE as SEARCH_STORAGE

__all__ = [
    "SEARCH_STORAGE",
    "Parser",
    "_add_drop_test_duplicates",
    "_progress",
    "deprecated",
    "print_metrics",
]


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


def deprecated(old: str, new: str) -> None:
    """Say on stderr that a spelling still works for this version and what replaces it."""
    print(
        f"warning: `{old}` is deprecated and goes in the next version; use `{new}`",
        file=sys.stderr,
    )


def _add_drop_test_duplicates(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--drop-test-duplicates",
        action="store_true",
        help="drop the test images that share bytes, an id or a lesion with train/val "
        "(listed in the report) instead of refusing the test split",
    )


class _Formatter(argparse.HelpFormatter):
    """Help that shows each option's default where it has a real one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """The parser of `melanoma` and of every subcommand (subparsers inherit the class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"{k:32s} {v:.4f}")
        else:
            print(f"{k:32s} {v}")
