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

ARCHITECTURE.md is the map of the code, so every repository path it names must exist: a word
``a/b/c.py`` or ``a/b/`` whose first part is a top-level file or folder of the repository (not
one git ignores), in prose, code spans and fenced blocks alike, ``{x,y}`` expanded and ``*``
globbed; and, in a table row whose first cell names a folder (```host/run/```), each ``.py`` file
and each path into one of that folder's subfolders named in its code spans, under that folder.
Words whose first part is not in the repository (``rungs/rung_NNN.pt``, ``DIR/encoder/``: what a
run writes) are not paths of it.

Reference: each checker is run on a small tree made by the test, with broken and good links or
paths, and those that must be ignored, against the list written here.
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


_SEGMENT = r"(?:[\w*.-]|\{[\w.,-]*\})+"  # a path part; {a,b} alternatives, * globs
_PATH_WORD = re.compile(rf"(?<![\w./{{}}-]){_SEGMENT}(?:/{_SEGMENT})*/?")
_SPAN = re.compile(r"`([^`]+)`")


def expand(path: str) -> list[str]:
    """``path`` with every ``{a,b}`` alternative spelled out."""
    m = re.search(r"\{([^{}]*)\}", path)
    if m is None:
        return [path]
    return [
        q
        for alt in m.group(1).split(",")
        for q in expand(path[: m.start()] + alt + path[m.end() :])
    ]


def top_level(root: Path) -> set[str]:
    """The names at the top of the repository that a clone has (not ``.git``, nothing ignored)."""
    entries = [p for p in root.iterdir() if p.name != ".git"]
    hidden = ignored(root, entries)
    return {p.name for p in entries if p.resolve() not in hidden}


def _exists(folder: Path, path: str) -> bool:
    if "*" in path:
        return any(folder.glob(path.rstrip("/")))
    target = folder / path
    return target.is_dir() if path.endswith("/") else target.exists()


def _row_paths(line: str, root: Path, names: set[str]) -> list[tuple[Path, str]]:
    """(folder, path) of the names a table row makes relative to the folder in its first cell
    (a ``.py`` file, or a path into one of that folder's subfolders); none for another line."""
    spans = _SPAN.findall(line) if line.startswith("|") else []
    first = line.split("|")[1].strip() if spans else ""
    if not (spans and spans[0].endswith("/") and first.startswith(f"`{spans[0]}`")):
        return []
    folder = root / spans[0]
    found = []
    for span in spans[1:]:
        for m in _PATH_WORD.finditer(span):
            word = m.group(0)
            head = word.split("/")[0]
            inside = "/" in word and (folder / head).is_dir()  # not a file name it writes
            if (inside or word.endswith(".py")) and head not in names:
                found.append((folder, word))
    return found


def missing_paths(page: Path, root: Path = ROOT) -> list[str]:
    """Every repository path ``page`` names that does not exist: ``"PAGE:LINE: PATH: why"``."""
    names = top_level(root)
    problems = []
    for number, line in enumerate(page.read_text().split("\n"), 1):
        words = (m.group(0).rstrip(".") for m in _PATH_WORD.finditer(line))
        checked = [(root, w) for w in words if "/" in w and w.split("/")[0] in names]
        for folder, word in checked + _row_paths(line, root, names):
            if not all(_exists(folder, p) for p in expand(word)):
                under = "" if folder == root else f" (under {folder.relative_to(root)}/)"
                problems.append(
                    f"{page.relative_to(root)}:{number}: {word}{under}: no such file or folder"
                )
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


def test_every_repository_path_in_the_architecture_page_exists():
    page = ROOT / "ARCHITECTURE.md"
    assert missing_paths(page) == []


def test_the_path_checker_finds_what_is_missing_and_only_that(tmp_path):
    for rel in ("host/run/a.py", "host/b.py", "device/c/t.c", "device/c/t.h", "bench/test_x_1.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    page = tmp_path / "ARCHITECTURE.md"
    page.write_text(
        "# Map\n\n"
        "`host/run/a.py`, host/b.py and `host/run/` exist; host/run/gone.py does not.\n"
        "```\nhost/run/a.py   -> rungs/rung_000.pt, DIR/encoder/, export/\n"
        "host/nothere/ device/c/t.{c,h} device/c/t.{c,x}\n```\n"
        "A sentence ends at host/b.py. See https://example.com/host/x.py and host/b.pyc.\n\n"
        "| path | what |\n|---|---|\n"
        "| `host/run/` | `a.py`, `b.py`, `sub/c.py`, `head_plan.h`, `host/b.py`, `device/` |\n"
        "| `device/` | `c/t.{c,h}` and `c/t.x`; made on the device: `model.c/.h` |\n"
        "| `bench/` | `test_x_*.py`, `test_y_*.py` |\n"
        "| `.ci/run` | `x.py` (no folder row) |\n"
    )
    assert missing_paths(page, tmp_path) == [
        "ARCHITECTURE.md:3: host/run/gone.py: no such file or folder",
        "ARCHITECTURE.md:6: host/nothere/: no such file or folder",
        "ARCHITECTURE.md:6: device/c/t.{c,x}: no such file or folder",
        "ARCHITECTURE.md:8: host/b.pyc: no such file or folder",
        "ARCHITECTURE.md:12: b.py (under host/run/): no such file or folder",
        "ARCHITECTURE.md:12: sub/c.py (under host/run/): no such file or folder",
        "ARCHITECTURE.md:13: c/t.x (under device/): no such file or folder",
        "ARCHITECTURE.md:14: test_y_*.py (under bench/): no such file or folder",
    ]
