"""Garbage collection: the GC lock and ``prune`` (what no image or container uses goes).

Pulls, loads and ``check`` hold the root's GC lock shared; prune (and ``check --repair``,
``fastdist dedup``, and the after-pull dedup when the lock is free) hold it exclusively, so prune
never removes a blob or snapshot a running pull has committed but not yet recorded. The lock is
the store's one ``FileLock`` implementation (store.py), taken shared.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ImageNotFoundError, InvalidArgumentError, StoreError
from .oci import Digest
from .snapshots import SNAPSHOTTERS, Snapshotter, snapshotter_by_name
from .store import FileLock

if TYPE_CHECKING:
    from .client import Client

#: How long ``prune`` keeps a partial download by default (a day): long enough for its pull to be
#: rerun and resume.
PARTIAL_KEEP_SECONDS = 24 * 3600.0

# A parent chain longer than this is broken (a loop in info.json files): stop walking it.
_MAX_DEPTH = 10_000


@dataclass(frozen=True)
class PruneReport:
    blobs: int
    snapshots: int
    bytes_freed: int
    leftovers: int


@contextlib.contextmanager
def gc_lock(root: Path, shared: bool) -> Iterator[None]:
    """Hold ``root``'s GC lock: shared (pull, load, check) or exclusive (prune, repair)."""
    with FileLock(root / "gc.lock", shared=shared):
        yield


@contextlib.contextmanager
def gc_lock_if_free(root: Path) -> Iterator[bool]:
    """Hold ``root``'s GC lock exclusively if no one holds it now (yields True), else yield
    False at once (the after-pull dedup never waits for another pull)."""
    lock = FileLock(root / "gc.lock")
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            lock.release()


def present_snapshotters(root: Path, current: Snapshotter) -> dict[str, Snapshotter]:
    """Every snapshotter that has a directory on ``root``, by name (``current`` always)."""
    snaps: dict[str, Snapshotter] = {current.name: current}
    for name in SNAPSHOTTERS:
        if name not in snaps and (root / "snapshots" / name).is_dir():
            snaps[name] = snapshotter_by_name(name, root)
    return snaps


def container_mounts(client: Client) -> list[str]:
    """The resolved rootfs mount points of every recorded container."""
    return [
        os.path.realpath(client.runtime.rootfs_dir(c.id)) for c in client.metadata.containers.list()
    ]


def unmount_strays(client: Client) -> int:
    """Unmount what a killed fastdist left mounted under the store (not containers')."""
    from .check import stray_mounts

    n = 0
    for mount in stray_mounts(client.root, container_mounts(client)):
        with contextlib.suppress(StoreError):
            client.snapshotter.unmount(Path(mount))
            n += 1
    return n


def depth(snap: Snapshotter, chain: Digest) -> int:
    """How many snapshots ``chain``'s parent walk passes (a broken link ends it early)."""
    n = 0
    cur: Digest | None = chain
    while cur is not None and n < _MAX_DEPTH:
        try:
            cur = snap.parent(cur)
        except (StoreError, ValueError):
            break  # a broken info.json: remove it early rather than fail the prune
        n += 1
    return n


def prune(client: Client, partial_older_than: float = PARTIAL_KEEP_SECONDS) -> PruneReport:
    """``Client.prune``: see there. Runs under the GC lock held exclusively."""
    if partial_older_than < 0:
        raise InvalidArgumentError(f"partial_older_than must be >= 0, got {partial_older_than}")
    content = client.content
    with gc_lock(client.root, shared=False):
        blobs_kept = client.metadata.images.referenced_blobs()
        snaps_kept = set(client.metadata.images.referenced_snapshots())
        for c in client.metadata.containers.list():
            with contextlib.suppress(ImageNotFoundError):
                img = client.get(c.image)
                snaps_kept.update((img.record.snapshotter, x) for x in img.record.chain_ids)
                blobs_kept.update(img.record.layer_digests)
        removed_blobs = 0
        freed = 0
        for digest in list(content.digests()):
            if digest not in blobs_kept:
                freed += content.size(digest)
                content.delete(digest)
                removed_blobs += 1
        removed_snaps = 0
        swept = 0
        # Every snapshotter with data on this root (a pull may have used the other one).
        for snap in present_snapshotters(client.root, client.snapshotter).values():
            # Children before parents, so an overlay lower is never removed under an upper.
            for chain in sorted(snap.list(), key=lambda c: -depth(snap, c)):
                if (snap.name, chain) not in snaps_kept:
                    snap.remove(chain)
                    client.metadata.files.drop_layer(snap.name, chain)  # dedup's index too
                    removed_snaps += 1
            swept += snap.sweep_staging()
        ingests = content.prune_ingests(older_than=partial_older_than)
        unmounted = unmount_strays(client)
    return PruneReport(removed_blobs, removed_snaps, freed, swept + ingests + unmounted)
