"""The README and docs/ link only to files and headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = CODE_BLOCK.sub("", page.read_text())
    return {anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_anchor_follows_github() -> None:
    assert anchor("Masks at original resolution") == "masks-at-original-resolution"
    assert anchor("The `leaves` weights, 224×224 (7 December 2026)") == (
        "the-leaves-weights-224224-7-december-2026"
    )
    assert anchor("Table 4: no pre-proc, no_angle") == "table-4-no-pre-proc-no_angle"


def broken_links(page: Path) -> list[str]:
    """The relative links of a Markdown page whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(CODE_BLOCK.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{fragment} in {linked.name}")
    return broken


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Its `section`, 2 × 2\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](other.md#its-section-2--2) [ok](#top) [web](https://example.org/#x)\n"
        "[gone](missing.md) [bad](other.md#nowhere) [self](#bottom)\n"
        "```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {(tmp_path / 'missing.md').resolve()}",
        "other.md#nowhere: no heading with anchor #nowhere in other.md",
        "#bottom: no heading with anchor #bottom in page.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.name} has broken links:\n" + "\n".join(broken)
