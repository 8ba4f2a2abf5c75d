"""The docs are true to the tree: every relative link in README.md and docs/*.md reaches an existing
file, every `#anchor` a heading of its target (GitHub's heading slugs), and every docs page that the
code names (`docs/<page>.md`, or `<page>.md §N` for a numbered section) exists."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
CODE_DIRS = ("errors", "adapters", "router", "server", "scripts")
CODE_SUFFIXES = (".py", ".sh")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
DOCS_MENTION = re.compile(r"(?<![\w/.-])docs/([\w./-]+?\.md)(?:#([\w-]+))?")
SECTION_CITATION = re.compile(r"(?<![\w/.-])(?:docs/)?([\w-]+\.md) §(\d+)")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans, where nothing is a link or a heading."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower-cased, without punctuation, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    text = FENCE.sub("", page.read_text())
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for _, heading in HEADING.findall(text):
        slug = _slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def _links(page: Path) -> list[str]:
    prose = _prose(page.read_text())
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def _broken(page: Path, target: str) -> str | None:
    """Why a link of `page` to `target` is broken, or None."""
    if EXTERNAL.match(target):
        return None
    path_part, _, anchor = unquote(target).partition("#")
    if not path_part:
        linked = page
    elif path_part.startswith("/"):
        linked = REPO / path_part.lstrip("/")
    else:
        linked = page.parent / path_part
    if not linked.exists():
        return f"{target}: no such file"
    if anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
        return f"{target}: no heading '#{anchor}' in {linked.relative_to(REPO)}"
    return None


def _numbered_sections(page: Path) -> set[str]:
    headings = HEADING.findall(FENCE.sub("", page.read_text()))
    return {match.group(1) for _, heading in headings if (match := re.match(r"(\d+)\.", heading))}


def _code_files() -> list[Path]:
    return [path for folder in CODE_DIRS for path in sorted((REPO / folder).rglob("*")) if path.suffix in CODE_SUFFIXES]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_its_anchor(page: Path) -> None:
    broken = [reason for target in _links(page) if (reason := _broken(page, target)) is not None]
    assert broken == [], f"{page.relative_to(REPO)}: {broken}"


def test_every_docs_page_the_code_names_exists() -> None:
    missing: list[str] = []
    for path in _code_files():
        text = path.read_text()
        where = path.relative_to(REPO)
        for name, anchor in DOCS_MENTION.findall(text):
            page = REPO / "docs" / name
            if not page.is_file():
                missing.append(f"{where}: docs/{name}")
            elif anchor and anchor not in anchors(page):
                missing.append(f"{where}: docs/{name}#{anchor}")
        for name, section in SECTION_CITATION.findall(text):
            page = REPO / "docs" / name
            if not page.is_file() or section not in _numbered_sections(page):
                missing.append(f"{where}: {name} §{section}")
    assert missing == []


def test_the_slugs_follow_github() -> None:
    assert _slug("Compiled engines and CUDA graphs") == "compiled-engines-and-cuda-graphs"
    assert _slug("1. MoORE — mixture of orthogonal rank-one experts") == "1-moore--mixture-of-orthogonal-rank-one-experts"
    assert _slug("Building the images without Docker (`scripts/image-check.sh`)") == (
        "building-the-images-without-docker-scriptsimage-checksh"
    )
    assert _slug("Measured here (2 cores, 24 GB; Podman 4.3.1)") == "measured-here-2-cores-24-gb-podman-431"
