"""Files stored once: what the committed snapshots take on disk, and sharing equal files.

``disk_usage`` (``fastdist system df``) measures every committed snapshot once: logical bytes
(the sizes of the files each image's layers hold, every path counted) against physical bytes
(``st_blocks`` of the distinct inodes: hardlinks once), per image, and how much of it other
images share. What an image alone uses is what removing it (``rmi`` then ``prune``) frees from
the snapshots. Reflinked extents are invisible to ``st_blocks``: on btrfs/xfs physical bytes
are an upper bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .content import ContentStore
from .errors import FastdistError
from .fingerprint import ExpectedTree, ManifestRecord, expected_tree
from .metadata import FileIndex, ImageRecord, IndexedFile
from .oci import Digest
from .snapshots import Snapshotter

log = logging.getLogger(__name__)

_Inode = tuple[int, int]


@dataclass(frozen=True)
class ImageUsage:
    """One image's layer snapshots on disk. ``unique`` is what no other image uses (removing
    this image frees it); ``shared`` is the rest of ``physical``; ``blobs`` the bytes of the
    compressed content it references (a blob shared with other images counts in each)."""

    name: str
    layers: int
    logical: int
    physical: int
    unique: int
    blobs: int

    @property
    def shared(self) -> int:
        return self.physical - self.unique


@dataclass(frozen=True)
class DiskUsage:
    """The store's snapshots: ``physical`` counts every inode once over all snapshots,
    ``shared`` the physical bytes of inodes more than one image uses, ``unreferenced`` those
    no image uses (``prune`` frees them), ``blobs`` the content store's bytes."""

    images: tuple[ImageUsage, ...]
    snapshots: int
    logical: int
    physical: int
    shared: int
    unreferenced: int
    blobs: int


@dataclass
class _Walked:
    logical: int
    inodes: dict[_Inode, int]  # inode -> its bytes on disk (st_blocks)


def _walk(root: str) -> _Walked:
    """Logical bytes (regular files and symlinks, every path) and the inodes under ``root``."""
    logical = 0
    inodes: dict[_Inode, int] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                inodes[(st.st_dev, st.st_ino)] = st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    logical += st.st_size
    return _Walked(logical, inodes)


def disk_usage(
    snapshotters: Mapping[str, Snapshotter],
    images: Sequence[ImageRecord],
    content: ContentStore,
) -> DiskUsage:
    """Measure the committed snapshots of ``snapshotters`` for ``images`` (see the module)."""
    walked: dict[tuple[str, Digest], _Walked] = {}
    blocks: dict[_Inode, int] = {}
    for name, snap in snapshotters.items():
        for chain in snap.list():
            w = _walk(os.fspath(snap.fs_path(chain)))
            walked[(name, chain)] = w
            blocks.update(w.inodes)
    users: dict[_Inode, int] = {}
    per_image: list[tuple[ImageRecord, set[_Inode], int, int]] = []
    for rec in images:
        inodes: set[_Inode] = set()
        logical = layers = 0
        for chain in rec.chain_ids:
            got = walked.get((rec.snapshotter, chain))
            if got is None:
                continue
            layers += 1
            logical += got.logical
            inodes.update(got.inodes)
        for key in inodes:
            users[key] = users.get(key, 0) + 1
        per_image.append((rec, inodes, logical, layers))
    out = []
    for rec, inodes, logical, layers in per_image:
        physical = sum(blocks[k] for k in inodes)
        unique = sum(blocks[k] for k in inodes if users[k] == 1)
        blob_bytes = 0
        for digest in {rec.manifest_digest, rec.config_digest, *rec.layer_digests}:
            try:
                blob_bytes += content.size(digest)
            except (FastdistError, OSError):
                continue  # missing: fastdist check names it
        out.append(ImageUsage(rec.name, layers, logical, physical, unique, blob_bytes))
    blob_total = 0
    for digest in content.digests():
        try:
            blob_total += content.size(digest)
        except (FastdistError, OSError):
            continue
    return DiskUsage(
        images=tuple(out),
        snapshots=len(walked),
        logical=sum(w.logical for w in walked.values()),
        physical=sum(blocks.values()),
        shared=sum(b for k, b in blocks.items() if users.get(k, 0) > 1),
        unreferenced=sum(b for k, b in blocks.items() if k not in users),
        blobs=blob_total,
    )


# --- sharing equal files ------------------------------------------------------------------------

_CHUNK = 1 << 20
_CRASH_AT = os.environ.get("FASTDIST_TEST_CRASH_AT") or None


def _crash_point(name: str) -> None:
    # Crash-safety tests kill a dedup at named points (tests/integration/test_dedup.py).
    if name == _CRASH_AT:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


#: The index key of a manifest record: ``(xxh3, size)``. Tests replace it to force equal keys
#: on files that differ, which the byte comparison must then refuse to share.
def index_key(rec: ManifestRecord) -> tuple[str, int]:
    return (rec.xxh3 or "", rec.size)


INDEX_KEY: Callable[[ManifestRecord], tuple[str, int]] = index_key


@dataclass(frozen=True)
class DedupReport:
    """What one dedup run did: ``linked`` files now share another snapshot's inode,
    ``bytes_saved`` their blocks (freed once nothing else holds the old inode), ``refused``
    candidates whose bytes or metadata differed from their group's (an xxh3 collision, or equal
    content with another mode, owner, mtime or xattrs), ``skipped`` candidates left alone
    (a snapshot a container uses, a file already hardlinked within its image, or a second path
    of one image's view)."""

    indexed: int
    candidates: int
    linked: int
    bytes_saved: int
    refused: int
    skipped: int


def _expected_files(
    snap: Snapshotter, chain: Digest, cache: dict[Digest, ExpectedTree | None]
) -> list[tuple[bytes, ManifestRecord]] | None:
    """The regular files a committed snapshot holds by real path, from its manifest(s), or None
    when a manifest is missing (a layer unpacked by an older fastdist is not indexed)."""
    tree = expected_tree(snap, chain, cache)
    if tree is None:
        return None
    return [
        (p, r)
        for p, r in tree.entries.items()
        if r.kind == "f" and r.xxh3 is not None and p not in tree.implicit
    ]


def snap_depth(snap: Snapshotter) -> Callable[[Digest], int]:
    """A sort key: a snapshot's depth in its chain (a broken chain sorts first)."""

    def depth(chain: Digest) -> int:
        try:
            return len(snap.chain(chain))
        except (FastdistError, ValueError):
            return 0

    return depth


def index_snapshots(snapshotters: Mapping[str, Snapshotter], index: FileIndex) -> int:
    """Index every committed snapshot not indexed yet (and forget the removed ones); returns
    how many were indexed."""
    have = index.layers()
    present: set[tuple[str, Digest]] = set()
    n = 0
    for name, snap in snapshotters.items():
        cache: dict[Digest, ExpectedTree | None] = {}
        # Parents first: each fold starts from its parent's (cached).
        for chain in sorted(snap.list(), key=snap_depth(snap)):
            present.add((name, chain))
            if (name, chain) in have:
                continue
            try:
                files = _expected_files(snap, chain, cache)
            except (FastdistError, ValueError) as e:
                log.warning("dedup: snapshot %s (%s) not indexed: %s", chain, name, e)
                continue
            if files is None:
                continue
            index.add_layer(name, chain, [(p, *INDEX_KEY(r)) for p, r in files])
            n += 1
    for name, chain in have - present:
        index.drop_layer(name, chain)
    return n


def _views(snapshotters: Mapping[str, Snapshotter]) -> dict[tuple[str, Digest], set[Digest]]:
    """For each snapshot, the tops of the root filesystems that show it: overlayfs stacks a
    snapshot's whole chain, so it is in the view of every snapshot above it; a native snapshot
    is a full copy, in its own view alone (its children and containers copy it: new inodes)."""
    out: dict[tuple[str, Digest], set[Digest]] = {}
    for name, snap in snapshotters.items():
        for top in snap.list():
            members = snap.chain(top) if snap.apply_mode == "layer" else [top]
            for c in members:
                out.setdefault((name, c), set()).add(top)
    return out


def _xattrs_of(path: str) -> dict[str, bytes]:
    out = {}
    for key in os.listxattr(path, follow_symlinks=False):
        out[key] = os.getxattr(path, key, follow_symlinks=False)
    return out


def _same_bytes(a: int, b: int) -> bool:
    offset = 0
    while True:
        x = os.pread(a, _CHUNK, offset)
        y = os.pread(b, _CHUNK, offset)
        if x != y:
            return False
        if not x:
            return True
        offset += len(x)


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


@dataclass
class _Member:
    file: IndexedFile
    path: str
    st: os.stat_result


def dedup(
    snapshotters: Mapping[str, Snapshotter],
    index: FileIndex,
    *,
    in_use: Iterable[tuple[str, Digest]] = (),
) -> DedupReport:
    """Share equal regular files between committed snapshots by hardlinks (the caller holds
    the GC lock exclusively: nothing commits or removes snapshots meanwhile).

    Candidates are index groups of equal ``(xxh3, size)``; a file is shared only when its bytes
    equal the group's first file's and its type, mode, owner, mtime and xattrs are the same.
    Each replacement is a new link made in the snapshotter's staging directory and renamed over
    the file, so a crash leaves either the old file or the shared one, never neither (the
    leftover link is a staging leftover ``prune`` removes). Never touched: snapshots in
    ``in_use`` (a container's lower layers), files with other hardlinks (the image's own), and
    a second path of one root filesystem onto the same inode (a container would see two paths
    as one file, and the native snapshotter's copy would keep them linked).
    """
    indexed = index_snapshots(snapshotters, index)
    busy = set(in_use)
    views = _views(snapshotters)
    candidates = linked = saved = refused = skipped = 0
    for group in index.groups():
        members: list[_Member] = []
        for f in group:
            snap = snapshotters.get(f.snapshotter)
            if snap is None or (f.snapshotter, f.chain_id) not in views:
                continue
            path = os.path.join(os.fspath(snap.trusted_fs_path(f.chain_id)), os.fsdecode(f.path))
            try:
                st = os.lstat(path)
                # No symlink on the way (the manifest's real path): never write elsewhere.
                real = os.path.realpath(os.path.dirname(path)) == os.path.dirname(path)
            except OSError:
                continue  # check --deep reports it
            if not real:
                continue
            if stat.S_ISREG(st.st_mode):
                members.append(_Member(f, path, st))
        if len(members) < 2:
            continue
        candidates += len(members)
        # The most linked inode first: a file shared by an earlier run stays the one kept.
        members.sort(key=lambda m: -m.st.st_nlink)
        classes: list[_Class] = []  # files proven equal to each other, by their kept inode
        for m in members:
            ino = (m.st.st_dev, m.st.st_ino)
            where = views[(m.file.snapshotter, m.file.chain_id)]
            same = next((c for c in classes if c.ino == ino), None)
            if same is not None:
                same.shown |= where
                continue
            match = next((c for c in classes if _equal(c, m)), None)
            if match is None:
                if classes:
                    refused += 1  # an equal key, other bytes or metadata: kept apart
                classes.append(_Class(m, ino, _xattrs_of(m.path), set(where)))
                continue
            busy_here = (m.file.snapshotter, m.file.chain_id) in busy
            if busy_here or m.st.st_nlink > 1 or (where & match.shown):
                skipped += 1
                continue
            if _replace_by_link(snapshotters[m.file.snapshotter], match.head.path, m):
                linked += 1
                saved += m.st.st_blocks * 512
                match.shown |= where
    log.info("dedup: %d file(s) linked, %d bytes saved, %d refused", linked, saved, refused)
    return DedupReport(indexed, candidates, linked, saved, refused, skipped)


@dataclass
class _Class:
    head: _Member  # the file the others become links of
    ino: _Inode
    xattrs: dict[str, bytes]
    shown: set[Digest]  # the views (root filesystems) that already show ``ino``


def _equal(c: _Class, m: _Member) -> bool:
    """Whether ``m`` is ``c.head`` in type, mode, owner, mtime, size, xattrs and every byte."""
    a, b = c.head.st, m.st
    if (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns, a.st_size) != (
        b.st_mode,
        b.st_uid,
        b.st_gid,
        b.st_mtime_ns,
        b.st_size,
    ):
        return False
    try:
        if _xattrs_of(m.path) != c.xattrs:
            return False
        hfd = _open(c.head.path)
    except OSError:
        return False
    try:
        mfd = _open(m.path)
    except OSError:
        os.close(hfd)
        return False
    try:
        ha, mb = os.fstat(hfd), os.fstat(mfd)
        if (ha.st_dev, ha.st_ino) != c.ino or (mb.st_dev, mb.st_ino) != (b.st_dev, b.st_ino):
            return False  # replaced meanwhile
        return _same_bytes(hfd, mfd)  # xxh3 is not collision-resistant: the bytes decide
    finally:
        os.close(hfd)
        os.close(mfd)


def _replace_by_link(snap: Snapshotter, head: str, m: _Member) -> bool:
    """Replace ``m`` by a hardlink to ``head``: link in staging, rename over, restore the
    directory's times (a rename moves its mtime; the image's tree keeps its own)."""
    tmp = os.path.join(os.fspath(snap.staging_dir), f".rm-dedup-{os.urandom(8).hex()}")
    parent = os.path.dirname(m.path)
    try:
        pst = os.lstat(parent)
        os.link(head, tmp, follow_symlinks=False)
    except OSError as e:
        log.debug("dedup: cannot link %s: %s", head, e)  # EXDEV: another filesystem
        return False
    _crash_point("dedup-linked")
    try:
        os.rename(tmp, m.path)
    except OSError as e:
        log.warning("dedup: cannot replace %s: %s", m.path, e)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    _crash_point("dedup-renamed")
    with contextlib.suppress(OSError):
        os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
    return True
