"""The README stays a front door: short, no issue numbers in headings, and a Layout naming every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "compression" / "complab"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 4)
    return text[start:end if end > 0 else len(text)]


def layout_blocks(section: str) -> dict[str, str]:
    """Folder -> the text of its block in the Layout's code fence.

    A line whose first token ends with "/" opens a folder, nested by indentation under the last folder
    opened with less indentation; every other line belongs to the innermost open folder."""
    fence = section.split("```")[1]
    blocks: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in fence.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        token = line.split()[0]
        if token.endswith("/") and not token.startswith("("):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            name = token if not parent or token.startswith(parent) else parent + token
            stack.append((indent, name))
            blocks.setdefault(name, []).append(" ".join(line.split()[1:]))
        elif stack:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if stack:
                blocks[stack[-1][1]].append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def missing_modules(section: str) -> list[str]:
    blocks = layout_blocks(section)
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        folder = "compression/" + str(path.parent.relative_to(PACKAGE.parent)) + "/"
        text = blocks.get(folder, "")
        if not re.search(rf"(?<![\w/]){re.escape(path.stem)}(\.py)?\b", text):
            missing.append(f"{folder}{path.name}")
    return missing


def test_readme_is_short_and_its_headings_cite_no_issue():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "the README is a front door: move detail to benchmarks/README.md"
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert not [h for h in headings if re.search(r"\bissues? \d+|#\d+", h, re.I)]


def test_layout_names_every_module():
    section = _section(README.read_text(encoding="utf-8"), "Layout")
    assert missing_modules(section) == []


def test_the_layout_check_sees_a_missing_module():
    section = "\n## Layout\n```\ncompression/complab/  the package\n  analysis/   fisher\n```\n"
    missing = missing_modules(section)
    assert "compression/complab/analysis/sensitivity.py" in missing
    assert "compression/complab/analysis/fisher.py" not in missing
    assert "compression/complab/cli.py" in missing


def test_every_benchmark_has_a_row_with_its_command():
    table = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        if script.stem.endswith("_helper"):
            continue  # run by another benchmark, not on its own
        assert f"`.venv/bin/python benchmarks/{script.name}`" in table, script.name
