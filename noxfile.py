"""Developer sessions: ``nox -s tests-trio tests-asyncio lint typecheck``; benchmarks: ``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests-trio", "tests-asyncio", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(name="tests-trio")
def tests_trio(session: nox.Session) -> None:
    """The suite with every async test on trio."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs, env={"NW_BACKENDS": "trio"})


@nox.session(name="tests-asyncio")
def tests_asyncio(session: nox.Session) -> None:
    """The suite with every async test on asyncio."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs, env={"NW_BACKENDS": "asyncio"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, with the ASYNC rules on."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness (docs/performance.md): ``nox -s bench -- --quick`` for a smoke run."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)
