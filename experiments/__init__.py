"""The shipped experiment YAMLs, installed with the package so that `melanoma quickstart`
and `--experiment NAME` find them from any directory and from a non-editable install."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled() -> dict[str, Path]:
    """Name (file stem) to path of every shipped experiment YAML."""
    folder = resources.files(__name__)
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def resolve(value: str | Path) -> Path:
    """An experiment file: an existing path as given, else a shipped experiment by name
    (``quickstart`` or ``quickstart.yaml``)."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = bundled()
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    raise FileNotFoundError(
        f"experiment file {value} does not exist; give a YAML path or the name of a shipped "
        f"experiment: {', '.join(sorted(shipped))}"
    )
