"""The fastdist CLI as a separate process, the way every e2e and integration test starts it.

A module of its own (not a conftest): tests import it by name, and pytest keeps only the conftest
it loaded last under the name ``conftest``, so ``from conftest import …`` inside a test body
could pick another directory's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT = 180  # a hung CLI fails its test instead of hanging the suite


def cli_argv(root: Path, *args: str) -> list[str]:
    """``python -m fastdist --root ROOT ARGS…`` with this interpreter."""
    return [sys.executable, "-m", "fastdist", "--root", str(root), *args]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout's package first and no FASTDIST_ROOT, plus ``extra``."""
    env = dict(os.environ)
    env.pop("FASTDIST_ROOT", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "python"), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def run_cli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end (output captured as text)."""
    return subprocess.run(
        cli_argv(root, *args), env=cli_env(**env), capture_output=True, text=True, timeout=300
    )
