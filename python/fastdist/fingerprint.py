"""The layer file manifest the Rust applier records: parsed into frozen records.

The applier fingerprints every regular file with xxh3-128 as it writes it (rust/src/manifest.rs
defines the text form); the manifest is committed beside the layer's ``fs``
(``Snapshotter.manifest``). The Python ``xxhash`` package computes the same xxh3-128, so what
Rust recorded can be re-checked here (``check --deep``), and the fingerprints key the file index
that dedup builds on.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote_to_bytes

import xxhash

from .errors import StoreError

if TYPE_CHECKING:
    from .oci import Digest
    from .snapshots import Snapshotter

HEADER = b"fastdist-manifest 1\n"
RecordKind = Literal["f", "d", "l", "h", "c", "b", "p", "w", "o"]
_KINDS = frozenset("fdlhcbpwo")
_FIELDS = 10
_CHUNK = 1 << 20
_MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class ManifestRecord:
    """One entry the applier wrote (``kind``: see rust/src/manifest.rs)."""

    kind: RecordKind
    path: bytes  # normalised, relative to the layer root; b"" is the root
    mode: int  # permission bits (07777)
    uid: int
    gid: int
    mtime_ns: int
    size: int
    xxh3: str | None  # 32 hex digits, regular files only
    link: bytes | None  # symlink target, or the hardlink's target path in the tree
    xattrs: tuple[tuple[bytes, bytes], ...]


def parse_manifest(data: bytes, *, what: str = "manifest") -> tuple[ManifestRecord, ...]:
    """The records of a manifest, in the order they were written (the last of a path wins)."""
    if not data.startswith(HEADER):
        raise StoreError(f"{what}: not a fastdist manifest (unknown header)")
    out: list[ManifestRecord] = []
    for n, line in enumerate(data[len(HEADER) :].splitlines(), start=2):
        f = line.split(b"\t")
        try:
            if len(f) != _FIELDS or f[0].decode() not in _KINDS:
                raise ValueError("wrong fields")
            sec, _, nsec = f[5].partition(b".")
            xattrs: tuple[tuple[bytes, bytes], ...] = ()
            if f[9] != b"-":
                pairs = [p.split(b"=") for p in f[9].split(b",")]
                xattrs = tuple((unquote_to_bytes(k), unquote_to_bytes(v)) for k, v in pairs)
            out.append(
                ManifestRecord(
                    kind=f[0].decode(),  # type: ignore[arg-type]
                    path=unquote_to_bytes(f[1]),
                    mode=int(f[2], 8),
                    uid=int(f[3]),
                    gid=int(f[4]),
                    mtime_ns=int(sec) * 1_000_000_000 + int(nsec),
                    size=int(f[6]),
                    xxh3=None if f[7] == b"-" else f[7].decode(),
                    link=None if f[8] == b"-" else unquote_to_bytes(f[8]),
                    xattrs=xattrs,
                )
            )
        except ValueError:
            raise StoreError(
                f"{what}: line {n} is corrupt", hint="remove the snapshot and pull again"
            ) from None
    return tuple(out)


def xxh3_file(fd: int) -> tuple[str, int]:
    """The xxh3-128 (hex) and size of what an open file holds, read from its start."""
    h = xxhash.xxh3_128()
    size = offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        h.update(chunk)
        size += len(chunk)
        offset += len(chunk)
    return h.hexdigest(), size


def open_in_root(root: Path, path: bytes) -> int:
    """Open a manifest ``path`` under ``root`` as the applier resolved it: symlinks on the way
    resolve inside the root (an absolute ``var/run -> /run`` means ``<root>/run``, ``..`` stops
    at the root), the final component is never followed. Read-only, non-blocking (a fifo
    planted where a file was is not waited on). OSError if it is not there."""
    pending = [c for c in path.split(b"/") if c not in (b"", b".")]
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    stack = [os.open(root, flags | os.O_DIRECTORY)]
    hops = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == b"..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            if not pending:
                return os.open(name, flags | os.O_NONBLOCK, dir_fd=stack[-1])
            try:
                stack.append(os.open(name, flags | os.O_DIRECTORY, dir_fd=stack[-1]))
                continue
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if not stat.S_ISLNK(os.lstat(name, dir_fd=stack[-1]).st_mode):
                    raise
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise OSError(errno.ELOOP, "too many symlinks", os.fsdecode(path))
            target = os.readlink(name, dir_fd=stack[-1])
            if target.startswith(b"/"):
                while len(stack) > 1:
                    os.close(stack.pop())
            pending[:0] = [c for c in target.split(b"/") if c not in (b"", b".")]
        return os.dup(stack[0])
    finally:
        for fd in stack:
            os.close(fd)


# --- the expected tree ---------------------------------------------------------------------


@dataclass
class ExpectedTree:
    """What a committed snapshot's ``fs`` must hold, folded from layer manifests.

    ``entries`` is keyed by the real path (no symlink on the way, as ``resolve`` gives it);
    ``implicit`` are directories the applier created for a deeper entry (their metadata is not
    recorded, only that they are directories); ``opaque`` are directories this layer marked
    opaque (overlayfs: ``trusted.overlay.opaque=y``). In overlay form a record of kind ``w`` is
    a whiteout device (0/0 char device) the layer holds.
    """

    entries: dict[bytes, ManifestRecord]
    implicit: set[bytes]
    opaque: set[bytes]

    @classmethod
    def empty(cls) -> ExpectedTree:
        return cls({}, set(), set())

    def copy(self) -> ExpectedTree:
        return ExpectedTree(dict(self.entries), set(self.implicit), set(self.opaque))

    def resolve(self, path: bytes) -> bytes:
        """The real path ``path`` names in this tree: symlinks of the parent components resolve
        inside the root (an absolute target from the root, ``..`` stops at it), the final
        component is never followed, as the applier resolves (see ``open_in_root``)."""
        pending = [c for c in path.split(b"/") if c not in (b"", b".")]
        cur: list[bytes] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name == b"..":
                if cur:
                    cur.pop()
                continue
            if not pending:
                cur.append(name)
                break
            rec = self.entries.get(b"/".join([*cur, name]))
            if rec is not None and rec.kind == "l" and rec.link is not None:
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise StoreError(f"manifest path {path!r}: too many symlinks on the way")
                if rec.link.startswith(b"/"):
                    cur = []
                pending[:0] = [c for c in rec.link.split(b"/") if c not in (b"", b".")]
                continue
            cur.append(name)
        return b"/".join(cur)

    def _drop_below(self, path: bytes, keep: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        prefix = path + b"/" if path else b""
        for p in [p for p in self.entries if p.startswith(prefix) and p != path]:
            if p not in keep:
                del self.entries[p]
                self.implicit.discard(p)
                self.opaque.discard(p)

    def _ensure_parents(self, path: bytes) -> None:
        parts = path.split(b"/")[:-1]
        for i in range(1, len(parts) + 1):
            p = b"/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = ManifestRecord("d", p, 0, 0, 0, 0, 0, None, None, ())
                self.implicit.add(p)

    def apply(self, records: tuple[ManifestRecord, ...], *, flatten: bool) -> None:
        """Fold one layer's records onto this tree, as the applier applied them: ``flatten``
        (native snapshotter) deletes whited-out paths and a opaque directory's lower entries;
        otherwise (overlayfs, this tree holds the layer alone) whiteouts are devices and opaque
        directories are marked. Whiteouts and opaque markers hide lower layers only
        (image-spec ``layer.md#whiteouts``): what this layer wrote stays."""
        written: set[bytes] = set()
        self.opaque.clear()
        for r in records:
            path = self.resolve(r.path)
            if r.kind == "w":
                if path in written:
                    continue
                if flatten:
                    self.entries.pop(path, None)
                    self.implicit.discard(path)
                    self._drop_below(path)
                elif path not in self.entries:
                    self._ensure_parents(path)
                    self.entries[path] = dataclasses.replace(r, path=path)
                continue
            if r.kind == "o":
                if flatten:
                    self._drop_below(path, written)
                else:
                    self.opaque.add(path)
                if path not in self.entries:
                    self._ensure_parents(path)
                    self.entries[path] = ManifestRecord("d", path, 0, 0, 0, 0, 0, None, None, ())
                    self.implicit.add(path)
                continue
            old = self.entries.get(path)
            if old is not None and old.kind == "d" and r.kind != "d":
                self._drop_below(path)
            rec = dataclasses.replace(r, path=path)
            if r.kind == "h" and r.link is not None:
                target = self.entries.get(self.resolve(r.link))
                # One inode: the link has its target's metadata (and content) from now on,
                # even if a later entry replaces the target's name.
                if target is not None and target.kind not in ("d", "w"):
                    rec = dataclasses.replace(target, path=path)
                else:
                    rec = dataclasses.replace(r, path=path, kind="f")
            self._ensure_parents(path)
            self.entries[path] = rec
            self.implicit.discard(path)
            written.add(path)


def expected_tree(
    snap: Snapshotter, chain: Digest, cache: dict[Digest, ExpectedTree | None] | None = None
) -> ExpectedTree | None:
    """What the committed snapshot ``chain`` of ``snap`` must hold: its own manifest folded
    onto nothing (overlayfs: the directory holds that layer alone) or its chain's manifests
    folded bottom first (native: the directory holds the flattened tree). None when a manifest
    is missing (a layer unpacked by an older fastdist). ``cache`` keeps the folds of a walk
    over many snapshots (parents first, so a deep chain folds without deep recursion)."""
    cache = {} if cache is None else cache
    if chain in cache:
        return cache[chain]
    flatten = snap.apply_mode == "flatten"
    data = snap.manifest(chain)
    tree: ExpectedTree | None = None
    if data is not None:
        records = parse_manifest(data, what=f"snapshot {chain} manifest")
        if flatten:
            parent = snap.parent(chain)
            below = ExpectedTree.empty() if parent is None else expected_tree(snap, parent, cache)
            tree = None if below is None else below.copy()
        else:
            tree = ExpectedTree.empty()
        if tree is not None:
            tree.apply(records, flatten=flatten)
    cache[chain] = tree
    return tree
