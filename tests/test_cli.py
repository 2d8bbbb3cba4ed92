"""The command line's grammar and help: every option says what it is and shows its
default, the thing a command acts on is positional, and the old spellings still parse."""

from __future__ import annotations

import argparse

import pytest

from melanoma_cli import build_parser


def _parsers(parser: argparse.ArgumentParser, name: str = "melanoma"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


PARSERS = dict(_parsers(build_parser()))


def test_every_subcommand_is_walked():
    assert {"melanoma predict", "melanoma evaluate", "melanoma cascade build"} <= set(PARSERS)
    assert len(PARSERS) > 15


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_argument_has_help_and_every_real_default_is_shown(name):
    parser = PARSERS[name]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            assert action.dest.startswith(("model", "checkpoint", "data")), action.dest
            continue
        label = action.option_strings or action.dest
        assert action.help, f"{name} {label}: no help line"
        if action.default not in (None, False) and action.option_strings:
            # Shown as "default: VALUE", unless the help says the default in its own words.
            flat = " ".join(text.split())
            shown = f"(default: {action.default})" in flat or "default" in action.help
            assert shown, f"{name} {label}: default {action.default!r} not in the help"
    assert "composition root" not in text  # help speaks to a user, not of the layering


def test_the_top_level_help_says_what_the_tool_does():
    text = " ".join(build_parser().format_help().split())
    assert "melanoma classifier" in text and "melanoma quickstart" in text


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["predict", "export", "a.jpg", "b"], {"paths": ["export", "a.jpg", "b"], "model": None}),
        (["predict", "a.jpg", "--model", "export"], {"paths": ["a.jpg"], "model": "export"}),
        (["evaluate", "runs/x"], {"run": "runs/x", "checkpoint": None}),
        (["evaluate", "cls", "--checkpoint", "runs/x"], {"run": "cls", "checkpoint": "runs/x"}),
        (["export", "cascade", "--out", "e"], {"dir": "cascade"}),
        (["serve", "export"], {"model": "export"}),
        (["cascade", "evaluate", "cascade"], {"dir": "cascade"}),
        (["run", "data", "--budget", "5m", "--out", "o"], {"data": "data", "data_flag": None}),
        (["run", "--data", "data", "--budget", "5m", "--out", "o"], {"data_flag": "data"}),
    ],
)
def test_the_object_of_a_command_is_positional_and_old_spellings_parse(argv, expected):
    args = build_parser().parse_args(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value
