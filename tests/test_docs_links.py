"""Every relative link in README.md and docs/ resolves: the file exists inside the repository and an
``#anchor`` names a heading of the page it points to (GitHub's heading ids). The README stays short and
docs/ keeps its index and troubleshooting page."""
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str, keep_code_spans: bool = False) -> list[str]:
    """The lines outside fenced code blocks (blank inside them), with inline code spans blanked
    unless ``keep_code_spans`` (a heading's id is made from its code spans' text too)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        elif fenced:
            lines.append("")
        else:
            lines.append(line if keep_code_spans else re.sub(r"(`+)(.+?)\1", lambda m: " " * len(m.group(0)), line))
    return lines


def slug(heading: str) -> str:
    """GitHub's id for a heading: the rendered text lower-cased, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # emphasis underscores, not intraword ones
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of a Markdown page (duplicates numbered as GitHub does) and explicit anchors."""
    text = path.read_text(encoding="utf-8")
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose_lines(text, keep_code_spans=True):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link on the page, outside code; link text may span lines."""
    prose = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    result = []
    for pattern in (INLINE_LINK, HTML_LINK):
        result += [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in pattern.finditer(prose)]
    for number, line in enumerate(prose.splitlines(), 1):
        reference = REFERENCE_DEF.match(line)
        if reference:
            result.append((number, reference.group(1)))
    return sorted(result)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of one page (empty when every one resolves)."""
    problems = []
    for number, target in links(path):
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not target:
            problems.append(f"{where}: empty link")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            continue  # an external address, not checked here
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(root):
            problems.append(f"{where}: points outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor:
            if resolved.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with id #{anchor} in {resolved.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_docs_has_its_index_and_troubleshooting_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if p != DOCS / "README.md"]
    for page in pages:
        assert f"]({page})" in index, f"docs/README.md does not list {page}"
    assert (DOCS / "troubleshooting.md").is_file()
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("heading, expected", [
    ("### 1. A Python library (no Dassl)", "1-a-python-library-no-dassl"),
    ("## `caspl demo`", "caspl-demo"),
    ("## `python train.py`", "python-trainpy"),
    ("## Evaluating a trained model (`--eval-only`)", "evaluating-a-trained-model---eval-only"),
    ("## Dassl on today's torch", "dassl-on-todays-torch"),
    ("## CasPL_PromptSRC and [links](x.md)", "caspl_promptsrc-and-links"),
    ("## Few-shot: 1–16 shots", "few-shot-116-shots"),
])
def test_heading_ids_follow_github(heading, expected):
    assert slug(HEADING.match(heading).group(2)) == expected


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text(
        "[ok](../other.md#a-section) [self](#here) [web](https://example.org/x)\n\n## Here\n\n"
        "[gone](missing.md) [bad anchor](../other.md#nope) [outside](../../x.md)\n\n"
        "```\n[in code](missing-too.md)\n```\n`[inline](missing-three.md)`\n"
        "a link [over two\nlines](missing-four.md)\n",
        encoding="utf-8",
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 4, problems
    assert any("missing.md: no such file" in p for p in problems)
    assert any(":11: missing-four.md: no such file" in p for p in problems)
    assert any("#nope" in p for p in problems)
    assert any("outside the repository" in p for p in problems)
