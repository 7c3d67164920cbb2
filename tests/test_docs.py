"""The documentation site builds with warnings as errors, and holds the README, every page of docs/ and
the API reference (mkdocs.yml; scripts/mkdocs_hooks.py adds the pages whose source is elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by ``mkdocs build --strict`` into a temporary directory (once per module)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_every_docs_page_is_in_the_site(site: Path) -> None:
    """Each Markdown file under docs/ becomes a page without a hand-kept nav."""
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert pages
    for page in pages:
        built = site / page.with_suffix("") / "index.html"
        assert built.is_file(), f"docs/{page} is missing from the site"


def test_the_front_page_is_the_readme(site: Path) -> None:
    """The site's front page is rendered from README.md, its links to docs/ rewritten to site pages."""
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "Quick start" in html
    assert 'href="sqlite/"' in html
    assert 'href="docs/' not in html


def test_the_api_reference_documents_the_public_api(site: Path) -> None:
    """The reference pages render a docstring for every name in nursery_worker.__all__ and nursery_worker.testing."""
    import nursery_worker
    import nursery_worker.testing

    html = (site / "reference" / "nursery_worker" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in nursery_worker.__all__ if f'id="nursery_worker.{name}"' not in html]
    assert not missing, f"not in the API reference: {missing}"
    testing = (site / "reference" / "testing" / "index.html").read_text(encoding="utf-8")
    public = [name for name in dir(nursery_worker.testing) if not name.startswith("_")]
    names = getattr(nursery_worker.testing, "__all__", public)
    assert any(f'id="nursery_worker.testing.{name}"' in testing for name in names)
