"""The UI is its own layer: only complab/ui/ imports streamlit or plotly; nothing else in the package imports it."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compression" / "complab"
UI = PACKAGE / "ui"
UI_ONLY = ("streamlit", "plotly")
# The one UI module the command line may import: the HTML report (`complab report`) draws with plotly
# but never imports Streamlit (checked below), so the CLI stays a Streamlit-free front end beside the app.
CLI_MAY_IMPORT = {PACKAGE / "cli.py": {"complab.ui.report"}}


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
            out.update(f"{module}.{alias.name}" for alias in node.names)  # `from complab import ui`
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
                                                     if is_under(m, "complab.ui")
                                                     and not any(is_under(m, allowed)
                                                                 for allowed in CLI_MAY_IMPORT.get(path, ())))
                 for path in library_files()}
    assert not {path: mods for path, mods in offenders.items() if mods}


def test_the_report_module_the_cli_imports_never_reaches_streamlit():
    """complab.ui.report and the UI modules it imports (figures; the package __init__) import no Streamlit."""
    seen, todo = set(), ["complab.ui.report"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = PACKAGE.parent.joinpath(*module.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        if not path.is_file():
            continue
        imports = imported_modules(path)
        assert not any(is_under(m, "streamlit") for m in imports), module
        todo += [m for m in imports if is_under(m, "complab.ui")]
    assert "complab.ui.figures" in seen


def test_ui_and_pages_ask_sources_and_the_engine_not_references_or_folders():
    """Task comes from sources.task_of / handle.task, run files from engine.run_file: no prefix or type-name tests."""
    banned = re.compile(r"""startswith\(\s*\(?\s*["'](detector|demo|torchvision|torchscript|yolo|imagefolder)"""
                        r"""|__name__\s*==|["']DetectorHandle["']|/\s*["']runs["']""")
    files = sorted(UI.rglob("*.py")) + sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in files
            for number, line in enumerate(path.read_text().splitlines(), 1) if banned.search(line)]
    assert not hits, hits
