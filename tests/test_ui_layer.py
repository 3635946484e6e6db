"""The UI is its own layer: only compression/ui/ imports streamlit or plotly; nothing else in the package imports it."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compression"
UI = PACKAGE / "ui"
UI_ONLY = ("streamlit", "plotly")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)  # `from compression import ui`
    return out


def is_under(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def library_files() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py")) if UI not in path.parents]


def test_only_the_ui_package_imports_streamlit_or_plotly():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path)
                                                     if any(is_under(m, top) for top in UI_ONLY))
                 for path in library_files()}
    assert not {path: mods for path, mods in offenders.items() if mods}
    ui_imports = set().union(*(imported_modules(path) for path in UI.rglob("*.py")))
    assert any(is_under(m, "streamlit") for m in ui_imports)  # the test looks where the imports are


def test_nothing_outside_the_ui_package_imports_it():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path)
                                                     if is_under(m, "compression.ui"))
                 for path in library_files()}
    assert not {path: mods for path, mods in offenders.items() if mods}


def test_ui_and_pages_ask_sources_and_the_engine_not_references_or_folders():
    """Task comes from sources.task_of / handle.task, run files from engine.run_file: no prefix or type-name tests."""
    banned = re.compile(r"""startswith\(\s*\(?\s*["'](detector|demo|torchvision|torchscript|yolo|imagefolder)"""
                        r"""|__name__\s*==|["']DetectorHandle["']|/\s*["']runs["']""")
    files = sorted(UI.rglob("*.py")) + sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in files
            for number, line in enumerate(path.read_text().splitlines(), 1) if banned.search(line)]
    assert not hits, hits
