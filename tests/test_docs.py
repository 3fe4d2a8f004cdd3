"""The README and the docs hold together: every relative link points at a file that exists (and at a heading that
exists, when it names one), every page of docs/ is in the README's index, and the README stays a front door.
What the pages' commands and Python blocks do is tested in tests/test_readme.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not an image
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
README_MOST_LINES = 150


def links(page: Path) -> list[str]:
    """The targets of a page's markdown links and images, outside code (fenced blocks and `inline code`)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text) + IMAGE.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in filter(relative, links(page)):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve()
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_anchors_within_a_page_resolve(page):
    missing = [t for t in links(page) if t.startswith("#") and t[1:] not in anchors(page)]
    assert not missing, f"{page.relative_to(ROOT)}: no heading for {missing}"


def test_the_link_checker_finds_broken_links(tmp_path):
    """The checks above would fail on a missing file, a missing heading, and leave code and URLs alone."""
    (tmp_path / "a.md").write_text("# Title\n\n## The fast recipe\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](a.md#the-fast-recipe) [gone](b.md) [web](https://x.org/y) `[code](c.md)`\n"
                    "```\n[fenced](d.md)\n```\n![img](e.png)\n")
    assert links(page) == ["a.md#the-fast-recipe", "b.md", "https://x.org/y", "e.png"]
    assert "the-fast-recipe" in anchors(tmp_path / "a.md") and "title" in anchors(tmp_path / "a.md")
    assert [t for t in links(page) if relative(t)] == ["a.md#the-fast-recipe", "b.md", "e.png"]


def test_every_docs_page_is_in_the_readme_index():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md") if relative(t)}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages and not [p.name for p in pages if p.resolve() not in linked]


def test_readme_stays_short():
    """Issue 34: the README is a front door (what, install, the demo, a tour, the API, headlines, an index)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MOST_LINES, f"README.md has {len(lines)} lines; move details to a page in docs/"
