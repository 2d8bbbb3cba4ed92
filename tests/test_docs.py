"""The README stays short and its links into the documentation site resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor MkDocs' toc extension gives a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(page: Path) -> set[str]:
    found, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def local_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+://", t)]


def test_readme_links_resolve_to_files_and_headings():
    links = local_links(ROOT / "README.md")
    assert any(t.startswith("docs/") for t in links), "the README links into docs/"
    for target in links:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.is_file(), f"README links to {target}: {file} does not exist"
        if anchor:
            assert anchor in anchors(file), f"README links to {target}: no such heading"


def test_slug_and_anchor_check_catch_a_wrong_heading(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n```\n# not a heading\n```\n## Does it work? (real data)\n")
    assert anchors(page) == {"top", "does-it-work-real-data"}


def test_readme_is_short_and_every_docs_page_is_in_the_nav():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
