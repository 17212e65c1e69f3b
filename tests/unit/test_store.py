"""store.py: the store root is trusted only as sshd's StrictModes would (owner, modes of it and of
every parent), is never chmod-ed when it exists, and nothing inside it is trusted via a symlink.

The local attacker is a second uid (65534) acting through ``setpriv``, as in issue 11."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastdist.client import Client
from fastdist.errors import StoreError
from fastdist.oci import sha256_digest
from fastdist.snapshots import NativeSnapshotter, OverlaySnapshotter
from fastdist.store import SyncGroup, ensure_root, open_beneath, syncfs

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second uid needs root (setpriv)")


def as_nobody(*argv: str) -> None:
    """Run ``argv`` as uid/gid 65534 with no supplementary groups (the local attacker)."""
    cmd = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory like /tmp (root-owned, world-writable, sticky) the attacker can reach."""
    d = Path(tempfile.mkdtemp(prefix="fastdist-shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@needs_root
def test_a_root_another_user_created_first_is_refused(shared: Path) -> None:
    # Issue 11.1: the attacker makes FASTDIST_ROOT first and plants a layer whose fs is a host dir.
    root = shared / "fastdist"
    secret = shared / "root-only"
    secret.mkdir(mode=0o700)
    hex_ = sha256_digest(b"planted")[7:]
    layer = root / "snapshots" / "native" / "layers" / hex_
    as_nobody("mkdir", "-p", "-m", "0700", str(layer))
    as_nobody("ln", "-s", str(secret), str(layer / "fs"))
    as_nobody("sh", "-c", f"echo '{json.dumps({'parent': None})}' > {layer}/info.json")
    with pytest.raises(StoreError, match="owned by uid 65534") as e:
        Client(root)
    assert e.value.hint
    assert os.listdir(secret) == []
    assert os.lstat(root).st_uid == NOBODY  # refused, not taken over or chmod-ed


@needs_root
def test_a_parent_another_user_owns_is_refused_before_anything_is_created(shared: Path) -> None:
    evil = shared / "evil"
    as_nobody("mkdir", "-m", "0755", str(evil))
    with pytest.raises(StoreError, match=f"{evil} is owned by uid 65534"):
        Client(evil / "store")
    assert os.listdir(evil) == []


def test_a_parent_writable_by_others_without_sticky_bit_is_refused(shared: Path) -> None:
    open_dir = shared / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(StoreError, match="writable by group or others"):
        ensure_root(open_dir / "store")
    assert os.listdir(open_dir) == []


def test_a_new_root_below_a_sticky_shared_dir_is_created_private(shared: Path) -> None:
    root = ensure_root(shared / "a" / "store")
    assert _mode(shared / "a") == 0o700
    assert _mode(root) == 0o700
    assert ensure_root(root) == root  # an existing good root is accepted as it is


def test_an_existing_root_with_a_loose_mode_is_refused_and_left_alone(shared: Path) -> None:
    # As `--root /etc`: never chmod an existing directory, refuse it.
    etc = shared / "etc"
    etc.mkdir()
    os.chmod(etc, 0o755)
    link = shared / "etc-link"
    link.symlink_to(etc)
    for root in (etc, link):
        with pytest.raises(StoreError, match="mode 0755") as e:
            Client(root)
        assert "chmod 700" in (e.value.hint or "")
    assert _mode(etc) == 0o755
    assert os.listdir(etc) == []


def test_a_root_that_is_a_file_is_a_store_error(shared: Path) -> None:
    f = shared / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        ensure_root(f)
    with pytest.raises(StoreError, match="cannot create store directory"):
        ensure_root(f / "sub")


def test_a_symlinked_store_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    NativeSnapshotter(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(root / "snapshots")
    (root / "snapshots").symlink_to(elsewhere)
    with pytest.raises(StoreError, match="symlink"):
        NativeSnapshotter(root)
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("cls", [NativeSnapshotter, OverlaySnapshotter])
def test_a_planted_layer_fs_symlink_is_never_copied_or_mounted(
    tmp_path: Path, cls: type[NativeSnapshotter] | type[OverlaySnapshotter]
) -> None:
    root = tmp_path / "store"
    snap = cls(root)
    c = sha256_digest(b"layer")
    s = snap.prepare_layer(c, None)
    if not s.path.exists():
        s.path.mkdir()
    (s.path / "f").write_bytes(b"x")
    snap.commit(s)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "host-file").write_bytes(b"host")
    shutil.rmtree(snap.fs_path(c))
    snap.fs_path(c).symlink_to(secret)
    with pytest.raises(StoreError, match="symlink"):
        snap.trusted_fs_path(c)
    if isinstance(snap, OverlaySnapshotter):
        active = snap.prepare_active("ctr", c)
        with pytest.raises(StoreError, match="symlink"):
            snap.mount_options(active)  # the lowerdir list is where the planted fs would go
    else:
        with pytest.raises(StoreError, match="symlink"):
            snap.prepare_active("ctr", c)  # a copy of the parent's fs
    assert sorted(os.listdir(secret)) == ["host-file"]


def test_open_beneath_follows_no_symlink_and_never_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"ok")
    (tmp_path / "l").symlink_to("d")
    fd = open_beneath(tmp_path, "d/f")
    try:
        assert os.read(fd, 2) == b"ok"
    finally:
        os.close(fd)
    with pytest.raises(StoreError, match="symlink"):
        open_beneath(tmp_path, "l/f")
    with pytest.raises(StoreError, match="leaves the store"):
        open_beneath(tmp_path, "d/../d/f")


def test_a_planted_containers_symlink_is_refused_before_a_bundle_is_made(tmp_path: Path) -> None:
    from fastdist.runc import Runtime

    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "containers").symlink_to(elsewhere)
    with pytest.raises(StoreError, match="symlink"):
        Runtime(root).prepare("c1")  # its rootfs would be a mount target outside the store
    assert os.listdir(elsewhere) == []


def test_a_planted_blob_symlink_is_never_read(tmp_path: Path) -> None:
    from fastdist.content import ContentStore

    store = ContentStore(tmp_path / "store")
    host = tmp_path / "host-secret"
    host.write_bytes(b"{}")
    digest = sha256_digest(b"{}")
    store.blob_path(digest).symlink_to(host)  # it even hashes right
    with pytest.raises(StoreError, match="symlink"):
        store.read_bytes(digest, 1024)
    with pytest.raises(StoreError, match="symlink"):
        store.path(digest)  # what the layer applier would be handed


def test_ensure_dir_makes_again_a_directory_removed_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An ingest directory is removed by the pull that committed its blob while another one makes
    # it for its own ingest (tests/integration/test_concurrency.py hit this): make it again.
    from fastdist import store

    real = store._make_dirs
    calls: list[Path] = []

    def removed_once(path: Path) -> os.stat_result:
        calls.append(path)
        if len(calls) == 1:
            real(path)
            path.rmdir()  # the other pull's cleanup, between mkdir and lstat
            return os.lstat(path)  # FileNotFoundError, as it happens
        return real(path)

    monkeypatch.setattr(store, "_make_dirs", removed_once)
    target = tmp_path / "ingest" / "abc"
    assert store.ensure_dir(target) == target
    assert target.is_dir()
    assert len(calls) == 2


def test_ensure_dir_makes_again_a_directory_removed_after_mkdir_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mkdir says "exists", and the other pull removes it before we look: make it again.
    from fastdist import store

    target = tmp_path / "ingest" / "abc"
    target.parent.mkdir()
    real_mkdir = os.mkdir
    raced: list[bool] = []

    def exists_then_gone(path: object, mode: int = 0o777, **kw: object) -> None:
        if Path(str(path)) == target and not raced:
            raced.append(True)
            real_mkdir(target, mode)
            target.rmdir()
            raise FileExistsError(17, "File exists", str(path))
        real_mkdir(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(store.os, "mkdir", exists_then_gone)
    assert store.ensure_dir(target) == target
    assert target.is_dir()
    assert raced == [True]


# --- group commit of syncfs ----------------------------------------------------------------------
class _BlockingSync:
    """A ``SyncGroup`` sync function that blocks each generation until the test releases it."""

    def __init__(self, fail_first: bool = False) -> None:
        self.started: list[threading.Event] = [threading.Event() for _ in range(4)]
        self.release: list[threading.Event] = [threading.Event() for _ in range(4)]
        self.calls = 0
        self.fail_first = fail_first

    def __call__(self, path: Path) -> None:
        gen = self.calls
        self.calls += 1
        self.started[gen].set()
        assert self.release[gen].wait(30)
        if gen == 0 and self.fail_first:
            raise StoreError(f"cannot sync {path}: Input/output error")


def _arrived(group: SyncGroup, n: int) -> None:
    with group._cond:
        assert group._cond.wait_for(lambda: group.waiting == n, timeout=30)


def _start(group: SyncGroup, path: Path, errors: list[StoreError]) -> threading.Thread:
    def run() -> None:
        try:
            group.sync(path)
        except StoreError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_callers_arriving_during_a_sync_wait_for_one_shared_sync_that_starts_after_them(
    tmp_path: Path,
) -> None:
    fn = _BlockingSync()
    group = SyncGroup(fn)
    errors: list[StoreError] = []
    first = _start(group, tmp_path, errors)
    assert fn.started[0].wait(30)
    # Three more layers finish while the first sync runs: it may have begun before their
    # writes, so it must not count for them.
    late = [_start(group, tmp_path, errors) for _ in range(3)]
    _arrived(group, 4)
    fn.release[0].set()
    first.join(30)
    assert not first.is_alive()
    assert fn.started[1].wait(30)  # one new sync for all three ...
    assert all(t.is_alive() for t in late)  # ... and none returned before it finished
    fn.release[1].set()
    for t in late:
        t.join(30)
        assert not t.is_alive()
    assert errors == []
    assert fn.calls == 2
    assert group.started == group.finished == 2


def test_a_failed_sync_fails_every_caller_that_needed_it_and_the_next_one_runs_again(
    tmp_path: Path,
) -> None:
    fn = _BlockingSync(fail_first=True)
    group = SyncGroup(fn)
    errors: list[StoreError] = []
    first = _start(group, tmp_path, errors)
    assert fn.started[0].wait(30)
    fn.release[0].set()
    first.join(30)
    assert len(errors) == 1
    assert "Input/output error" in str(errors[0])
    fn.release[1].set()
    group.sync(tmp_path)  # a later caller gets a sync of its own, which succeeds
    assert fn.calls == 2


def test_syncfs_syncs_a_real_filesystem_and_reports_a_missing_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    syncfs(tmp_path)
    with pytest.raises(StoreError, match="cannot sync"):
        syncfs(tmp_path / "missing")


def test_a_sync_called_while_handling_an_exception_succeeds(tmp_path: Path) -> None:
    # A pull refetching a corrupt stored layer seals its new staging from an except block.
    group = SyncGroup(lambda path: None)
    try:
        raise ValueError("being handled")
    except ValueError:
        group.sync(tmp_path)
    group.sync(tmp_path)  # and the generation is not recorded as failed for later callers
    assert group.finished == 2
