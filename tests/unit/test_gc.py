"""gc.py: the GC lock (the store's FileLock, shared for pulls, exclusive for prune)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastdist.errors import InvalidArgumentError, StoreError
from fastdist.gc import gc_lock, prune
from fastdist.store import FileLock


def test_pulls_share_the_gc_lock_and_prune_waits_for_them(tmp_path: Path) -> None:
    with gc_lock(tmp_path, shared=True), gc_lock(tmp_path, shared=True):
        # Two pulls at once; prune (exclusive) cannot get in meanwhile.
        assert not FileLock(tmp_path / "gc.lock").acquire(blocking=False)
    exclusive = FileLock(tmp_path / "gc.lock")
    assert exclusive.acquire(blocking=False)
    try:
        assert not FileLock(tmp_path / "gc.lock", shared=True).acquire(blocking=False)
    finally:
        exclusive.release()


def test_the_gc_lock_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "gc.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match=r"gc\.lock"), gc_lock(tmp_path, shared=True):
        pass


def test_a_shared_lock_is_not_reentrant(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shared"):
        FileLock(tmp_path / "l", shared=True, reentrant=True)


def test_prune_refuses_a_negative_age(tmp_path: Path) -> None:
    from fastdist.client import Client

    with pytest.raises(InvalidArgumentError, match="partial_older_than"):
        prune(Client(tmp_path / "store", snapshotter="native"), -1)
