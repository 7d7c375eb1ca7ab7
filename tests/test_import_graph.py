"""The gateway's modules import each other without a circle (issue 16): checked on the source, not at run time.

Every import counts, at the top of a module, inside a function or under `if TYPE_CHECKING:`, so an import moved
into a function (or behind TYPE_CHECKING) to dodge a cycle is found as the cycle it hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"


def module_name(path: Path, root: Path = GATEWAY) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = GATEWAY) -> dict[str, set[str]]:
    """Module -> the gateway modules it imports anywhere in its source (`from gateway import db` -> gateway.db)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_gateway_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert "gateway.pipeline" in graph and graph["gateway.app"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("source", "cycle"),
    [
        pytest.param(
            {"a": "from gateway import b", "b": "def f():\n    from gateway.a import x"}, True, id="in-function"
        ),
        pytest.param(
            {
                "a": "from gateway.b import y",
                "b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gateway.a",
            },
            True,
            id="type-checking",
        ),
        pytest.param({"a": "from gateway import b", "b": "import os"}, False, id="acyclic"),
    ],
)
def test_the_check_sees_imports_hidden_in_functions_and_type_checking(
    tmp_path: Path, source: dict[str, str], cycle: bool
) -> None:
    root = tmp_path / "gateway"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in source.items():
        (root / f"{name}.py").write_text(text + "\n")
    assert (find_cycle(import_graph(root)) is not None) is cycle
