"""The layer file manifest the Rust applier records: parsed into frozen records.

The applier fingerprints every regular file with xxh3-128 as it writes it (rust/src/manifest.rs
defines the text form); the manifest is committed beside the layer's ``fs``
(``Snapshotter.manifest``). The Python ``xxhash`` package computes the same xxh3-128, so what
Rust recorded can be re-checked here (``check --deep``), and the fingerprints key the file index
that dedup builds on.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote_to_bytes

import xxhash

from .errors import StoreError

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
