"""Every comment or docstring that cites a document cites one in this repository (issue 16).

The scan reads the comments and docstrings of every Python file, and the whole text of every template, under
moec/, templates/, tests/ and bench/. A citation is a ``*.md`` path, read from the repository root
(``docs/kernels.md``, ``BENCHMARKS.md``), optionally followed by a section: ``§N`` (a heading numbered N) or a
double-quoted title (a heading, or a bold paragraph lead such as ``**What stays per rank.**``). The file must
exist and the section must be in it. Notes kept outside the repository (the shared design and research folders,
their numbered house-style rules and experiment ids) must not be cited at all.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("moec", "templates", "tests", "bench")

CITATION = re.compile(
    r"(?<![\w/.-])(?P<path>(?:[\w.-]+/)*[\w-]+\.md)\b"
    r"(?:\s*§\s*(?P<number>\d+)|,?\s*[\"“](?P<title>[^\"”]+)[\"”])?"
)
# what only a reader with access to notes outside the repository could follow
OUTSIDE_NOTES = re.compile(r"shared/(?:design|research)|research/[\w-]+\.md|\bhouse style \d|\bexp\d+\b|/work/")
# ``*.md`` names that a file writes as output, not documents it cites: (file, name)
WRITTEN_NOT_CITED = {("bench/moe_gpu.py", "moe_gpu.md")}


@dataclass(frozen=True)
class Prose:
    """One comment block or docstring, its whitespace collapsed."""

    file: str
    line: int
    text: str


def python_prose(source: str, file: str) -> list[Prose]:
    """Comments (consecutive comment lines joined) and module, class and function docstrings."""
    blocks: list[Prose] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text, line = tok.string.lstrip("#").strip(), tok.start[0]
        last = blocks[-1] if blocks else None
        if last is not None and last.line + last.text.count("\n") == line - 1:
            blocks[-1] = Prose(file, last.line, f"{last.text}\n{text}")
        else:
            blocks.append(Prose(file, line, text))
    for node in ast.walk(ast.parse(source)):
        kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        doc = ast.get_docstring(node, clean=False) if isinstance(node, kinds) else None
        if doc is not None:
            blocks.append(Prose(file, node.body[0].lineno, doc))
    return [Prose(b.file, b.line, " ".join(b.text.split())) for b in blocks]


def scanned_prose() -> list[Prose]:
    prose: list[Prose] = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.suffix == ".py":
                prose += python_prose(path.read_text(encoding="utf-8"), rel)
            elif path.suffix == ".j2":  # a template is prose and generated code; neither names a .md by accident
                prose += [Prose(rel, 1, " ".join(path.read_text(encoding="utf-8").split()))]
    return prose


@cache
def sections(doc: Path) -> tuple[set[str], set[str]]:
    """(heading numbers, titles) of a Markdown file: '## 5. Bytes sent' gives '5' and 'Bytes sent'."""
    numbers, titles = set(), set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#+\s+(?:(\d+)\.\s+)?(.+?)\s*$", line)
        if heading:
            numbers |= {heading[1]} if heading[1] else set()
            titles.add(heading[2])
        lead = re.match(r"\*\*(.+?)\.?\*\*", line)
        if lead:
            titles.add(lead[1])
    return numbers, titles


def problems(prose: Prose) -> list[str]:
    """Why each citation in ``prose`` cannot be followed by a reader of this repository."""
    where = f"{prose.file}:{prose.line}"
    found = [f"{where}: cites notes outside the repository ({m[0]!r})" for m in OUTSIDE_NOTES.finditer(prose.text)]
    for m in CITATION.finditer(prose.text):
        if (prose.file, m["path"]) in WRITTEN_NOT_CITED:
            continue
        doc = ROOT / m["path"]
        if not doc.is_file():
            found.append(f"{where}: cites {m['path']}, which is not a file of the repository (paths are from its root)")
            continue
        numbers, titles = sections(doc)
        if m["number"] and m["number"] not in numbers:
            found.append(f"{where}: cites {m['path']} §{m['number']}, which has no heading numbered {m['number']}")
        if m["title"] and m["title"] not in titles:
            found.append(f"{where}: cites {m['path']}, {m['title']!r}, which is no heading or bold lead there")
    return found


def citations(prose: list[Prose]) -> list[str]:
    return [m["path"] for p in prose for m in CITATION.finditer(p.text)]


def test_every_cited_document_and_section_is_in_the_repository():
    prose = scanned_prose()
    # the scan must see the citations this repository is known to make, or it proves nothing
    cited = citations(prose)
    assert {"docs/scaling.md", "docs/kernels.md", "docs/conventions.md", "docs/architecture.md"} <= set(cited)
    assert len(cited) >= 40, len(cited)
    assert [p for doc in prose for p in problems(doc)] == []


BAD = [
    ("# see CONVENTIONS.md for the rules", "not a file of the repository"),
    ("# see kernels.md §4.7", "not a file of the repository"),  # a bare name is read from the root
    ("# docs/scaling.md §42", "no heading numbered 42"),
    ('"""As docs/kernels.md, "A section nobody wrote", says."""', "no heading or bold lead"),
    ("# the design notes (shared/research/kernels.md)", "outside the repository"),
    ("# the fast path beside its oracle (house style 6)", "outside the repository"),
    ("# measured in exp7", "outside the repository"),
]


@pytest.mark.parametrize("source, says", BAD, ids=[s for s, _ in BAD])
def test_a_citation_a_reader_cannot_follow_is_reported(source: str, says: str):
    found = [p for prose in python_prose(source + "\n", "example.py") for p in problems(prose)]
    assert len(found) >= 1 and all(f.startswith("example.py:1: ") for f in found), found
    assert any(says in f for f in found), found


GOOD = [
    '# docs/scaling.md, "Running\n# distributed": a title may run onto the next comment line',
    '"""docs/scaling.md, "All-to-all bytes on the actual routing" (a bold lead)."""',
    "# docs/scaling.md §5 and BENCHMARKS.md",
    'open("NOWHERE.md")  # a name in code, not in prose, is not read',
]


@pytest.mark.parametrize("source", GOOD)
def test_citations_a_reader_can_follow_pass(source: str):
    found = [p for prose in python_prose(source + "\n", "example.py") for p in problems(prose)]
    assert found == []


def test_a_name_a_file_writes_is_not_taken_for_a_citation_only_where_that_file_writes_it():
    for file, name in WRITTEN_NOT_CITED:
        tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert name in literals, f"{file} no longer writes {name}; drop it from WRITTEN_NOT_CITED"
    found = problems(Prose("moec/other.py", 3, "writes moe_gpu.md"))
    assert found == [
        "moec/other.py:3: cites moe_gpu.md, which is not a file of the repository (paths are from its root)"
    ]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_every_link_between_documents_lands_on_a_file_and_heading(doc: str):
    path = ROOT / "docs" / doc
    broken = []
    for m in re.finditer(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)", path.read_text(encoding="utf-8")):
        target = (path.parent / m[1]).resolve() if m[1] else path
        if not target.is_file():
            broken.append(m[0])
        elif m[2] and target.suffix == ".md":
            headings = re.findall(r"^#+\s+(.+?)\s*$", target.read_text(encoding="utf-8"), flags=re.M)
            broken += [] if m[2] in {github_anchor(h) for h in headings} else [m[0]]
    assert broken == []


def test_the_docs_index_lists_every_document():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    assert {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"} <= listed
