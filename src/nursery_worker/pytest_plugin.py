"""nursery-worker's pytest plugin: fixtures for testing code that enqueues and runs jobs.

Installed with the package and registered through the ``pytest11`` entry point, so pytest loads it
by itself (``-p no:nursery_worker`` turns it off). It imports nothing but pytest until a test asks
for one of its fixtures, and changes nothing for tests that do not.

Fixtures:

* ``nursery_worker_app``: the :class:`~nursery_worker.App` under test. Name it once, in
  ``pytest.ini``/``pyproject.toml`` (``nursery_worker_app = "myapp.tasks:app"``), or override the
  fixture in a ``conftest.py``.
* ``nursery_worker_dsn``: where the isolated databases go: ``--nursery-worker-dsn``, else
  ``$NURSERY_WORKER_TEST_DSN``, else None (a SQLite file per test). A PostgreSQL DSN gives each
  test a throwaway schema of that database.
* ``nursery_worker_jobs``: the app on a fresh, migrated database for one test (removed after), as a
  :class:`~nursery_worker.testing.JobsUnderTest`: ``.app``, ``await .drain()``,
  ``await .enqueued(...)``, ``await .assert_enqueued(task, **args)``,
  ``await .assert_nothing_enqueued()``.

Example::

    # pyproject.toml: [tool.pytest.ini_options] nursery_worker_app = "myapp.tasks:app"
    import pytest
    from myapp.tasks import send_welcome

    @pytest.mark.anyio
    async def test_welcome_is_sent(nursery_worker_jobs):
        await send_welcome.defer(user_id=7)
        result = await nursery_worker_jobs.drain()
        assert [job.task for job in result.completed] == [send_welcome.name]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from nursery_worker import App
    from nursery_worker.testing import JobsUnderTest

#: The environment variable that gives the DSN when the command line does not.
DSN_ENV_VAR = "NURSERY_WORKER_TEST_DSN"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare ``--nursery-worker-dsn`` and the ``nursery_worker_app`` ini option."""
    group = parser.getgroup("nursery-worker")
    group.addoption(
        "--nursery-worker-dsn",
        dest="nursery_worker_dsn",
        default=None,
        metavar="DSN",
        help=(
            "where nursery_worker_jobs isolates each test: a PostgreSQL DSN (a throwaway schema per test) "
            f"or 'sqlite' (a file per test; the default). Default: ${DSN_ENV_VAR}, else sqlite."
        ),
    )
    parser.addini(
        "nursery_worker_app",
        "the nursery-worker App under test, as 'package.module:attribute' (or override the nursery_worker_app fixture)",
        default=None,
    )


@pytest.fixture(scope="session")
def nursery_worker_dsn(pytestconfig: pytest.Config) -> str | None:
    """Where each test's isolated database goes: a PostgreSQL DSN, or None for a SQLite file per test."""
    value = pytestconfig.getoption("nursery_worker_dsn") or os.environ.get(DSN_ENV_VAR) or None
    return None if value == "sqlite" else value


@pytest.fixture(scope="session")
def nursery_worker_app(pytestconfig: pytest.Config) -> App:
    """The App under test, from the ``nursery_worker_app`` ini option; override this fixture to choose it in code."""
    path = pytestconfig.getini("nursery_worker_app")
    if not path:
        raise pytest.UsageError(
            "nursery_worker_jobs needs your App: set nursery_worker_app = 'package.module:app' in the pytest "
            "configuration ([tool.pytest.ini_options] in pyproject.toml), or define a nursery_worker_app fixture "
            "that returns it in conftest.py"
        )
    from nursery_worker._process import import_app

    return import_app(str(path), label="nursery_worker_app")


@pytest.fixture
def nursery_worker_jobs(
    nursery_worker_app: App, nursery_worker_dsn: str | None, tmp_path: Path
) -> Iterator[JobsUnderTest]:
    """The app on a fresh, migrated database for this test (a throwaway schema or SQLite file), removed after."""
    from nursery_worker.testing import JobsUnderTest, isolated_database

    with isolated_database(nursery_worker_app, dsn=nursery_worker_dsn, directory=tmp_path) as app:
        yield JobsUnderTest(app)
