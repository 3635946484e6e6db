"""The engine's own house rules, read from its source with `ast` (nothing is imported):

- no import circle inside complab.engine, counting imports inside functions;
- protocol.py is the bottom: it imports no other engine module;
- the two backends are peers: the local one (local.py, worker.py) and the Ray one (ray_dispatch.py, ray_backend.py)
  never import each other, and the job kinds (jobs.py) import neither; only the dispatcher picks between them;
- no engine module imports another module's private (`_name`) names.
"""

import ast
from pathlib import Path

from test_import_layers import imported_modules

ENGINE = Path(__file__).resolve().parents[1] / "compression" / "complab" / "engine"
LOCAL = {"complab.engine.local", "complab.engine.worker"}
RAY = {"complab.engine.ray_dispatch", "complab.engine.ray_backend"}


def _name(path: Path) -> str:
    return "complab.engine" if path.stem == "__init__" else f"complab.engine.{path.stem}"


def _trees() -> dict[str, ast.AST]:
    return {_name(path): ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for path in sorted(ENGINE.glob("*.py"))}


def engine_graph() -> dict[str, set[str]]:
    """Engine module -> the engine modules it imports (at module level or inside a function)."""
    trees = _trees()
    graph: dict[str, set[str]] = {}
    for module, tree in trees.items():
        found = set()
        for _, target in imported_modules(tree, module, module == "complab.engine"):
            while target and target not in trees:  # `from complab.engine.store import X`: the module store
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
        graph[module] = found
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_inside_the_engine():
    graph = engine_graph()
    assert {"complab.engine.protocol", "complab.engine.dispatcher", "complab.engine.ray_dispatch"} <= set(graph)
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_protocol_is_the_bottom_and_the_backends_are_peers():
    graph = engine_graph()
    assert graph["complab.engine.protocol"] == set()
    for module in LOCAL:
        assert not graph[module] & RAY, f"{module} imports the Ray backend: {graph[module] & RAY}"
        assert "complab.engine.protocol" in graph[module] or "complab.engine.recording" in graph[module]
    for module in RAY:
        assert not graph[module] & LOCAL, f"{module} imports the local backend: {graph[module] & LOCAL}"
        assert not graph[module] & {"complab.engine.dispatcher", "complab.engine.reaper"}
    assert not graph["complab.engine.jobs"] & (LOCAL | RAY)
    assert {"complab.engine.local", "complab.engine.ray_dispatch"} <= graph["complab.engine.dispatcher"]


def test_no_engine_module_imports_a_private_name():
    offenders = []
    for module, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("complab")):
                offenders += [f"{module}:{node.lineno} imports {alias.name} from {node.module}"
                              for alias in node.names if alias.name.startswith("_")]
    assert not offenders, "\n".join(offenders)
