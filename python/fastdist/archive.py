"""Save and load formats: docker-archive (``docker save``/``load``, both forms) and OCI image
layouts (a directory or a tar of one).

Writing (``write_archive``): one streaming pass, each blob read once from the content store and
checked against its digest while it is copied; nothing is re-serialised, so every digest of the
image is preserved. A docker-archive is written in docker ≥ 25's form: an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256/…``) plus ``manifest.json`` and ``repositories``
whose paths point into ``blobs/``. One copy of each blob serves both kinds of reader: ``docker
load`` and ``podman load`` read ``manifest.json`` (both decompress layers that are compressed),
OCI tools (``skopeo``, ``umoci``) read the layout, and the manifest's digest survives the trip.

Reading (``open_layout``, ``read_images``): an archive is as untrusted as a registry (design.md
§7). A tar is read by our own header parser (``_TarReader``): only regular files and directories
are accepted (symlinks, hardlinks, devices are refused), names are normalised and may not be
absolute or contain ``..``, a duplicate name is refused, headers and JSON members are bounded.
Every regular member is hashed while it is staged inside the store (``content/ingest/.load-*``),
so a blob's digest and size are known before anything is committed; documents are parsed with
the same strict parsers as a pull's. An OCI layout directory is opened once and read through
no-follow directory fds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal

from . import _native, oci
from .errors import (
    DigestMismatchError,
    FastdistError,
    InvalidArgumentError,
    LimitExceededError,
    ManifestError,
    SizeMismatchError,
    StoreError,
    UnsafePathError,
    UnsupportedMediaTypeError,
)
from .oci import Descriptor, Digest, Platform
from .reference import Reference
from .store import rmtree

log = logging.getLogger(__name__)

Format = Literal["docker-archive", "oci-archive", "oci-dir"]
FORMATS: tuple[Format, ...] = ("docker-archive", "oci-archive", "oci-dir")

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
# image-spec annotations.md; containerd and docker >= 25 put the full name in the second.
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

_CHUNK = 1 << 20
_BLOCK = 512
#: Members an archive may hold, and bytes of a pax/GNU long-name header (a real one is tiny).
MAX_MEMBERS = 100_000
MAX_HEADER_BYTES = 1 << 20
#: manifest.json, index.json, repositories, oci-layout: read into memory, so bounded.
MAX_JSON_BYTES = oci.MAX_MANIFEST_BYTES


# --- writing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SaveEntry:
    """One image to save: its name (or None: a digest-only image gets no tag) and its blobs."""

    name: str | None
    manifest: Descriptor  # the platform manifest that is present (with its platform)
    config: Descriptor
    layers: tuple[Descriptor, ...]


BlobOpener = Callable[[Digest], BinaryIO]
#: Writes a member's bytes through the ``write`` it is given.
Fill = Callable[[Callable[[bytes], object]], object]


def _familiar(name: str) -> str:
    """docker's short form of a name (``alpine:3``, ``user/app:1``) for ``RepoTags``."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _index_json(entries: Sequence[SaveEntry]) -> bytes:
    manifests = []
    for e in entries:
        desc = e.manifest.to_json()
        if e.name is not None:
            ref = Reference.parse(e.name)
            desc["annotations"] = {CONTAINERD_NAME: e.name, REF_NAME: ref.tag or "latest"}
        manifests.append(desc)
    return json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests},
        sort_keys=True,
    ).encode()


def _docker_manifest_json(entries: Sequence[SaveEntry]) -> bytes:
    out = []
    for e in entries:
        out.append(
            {
                "Config": _blob_name(e.config.digest),
                "RepoTags": [_familiar(e.name)] if e.name is not None else [],
                "Layers": [_blob_name(d.digest) for d in e.layers],
            }
        )
    return json.dumps(out).encode()


def _repositories_json(entries: Sequence[SaveEntry]) -> bytes:
    repos: dict[str, dict[str, str]] = {}
    for e in entries:
        if e.name is None or not e.layers:
            continue
        ref = Reference.parse(e.name)
        short = _familiar(ref.name)
        repos.setdefault(short, {})[ref.tag or "latest"] = e.layers[-1].digest.split(":", 1)[1]
    return json.dumps(repos).encode()


def _blob_name(digest: Digest) -> str:
    return "blobs/sha256/" + oci.parse_digest(digest).split(":", 1)[1]


def _unique_blobs(entries: Sequence[SaveEntry]) -> list[Descriptor]:
    seen: dict[Digest, Descriptor] = {}
    for e in entries:
        for d in (e.manifest, e.config, *e.layers):
            seen.setdefault(d.digest, d)
    return list(seen.values())


def _copy_verified(src: BinaryIO, desc: Descriptor, write: Callable[[bytes], object]) -> None:
    """Copy a stored blob out, proving on the way that it still is what its digest says."""
    hasher = _native.Sha256()
    left = desc.size
    while left > 0:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            break
        hasher.update(chunk)
        write(chunk)
        left -= len(chunk)
    if left or src.read(1):
        raise SizeMismatchError(
            f"blob {desc.digest} in the content store is not {desc.size} bytes long",
            hint="fastdist check --repair removes what is corrupt; then pull the image again",
        )
    if hasher.digest() != desc.digest:
        raise DigestMismatchError(
            f"blob {desc.digest} in the content store is corrupt: it hashes to {hasher.digest()}",
            hint="fastdist check --repair removes what is corrupt; then pull the image again",
        )


def _tar_header(name: str, size: int, directory: bool = False) -> bytes:
    """A ustar header (names here are short and ASCII: ``blobs/sha256/<hex>`` at most)."""
    raw = name.encode()
    if len(raw) > 100:
        raise InvalidArgumentError(f"archive member name too long: {name!r}")
    hdr = bytearray(_BLOCK)
    hdr[0 : len(raw)] = raw
    hdr[100:108] = b"%07o\0" % (0o755 if directory else 0o644)
    hdr[108:116] = b"0000000\0"
    hdr[116:124] = b"0000000\0"
    hdr[124:136] = b"%011o\0" % (0 if directory else size) if size < 8**11 else _base256(size)
    hdr[136:148] = b"00000000000\0"
    hdr[156:157] = b"5" if directory else b"0"
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b" " * 8
    checksum = sum(hdr)
    hdr[148:156] = b"%06o\0 " % checksum
    return bytes(hdr)


def _base256(n: int) -> bytes:
    """GNU base-256 size field for members of 8 GiB and more."""
    return bytes([0x80]) + n.to_bytes(11, "big")


class _TarWriter:
    """A streaming tar writer (ustar headers, zero padding, two zero blocks at the end)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def directory(self, name: str) -> None:
        self._out.write(_tar_header(name.rstrip("/") + "/", 0, directory=True))

    def file(self, name: str, size: int, fill: Fill) -> None:
        self._out.write(_tar_header(name, size))
        written = 0

        def write(chunk: bytes) -> None:
            nonlocal written
            written += len(chunk)
            self._out.write(chunk)

        fill(write)
        if written != size:
            raise StoreError(f"archive member {name}: wrote {written} bytes, expected {size}")
        pad = -size % _BLOCK
        if pad:
            self._out.write(b"\0" * pad)

    def data(self, name: str, data: bytes) -> None:
        self.file(name, len(data), lambda w: w(data))

    def close(self) -> None:
        self._out.write(b"\0" * (2 * _BLOCK))


def write_archive(
    out: IO[bytes], entries: Sequence[SaveEntry], open_blob: BlobOpener, fmt: Format
) -> None:
    """Stream a docker-archive or oci-archive of ``entries`` to ``out``."""
    tar = _TarWriter(out)
    tar.data("oci-layout", OCI_LAYOUT)
    tar.data("index.json", _index_json(entries))
    if fmt == "docker-archive":
        tar.data("manifest.json", _docker_manifest_json(entries))
        tar.data("repositories", _repositories_json(entries))
    tar.directory("blobs")
    tar.directory("blobs/sha256")
    for desc in _unique_blobs(entries):
        with open_blob(desc.digest) as src:
            tar.file(
                _blob_name(desc.digest), desc.size, functools.partial(_copy_verified, src, desc)
            )
    tar.close()
    out.flush()


def write_layout_dir(dir_fd: int, entries: Sequence[SaveEntry], open_blob: BlobOpener) -> None:
    """Write an OCI image layout into the (empty, private) directory ``dir_fd``."""

    def put(fd: int, name: str, fill: Fill) -> None:
        f = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=fd,
        )
        with os.fdopen(f, "wb") as fh:
            fill(fh.write)
            fh.flush()
            os.fsync(fh.fileno())

    put(dir_fd, "oci-layout", lambda w: w(OCI_LAYOUT))
    os.mkdir("blobs", 0o755, dir_fd=dir_fd)
    blobs = os.open(
        "blobs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
    )
    try:
        os.mkdir("sha256", 0o755, dir_fd=blobs)
        sha = os.open(
            "sha256", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=blobs
        )
        try:
            for desc in _unique_blobs(entries):
                with open_blob(desc.digest) as src:
                    put(
                        sha,
                        desc.digest.split(":", 1)[1],
                        functools.partial(_copy_verified, src, desc),
                    )
            os.fsync(sha)
        finally:
            os.close(sha)
    finally:
        os.close(blobs)
    index = _index_json(entries)
    put(dir_fd, "index.json", lambda w: w(index))  # last: a layout is complete once it is there


# --- destinations ------------------------------------------------------------------------------
class _Destination:
    """A save destination made privately (0600 file / 0700 directory) under a temporary name in
    its parent directory and renamed into place only when complete; never written through a
    symlink (the temporary is created ``O_EXCL|O_NOFOLLOW`` by the parent's fd, and ``rename``
    replaces a name, it does not follow it)."""

    def __init__(self, path: Path, directory: bool) -> None:
        self.path = Path(os.path.abspath(path))
        self.directory = directory
        self._tmp = f".{self.path.name}.fastdist-{os.urandom(6).hex()}"
        self.parent_fd = -1
        self.fd = -1

    def _fail(self, why: str, hint: str | None = None) -> FastdistError:
        return StoreError(f"save destination {self.path}: {why}", hint=hint)

    def __enter__(self) -> _Destination:
        if not self.path.name:
            raise self._fail("is not a file name")
        try:
            self.parent_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if self.directory:
                if self._exists_nonempty():
                    raise self._fail("exists and is not an empty directory", "pass a new path")
                os.mkdir(self._tmp, 0o700, dir_fd=self.parent_fd)
                self.fd = os.open(
                    self._tmp,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=self.parent_fd,
                )
            else:
                self.fd = os.open(
                    self._tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=self.parent_fd,
                )
        except OSError as e:
            self._close()
            raise self._fail(f"cannot create it: {e.strerror}") from e
        except BaseException:
            self._close()
            raise
        return self

    def _exists_nonempty(self) -> bool:
        try:
            st = os.stat(self.path.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return True
        fd = os.open(
            self.path.name,
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=self.parent_fd,
        )
        try:
            return bool(os.listdir(fd))
        finally:
            os.close(fd)

    def commit(self) -> None:
        os.fsync(self.fd)
        try:
            os.rename(
                self._tmp, self.path.name, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd
            )
        except OSError as e:
            raise self._fail(f"cannot move it into place: {e.strerror}") from e
        os.fsync(self.parent_fd)
        self._tmp = ""

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if self._tmp and self.parent_fd >= 0:
                with contextlib.suppress(OSError):
                    if self.directory:
                        rmtree(Path(f"/proc/self/fd/{self.parent_fd}") / self._tmp)
                    else:
                        os.unlink(self._tmp, dir_fd=self.parent_fd)
        finally:
            self._close()

    def _close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.parent_fd = -1


def save(
    dest: str | os.PathLike[str] | IO[bytes],
    entries: Sequence[SaveEntry],
    open_blob: BlobOpener,
    fmt: Format = "docker-archive",
) -> None:
    """Write ``entries`` to ``dest``: a path (made atomically) or a binary stream (``-o -``)."""
    if fmt not in FORMATS:
        raise InvalidArgumentError(
            f"unknown archive format {fmt!r}", hint="use one of: " + ", ".join(FORMATS)
        )
    if not entries:
        raise InvalidArgumentError("nothing to save: no image given")
    if not isinstance(dest, (str, os.PathLike)):
        if fmt == "oci-dir":
            raise InvalidArgumentError(
                "an oci-dir cannot be written to a stream", hint="pass -o DIR"
            )
        write_archive(dest, entries, open_blob, fmt)
        return
    with _Destination(Path(dest), directory=fmt == "oci-dir") as d:
        if fmt == "oci-dir":
            write_layout_dir(d.fd, entries, open_blob)
        else:
            with os.fdopen(os.dup(d.fd), "wb", buffering=_CHUNK) as f:
                write_archive(f, entries, open_blob, fmt)
        d.commit()


# --- reading: the tar parser ------------------------------------------------------------------
def _bad_archive(what: str, hint: str | None = None) -> ManifestError:
    return ManifestError(f"archive: {what}", hint=hint or "the archive is malformed or hostile")


def clean_member_name(raw: str) -> str:
    """A tar member's name normalised (``./a//b/`` → ``a/b``); absolute names and ``..``
    components are refused: they would name something outside the archive."""
    if raw.startswith("/") or "\0" in raw:
        raise UnsafePathError(f"archive member {raw[:200]!r}: absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"archive member {raw[:200]!r}: '..' escapes the archive")
    return "/".join(parts)


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        if field[0] != 0x80:
            raise _bad_archive(f"negative or huge {what} in a tar header")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _bad_archive(f"bad {what} {text[:20]!r} in a tar header") from None


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    directory: bool
    link: str | None = None  # "a symlink" / "a hardlink": recorded, never followed or made


class _TarReader:
    """Reads a tar stream member by member from any readable (a pipe is fine)."""

    def __init__(self, src: IO[bytes]) -> None:
        self._src = src
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._src.read(n - len(buf))
            if not chunk:
                raise _bad_archive("truncated tar stream", "the archive is cut short")
            buf += chunk
        return bytes(buf)

    def _skip_rest(self) -> None:
        while self._left:
            self.read(min(_CHUNK, self._left))
        if self._pad:
            self._read_exact(self._pad)
            self._pad = 0

    def next(self) -> Member | None:
        """The next regular file or directory; None at the end of the archive."""
        self._skip_rest()
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            hdr = self._src.read(_BLOCK)
            if len(hdr) < _BLOCK:
                if not hdr:
                    return None  # some writers omit the end blocks
                hdr += self._read_exact(_BLOCK - len(hdr))
            if hdr == b"\0" * _BLOCK:
                return None
            stored = _octal(hdr[148:156], "checksum")
            if stored != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise _bad_archive("tar header checksum mismatch")
            kind = hdr[156:157]
            size = _octal(hdr[124:136], "size")
            if kind in (b"x", b"g", b"L"):
                if size > MAX_HEADER_BYTES:
                    raise LimitExceededError(
                        f"archive: a tar extended header of {size} bytes is over the "
                        f"{MAX_HEADER_BYTES}-byte limit"
                    )
                data = self._read_exact(size + (-size % _BLOCK))[:size]
                if kind == b"L":
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
                elif kind == b"x":
                    pax.update(_parse_pax(data))
                continue
            name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if hdr[257:262] == b"ustar":
                prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = f"{prefix}/{name}"
            name = pax.get("path", long_name or name)
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise _bad_archive("bad size in a pax header") from None
            clean = clean_member_name(name)
            if kind in (b"0", b"\0", b"7"):
                self._left, self._pad = size, -size % _BLOCK
                return Member(clean, size, False)
            if kind == b"5":
                self._left, self._pad = size, -size % _BLOCK
                return Member(clean, 0, True)
            if kind in (b"1", b"2"):
                # skopeo and podman write docker's legacy <id>/layer.tar as a symlink to the
                # real blob, which manifest.json names directly: noted, never followed.
                self._left, self._pad = size, -size % _BLOCK
                return Member(clean, 0, False, "a hardlink" if kind == b"1" else "a symlink")
            what = {b"3": "a device", b"4": "a device", b"6": "a FIFO"}.get(
                kind, f"of type {kind!r}"
            )
            raise UnsafePathError(
                f"archive member {clean[:200]!r} is {what}: only regular files and "
                "directories are accepted in an image archive"
            )

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current member's data (b"" at its end)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        data = self._src.read(n)
        if not data:
            raise _bad_archive("truncated tar stream", "the archive is cut short")
        self._left -= len(data)
        return data


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise _bad_archive("bad pax record") from None
        if length <= 0 or pos + length > len(data):
            raise _bad_archive("bad pax record length")
        rec = data[sp + 1 : pos + length - 1]
        key, _, value = rec.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


# --- reading: layouts --------------------------------------------------------------------------
@dataclass(frozen=True)
class StagedBlob:
    """A member staged inside the store, hashed while it was written."""

    path: Path
    digest: Digest
    size: int


class Layout:
    """What an archive or layout directory holds: small documents by name, and blobs staged
    in a private directory inside the store, by member name and by digest."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.by_name: dict[str, StagedBlob] = {}
        self.by_digest: dict[Digest, StagedBlob] = {}
        self.links: dict[str, str] = {}
        self._n = 0

    def note_link(self, name: str, what: str) -> None:
        if name in self.by_name or name in self.links:
            raise _bad_archive(f"duplicate member {name!r}")
        self.links[name] = what

    def refuse_link(self, name: str, where: str) -> None:
        if name in self.links:
            raise UnsafePathError(
                f"archive: {where}: member {name[:200]!r} is {self.links[name]}: links in an "
                "image archive are not followed",
                hint="the archive is malformed or hostile",
            )

    def stage(self, name: str, read: Callable[[int], bytes], budget: list[int]) -> StagedBlob:
        if name in self.by_name or name in self.links:
            raise _bad_archive(f"duplicate member {name!r}")
        self._n += 1
        path = self.staging / f"m{self._n}"
        hasher = _native.Sha256()
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb", buffering=0) as f:
            while chunk := read(_CHUNK):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise LimitExceededError(
                        "archive: its members add up to more than the per-load limit "
                        "(max_pull_bytes)",
                        hint="raise Client(max_pull_bytes=...) only if you trust this archive",
                    )
                hasher.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        blob = StagedBlob(path, oci.parse_digest(hasher.digest()), hasher.size)
        self.by_name[name] = blob
        self.by_digest.setdefault(blob.digest, blob)
        return blob

    def document(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes | None:
        self.refuse_link(name, name)
        blob = self.by_name.get(name)
        if blob is None:
            return None
        return self._read(blob, limit, name)

    def blob(self, desc: Descriptor, where: str) -> StagedBlob:
        """The staged blob ``desc`` names, checked against its size (its digest is its name)."""
        self.refuse_link(_blob_name(desc.digest), where)
        blob = self.by_name.get(_blob_name(desc.digest)) or self.by_digest.get(desc.digest)
        if blob is None:
            raise _bad_archive(f"{where}: blob {desc.digest} is missing from the archive")
        if blob.digest != desc.digest:
            raise DigestMismatchError(
                f"archive: {where}: blob {_blob_name(desc.digest)} hashes to {blob.digest}, "
                f"not {desc.digest}",
                hint="the archive is corrupt or was tampered with",
            )
        if blob.size != desc.size:
            raise SizeMismatchError(
                f"archive: {where}: blob {desc.digest} is {blob.size} bytes, the descriptor "
                f"says {desc.size}"
            )
        return blob

    def read_blob(self, desc: Descriptor, where: str, limit: int) -> bytes:
        if desc.size > limit:
            raise LimitExceededError(
                f"archive: {where}: {desc.digest} is {desc.size} bytes, over the {limit}-byte "
                "limit for a document"
            )
        return self._read(self.blob(desc, where), limit, where)

    @staticmethod
    def _read(blob: StagedBlob, limit: int, what: str) -> bytes:
        if blob.size > limit:
            raise LimitExceededError(
                f"archive: {what} is {blob.size} bytes, over the {limit}-byte limit"
            )
        with open(blob.path, "rb") as f:
            return f.read(limit + 1)


def stage_tar(src: IO[bytes], layout: Layout, max_bytes: int) -> None:
    """Stage every regular member of the tar stream ``src`` into ``layout``."""
    reader = _TarReader(src)
    budget = [max_bytes]
    members = 0
    while (m := reader.next()) is not None:
        members += 1
        if members > MAX_MEMBERS:
            raise LimitExceededError(f"archive: more than {MAX_MEMBERS} members")
        if m.directory:
            continue
        if m.link is not None:
            layout.note_link(m.name, m.link)
            continue
        layout.stage(m.name, reader.read, budget)


def stage_layout_dir(path: Path, layout: Layout, max_bytes: int) -> None:
    """Stage an OCI layout directory's ``oci-layout``, ``index.json`` and ``blobs/sha256/*``
    into ``layout``, opening every component without following symlinks."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    budget = [max_bytes]

    def stage_file(dir_fd: int, name: str, as_name: str) -> None:
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePathError(f"layout {path}: {as_name} is a symlink") from e
            if e.errno == errno.ENOENT:
                return
            raise StoreError(f"layout {path}: cannot open {as_name}: {e.strerror}") from e
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UnsafePathError(f"layout {path}: {as_name} is not a regular file")
            layout.stage(as_name, f.read, budget)

    try:
        root = os.open(path, flags | os.O_DIRECTORY)
    except OSError as e:
        raise StoreError(f"layout {path}: cannot open it: {e.strerror}") from e
    try:
        for name in ("oci-layout", "index.json", "manifest.json", "repositories"):
            stage_file(root, name, name)
        try:
            blobs = os.open("blobs/sha256", flags | os.O_DIRECTORY, dir_fd=root)
        except OSError as e:
            raise _bad_archive(f"layout {path} has no blobs/sha256 directory ({e.strerror})") from e
        try:
            for name in sorted(os.listdir(blobs)):
                if oci.is_digest(f"sha256:{name}"):
                    stage_file(blobs, name, f"blobs/sha256/{name}")
        finally:
            os.close(blobs)
    finally:
        os.close(root)


# --- reading: images ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedImage:
    """One image found in an archive, its documents verified (blobs still staged)."""

    names: tuple[str, ...]
    target: Descriptor
    target_bytes: bytes
    manifest_descriptor: Descriptor
    manifest: oci.Manifest
    manifest_bytes: bytes
    config_bytes: bytes
    layers: tuple[StagedBlob, ...]


def _sniff_layer_type(blob: StagedBlob) -> str:
    """A docker-archive layer's media type from its first bytes (docker writes plain tars;
    other writers compress)."""
    with open(blob.path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return oci.OCI_LAYER_GZIP
    if head == b"\x28\xb5\x2f\xfd":
        return oci.OCI_LAYER_ZSTD
    return oci.OCI_LAYER


def _name_of(annotations: Mapping[str, str], where: str) -> str | None:
    full = annotations.get(CONTAINERD_NAME)
    ref = annotations.get(REF_NAME)
    for cand in (full, ref):
        if cand and ("/" in cand or ":" in cand or "@" in cand):
            try:
                return str(Reference.parse(cand))
            except FastdistError:
                log.warning("%s: ignoring unusable image name %r", where, cand[:200])
    return None


def _finish_image(
    layout: Layout,
    names: tuple[str, ...],
    target: Descriptor,
    target_bytes: bytes,
    manifest_desc: Descriptor,
    manifest_bytes: bytes,
    manifest: oci.Manifest,
) -> LoadedImage:
    where = f"image {names[0] if names else manifest_desc.digest}"
    cfg = manifest.config
    if cfg.media_type not in oci.CONFIG_TYPES:
        raise UnsupportedMediaTypeError(
            f"archive: {where}: unsupported config media type {cfg.media_type!r}"
        )
    config_bytes = layout.read_blob(cfg, f"{where} config", oci.MAX_CONFIG_BYTES)
    config = oci.parse_config(config_bytes)
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"archive: {where}: {len(manifest.layers)} layers but the config lists "
            f"{len(config.diff_ids)} diff_ids"
        )
    layers = []
    for i, desc in enumerate(manifest.layers):
        if desc.media_type not in oci.LAYER_TYPES:
            raise UnsupportedMediaTypeError(
                f"archive: {where}: layer {desc.digest} has unsupported media type "
                f"{desc.media_type!r}"
            )
        layers.append(layout.blob(desc, f"{where} layer {i}"))
    return LoadedImage(
        names,
        target,
        target_bytes,
        manifest_desc,
        manifest,
        manifest_bytes,
        config_bytes,
        tuple(layers),
    )


def _from_index(layout: Layout, index_bytes: bytes, platform: Platform) -> list[LoadedImage]:
    index = oci.parse_document(index_bytes, None)
    if not isinstance(index, oci.Index):
        raise _bad_archive("index.json is not an image index")
    out = []
    for i, desc in enumerate(index.manifests):
        where = f"index.json manifests[{i}]"
        names = tuple(n for n in [_name_of(desc.annotations, where)] if n)
        data = layout.read_blob(desc, where, oci.MAX_MANIFEST_BYTES)
        doc = oci.parse_document(data, desc.media_type)
        if isinstance(doc, oci.Index):
            # One level only: a nested index's children must be manifests (no cycles).
            chosen = _pick_platform(doc, platform, where)
            mdata = layout.read_blob(chosen, f"{where} {chosen.digest}", oci.MAX_MANIFEST_BYTES)
            manifest = oci.parse_document(mdata, chosen.media_type)
            if not isinstance(manifest, oci.Manifest):
                raise _bad_archive(f"{where}: an index inside an index is not supported")
            out.append(_finish_image(layout, names, desc, data, chosen, mdata, manifest))
        else:
            out.append(_finish_image(layout, names, desc, data, desc, data, doc))
    return out


def _pick_platform(index: oci.Index, platform: Platform, where: str) -> Descriptor:
    for desc in index.manifests:
        if desc.platform is not None and platform.matches(desc.platform):
            return desc
    raise ManifestError(
        f"archive: {where}: the index has no manifest for {platform.normalized()}",
        hint="save the image for this platform",
    )


def _from_docker_manifest(layout: Layout, data: bytes) -> list[LoadedImage]:
    """The old docker-archive form: ``manifest.json`` naming config and layer files by path.
    Its layers are plain tars, so each layer's digest is its diff_id: an OCI manifest is made
    for them (deterministically, so loading the same archive twice gives the same digest) and
    the layers are stored as they are, not recompressed."""
    entries = oci.parse_json(data, MAX_JSON_BYTES, "manifest.json")
    if not isinstance(entries, list):
        raise _bad_archive("manifest.json is not a list")
    out = []
    for i, raw in enumerate(entries):
        where = f"manifest.json[{i}]"
        if not isinstance(raw, dict):
            raise _bad_archive(f"{where} is not an object")
        cfg_name = raw.get("Config")
        layer_names = raw.get("Layers")
        tags = raw.get("RepoTags") or []
        if (
            not isinstance(cfg_name, str)
            or not isinstance(layer_names, list)
            or not isinstance(tags, list)
        ):
            raise _bad_archive(f"{where}: Config, Layers or RepoTags has the wrong type")
        cfg_blob = _member(layout, cfg_name, f"{where} Config")
        layers = [_member(layout, n, f"{where} Layers") for n in layer_names]
        layer_descs = [Descriptor(_sniff_layer_type(b), b.digest, b.size) for b in layers]
        config_desc = Descriptor(oci.OCI_CONFIG, cfg_blob.digest, cfg_blob.size)
        manifest_bytes = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [d.to_json() for d in layer_descs],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        manifest = oci.parse_document(manifest_bytes, oci.OCI_MANIFEST)
        assert isinstance(manifest, oci.Manifest)
        names = []
        for t in tags:
            if not isinstance(t, str):
                raise _bad_archive(f"{where}: RepoTags holds a non-string")
            names.append(str(Reference.parse(t)))
        desc = Descriptor(oci.OCI_MANIFEST, oci.sha256_digest(manifest_bytes), len(manifest_bytes))
        out.append(
            _finish_image(
                layout, tuple(names), desc, manifest_bytes, desc, manifest_bytes, manifest
            )
        )
    return out


def _member(layout: Layout, name: str, where: str) -> StagedBlob:
    clean = clean_member_name(name)
    layout.refuse_link(clean, where)
    blob = layout.by_name.get(clean)
    if blob is None:
        raise _bad_archive(f"{where}: {name[:200]!r} is not in the archive")
    return blob


def read_images(layout: Layout, platform: Platform) -> list[LoadedImage]:
    """Every image the staged archive holds, documents verified. An OCI ``index.json`` is
    preferred (it keeps the manifests' own digests); ``manifest.json`` supplies the names
    docker writes only there (``RepoTags``) or, alone, is the old docker-archive form."""
    index = layout.document("index.json")
    docker = layout.document("manifest.json")
    if index is None and docker is None:
        raise _bad_archive(
            "neither index.json nor manifest.json found",
            hint="load takes a docker-archive (docker save), an OCI layout or an oci-archive",
        )
    if index is None:
        assert docker is not None
        return _from_docker_manifest(layout, docker)
    images = _from_index(layout, index, platform)
    if docker is not None:
        # docker >= 25: names in manifest.json, matched to the layout's manifests by config.
        tags: dict[Digest, list[str]] = {}
        for img in _from_docker_manifest(layout, docker):
            tags.setdefault(img.manifest.config.digest, []).extend(img.names)
        images = [
            img if img.names else _renamed(img, tuple(tags.get(img.manifest.config.digest, ())))
            for img in images
        ]
    return images


def _renamed(img: LoadedImage, names: tuple[str, ...]) -> LoadedImage:
    return dataclasses.replace(img, names=names)


@contextlib.contextmanager
def open_layout(
    source: str | os.PathLike[str] | IO[bytes], staging: Path, max_bytes: int
) -> Iterator[Layout]:
    """Stage ``source`` (a tar path, a layout directory, or a binary stream) into ``staging``
    (a new private directory, removed on exit)."""
    os.mkdir(staging, 0o700)
    try:
        layout = Layout(staging)
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            try:
                st = os.stat(path)
            except OSError as e:
                raise StoreError(f"cannot load {path}: {e.strerror}") from e
            if stat.S_ISDIR(st.st_mode):
                stage_layout_dir(path, layout, max_bytes)
            else:
                with open(path, "rb") as f:
                    stage_tar(f, layout, max_bytes)
        else:
            stage_tar(source, layout, max_bytes)
        yield layout
    finally:
        rmtree(staging)


__all__ = [
    "FORMATS",
    "Format",
    "Layout",
    "LoadedImage",
    "SaveEntry",
    "open_layout",
    "read_images",
    "save",
]
