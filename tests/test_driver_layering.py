"""The driver layer sits below the domain: it imports records, errors and pure helpers, never a feature module."""

from __future__ import annotations

import ast
from pathlib import Path

import nursery_worker

PACKAGE = Path(nursery_worker.__file__).parent
#: What a module under ``_driver/`` may import from the package, besides ``_driver`` itself.
ALLOWED = {"_models", "_errors", "_state", "_json", "_dsn"}


def _runtime_imports(path: Path) -> set[str]:
    """The ``nursery_worker`` modules *path* imports outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = ".".join(parts[:-1])  # the package a relative import of this module starts from
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "nursery_worker"}


def test_no_driver_module_imports_a_feature_module() -> None:
    """Every module under _driver/ imports only _models, _errors, _state, _json, _dsn and _driver itself."""
    offenders = {}
    for path in sorted((PACKAGE / "_driver").rglob("*.py")):
        outside = {
            name
            for name in _runtime_imports(path)
            if not name.startswith("nursery_worker._driver") and name.split(".")[1] not in ALLOWED
        }
        if outside:
            offenders[str(path.relative_to(PACKAGE))] = sorted(outside)
    assert offenders == {}
