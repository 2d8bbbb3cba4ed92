"""The house's imports run one way: no module imports itself back through another, and
the layering declared for import-linter holds (``lint-imports`` also runs in .ci/run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("melanoma_cli", "melanoma", "search", "trainables", "experiments")


def import_cycles(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adjacency[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(adjacency):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return cycles


def test_cycle_finder_finds_cycles():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    grimp = pytest.importorskip("grimp")  # installed with import-linter (dev extra)
    graph = grimp.build_graph(*PACKAGES)
    modules = set(graph.modules)
    adjacency = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    assert import_cycles(adjacency) == []


def test_import_contracts_hold(monkeypatch):
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_no_function_exceeds_80_lines():
    """Functions tell a short story; state that travels together is a dataclass."""
    import ast

    long = []
    for package in ("melanoma_cli", "melanoma", "search", "trainables"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []


CODE = ("melanoma", "search", "trainables", "serving", "melanoma_cli")


def test_no_module_exceeds_400_lines():
    """A module holds one job: one over 400 lines is split by job."""
    long = [
        f"{path.relative_to(ROOT)} {n}"
        for package in CODE
        for path in sorted((ROOT / package).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > 400
    ]
    assert long == []


def test_the_package_map_in_the_docs_names_every_module():
    """docs/development.md's map has a row per package naming each of its modules."""
    text = (ROOT / "docs" / "development.md").read_text()
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `") and "|" in line[3:]:
            name, modules = line.split("|")[1:3]
            rows[name.strip().strip("`")] = modules
    missing = []
    for package in CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] in ("__init__", "__main__"):
                continue
            # A sub-package (data/layouts) is named with its modules in its parent's row.
            owner = ".".join(parts[:2] if package == "melanoma" and len(parts) > 2 else parts[:-1])
            row = rows.get(owner, "")
            if f"`{parts[-1]}`" not in row:
                missing.append(".".join(parts))
    assert missing == [], f"add these to docs/development.md's package map: {missing}"


def test_public_boundaries_use_no_assert():
    """What a user hands the cascade, export and predict is checked with errors that say
    what to fix: ``assert`` vanishes under ``python -O`` and says nothing. (Internal
    invariants elsewhere may assert.)"""
    import ast

    found = []
    for folder in ("melanoma/cascade", "melanoma/export", "melanoma/predict.py", "melanoma_cli"):
        path = ROOT / folder
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            tree = ast.parse(file.read_text())
            found += [
                f"{file.relative_to(ROOT)}:{n.lineno}"
                for n in ast.walk(tree)
                if isinstance(n, ast.Assert)
            ]
    assert not found, found
