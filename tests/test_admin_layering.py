"""Pins the layering around ``App``: the modules ``_app`` builds on never import it back at runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nursery_worker

PACKAGE = Path(nursery_worker.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """The package modules *path* imports when it runs: ``if TYPE_CHECKING:`` blocks are skipped."""
    name = _module(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                parent = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join([*parent, node.module] if node.module else parent)
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
            else:
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {m for m in found if m.startswith("nursery_worker")}


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _runtime_imports(path) & set(modules) - {name} for name, path in modules.items()}


@pytest.mark.parametrize("module", ["nursery_worker._admin", "nursery_worker._task", "nursery_worker._periodic"])
def test_the_modules_below_app_do_not_reach_it_at_runtime(module: str) -> None:
    """_admin, _task and _periodic reach nursery_worker._app through no chain of runtime imports."""
    graph = _graph()
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)

    assert "nursery_worker._app" not in seen
