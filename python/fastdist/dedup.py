"""Files stored once: what the committed snapshots take on disk, and sharing equal files.

``disk_usage`` (``fastdist system df``) measures every committed snapshot once: logical bytes
(the sizes of the files each image's layers hold, every path counted) against physical bytes
(``st_blocks`` of the distinct inodes: hardlinks once), per image, and how much of it other
images share. What an image alone uses is what removing it (``rmi`` then ``prune``) frees from
the snapshots. On a filesystem that shares extents (XFS, btrfs: reflinks), ``st_blocks``
counts every copy, so a file one of whose extents is shared is counted by its physical extents
(FIEMAP) instead, each piece of the device once however many files map it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .content import ContentStore
from .errors import FastdistError
from .fingerprint import ExpectedTree, ManifestRecord, expected_tree
from .metadata import FileIndex, ImageRecord, IndexedFile
from .oci import Digest
from .snapshots import Snapshotter
from .store import crash_point, libc, lstat_tree, rmtree

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
    # Files whose extents another file shares (reflinks): inode -> physical extents. Their
    # bytes are counted by extent (``_segments``), not by st_blocks, which counts each copy.
    extents: dict[_Inode, list[tuple[int, int]]]


def _walk(root: str, reflinks: dict[int, bool]) -> _Walked:
    """Logical bytes (regular files and symlinks, every path) and the inodes under ``root``."""
    logical = 0
    inodes: dict[_Inode, int] = {}
    shared: dict[_Inode, list[tuple[int, int]]] = {}
    for path, st in lstat_tree(root):
        key = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            logical += st.st_size
        if stat.S_ISREG(st.st_mode) and st.st_blocks and _can_share(path, st, reflinks):
            got = _shared_extents(path)
            if got is not None:
                shared[key] = got
                continue
        inodes[key] = st.st_blocks * 512
    return _Walked(logical, inodes, shared)


_REFLINK_FS = (0x58465342, 0x9123683E)  # XFS, btrfs (statfs f_type)


def _can_share(path: str, st: os.stat_result, known: dict[int, bool]) -> bool:
    """Whether ``st``'s filesystem can share extents between files (statfs, once a device)."""
    got = known.get(st.st_dev)
    if got is None:
        import ctypes

        buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
        ok = libc().statfs(os.fsencode(path), buf) == 0
        known[st.st_dev] = got = ok and ctypes.c_long.from_buffer(buf).value in _REFLINK_FS
    return got


def _shared_extents(path: str) -> list[tuple[int, int]] | None:
    """The physical extents ``(start, end)`` of a file when one of them is shared, else None."""
    try:
        fd = _open(path)
    except OSError:
        return None
    try:
        got = extents(fd)
    finally:
        os.close(fd)
    if not got or not any(flags & EXTENT_SHARED for _, _, flags in got):
        return None
    return [(start, start + length) for start, length, _ in got]


def _segments(walked: Iterable[_Walked]) -> dict[_Inode, dict[_Inode, int]]:
    """For each file counted by extent: the disjoint pieces of the device its extents cover,
    as ``(dev, -1 - start) -> bytes`` units. Every extent boundary of every such file cuts the
    device, so a piece is either wholly in an extent or not: copies that share an extent share
    its pieces, and one rewritten in part (copy on write) shares exactly the untouched ones."""
    cuts: dict[int, set[int]] = {}
    for w in walked:
        for (dev, _ino), spans in w.extents.items():
            at = cuts.setdefault(dev, set())
            for a, b in spans:
                at.update((a, b))
    sorted_cuts = {dev: sorted(at) for dev, at in cuts.items()}
    out: dict[_Inode, dict[_Inode, int]] = {}
    for w in walked:
        for key, spans in w.extents.items():
            if key in out:
                continue
            dev = key[0]
            points = sorted_cuts[dev]
            units: dict[_Inode, int] = {}
            for a, b in spans:
                i = bisect.bisect_left(points, a)
                while i + 1 < len(points) and points[i] < b:
                    units[(dev, -1 - points[i])] = points[i + 1] - points[i]
                    i += 1
            out[key] = units
    return out


def disk_usage(
    snapshotters: Mapping[str, Snapshotter],
    images: Sequence[ImageRecord],
    content: ContentStore,
) -> DiskUsage:
    """Measure the committed snapshots of ``snapshotters`` for ``images`` (see the module)."""
    walked: dict[tuple[str, Digest], _Walked] = {}
    blocks: dict[_Inode, int] = {}
    reflinks: dict[int, bool] = {}
    for name, snap in snapshotters.items():
        for chain in snap.list():
            walked[(name, chain)] = _walk(os.fspath(snap.fs_path(chain)), reflinks)
    pieces = _segments(walked.values())
    for w in walked.values():
        for key in w.extents:
            w.inodes.update(pieces[key])  # a shared file counts as its pieces of the device
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


def index_snapshots(
    snapshotters: Mapping[str, Snapshotter], index: FileIndex
) -> set[tuple[str, Digest]]:
    """Index every committed snapshot not indexed yet (and forget the removed ones); returns
    the ``(snapshotter, chain_id)`` indexed now: the snapshots no dedup pass has seen."""
    have = index.layers()
    present: set[tuple[str, Digest]] = set()
    fresh: set[tuple[str, Digest]] = set()
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
            fresh.add((name, chain))
    for name, chain in have - present:
        index.drop_layer(name, chain)
    return fresh


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
    new_only: bool = False,
) -> DedupReport:
    """Share equal regular files between committed snapshots (the caller holds the GC lock
    exclusively: nothing commits or removes snapshots meanwhile): by a reflink (``FICLONE``:
    a new inode sharing the head's extents, so every file keeps its own inode, link count and
    metadata) where the store's filesystem can, by a hardlink otherwise.

    Candidates are index groups of equal ``(xxh3, size)``; a file is shared only when its bytes
    equal the group's first file's and its type, mode, owner, mtime and xattrs are the same.
    Each replacement is made in a trash directory of the snapshotter's staging directory and
    exchanged with the file (``renameat2(RENAME_EXCHANGE)``; a plain rename over it where the
    filesystem has no exchange), so a crash leaves either the old file or the shared one, never
    neither; the old inodes are freed together at the end (the trash is a staging leftover
    ``prune`` removes if a crash comes first). Never touched: snapshots in ``in_use`` (a
    container's lower layers), files with other hardlinks (the image's own), and, for
    hardlinks, a second path of one root filesystem onto the same inode (a container would see
    two paths as one file, and the native snapshotter's copy would keep them linked).

    ``new_only`` (the pass after a pull): only the files of the snapshots no pass has indexed
    yet are replaced, and only the groups they are in are read; the files already indexed are
    the ones kept.
    """
    fresh = index_snapshots(snapshotters, index)
    busy = set(in_use)
    views = _views(snapshotters)
    sharer = _Sharer()
    candidates = linked = saved = refused = skipped = 0
    fs_paths: dict[tuple[str, Digest], str | None] = {}
    real_dirs: dict[str, bool] = {}
    groups = index.groups(layers=fresh) if new_only else index.groups()
    try:
        for group in groups:
            members: list[_Member] = []
            for f in group:
                key = (f.snapshotter, f.chain_id)
                snap = snapshotters.get(f.snapshotter)
                if snap is None or key not in views:
                    continue
                if key not in fs_paths:
                    try:
                        fs_paths[key] = os.fspath(snap.trusted_fs_path(f.chain_id))
                    except (FastdistError, OSError):
                        fs_paths[key] = None
                top = fs_paths[key]
                if top is None:
                    continue
                path = os.path.join(top, os.fsdecode(f.path))
                parent = os.path.dirname(path)
                try:
                    st = os.lstat(path)
                    real = real_dirs.get(parent)
                    if real is None:
                        # No symlink on the way (the manifest's real path): never write elsewhere.
                        real = real_dirs[parent] = os.path.realpath(parent) == parent
                except OSError:
                    continue  # check --deep reports it
                if real and stat.S_ISREG(st.st_mode):
                    members.append(_Member(f, path, st))
            if len(members) < 2:
                continue
            candidates += len(members)
            # The files already indexed first (kept), then the most linked inode: a file shared
            # by an earlier run stays the one kept.
            members.sort(
                key=lambda m: ((m.file.snapshotter, m.file.chain_id) in fresh, -m.st.st_nlink)
            )
            classes: list[_Class] = []  # files proven equal to each other, by their kept inode
            for m in members:
                ino = (m.st.st_dev, m.st.st_ino)
                mkey = (m.file.snapshotter, m.file.chain_id)
                where = views[mkey]
                same = next((c for c in classes if c.ino == ino), None)
                if same is not None:
                    same.shown |= where
                    continue
                if new_only and mkey not in fresh:
                    # Kept as it is: an already indexed file is only ever a head here.
                    if not any(_equal(c, m) for c in classes):
                        classes.append(_Class(m, ino, _xattrs_of(m.path), set(where)))
                    continue
                snap = snapshotters[m.file.snapshotter]
                reflink = sharer.can_reflink(snap, m.st.st_dev)
                match = next((c for c in classes if _equal(c, m)), None)
                if match is None:
                    if classes:
                        refused += 1  # an equal key, other bytes or metadata: kept apart
                    classes.append(_Class(m, ino, _xattrs_of(m.path), set(where)))
                    continue
                if reflink and _shares_extents(match.head.path, m.path):
                    continue  # reflinked by an earlier run
                busy_here = mkey in busy
                if busy_here or m.st.st_nlink > 1 or (not reflink and where & match.shown):
                    skipped += 1
                    continue
                if sharer.share(snap, match, m, reflink):
                    linked += 1
                    saved += m.st.st_blocks * 512
                    match.shown |= where
    finally:
        sharer.finish()
    log.info("dedup: %d file(s) shared, %d bytes saved, %d refused", linked, saved, refused)
    return DedupReport(len(fresh), candidates, linked, saved, refused, skipped)


@dataclass
class _Class:
    head: _Member  # the file the others become links (or reflinks) of
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


# --- the replacement: reflink or hardlink, exchanged with the file --------------------------------

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False where the kernel or filesystem has no
    ``RENAME_EXCHANGE`` (the caller renames over instead)."""
    import ctypes

    fn = getattr(libc(), "renameat2", None)
    if fn is None:
        return False
    ctypes.set_errno(0)
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


class _Sharer:
    """One pass's replacements: a trash directory per snapshotter (the replaced inodes, freed
    together at the end) and whether each store filesystem can reflink (probed once)."""

    def __init__(self) -> None:
        self.trash: dict[str, str] = {}
        self.reflinks: dict[int, bool] = {}
        self.n = 0

    def _trash(self, snap: Snapshotter) -> str:
        t = self.trash.get(snap.name)
        if t is None:
            t = os.path.join(os.fspath(snap.staging_dir), f".rm-dedup-{os.urandom(8).hex()}")
            os.mkdir(t, 0o700)
            self.trash[snap.name] = t
        return t

    def _tmp(self, snap: Snapshotter) -> str:
        self.n += 1
        return os.path.join(self._trash(snap), str(self.n))

    def can_reflink(self, snap: Snapshotter, dev: int) -> bool:
        """Whether ``FICLONE`` works on the filesystem ``dev`` of ``snap`` (one probe: a
        one-byte file cloned in the trash)."""
        got = self.reflinks.get(dev)
        if got is None:
            got = False
            try:
                if os.stat(snap.staging_dir).st_dev == dev:
                    a, b = self._tmp(snap), self._tmp(snap)
                    with open(a, "wb") as fa:
                        fa.write(b"\0")
                    with open(a, "rb") as fa, open(b, "wb") as fb:
                        fcntl.ioctl(fb.fileno(), FICLONE, fa.fileno())
                    got = True
            except OSError as e:
                log.debug("dedup: no reflink on this filesystem (%s): hardlinks", e)
            self.reflinks[dev] = got
            log.debug("dedup: reflink on device %d: %s", dev, got)
        return got

    def share(self, snap: Snapshotter, c: _Class, m: _Member, reflink: bool) -> bool:
        """Replace ``m`` by a reflink or hardlink of ``c.head``: made in the trash, exchanged
        with ``m``, the directory's times restored (the exchange moves its mtime; the image's
        tree keeps its own)."""
        tmp = self._tmp(snap)
        parent = os.path.dirname(m.path)
        try:
            pst = os.lstat(parent)
            if reflink:
                _clone(c, tmp)
            else:
                os.link(c.head.path, tmp, follow_symlinks=False)
        except OSError as e:
            log.debug("dedup: cannot share %s: %s", c.head.path, e)  # EXDEV: another filesystem
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        crash_point("dedup-linked")
        try:
            if not _exchange(tmp, m.path):
                os.rename(tmp, m.path)
        except OSError as e:
            log.warning("dedup: cannot replace %s: %s", m.path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        crash_point("dedup-renamed")
        with contextlib.suppress(OSError):
            os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
        return True

    def finish(self) -> None:
        """Free the replaced inodes (their blocks, once nothing else holds them)."""
        for t in self.trash.values():
            rmtree(Path(t))
        self.trash.clear()


def _clone(c: _Class, tmp: str) -> None:
    """``tmp``: a new file sharing ``c.head``'s extents, with its owner, xattrs, mode and
    times (owner first: a chown clears setuid bits and file capabilities)."""
    st = c.head.st
    src = _open(c.head.path)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(tmp, flags, 0o600)
        try:
            if (os.fstat(src).st_dev, os.fstat(src).st_ino) != c.ino:
                raise OSError(errno.ESTALE, "replaced meanwhile", c.head.path)
            fcntl.ioctl(dst, FICLONE, src)
            os.fchown(dst, st.st_uid, st.st_gid)
            for key, value in c.xattrs.items():
                os.setxattr(dst, key, value)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


# --- physical extents (FIEMAP): what reflinked files share ----------------------------------------

_FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_FIEMAP_HEADER = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_FIEMAP_BATCH = 64
_FIEMAP_SYNC = 0x1  # write dirty data first: its extents are then where it lies
_EXTENT_LAST = 0x1
# Extents whose physical address says nothing: not yet allocated, inline, encoded, unknown.
_EXTENT_VAGUE = 0x2 | 0x4 | 0x8 | 0x200
EXTENT_SHARED = 0x2000

Extent = tuple[int, int, int]  # physical start, length, flags


def extents(fd: int) -> list[Extent] | None:
    """The physical extents of an open file (FIEMAP), or None where the filesystem cannot say
    or an extent has no fixed place (delayed allocation, inline data)."""
    out: list[Extent] = []
    start = 0
    while True:
        buf = bytearray(
            _FIEMAP_HEADER.pack(start, (1 << 64) - 1 - start, _FIEMAP_SYNC, 0, _FIEMAP_BATCH, 0)
            + bytes(_FIEMAP_EXTENT.size * _FIEMAP_BATCH)
        )
        try:
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
        except OSError:
            return None
        mapped = _FIEMAP_HEADER.unpack_from(buf)[3]
        last = 0
        for i in range(mapped):
            logical, physical, length, _r1, _r2, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEADER.size + i * _FIEMAP_EXTENT.size
            )
            if flags & _EXTENT_VAGUE:
                return None
            out.append((physical, length, flags))
            last = flags
            start = logical + length
        if mapped < _FIEMAP_BATCH or last & _EXTENT_LAST:
            return out


def _shares_extents(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` hold the same physical extents (a reflink made before)."""
    try:
        fa = _open(a)
    except OSError:
        return False
    try:
        fb = _open(b)
    except OSError:
        os.close(fa)
        return False
    try:
        ea, eb = extents(fa), extents(fb)
        return (
            bool(ea)
            and ea is not None
            and eb is not None
            and ([e[:2] for e in ea] == [e[:2] for e in eb])
        )
    finally:
        os.close(fa)
        os.close(fb)


# --- after a pull ---------------------------------------------------------------------------------


def after_pull(
    root: Path, snapshotters: Mapping[str, Snapshotter], index: FileIndex, *, asked: bool = False
) -> None:
    """The pass a pull runs once its image is recorded: ``dedup(new_only=True)`` under the GC
    lock taken exclusively, as ``fastdist dedup``, but without waiting: when another process
    holds the lock (a pull, a check), the pass is left out and the snapshots stay unindexed, so
    the next pass (after a pull, or ``fastdist dedup``) takes them. Its failures are logged,
    never the pull's: the image is recorded and whole. ``asked``: the caller asked for the pass
    (``pull --dedup``), so leaving it out is a warning, not a note."""
    from .check import container_snapshots
    from .gc import gc_lock_if_free

    with gc_lock_if_free(root) as free:
        if not free:
            log.log(
                logging.WARNING if asked else logging.INFO,
                "dedup after pull: the store is busy (another pull, check or prune); "
                "left to the next pass or `fastdist dedup`",
            )
            return
        try:
            busy = container_snapshots(snapshotters)
            rep = dedup(snapshotters, index, in_use=busy, new_only=True)
        except (FastdistError, OSError) as e:
            log.warning("dedup after pull: %s (the image is pulled; `fastdist dedup` retries)", e)
            return
    log.info("dedup after pull: %d file(s) shared, %d bytes saved", rep.linked, rep.bytes_saved)
