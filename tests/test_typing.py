"""The typing suite: tests/typing passes mypy and basedpyright, and a planted wrong argument fails both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "typing"
EXAMPLE = ROOT / "examples" / "typed_tasks.py"
PYRIGHT_CONFIG = CASES / "pyrightconfig.json"
pytestmark = pytest.mark.slow

PLANTED = """\
from nursery_worker import App

app = App(dsn="sqlite:///planted.db")


@app.task
async def add(a: int, b: int = 0) -> int:
    return a + b


async def main() -> None:
    await add.defer(a="one")
"""
#: The line of the wrong argument in PLANTED (1-based).
PLANTED_LINE = 12


def mypy(*paths: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores", "--cache-dir", str(cache)]
    return subprocess.run(
        [*command, *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def pyright(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "basedpyright", "-p", str(PYRIGHT_CONFIG), "--pythonpath", sys.executable]
    return subprocess.run(
        [*command, *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_typing_cases_pass_mypy(tmp_path: Path) -> None:
    """mypy (strict, unused ignores are errors) accepts tests/typing and the example, expected errors included."""
    result = mypy(CASES, EXAMPLE, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_typing_cases_pass_pyright() -> None:
    """basedpyright (unnecessary ignores are errors) accepts tests/typing and the example, expected errors included."""
    result = pyright(CASES, EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout


def test_mypy_refuses_a_wrong_argument(tmp_path: Path) -> None:
    """mypy reports a str passed to an int parameter of a task's defer, on that line."""
    planted = tmp_path / "planted.py"
    planted.write_text(PLANTED)
    result = mypy(planted, cache=tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"planted.py:{PLANTED_LINE}: error:" in result.stdout, result.stdout


def test_pyright_refuses_a_wrong_argument(tmp_path: Path) -> None:
    """basedpyright reports a str passed to an int parameter of a task's defer, on that line."""
    planted = tmp_path / "planted.py"
    planted.write_text(PLANTED)
    result = pyright(planted)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"planted.py:{PLANTED_LINE}:" in result.stdout, result.stdout
