"""A griffe extension for the API reference (mkdocs.yml loads it): docstrings as Python shows them.

- A docstring completed at import time (``open_worker`` and ``run_supervisor`` list every worker
  option from ``_config`` in place of an ``{options}`` line) is taken from the imported object, so
  the reference documents the options that exist, from their one declaration.
- An ``Example:`` section is read as griffe's ``Examples:`` (its ``>>>`` lines shown as a console
  session, not as Markdown quotes).
- Sphinx roles (``:class:`Job```, ``:meth:`defer```) are shown as code: the docstrings are read in
  editors and ``help()`` too, where the role reads better than a Markdown link.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^Example:$", re.MULTILINE)
ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj):`~?([^`]+)`")


class RuntimeDocstrings(griffe.Extension):
    """Fill ``{options}`` docstrings from the imported object, read examples, show Sphinx roles as code."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        """Rewrite *obj*'s docstring once griffe has read it."""
        if obj.docstring is None:
            return
        value = obj.docstring.value
        if "{options}" in value and isinstance(obj, griffe.Function):
            runtime = getattr(importlib.import_module(obj.module.path), obj.name)
            value = inspect.cleandoc(runtime.__doc__)
        obj.docstring.value = EXAMPLE.sub("Examples:", ROLE.sub(r"`\1`", value))
