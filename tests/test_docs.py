"""The README and docs/*.md name only things that exist.

Per document:
  (a) every relative Markdown link ``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)``,
      image and reference definition points to a file inside the repository; an anchor into a .md
      file must match one of its headings under GitHub's slug rules (http(s), mailto and other
      schemes are not checked);
  (b) every repository path in inline code or a code block (starting with ``diffattn/``, ``scripts/``,
      ``tests/``, ``docs/``, ``benchmarks/`` or ``.ci/``) exists; ``{a,b}`` is expanded and a ``*``
      pattern must match at least one file;
  (c) every dotted ``diffattn.x.y`` name in code (and every name a ``from diffattn... import`` line
      in a code block imports) resolves: the longest prefix that is a module, then attributes.
Plus: command 2 of the README is the line CI runs, the README stays a front door, and every docs
page is linked from it.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())  # wherever tests/ nests
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML_REF = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]+)\"", re.I)
_HTML_ID = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*\"([^\"]+)\"", re.I)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_REPO_PATH = re.compile(
    r"(?<![\w./~$-])((?:diffattn|scripts|tests|docs|benchmarks|\.ci)/(?:[\w.*?+-]|/|\{[\w.,*+/-]*\})*)"
)
_MODULE = re.compile(r"(?<![\w./-])(diffattn(?:\.[A-Za-z_]\w*)+)")
_FROM_IMPORT = re.compile(r"^\s*from\s+(diffattn[\w.]*)\s+import\s+\(?([\w\s,]+?)\)?\s*(?:#.*)?$", re.M)


def split_markdown(text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """(prose, blocks): the text with fenced code blocks blanked out (same line numbers), and each
    block as (first line number, info string, contents)."""
    prose: list[str] = []
    blocks: list[tuple[int, str, str]] = []
    fence, info, start, body = "", "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if not fence and m:
            fence, info, start, body = m.group(1), line.strip()[len(m.group(1)) :].strip(), number + 1, []
            prose.append("")
        elif fence and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(fence[0]):
            blocks.append((start, info, "\n".join(body)))
            fence = ""
            prose.append("")
        elif fence:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    if fence:  # an unclosed fence runs to the end of the document
        blocks.append((start, info, "\n".join(body)))
    return "\n".join(prose), blocks


def code_spans(prose: str) -> list[tuple[int, str]]:
    """(line number, contents) of every inline code span of the prose."""
    return [(prose.count("\n", 0, m.start()) + 1, m.group(2)) for m in _CODE_SPAN.finditer(prose)]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, without punctuation other than
    hyphens, underscores and spaces, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = "".join(c for c in text.strip().lower() if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown document defines: heading slugs (repeats get -1, -2, ...) and HTML ids."""
    prose, _ = split_markdown(text)
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose.splitlines():
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    found.update(_HTML_ID.findall(prose))
    return found


def _links(prose: str) -> list[tuple[int, str]]:
    """(line number, target) of every link, image, reference definition and HTML href/src, outside code."""
    blanked = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
    out = []
    for pattern in (_LINK, _REF_DEF, _HTML_REF):
        out += [(blanked.count("\n", 0, m.start()) + 1, m.group(1)) for m in pattern.finditer(blanked)]
    return sorted(out)


def _check_link(target: str, doc: Path, root: Path, own_anchors: set[str]) -> str | None:
    if not target or _SCHEME.match(target) or target.startswith("//"):
        return None
    path, _, anchor = target.partition("#")
    if not path:
        return None if anchor in own_anchors else f"link {target!r}: no heading with anchor #{anchor} here"
    resolved = (doc.parent / unquote(path)).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return f"link {target!r}: leaves the repository"
    if not resolved.exists():
        return f"link {target!r}: no such file {resolved.relative_to(root.resolve()).as_posix()}"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
        return f"link {target!r}: {path} has no heading with anchor #{anchor}"
    return None


def _expand_braces(path: str) -> list[str]:
    """``a.{json,md}`` -> [``a.json``, ``a.md``] (shell brace expansion, unnested)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _check_path(path: str, root: Path) -> str | None:
    path = path.rstrip(".,:;")  # sentence punctuation right after a path
    for one in _expand_braces(path):
        if any(c in one for c in "*?["):
            if not any(root.glob(one.rstrip("/"))):
                return f"path {one!r}: matches no file"
        elif one.endswith("/") and not (root / one).is_dir():
            return f"path {one!r}: no such directory"
        elif not (root / one).exists():
            return f"path {one!r}: no such file"
    return None


def _check_module(dotted: str) -> str | None:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a parent is a module, not a package, or is missing
            spec = None
        if spec is None:
            continue
        if i == len(parts):
            return None
        obj = importlib.import_module(name)
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"name {dotted!r}: {name} is a module but has no {'.'.join(parts[i:])!r}"
            obj = getattr(obj, attr)
        return None
    return f"name {dotted!r}: no such module"


def check_markdown(text: str, doc: Path, root: Path = ROOT) -> list[str]:
    """Every problem of one Markdown document, as ``"line N: ..."``; [] if none."""
    prose, blocks = split_markdown(text)
    own = anchors(text)
    problems: list[tuple[int, str]] = []
    for line, target in _links(prose):
        if (p := _check_link(target, doc, root, own)) is not None:
            problems.append((line, p))
    code = code_spans(prose) + [(start, body) for start, _, body in blocks]
    checked: dict[str, str | None] = {}
    for start, body in code:
        for m in _REPO_PATH.finditer(body):
            if (p := _check_path(m.group(1), root)) is not None:
                problems.append((start + body.count("\n", 0, m.start()), p))
        names = [(m.start(), m.group(1)) for m in _MODULE.finditer(body)]
        for m in _FROM_IMPORT.finditer(body):
            imported = [n.split(" as ")[0].strip() for n in m.group(2).split(",")]
            names += [(m.start(), f"{m.group(1)}.{n}") for n in imported if n]
        for offset, dotted in names:
            if dotted not in checked:
                checked[dotted] = _check_module(dotted)
            if checked[dotted] is not None:
                problems.append((start + body.count("\n", 0, offset), checked[dotted]))
    return [f"line {line}: {p}" for line, p in sorted(problems)]


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(ROOT).as_posix() for d in DOCS])
def test_doc_names_only_what_exists(doc: Path) -> None:
    problems = check_markdown(doc.read_text(encoding="utf-8"), doc)
    assert not problems, f"{doc.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next((line for line in ci if line.startswith("python3 -m venv .venv")), None)
    assert command is not None, ".ci/run no longer runs a 'python3 -m venv .venv ...' line: update this test"
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert command in readme, f"README.md must hold .ci/run's test command verbatim:\n{command}"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (> {README_MAX_LINES}): move depth into docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    prose, _ = split_markdown((ROOT / "README.md").read_text(encoding="utf-8"))
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in _links(prose) if not _SCHEME.match(t)}
    orphans = [d.relative_to(ROOT).as_posix() for d in DOCS[1:] if d.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


# ---- the checker itself ------------------------------------------------------------------------


def test_github_slug() -> None:
    assert github_slug("Which denoisers") == "which-denoisers"
    assert github_slug("`freeswim` on its own") == "freeswim-on-its-own"
    assert github_slug("Benchmarks (kernels)") == "benchmarks-kernels"
    assert github_slug("One video over N GPUs: diffusers' Ulysses") == "one-video-over-n-gpus-diffusers-ulysses"
    assert github_slug("temporal_window and **bold**") == "temporal_window-and-bold"
    assert github_slug("[Linked](x.md) heading") == "linked-heading"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### A") == {"a", "a-1", "a-2"}


def test_checker_reports_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "ok.py").write_text("")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n")
    doc = tmp_path / "docs" / "page.md"
    text = """# Page

## Good part

[fine](other.md) [fine anchor](other.md#a-section) [here](#good-part) ![img](../scripts/ok.py)
[web](https://example.com/nope.md) [mail](mailto:a@b.c) `[in code](nope.md)`

[broken](missing.md) and [bad anchor](other.md#no-such-section) and [own](#nowhere)
[outside](../../etc/passwd)

`scripts/ok.py` `scripts/{ok,gone}.py` `scripts/*.py` `diffattn.functional.gna` `diffattn.report`

```bash
python scripts/missing_script.py --out docs/x.png    # two missing paths
```

```python
from diffattn.functional import gna, not_there
import diffattn.no_such_module
```

`tests/*.nothing` `diffattn.functional.nope`
"""
    problems = check_markdown(text, doc, root=tmp_path)
    expected = [
        "line 8: link 'missing.md': no such file docs/missing.md",
        "line 8: link 'other.md#no-such-section': other.md has no heading with anchor #no-such-section",
        "line 8: link '#nowhere': no heading with anchor #nowhere here",
        "line 9: link '../../etc/passwd': leaves the repository",
        "line 11: path 'scripts/gone.py': no such file",
        "line 14: path 'scripts/missing_script.py': no such file",
        "line 14: path 'docs/x.png': no such file",
        "line 18: name 'diffattn.functional.not_there': diffattn.functional is a module but has no 'not_there'",
        "line 19: name 'diffattn.no_such_module': diffattn is a module but has no 'no_such_module'",
        "line 22: path 'tests/*.nothing': matches no file",
        "line 22: name 'diffattn.functional.nope': diffattn.functional is a module but has no 'nope'",
    ]
    assert sorted(problems) == sorted(expected)
