"""Records written whole or not at all: a reader sees the old file or the complete new one,
never half of one (a killed run, a full disk), so no later run reads a truncated record."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` by ``write(tmp)`` on a temporary file beside it, then rename it over
    ``path`` (a rename within a folder is atomic). The temporary name keeps the suffix,
    which ``np.savez`` and ``torch.save`` readers rely on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, doc, indent: int | None = 1) -> None:
    """``doc`` as JSON with a final newline, atomically."""
    write_text(path, json.dumps(doc, indent=indent) + "\n")


def read_json(path: Path):
    """The JSON document at ``path``, or None when it is absent or unreadable (a record
    written before writes were atomic may be truncated: treated as missing, remade)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
