"""The documentation runs: every ```python block of every docs/*.md page, and of README.md's
quickstart and "Using zoo in research code" sections, executed in order in one namespace per
document.

A failing block fails the test with the file and line where the block starts; tracebacks point
at the markdown file's own line numbers. The blocks carry their own asserts (a probe's accuracy,
a frozen trunk left bit-identical), so a recipe that stops working fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str, section: str | None = None) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block, optionally only inside `## section`."""
    start, end = 0, len(text)
    if section is not None:
        heading = re.search(rf"^## {re.escape(section)}\n", text, re.MULTILINE)
        assert heading, f"no '## {section}' section"
        start = heading.end()
        following = re.search(r"^## ", text[start:], re.MULTILINE)
        end = start + following.start() if following else end
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text, start, end)]


def run_blocks(path: Path, blocks: list[tuple[int, str]]) -> None:
    namespace = {"__name__": f"docs:{path.name}"}
    for line, code in blocks:
        # padded so that tracebacks show the markdown file's line numbers
        compiled = compile("\n" * (line - 1) + code, str(path), "exec")
        try:
            exec(compiled, namespace)
        except Exception as e:
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            raise AssertionError(f"{shown}: the ```python block at line {line} failed: {type(e).__name__}: {e}") from e


def test_python_blocks_are_found_with_their_line_numbers():
    text = "intro\n## A\n```python\nx = 1\n```\n## B\n```python\ny = 2\nz = 3\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(4, "x = 1\n"), (8, "y = 2\nz = 3\n")]
    assert python_blocks(text, "B") == [(8, "y = 2\nz = 3\n")]


def test_blocks_share_a_namespace_and_a_failure_names_its_line(tmp_path):
    doc = tmp_path / "doc.md"
    run_blocks(doc, [(2, "a = 1\n"), (7, "assert a == 1\n")])
    with pytest.raises(AssertionError, match=r"doc.md: the ```python block at line 7 failed: NameError") as info:
        run_blocks(doc, [(2, "a = 1\n"), (7, "b = a + undefined\n")])
    # the traceback points at the markdown line of the failing statement
    assert info.value.__cause__.__traceback__.tb_next.tb_lineno == 7


DOC_PAGES = sorted(p.name for p in (REPO / "docs").glob("*.md"))


def test_docs_rooms_exist_and_the_readme_links_each():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "the README is the front door: at most 250 lines"
    for name in ("research.md", "training.md", "formats.md", "sweep.md", "results.md", "design.md"):
        assert name in DOC_PAGES
        assert f"(docs/{name})" in readme, f"README.md does not link docs/{name}"


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_page_runs(page, tfds_dir, monkeypatch):
    """Every ```python block of every docs/ page runs, in order, in one namespace per page."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    path = REPO / "docs" / page
    blocks = python_blocks(path.read_text())
    if page == "research.md":
        assert len(blocks) >= 8, "the recipes (a)-(f) and their setup"
    if page == "formats.md":
        assert blocks, "formats.md shows PyTorch both ways in a ```python block"
    run_blocks(path, blocks)


def test_readme_research_section_runs(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    path = REPO / "README.md"
    blocks = python_blocks(path.read_text(), "Using zoo in research code")
    assert blocks, "README.md's research section has no ```python block"
    run_blocks(path, blocks)


def test_readme_quickstart_runs():
    path = REPO / "README.md"
    blocks = python_blocks(path.read_text(), "Quickstart for research code")
    assert blocks, "README.md's quickstart has no ```python block"
    run_blocks(path, blocks)


def test_ci_runs_the_readme_commands_and_nothing_else():
    """.ci/run is the README's test command, then the slow tests as the README names them."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Two commands"):readme.index("\n## ", readme.index("## Two commands") + 1)]
    fenced = re.search(r"^```bash\n(.*?)^```$", section, re.DOTALL | re.MULTILINE).group(1)
    commands = [line for line in fenced.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, commands  # the main job, the tests
    slow = re.search(r"`(\.venv/bin/python -m pytest [^`]*-m slow[^`]*)`", section).group(1)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1], slow]
    # the default run leaves the slow tests out; the slow command selects exactly them
    assert "-m 'not slow'" in (REPO / "pyproject.toml").read_text()


def test_bench_results_keeps_only_the_canonical_tables():
    """bench/results holds the current tables and plots that docs cite; history lives in git."""
    files = [p for p in (REPO / "bench" / "results").rglob("*") if p.is_file()]
    assert len(files) <= 31, sorted(str(p.relative_to(REPO)) for p in files)
