"""The layering of ``src/nursery_worker``, read from the source with ``ast`` (nothing is imported):
the import graph has no cycle, the driver seam sits below the domain, and psycopg stays in the driver.

The graph holds every import the interpreter runs: module-level and inside functions, absolute and
relative. Imports under ``if TYPE_CHECKING:`` are left out (they never run). An import of
``package.module`` is an edge to that module only, not to the packages above it (their
``__init__`` runs first, but counting that would put every module in one circle with the root).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import nursery_worker

ROOT = Path(nursery_worker.__file__).parent
PACKAGE = "nursery_worker"
DRIVER = f"{PACKAGE}._driver"

#: What the driver layer may import besides itself: the records that cross the seam, the errors,
#: the pure state machine and the small leaf helpers (``_dsn`` parses the DSN ``create_driver`` and
#: the PostgreSQL connection read; it imports only ``_errors``). Everything else is a feature module
#: that sits above the drivers and uses them (issue 16: "no driver imports a feature module").
DRIVER_MAY_IMPORT = frozenset(
    f"{PACKAGE}.{name}" for name in ("_models", "_errors", "_state", "_json", "_backoff", "_dsn")
)


#: The database library: imported under the driver layer only.
DATABASE_LIBRARIES = ("psycopg", "psycopg_pool")


def module_name(path: Path) -> str:
    """The dotted name of a source file (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def parse(path: Path) -> ast.Module:
    """The syntax tree of a source file (parsed once per test session)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` (bare or as ``typing.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, *, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in *tree*, at any depth; with *runtime_only*, none under ``if TYPE_CHECKING:``
    (its ``else:`` branch runs, so it is kept)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if runtime_only and isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(node: ast.Import | ast.ImportFrom, importer: str, *, is_package: bool) -> Iterator[str]:
    """The absolute dotted names an import statement names: ``from a import b`` yields ``a.b``, which is
    the module ``a.b`` if there is one and otherwise a name in ``a`` (:func:`internal_target` decides)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        # Relative: level 1 is the importer's own package (the module itself when it is a package).
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    for alias in node.names:
        yield f"{target}.{alias.name}"


def internal_target(name: str, known: dict[str, Path]) -> str | None:
    """The module of the package that *name* denotes: itself, or the nearest enclosing module."""
    while name.startswith(PACKAGE):
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(*, runtime_only: bool = True) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (at run time; with ``runtime_only=False`` also
    those it imports for type checking only)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = parse(path)
        edges = graph.setdefault(name, set())
        for node in import_nodes(tree, runtime_only=runtime_only):
            for imported in imported_names(node, name, is_package=path.name == "__init__.py"):
                target = internal_target(imported, known)
                if target is not None and target != name:
                    edges.add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
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


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest import circle through the component's first module, as a path that returns to it."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")  # a component always has one


def describe(graph: dict[str, set[str]], components: list[list[str]]) -> str:
    lines = []
    for component in components:
        cycle = " -> ".join(shortest_cycle(graph, component))
        lines.append(f"{len(component)} modules in one circle: {', '.join(component)}\n    e.g. {cycle}")
    return "\n".join(lines)


def test_the_import_graph_has_no_cycle() -> None:
    """No module of the package imports, directly or through others, a module that imports it back."""
    graph = import_graph()
    components = strongly_connected(graph)
    assert not components, "import cycles (outside TYPE_CHECKING):\n" + describe(graph, components)


def test_the_drivers_import_no_feature_module() -> None:
    """The driver layer imports only itself, the records, the errors, the state machine and the leaf helpers."""
    graph = import_graph()
    allowed = DRIVER_MAY_IMPORT
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module == DRIVER or module.startswith(DRIVER + ".")
        for target in targets
        if not (target == DRIVER or target.startswith(DRIVER + ".") or target in allowed)
    )
    assert not wrong, "the driver layer imports feature modules:\n" + "\n".join(wrong)


def test_psycopg_is_imported_only_by_the_drivers() -> None:
    """No module outside ``nursery_worker._driver`` imports psycopg, not even for type checking."""
    wrong = []
    for name, path in modules().items():
        if name == DRIVER or name.startswith(DRIVER + "."):
            continue
        tree = parse(path)
        for node in import_nodes(tree, runtime_only=False):
            for imported in imported_names(node, name, is_package=path.name == "__init__.py"):
                if imported.split(".")[0] in DATABASE_LIBRARIES:
                    wrong.append(f"{name} (line {node.lineno}) imports {imported}")
    assert not wrong, "psycopg outside the driver layer:\n" + "\n".join(sorted(set(wrong)))


def test_the_graph_sees_every_kind_of_import() -> None:
    """The graph builder follows absolute, relative and function-level imports and skips TYPE_CHECKING blocks."""
    source = """
import nursery_worker._a
from . import _b
from ._c import thing
from .. import other
if TYPE_CHECKING:
    from ._d import Hint
else:
    from ._e import Real
def later():
    from nursery_worker._f import g
"""
    names = set()
    for node in import_nodes(ast.parse(source), runtime_only=True):
        names.update(imported_names(node, "nursery_worker._driver._x", is_package=False))
    known = {name: ROOT for name in ("nursery_worker", *(f"nursery_worker._driver.{m}" for m in ("_b", "_c", "_e")))}
    known.update({"nursery_worker._a": ROOT, "nursery_worker._f": ROOT, "nursery_worker._driver": ROOT})
    targets = {internal_target(name, known) for name in names} - {None}
    assert targets == {
        "nursery_worker._a",
        "nursery_worker._driver._b",
        "nursery_worker._driver._c",
        "nursery_worker._driver._e",
        "nursery_worker._f",
        "nursery_worker",
    }
