"""Errors the project raises for a user to act on, beside ValueError and
FileNotFoundError: the command line prints their message in one line (``--debug`` shows
the traceback). Anything else is a bug and keeps its traceback. No torch here: ``predict``
runs without it."""

from __future__ import annotations


class MelanomaError(RuntimeError):
    """A run cannot go on, for a reason its message states (not a bug in the code)."""
