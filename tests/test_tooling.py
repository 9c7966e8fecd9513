"""The code passes ruff (lint + format) and mypy as configured in pyproject.toml (strict for storage/ and tasks/).

Part of the README's test command, so CI runs them; the versions are pinned in the `dev` extra.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args", [("ruff", "check", "."), ("ruff", "format", "--check", ".")], ids=["lint", "format"])
def test_ruff(args):
    done = _run(*args)
    assert done.returncode == 0, (
        f"`{' '.join(args)}` found problems (fix with `ruff check --fix .` / `ruff format .`):\n"
        + done.stdout[-4000:]
        + done.stderr[-2000:]
    )


@pytest.mark.slow
def test_mypy():
    done = _run("mypy")
    assert done.returncode == 0, "mypy found type errors:\n" + done.stdout[-4000:] + done.stderr[-2000:]
