"""The dashboard's pages: one module per page, each defining ``PAGE = Page(...)`` (see ``web``'s
docstring). Modules whose name starts with ``_`` are helpers shared by pages, not pages."""
