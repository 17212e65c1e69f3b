"""The detached container's supervisor entry point (shim.py): how Runtime.start execs it."""

from __future__ import annotations

import subprocess
import sys

from fastdist import shim


def test_the_supervisor_runs_as_python_m_fastdist_shim_and_refuses_bad_arguments() -> None:
    # Runtime.start execs ``python -m fastdist.shim supervise ROOT RUNC ID FD``: the module must
    # be runnable as such (from the source tree and from a wheel alike).
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist.shim", "nonsense"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "usage: python -m fastdist.shim supervise" in proc.stderr


def test_main_refuses_a_wrong_argument_count() -> None:
    assert shim._main(["supervise", "/nonexistent"]) == 2
