"""The pytest plugin, run as a user's suite would run it (pytester), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .conftest import TEST_DSN

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def readme_testing_sample() -> str:
    """The first python block of the README's "Testing your tasks" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Testing your tasks") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's testing section has no python sample"
    return match.group(1)


#: Appended to the README's sample: a sync test that says which database its app is on.
ENGINE_PROBE = """

def test_engine_probe(nursery_worker_jobs):
    app = nursery_worker_jobs.app
    print(f"ENGINE {type(app.driver).__module__} {app.schema}")
"""


def assert_all_passed(result: pytest.RunResult, tests: int) -> None:
    """At least *tests* passed (async ones once per anyio backend the user's suite runs on), and nothing else ran."""
    outcomes = result.parseoutcomes()
    assert set(outcomes) <= {"passed", "warnings"}, result.stdout.str()
    assert outcomes["passed"] >= tests, result.stdout.str()


def schemas(prefix: str) -> set[str]:
    with psycopg.connect(TEST_DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [prefix + "%"]).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project with no DSN in the environment (the plugin's default: SQLite)."""
    monkeypatch.delenv("NURSERY_WORKER_TEST_DSN", raising=False)
    monkeypatch.delenv("NURSERY_WORKER_DSN", raising=False)
    monkeypatch.chdir(pytester.path)
    return pytester


def test_readme_testing_sample_passes_on_sqlite(user_suite: pytest.Pytester) -> None:
    """The README's testing sample, as a user's test file, passes with each test on its own SQLite file."""
    user_suite.makepyfile(test_readme=readme_testing_sample() + ENGINE_PROBE)
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-s")
    assert_all_passed(result, 3)
    result.stdout.re_match_lines([r".*ENGINE nursery_worker\._driver\.sqlite\S* nw_test_[0-9a-f]{16}"])
    assert not (user_suite.path / "nursery-worker.sqlite3").exists()


def test_readme_testing_sample_passes_on_a_throwaway_postgresql_schema(user_suite: pytest.Pytester) -> None:
    """With --nursery-worker-dsn, the sample passes on a PostgreSQL schema that is dropped after."""
    user_suite.makepyfile(test_readme=readme_testing_sample() + ENGINE_PROBE)
    options = ("-p", "no:cacheprovider", "-p", "no:xdist", "-s", f"--nursery-worker-dsn={TEST_DSN}")
    result = user_suite.runpytest_subprocess(*options)
    assert_all_passed(result, 3)
    result.stdout.re_match_lines([r".*ENGINE nursery_worker\._driver\.postgres\S* nw_test_[0-9a-f]{16}"])
    probed = re.search(r"ENGINE \S+ (nw_test_[0-9a-f]{16})", result.stdout.str())
    assert probed is not None
    assert probed.group(1) not in schemas("nw_test_")  # dropped after its test (other tests' are theirs)


MYAPP = """
from nursery_worker import App

app = App()

@app.task
def greet(name: str) -> str:
    return f"hello {name}"
"""


def test_app_named_in_the_ini_option_is_isolated_per_test(user_suite: pytest.Pytester) -> None:
    """`nursery_worker_app = "myapp:app"` in the configuration names the app; a sync test enqueues into it."""
    user_suite.makepyfile(myapp=MYAPP)
    user_suite.makeini("[pytest]\nnursery_worker_app = myapp:app\n")
    user_suite.makepyfile(
        test_greet="""
import pytest
from myapp import greet

def test_sync_enqueue(nursery_worker_jobs):
    job = greet.defer_sync(name="ada")
    assert nursery_worker_jobs.app.schema.startswith("nw_test_")
    assert job.args == {"name": "ada"}

@pytest.mark.anyio
async def test_each_test_starts_empty(nursery_worker_jobs):
    await nursery_worker_jobs.assert_nothing_enqueued()
"""
    )
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly")
    assert_all_passed(result, 2)


def test_missing_app_is_a_usage_error_naming_the_fix(user_suite: pytest.Pytester) -> None:
    """With no app configured, the fixture fails with a message naming the ini option and the fixture."""
    user_suite.makepyfile(test_x="def test_x(nursery_worker_jobs):\n    pass\n")
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*nursery_worker_app = 'package.module:app'*nursery_worker_app fixture*"])


def test_assert_enqueued_lists_what_was_enqueued_when_it_fails(user_suite: pytest.Pytester) -> None:
    """assert_enqueued with other arguments fails with the jobs that were enqueued in its message."""
    user_suite.makepyfile(myapp=MYAPP)
    user_suite.makeini("[pytest]\nnursery_worker_app = myapp:app\n")
    user_suite.makepyfile(
        test_greet="""
import pytest
from myapp import greet

@pytest.mark.anyio
async def test_wrong_args(nursery_worker_jobs):
    await greet.defer(name="ada")
    await nursery_worker_jobs.assert_enqueued(greet, name="bob")
"""
    )
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    assert result.parseoutcomes().get("failed", 0) >= 1
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: no job myapp.greet(name='bob') was enqueued; "
            "enqueued: [[]('myapp.greet', {'name': 'ada'})[]]*"
        ]
    )


def test_loading_the_plugin_imports_neither_the_testing_helpers_nor_psycopg() -> None:
    """Importing the plugin (which pytest does in every run) leaves the testing module and psycopg unloaded."""
    code = (
        "import sys, nursery_worker.pytest_plugin\n"
        "print(sorted(m for m in ('nursery_worker.testing', 'psycopg', 'psycopg_pool') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
