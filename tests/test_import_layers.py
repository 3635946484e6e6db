"""Imports in compression/ run one way: a module imports only from its own layer or a lower one, and no
modules import each other in a circle (imports inside functions count).

Every module is parsed with `ast` (nothing is imported); each `import x` and `from x import y`,
at module level or inside a function, relative ones resolved against the module's package, is
checked against the layer table below (docs: /DESIGN.md "Imports run one way").
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "complab"
ROOT = Path(__file__).resolve().parents[1] / "compression" / PACKAGE  # the source folder holds the package

# Layer of each part of the package, lowest first; a module may import from its own layer or lower.
# The longest matching prefix wins ("complab.methods.x" -> methods); the bare root package and
# anything not listed (a new ground-floor module) is layer 0.
LAYERS: dict[str, int] = {
    # 0 ground floor: compression/__init__, errors, paths, plan, metrics, devices, data/*, storage/*
    "complab": 0,
    "complab.errors": 0,
    "complab.paths": 0,
    "complab.plan": 0,
    "complab.metrics": 0,
    "complab.devices": 0,
    "complab.data": 0,
    "complab.storage": 0,
    # 1 handles and compact-file adapters
    "complab.models": 1,
    # 2 one file (or folder) per method
    "complab.methods": 2,
    # 3 what composes methods: the pipeline, analyses, model sources, export, demo trainers
    "complab.pipeline": 3,
    "complab.analysis": 3,
    "complab.sources": 3,
    "complab.export": 3,
    "complab.deploy": 3,
    "complab.codeload": 3,
    "complab.measure_child": 3,
    "complab.demo": 3,
    # 4 jobs and the run store
    "complab.engine": 4,
    # 5 the application layer: what a user asks (plan a sweep, find an analysis, submit a job), for both front ends
    "complab.service": 5,
    # 6 the front ends
    "complab.cli": 6,
    "complab.ui": 6,
}


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name (None outside the package)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return 0


def _is_module(name: str) -> bool:
    """Whether a dotted name under the package is a module or subpackage on disk."""
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`, at any depth, relative ones resolved.

    `from x import y` counts as an import of the submodule x.y when y is one, else of x."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                name = f"{target}.{alias.name}"
                entry = (node.lineno, name if alias.name != "*" and _is_module(name) else target)
                if entry not in found:
                    found.append(entry)
    return sorted(found)


def upward_imports(tree: ast.AST, module: str, is_package: bool = False) -> list[str]:
    """'module:line -> target (layer a -> b)' for every import of a higher layer than `module`'s."""
    own = layer_of(module)
    offenders = []
    for line, target in imported_modules(tree, module, is_package):
        layer = layer_of(target)
        if layer is not None and own is not None and layer > own:
            offenders.append(f"{module}:{line} -> {target} (layer {own} -> {layer})")
    return offenders


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(relative.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), is_package, path


def test_no_module_imports_a_higher_layer():
    offenders = []
    for module, is_package, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        offenders += upward_imports(tree, module, is_package)
    assert not offenders, "imports that run up the layers:\n" + "\n".join(offenders)


def test_the_checker_catches_an_upward_import():
    snippet = ast.parse("import torch\n"
                        "from complab import errors\n"
                        "def f():\n"
                        "    from ..engine import store\n"
                        "    from complab.methods.prune import bake\n")
    offenders = upward_imports(snippet, "complab.models.compact")
    assert offenders == ["complab.models.compact:4 -> complab.engine.store (layer 1 -> 4)",  # relative
                         "complab.models.compact:5 -> complab.methods.prune (layer 1 -> 2)"]  # in a function
    assert upward_imports(snippet, "complab.cli") == []
    assert layer_of("complab.methods.channels.ga") == 2 and layer_of("complab.devices") == 0


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside a function."""
    trees = {module: (ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), is_package)
             for module, is_package, path in _modules()}

    def resolve(name: str) -> str:
        while name and name not in trees:  # `from pkg.mod import attribute` -> pkg.mod
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, (tree, is_package) in trees.items():
        targets = {resolve(target) for _, target in imported_modules(tree, module, is_package)}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles_counting_imports_inside_functions():
    found = cycles(import_graph())
    assert not found, "import cycles (a function-level import counts too):\n" + "\n".join(
        " <-> ".join(component) for component in found)


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
