"""The package is release-ready: ``python -m build`` makes a wheel and an sdist that ``twine check`` passes,
the wheel holds the migrations and ``py.typed``, and installed into a fresh virtual environment (its
dependencies from the index, no psycopg) it runs the README's quick start as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import nursery_worker

pytest.importorskip("build", reason="the dev extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "nursery_worker"
pytestmark = pytest.mark.slow


def sh(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the wheel and the sdist that ``python -m build`` makes (once per module)."""
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


def wheel_of(dist: Path) -> Path:
    """The one wheel in *dist*."""
    (wheel,) = dist.glob("*.whl")
    return wheel


def test_twine_check_passes(dist: Path) -> None:
    """``twine check --strict`` accepts the wheel and the sdist (metadata and the README renders)."""
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"]
    sh(sys.executable, "-m", "twine", "check", "--strict", *files)


def test_the_wheel_holds_the_migrations_py_typed_and_the_license(dist: Path) -> None:
    """The wheel has every migration file of both engines, ``py.typed``, the LICENSE and the package's version."""
    wheel = wheel_of(dist)
    assert wheel.name == f"nursery_worker-{nursery_worker.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {f"nursery_worker/{p.relative_to(SOURCE).as_posix()}" for p in SOURCE.rglob("*.sql")}
    assert len(migrations) >= 2
    assert migrations <= names
    assert "nursery_worker/py.typed" in names
    assert f"nursery_worker-{nursery_worker.__version__}.dist-info/licenses/LICENSE" in names


def quick_start() -> tuple[str, list[str]]:
    """The README's quick start: the ``tasks.py`` it shows and its shell commands (without the ``$ ``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(# tasks\.py\n.*?)```", section, re.DOTALL)
    console = re.search(r"```console\n(.*?)```", section, re.DOTALL)
    assert code and console, "the README's quick start has no tasks.py or no commands"
    commands = [line[2:].split("  #", 1)[0].strip() for line in console.group(1).splitlines() if line.startswith("$ ")]
    return code.group(1), commands


def test_the_wheel_in_a_fresh_venv_runs_the_quick_start(dist: Path, tmp_path: Path) -> None:
    """The built wheel installed into a new venv (dependencies from the index) runs the README's quick start."""
    tasks, commands = quick_start()
    install, defer, run = commands
    assert install.startswith("pip install ")
    assert run.startswith("nursery-worker run ")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURSERY_WORKER_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    sh(bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel_of(dist), env=env)
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text(tasks, encoding="utf-8")
    no_psycopg = subprocess.run(
        [bin_dir / "python", "-c", "import psycopg"], env=env, capture_output=True, text=True, check=False
    )
    assert no_psycopg.returncode != 0, "psycopg was installed without the postgres extra"
    outputs = []
    for command in (defer, run):
        argv = shlex.split(command)
        argv[0] = str(bin_dir / argv[0])  # python, nursery-worker: the venv's
        if argv[1] == "run":
            argv.append("--once")  # the README's worker runs until Ctrl-C
        outputs.append(sh(*argv, cwd=project, env=env).stdout)
    assert outputs[0].strip() == "1"
    assert "welcome, user 42!" in outputs[1]
