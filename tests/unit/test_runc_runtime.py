"""The runc runtime's preconditions, bundles and signal names (runc.py), without runc."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from fastdist.errors import (
    ContainerNotFoundError,
    ContainerRunError,
    InUseError,
    InvalidRunOptionError,
)
from fastdist.runc import Runtime, parse_signal
from fastdist.store import write_file_atomic


# --- Runtime preconditions ------------------------------------------------------------------
def test_missing_runc_is_a_clear_error_with_an_install_hint(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "store", runc="fastdist-no-such-runc")
    rt.prepare("c1")
    with pytest.raises(ContainerRunError, match="runc not found") as exc:
        rt.state("c1")
    assert exc.value.hint is not None
    assert "apt-get install runc" in exc.value.hint


def test_not_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(tmp_path / "store", runc=sys.executable)  # any existing binary
    rt.prepare("c1")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ContainerRunError, match="root") as exc:
        rt.kill("c1")
    assert exc.value.hint is not None
    assert "sudo" in exc.value.hint


def test_prepare_makes_private_bundle_and_refuses_a_taken_id(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "store")
    bundle = rt.prepare("web")
    assert bundle == rt.containers_dir / "web"
    assert rt.rootfs_dir("web").is_dir()
    assert os.stat(bundle).st_mode & 0o777 == 0o700
    assert os.stat(rt.root).st_mode & 0o777 == 0o700
    with pytest.raises(InUseError, match="already in use"):
        rt.prepare("web")
    with pytest.raises(InvalidRunOptionError):
        rt.prepare("../escape")
    assert rt.ids() == ["web"]


def test_unknown_container_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ContainerNotFoundError):
        Runtime(tmp_path / "store").state("nope")


def test_signals_are_checked_before_runc_sees_them() -> None:
    assert parse_signal("kill") == "KILL"
    assert parse_signal("SIGTERM") == "TERM"
    assert parse_signal(9) == "9"
    assert parse_signal("15") == "15"
    for bad in ("BOGUS", "SIGBOGUS", "0", "999", "", "-1"):
        with pytest.raises(InvalidRunOptionError, match="unknown signal"):
            parse_signal(bad)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="remove asks runc (as root)"
)
def test_remove_takes_an_interrupted_atomic_writes_temp_file_and_stale_exec_files(
    tmp_path: Path,
) -> None:
    # Bundle files are written with store.write_file_atomic: a write killed before its rename
    # leaves ``.<name>.<random>.tmp``, which remove must take (else the bundle stays behind).
    rt = Runtime(tmp_path / "store")
    b = rt.prepare("c1")
    write_file_atomic(b / "exit", b"0\n")
    (b / f".exit.{'ab' * 6}.tmp").write_bytes(b"0")
    (b / "exec-1234.json").write_bytes(b"{}")
    rt.remove("c1")
    assert not b.exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None, reason="remove asks runc (as root)"
)
def test_remove_leaves_a_bundle_with_files_fastdist_did_not_write(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "store")
    b = rt.prepare("c1")
    (b / ".planted.tmp").write_bytes(b"x")
    with pytest.raises(ContainerRunError, match="cannot remove") as exc:
        rt.remove("c1")
    assert exc.value.hint is not None
    assert "did not write" in exc.value.hint
    assert (b / ".planted.tmp").exists()
