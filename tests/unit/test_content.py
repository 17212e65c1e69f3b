"""content.py and its store.py helpers: layout, locks, crash leftovers."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from fastdist.content import ContentStore
from fastdist.errors import InvalidDigestError, StoreError
from fastdist.oci import OCI_LAYER_GZIP, Descriptor, sha256_digest
from fastdist.store import (
    FileLock,
    default_root,
    ensure_dir,
    rmtree,
    tree_usage,
    write_file_atomic,
)

DATA = b"layer bytes" * 1000
DESC = Descriptor(OCI_LAYER_GZIP, sha256_digest(DATA), len(DATA))


def test_blobs_live_at_content_blobs_sha256_hex(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.write_blob(DESC.digest, DATA)
    assert store.path(DESC.digest) == tmp_path / "content/blobs/sha256" / DESC.digest[7:]


def test_partial_ingest_lives_at_content_ingest_hex_data(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with store.ingest(DESC) as ing:
        ing.write(DATA[:10])
        assert ing.path == tmp_path / "content/ingest" / DESC.digest[7:] / "data"
    assert (tmp_path / "content/ingest" / DESC.digest[7:] / "data").read_bytes() == DATA[:10]
    assert store.ingests() == [DESC.digest]


def test_invalid_digests_never_become_paths(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(InvalidDigestError):
        store.exists("sha256:../../etc/passwd")  # type: ignore[arg-type]


def test_stray_files_in_blobs_are_not_listed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.write_blob(DESC.digest, DATA)
    (store.blobs_dir / "not-a-digest").write_bytes(b"")
    assert list(store.digests()) == [DESC.digest]


def test_crashed_write_blob_temp_files_are_pruned(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    (store.ingest_dir / ".write-abc.1.2").write_bytes(b"junk")
    assert store.prune_ingests(older_than=0) == 1
    assert os.listdir(store.ingest_dir) == []


def test_ingest_after_commit_is_closed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with store.ingest(DESC) as ing:
        ing.write(DATA)
        ing.commit()
        with pytest.raises(StoreError, match="closed"):
            ing.write(b"more")


def _wait_until_blocked_on(path: Path, timeout: float = 30.0) -> None:
    """Return once some thread waits in ``flock`` on the inode now at ``path``.

    /proc/locks lists a waiter as ``N: -> FLOCK ... MAJ:MIN:INODE ...``; seeing it is the only
    way to know the waiter holds the old file open and sleeps in the kernel (an event set
    before the call would fire before the waiter opened anything).
    """
    import time

    ino = os.stat(path).st_ino
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "->" and fields[6].endswith(f":{ino}"):
                    return
        time.sleep(0.005)
    raise AssertionError(f"nobody blocked on {path} within {timeout} s")


def test_a_waiter_on_an_unlinked_lock_file_retries_on_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    first = FileLock(path)
    first.acquire()
    got: list[bool] = []

    def wait() -> None:
        lock = FileLock(path)
        lock.acquire()
        # the file we hold must be the one at the path (not the unlinked inode)
        got.append(os.stat(path).st_ino == os.fstat(lock._fd).st_ino)  # type: ignore[arg-type]
        lock.release()

    t = threading.Thread(target=wait)
    t.start()
    _wait_until_blocked_on(path)  # the waiter holds the inode we are about to unlink
    first.release(unlink=True)
    t.join()
    assert got == [True]


def test_non_reentrant_lock_conflicts_within_one_thread(tmp_path: Path) -> None:
    a = FileLock(tmp_path / "l")
    b = FileLock(tmp_path / "l")
    assert a.acquire()
    assert not b.acquire(blocking=False)
    a.release()
    assert b.acquire(blocking=False)
    b.release()


def test_reentrant_lock_nests_within_one_thread(tmp_path: Path) -> None:
    a = FileLock(tmp_path / "l", reentrant=True)
    b = FileLock(tmp_path / "l", reentrant=True)
    with a, b:
        assert b.held
    assert FileLock(tmp_path / "l").acquire(blocking=False)


def test_ensure_dir_makes_every_new_component_private(tmp_path: Path) -> None:
    ensure_dir(tmp_path / "a" / "b" / "c")
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700


def test_rmtree_removes_unreadable_and_readonly_directories(tmp_path: Path) -> None:
    top = tmp_path / "t"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_bytes(b"x")
    os.symlink("/etc", top / "link")  # must not be followed
    (top / "a" / "b").chmod(0)
    (top / "a").chmod(0o500)
    rmtree(top)
    assert not top.exists()
    assert Path("/etc/passwd").exists()


def test_tree_usage_counts_hardlinks_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(os.urandom(100_000))
    one = tree_usage(tmp_path / "d")
    os.link(tmp_path / "d" / "f", tmp_path / "d" / "g")
    assert tree_usage(tmp_path / "d") == one
    assert one >= 100_000


def test_write_file_atomic_replaces_a_symlink_without_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "config.json").symlink_to(victim)
    write_file_atomic(tmp_path / "config.json", b"new")
    assert victim.read_bytes() == b"keep"
    st = (tmp_path / "config.json").lstat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "victim"]  # no temp


def test_default_root_honours_fastdist_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTDIST_ROOT", "/srv/fd")
    assert default_root() == Path("/srv/fd")
    monkeypatch.delenv("FASTDIST_ROOT")
    assert default_root() == Path("/var/lib/fastdist")


def test_open_blob_gives_an_fd_that_outlives_removal_and_none_when_missing(
    tmp_path: Path,
) -> None:
    store = ContentStore(tmp_path)
    assert store.open_blob(DESC.digest) is None
    store.write_blob(DESC.digest, DATA)
    fd = store.open_blob(DESC.digest)
    assert fd is not None
    try:
        store.delete(DESC.digest)  # as prune does while the blob is being served
        assert os.pread(fd, len(DATA) + 1, 0) == DATA
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_open_blob_refuses_what_is_not_a_regular_blob_file(tmp_path: Path, kind: str) -> None:
    store = ContentStore(tmp_path)
    outside = tmp_path / "secret"
    outside.write_bytes(DATA)
    planted = store.blob_path(DESC.digest)
    if kind == "symlink":
        planted.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(planted)  # a blocking open would hang the server: refused at once
    else:
        planted.mkdir()
    with pytest.raises(StoreError):
        store.open_blob(DESC.digest)


def test_open_blob_refuses_a_symlinked_blobs_directory(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / DESC.digest[7:]).write_bytes(DATA)
    blobs = tmp_path / "content" / "blobs" / "sha256"
    blobs.rmdir()
    blobs.symlink_to(elsewhere)
    with pytest.raises(StoreError):
        store.open_blob(DESC.digest)
