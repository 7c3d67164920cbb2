"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages that have their source outside ``docs/``.

- ``index.md`` is README.md and ``changelog.md`` is CHANGELOG.md, read at build time, so the README
  stays the one front page and the changelog has one source.
- ``reference/*.md`` is the API reference: one page per public module, rendered by mkdocstrings
  from the docstrings.
- Relative links are written for GitHub (``docs/sqlite.md`` from the README, ``../tests/x.py``
  from a docs page); each is resolved against its source file in the repository: a page of the site
  becomes a link to that page, a file that is not in the site (a test, an example) becomes its
  repository path in code, and a target that does not exist is a warning (an error under
  ``--strict``).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.plugins.nursery_worker")

ROOT = Path(__file__).resolve().parent.parent

#: Pages whose source is a file at the repository's root: site path -> repository path.
ROOT_PAGES = {"index.md": "README.md", "changelog.md": "CHANGELOG.md"}

#: The API reference: site path -> (title, module) rendered by mkdocstrings.
REFERENCE_PAGES = {
    "reference/nursery_worker.md": ("API reference: nursery_worker", "nursery_worker"),
    "reference/testing.md": ("API reference: nursery_worker.testing", "nursery_worker.testing"),
}

LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the front page, the changelog and the API reference to the site's files."""
    for site_path, repo_path in ROOT_PAGES.items():
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / repo_path)))
    for site_path, (title, module) in REFERENCE_PAGES.items():
        files.append(File.generated(config, site_path, content=f"# {title}\n\n::: {module}\n"))
    return files


def repository_path(page: Page, config: MkDocsConfig) -> str:
    """Where the page's markdown lives in the repository, as a POSIX path from the root."""
    src = page.file.src_uri
    if src in ROOT_PAGES:
        return ROOT_PAGES[src]
    docs_dir = Path(config.docs_dir).resolve().relative_to(ROOT).as_posix()
    return posixpath.join(docs_dir, src)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any) -> str:
    """Rewrite the page's relative links from repository paths to site paths (fenced code is left alone)."""
    if page.file.src_uri in REFERENCE_PAGES:
        return markdown
    source = repository_path(page, config)
    docs_dir = Path(config.docs_dir).resolve().relative_to(ROOT).as_posix()
    site_of = {repo: site for site, repo in ROOT_PAGES.items()}

    def rewrite(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, fragment = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        anchor = f"#{fragment}" if fragment else ""
        if resolved.startswith("../") or not (ROOT / resolved).exists():
            log.warning("%s: the link %r points to %s, which does not exist", source, target, resolved)
            return match.group(0)
        if resolved in site_of:
            site_path = site_of[resolved]
        elif resolved.startswith(docs_dir + "/") and resolved.endswith(".md"):
            site_path = resolved[len(docs_dir) + 1 :]
        else:
            # A file of the repository that is not a page of the site: name it, in code.
            label = text if Path(resolved).name in text else f"{text} (`{resolved}`)"
            return label if not bang else f"`{resolved}`"
        relative = posixpath.relpath(site_path, posixpath.dirname(page.file.src_uri) or ".")
        return f"{bang}[{text}]({relative}{anchor})"

    out: list[str] = []
    in_fence = False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            in_fence = not in_fence
        out.append(line if in_fence else LINK.sub(rewrite, line))
    return "".join(out)
