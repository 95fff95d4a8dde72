"""The Python shown in README.md and docs/*.md imports what it says: its import lines run against the package."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _imports(path):
    """Every single-line `import X` / `from X import a, b` in the file's ```python blocks that names attnbench."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if re.match(r"\s*(from|import)\s+attnbench\b", line)]


CASES = [(p.relative_to(ROOT).as_posix(), line) for p in DOCS for line in _imports(p)]


def test_the_docs_show_python_imports():
    assert any(doc == "docs/gate.md" for doc, _ in CASES) and any(doc == "README.md" for doc, _ in CASES)


@pytest.mark.parametrize("doc, line", CASES)
def test_documented_import_runs(doc, line):
    names: dict = {}
    exec(line, names)  # an ImportError or AttributeError fails the test
    assert set(names) - {"__builtins__"}, f"{doc}: `{line}` bound nothing"
