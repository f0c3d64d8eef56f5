"""Every relative link of the README and the docs pages points at a file (issue 24, item 7).

The README is a first page that links onward to ``docs/*.md``, and those pages link back and to
``benchmarks/results/``; a page moved or renamed breaks such links silently. A link here is an
inline link or image, ``[text](target)`` / ``![alt](target)``, or a reference definition
``[name]: target``, outside fenced code blocks and code spans (which show text, not links). A
target with a scheme (``https:``, ``mailto:``) is not checked. A relative target must exist, lie
inside the repository and not be ignored by git (an ignored file exists here but not in a
clone); a ``#fragment`` on a Markdown file (or alone, on the page itself) must be one of its
headings' anchors, made the way GitHub makes them. Every ``docs/*.md`` page must be linked from
the README, or a reader of the first page cannot reach it.

Reference: the checker is run on a small tree made by the test, with a broken link, a broken
anchor, links that must be ignored and links that must resolve, against the list written here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1)[^\n]|\n(?!\s*\n))+?\1")  # may wrap, not across paragraphs
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*<?([^\s>]+)>?", re.M)
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages(root: Path = ROOT) -> list[Path]:
    """The pages whose links are checked: the README and every docs page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def unfenced(text: str) -> str:
    """``text`` with the lines of fenced code blocks blanked (same line count)."""
    lines, fence = [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def prose(text: str) -> str:
    """``text`` with fenced code blocks and code spans blanked (same line breaks)."""
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), unfenced(text))


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link of a Markdown page, in order."""
    body = prose(text)
    found = [(m.start(1), m.group(1)) for m in _LINK.finditer(body)]
    found += [(m.start(1), m.group(1)) for m in _REF.finditer(body)]
    return [(body.count("\n", 0, at) + 1, target) for at, target in sorted(found)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: link syntax reduced to its text, lower case, everything but
    letters, digits, ``_``, ``-`` and spaces dropped, spaces made ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page (a repeated heading gets ``-1``, ``-2``, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(unfenced(text)):
        slug = anchor(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def ignored(root: Path, paths: list[Path]) -> set[Path]:
    """Those of ``paths`` (inside ``root``) that git ignores; none where git or a repository is
    missing."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists() or not paths:
        return set()
    names = "\n".join(str(p.relative_to(root)) for p in paths)
    proc = subprocess.run(
        [git, "-C", str(root), "check-ignore", "--stdin"],
        input=names,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1):  # 1: none ignored
        raise RuntimeError(f"git check-ignore failed: {proc.stderr.strip()}")
    return {(root / name).resolve() for name in proc.stdout.splitlines()}


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with each relative link of ``page``: ``"PAGE:LINE: TARGET: why"``."""
    text = page.read_text()
    root = root.resolve()
    checked = []
    for line, target in links(text):
        if _SCHEME.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page.resolve()
        checked.append((line, target, dest, fragment))
    inside = [dest for _, _, dest, _ in checked if dest.is_relative_to(root) and dest.exists()]
    hidden = ignored(root, inside)
    problems = []
    for line, target, dest, fragment in checked:
        where = f"{page.relative_to(root)}:{line}: {target}"
        if not dest.is_relative_to(root):
            problems.append(f"{where}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{where}: no such file")
        elif dest in hidden:
            problems.append(f"{where}: ignored by git, so missing from a clone")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            problems.append(f"{where}: no heading with anchor #{fragment}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert links(page.read_text()), f"{page.name} has no links: the parser missed them"
    assert broken(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(readme.read_text())}
    unlinked = [p.name for p in pages()[1:] if p.resolve() not in linked]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


def test_the_checker_finds_what_is_broken_and_only_that(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "README.md").write_text(
        "# Title\n\n## Two `commands`, here!\n\n## Two commands here\n\n"
        "[ok](docs/a.md) [ok anchor](docs/a.md#the-page) [self](#two-commands-here-1)\n"
        "![img](data.json) [web](https://example.com/x.md) [mail](mailto:a@b.c)\n"
        '[wrapped\ntext](data.json "title") [gone](docs/none.md) [bad anchor](docs/a.md#nope)\n'
        "`[code span](missing1.md)` and ``[two ticks `x`](missing2.md)``, a `wrapped\n"
        "[span](missing3.md)`\n\n"
        "```bash\n[fenced](missing4.md)\n```\n\n"
        "[ref]: docs/also-gone.md\n"
        "[outside](../elsewhere.md) [anchor on json](data.json#whatever)\n"
    )
    (tmp_path / "docs" / "a.md").write_text(
        "# The page\n\n[up](../README.md#two-commands-here) [up bad](../README.md#two-commands-1)\n"
    )
    assert [t for _, t in links((tmp_path / "README.md").read_text())] == [
        "docs/a.md",
        "docs/a.md#the-page",
        "#two-commands-here-1",
        "data.json",
        "https://example.com/x.md",
        "mailto:a@b.c",
        "data.json",
        "docs/none.md",
        "docs/a.md#nope",
        "docs/also-gone.md",
        "../elsewhere.md",
        "data.json#whatever",
    ]
    assert anchors((tmp_path / "README.md").read_text()) == {
        "title",
        "two-commands-here",
        "two-commands-here-1",
    }
    assert broken(tmp_path / "README.md", tmp_path) == [
        "README.md:10: docs/none.md: no such file",
        "README.md:10: docs/a.md#nope: no heading with anchor #nope",
        "README.md:18: docs/also-gone.md: no such file",
        "README.md:19: ../elsewhere.md: points outside the repository",
    ]
    assert broken(tmp_path / "docs" / "a.md", tmp_path) == [
        "docs/a.md:3: ../README.md#two-commands-1: no heading with anchor #two-commands-1",
    ]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_link_to_a_file_git_ignores_is_broken(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "report.md").write_text("# Report\n")
    (tmp_path / "kept.md").write_text("# Kept\n")
    (tmp_path / "README.md").write_text("[local](runs/report.md) [kept](kept.md#kept)\n")
    assert broken(tmp_path / "README.md", tmp_path) == [
        "README.md:1: runs/report.md: ignored by git, so missing from a clone",
    ]
