"""The README and the pages in docs/: links that lead somewhere, badges that agree with
pyproject.toml, a teaching page that lists the course's real exercises, a glossary in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moe_helpers.colab import colab_link, repository_url
from moe_helpers.exercises import EXERCISES, exercises_of
from moe_helpers.grading import column_codes

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where link-like text is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a Markdown page (a repeated heading gets -1, -2, ... as on GitHub)."""
    found: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            count = found.get(base, 0)
            found[base if count == 0 else f"{base}-{count}"] = 0
            found[base] = count + 1
    return set(found)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's Markdown links that point inside the repository."""
    targets = re.findall(r"\]\(([^)\s]+)", prose(page.read_text()))
    return [target for target in targets if not re.match(r"[a-z][a-z+.-]*:", target)]   # not http:, mailto:


def test_there_are_pages_to_check():
    assert len(PAGES) >= 10
    assert relative_links(ROOT / "README.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_front_page_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200, "move the details to a page in docs/"


def test_the_readme_badges_open_every_notebook_from_the_declared_repository():
    readme = (ROOT / "README.md").read_text()
    notebooks = sorted(path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    expected = {colab_link(name, repository_url()) for name in notebooks}
    found = set(re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", readme))
    assert found == expected, "the README's Colab badges disagree with [project.urls] Repository in pyproject.toml"
    assert f"git clone {repository_url()}" in readme


def test_the_teaching_page_lists_the_exercises_of_every_notebook():
    page = (ROOT / "docs" / "teaching.md").read_text()
    listed = re.findall(r"^\| (\d\d\.\d) \| `(\w+)` \|", page, flags=re.M)
    chapters = sorted({exercise.notebook for exercise in EXERCISES.values()})
    names = [name for chapter in chapters for name in exercises_of(chapter)]
    assert listed == list(zip(column_codes(names), names))


def test_the_glossary_is_alphabetical_and_says_where_each_term_appears():
    page = (ROOT / "docs" / "glossary.md").read_text()
    entries = re.findall(r"^\*\*(.+?)\*\*(.*?)(?=^\*\*|\Z)", page, flags=re.M | re.S)
    terms = [term.replace("`", "").lower() for term, _ in entries]
    assert len(terms) > 30 and terms == sorted(terms)
    for term, body in entries:
        assert re.search(r"\[[^\]]*\d\d", body) or "see *" in body or "Not in a notebook" in body, term
