"""Through the real CLI (issue 14): ``tag``, ``save -o -`` piped into ``load`` on a fresh store,
and ``run`` of the loaded image under runc; bad input to save/load is ``error:``/``hint:``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

pytestmark = pytest.mark.registry


def _argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fastdist", "--root", str(root), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FASTDIST_ROOT", None)
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo / "python"), env.get("PYTHONPATH", "")) if p
    )
    return env


@pytest.mark.runc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_saved_to_stdout_loaded_from_stdin_the_image_runs(
    fastdist: FastdistCLI, busybox: PushedImage, tmp_path: Path
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    r = fastdist("tag", busybox.ref, "example.test/moved:v2")
    assert r.rc == 0, r.stderr
    fresh = tmp_path / "fresh"
    save = subprocess.Popen(
        _argv(fastdist.root, "save", "-o", "-", "example.test/moved:v2"),
        stdout=subprocess.PIPE,
        env=_env(),
    )
    load = subprocess.run(
        _argv(fresh, "load"),
        stdin=save.stdout,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
        check=False,
    )
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(timeout=180) == 0
    assert load.returncode == 0, load.stderr
    assert load.stdout.strip() == f"loaded example.test/moved:v2: {busybox.digest}"
    run = subprocess.run(
        _argv(fresh, "run", "--rm", "example.test/moved:v2", "cat", "/srv/motd"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from the app layer\n"


def test_load_of_a_file_that_is_no_archive_is_an_error_with_a_hint(
    fastdist: FastdistCLI, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    r = fastdist("load", "-i", str(junk))
    assert r.rc != 0
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: archive:"), r.stderr
    assert lines[1].startswith("hint: ")
    assert len(lines) == 2


def test_save_of_a_missing_image_is_an_error_and_writes_nothing(
    fastdist: FastdistCLI, tmp_path: Path
) -> None:
    out = tmp_path / "out.tar"
    r = fastdist("save", "-o", str(out), "example.test/absent:1")
    assert r.rc == 7
    assert r.stderr.startswith("error: ")
    assert not out.exists()
    assert os.listdir(tmp_path) == ["store"]


def test_push_prints_what_it_did_and_the_pushed_image_pulls_back(
    fastdist: FastdistCLI, busybox: PushedImage, registry: object
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    dest = f"{registry.host}/e2e/pushed-copy:v1"  # type: ignore[attr-defined]
    r = fastdist("push", busybox.ref, dest)
    assert r.rc == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        f"{dest}: {busybox.digest} (0 uploaded, {len(busybox.image.layers) + 1} mounted, "
        "0 already there)"
    )
    assert fastdist("rmi", busybox.ref).rc == 0
    assert fastdist("pull", "-q", dest).stdout.strip() == busybox.digest
