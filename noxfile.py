"""Developer sessions: ``nox -s tests-trio tests-asyncio lint typecheck``; benchmarks: ``nox -s bench``;
one Python: ``nox -s tests-3.13`` (every supported version found here: ``nox -s tests``); docs: ``nox -s docs``."""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["tests-trio", "tests-asyncio", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

#: The Python versions nursery-worker supports (the classifiers in pyproject.toml).
PYTHONS = ["3.11", "3.12", "3.13", "3.14"]

# pyenv installs that its shims do not expose (``pyenv global`` names one version) are found too:
# a ``python3.X`` link to each goes into a directory put first on PATH.
_links = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".nox", "pythons")
for _version in PYTHONS:
    for _found in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{_version}.*/bin/python{_version}")))[-1:]:
        os.makedirs(_links, exist_ok=True)
        _link = os.path.join(_links, f"python{_version}")
        if os.path.realpath(_link) != os.path.realpath(_found):
            if os.path.lexists(_link):
                os.remove(_link)
            os.symlink(_found, _link)
if os.path.isdir(_links):
    os.environ["PATH"] = os.pathsep.join([_links, os.environ.get("PATH", "")])


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The suite (both backends) on one supported Python; a version not installed here is skipped."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built strictly (warnings are errors) into ``site/``."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


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
