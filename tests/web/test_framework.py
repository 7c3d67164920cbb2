"""The dashboard's framework: page discovery, the JSON twin, errors, headers and the safety checks."""

from __future__ import annotations

import httpx
import pytest

from nursery_worker import App, ConfigurationError
from nursery_worker.web import create_web_app

pytestmark = pytest.mark.anyio


async def test_overview_renders_with_security_headers(client: httpx.AsyncClient) -> None:
    """The overview answers 200 with a CSP that forbids inline script, no framing and nosniff."""
    response = await client.get("/")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_every_page_has_a_json_twin(client: httpx.AsyncClient) -> None:
    """``/api/overview`` answers the overview's data as JSON."""
    response = await client.get("/api/overview")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "counts" in response.json() and "attention" in response.json()


async def test_unknown_page_is_a_404_page_without_traceback(client: httpx.AsyncClient) -> None:
    """An unknown path answers a 404 page naming it, with no traceback."""
    response = await client.get("/no-such-page")
    assert response.status_code == 404
    assert "no such page" in response.text and "Traceback" not in response.text


async def test_unknown_api_path_is_a_json_404(client: httpx.AsyncClient) -> None:
    """An unknown ``/api`` path answers a JSON 404."""
    response = await client.get("/api/no-such-page")
    assert response.status_code == 404
    assert response.json()["status"] == 404


async def test_mounted_under_a_prefix_links_carry_it(migrated: App) -> None:
    """Mounted under ``/queue`` without the host's lifespan, the pages answer and link under the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/queue", app=create_web_app(migrated))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://host.test") as c:
        response = await c.get("/queue/")
    assert response.status_code == 200
    assert 'href="/queue/static/style.css"' in response.text


def test_writes_without_a_credential_are_refused_at_creation(migrated: App) -> None:
    """Switching writes on without a token or an authorize hook is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="credential"):
        create_web_app(migrated, read_only=False)


def test_short_token_is_refused(migrated: App) -> None:
    """A token under 8 characters is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="token"):
        create_web_app(migrated, read_only=False, token="short")
