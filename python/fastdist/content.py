"""The content store: blobs addressed by digest, written through resumable, verified ingests.

Layout under the store root (design.md §5)::

    content/blobs/sha256/<hex>        committed blobs, read-only (0444)
    content/ingest/<hex>/data         a partial download, kept across crashes for a Range resume
    content/ingest/<hex>/lock         flock: one writer per digest across processes and threads

A blob becomes visible only by ``rename`` after its digest and size were proved (containerd's
``content.Writer.Commit``); "already exists" is success, so ingesting is idempotent.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from . import _native
from .errors import DigestMismatchError, FastdistError, SizeMismatchError, StoreError
from .oci import Descriptor, Digest, parse_digest, sha256_digest
from .store import (
    FileLock,
    check_beneath,
    ensure_dir,
    ensure_root,
    fsync_dir,
    open_beneath,
    rmtree,
)

log = logging.getLogger(__name__)

BLOB_MODE = 0o444


def _hex(digest: Digest) -> str:
    # Re-validated here because the hex becomes a path component.
    return parse_digest(digest).split(":", 1)[1]


class ContentStore:
    """Blobs on disk under ``<root>/content``; safe for concurrent processes on one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        ensure_root(self.root)
        # Made and opened from the root's fd, never through a symlink inside the store.
        self.blobs_dir = check_beneath(self.root, "content/blobs/sha256", create=True)
        self.ingest_dir = check_beneath(self.root, "content/ingest", create=True)

    # --- reading ------------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        """Where the blob of ``digest`` lives once committed (it may not exist)."""
        return self.blobs_dir / _hex(digest)

    def exists(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def path(self, digest: Digest) -> Path:
        """The path of a committed blob; StoreError if it is not in the store."""
        p = self.blob_path(digest)
        if p.is_symlink():  # the store is never trusted through a symlink (design.md §7)
            raise StoreError(
                f"blob {digest} is a symlink in the content store",
                hint="something other than fastdist changed the store; run fastdist check",
            )
        if not p.is_file():
            raise StoreError(f"blob {digest} is not in the content store")
        return p

    def open_blob(self, digest: Digest) -> int | None:
        """An fd (read-only, close-on-exec) on the committed blob of ``digest``, or None if it
        is not in the store; the caller closes it. Opened relative to the store root's fd with
        no symlink followed (``store.open_beneath``), and refused unless it is a regular file.

        The fd keeps the blob's bytes readable whole even if a prune unlinks it meanwhile
        (blobs are never rewritten in place: replaced only by ``rename`` of identical bytes)."""
        name = _hex(digest)
        dfd = open_beneath(self.root, "content/blobs/sha256", os.O_RDONLY | os.O_DIRECTORY)
        try:
            # O_NONBLOCK: a FIFO planted in the store must not hang the open.
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(
                f"cannot open blob {digest}: {e.strerror}"
                + (" (a symlink in the content store)" if e.errno == errno.ELOOP else ""),
                hint="something other than fastdist changed the store; run fastdist check",
            ) from e
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(
                f"blob {digest} in the content store is not a regular file",
                hint="something other than fastdist changed the store; run fastdist check",
            )
        return fd

    def size(self, digest: Digest) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is not in the content store") from None

    def read_bytes(self, digest: Digest, limit: int) -> bytes:
        """Read a small blob (manifest, config) and verify it again: the disk is not trusted."""
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            raise StoreError(f"cannot read blob {digest}: {e.strerror}") from e
        if len(data) > limit:
            raise StoreError(f"blob {digest} is over the {limit}-byte limit for this read")
        actual = sha256_digest(data)
        if actual != digest:
            raise DigestMismatchError(
                f"blob {digest} in the content store is corrupt: its content hashes to {actual}",
                hint="fastdist check --repair removes it; then pull the image again",
            )
        return data

    def intact(self, digest: Digest) -> bool:
        """Whether the stored blob is readable and hashes to its name (reads all of it: for a
        blob that failed to read back, not on every pull)."""
        try:
            actual, _ = _native.sha256_file(str(self.path(digest)))
        except (OSError, FastdistError):
            return False
        return bool(actual == digest)

    def digests(self) -> Iterator[Digest]:
        """Every committed blob's digest."""
        for name in os.listdir(self.blobs_dir):
            d = f"sha256:{name}"
            try:
                yield parse_digest(d)
            except FastdistError:
                continue  # a stray file name is not a digest; skip it

    # --- writing ------------------------------------------------------------------------------
    def write_blob(self, digest: Digest, data: bytes, replace: bool = False) -> None:
        """Store an in-memory blob after checking it hashes to ``digest``; atomic and idempotent.
        ``replace``: write it even if a (corrupt) copy is stored, atomically over it."""
        actual = sha256_digest(data)
        if actual != digest:
            raise DigestMismatchError(f"blob {digest}: content hashes to {actual}")
        dest = self.blob_path(digest)
        if dest.is_file() and not replace:
            return
        tmp = self.ingest_dir / f".write-{_hex(digest)}.{os.getpid()}.{id(data):x}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), BLOB_MODE)
                os.fsync(f.fileno())
            os.replace(tmp, dest)  # identical content if another writer won the race
            fsync_dir(self.blobs_dir)
        except OSError as e:
            raise StoreError(f"cannot write blob {digest}: {e.strerror}") from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def flush(self) -> None:
        """Make every rename into ``blobs/`` so far durable (one directory fsync): those of
        ``Ingest.commit(durable=False)``, and blobs of other processes a pull relies on."""
        try:
            fsync_dir(self.blobs_dir)
        except OSError as e:
            raise StoreError(f"cannot sync {self.blobs_dir}: {e.strerror}") from e

    def ingest(self, desc: Descriptor) -> Ingest:
        """Open (or resume) the ingest of ``desc``, waiting for any other writer of that digest.

        When this returns, the caller holds the digest's lock; it should check ``exists`` (or
        ``Ingest.committed``) first: another process may have just finished the same blob.
        """
        return Ingest(self, desc)

    def delete(self, digest: Digest) -> None:
        """Remove a committed blob (missing is fine). GC decides what is unreferenced."""
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete blob {digest}: {e.strerror}") from e

    def _resumable_name(self, name: str) -> bool:
        try:
            return self.resumable(parse_digest(f"sha256:{name}"))
        except FastdistError:
            return False  # a stray name: never resumable

    def ingests(self) -> list[Digest]:
        """Digests that have an ingest directory (in progress or interrupted)."""
        out: list[Digest] = []
        for name in os.listdir(self.ingest_dir):
            if name.startswith("."):
                continue
            try:
                out.append(parse_digest(f"sha256:{name}"))
            except FastdistError:
                continue  # a stray name
        return out

    def being_fetched(self, digest: Digest) -> bool:
        """Whether a writer (a thread of this process or another process) holds the ingest
        lock of ``digest`` now: a hint, true at the moment it was probed."""
        lock_path = self.ingest_dir / _hex(digest) / "lock"
        if not lock_path.is_file():
            return False
        lock = FileLock(lock_path)
        if not lock.acquire(blocking=False):
            return True
        lock.release()
        return False

    def resumable(self, digest: Digest) -> bool:
        """Whether the ingest of ``digest`` holds bytes a pull could resume from: some data,
        and the blob not stored yet. Anything else there (a process killed between storing the
        blob and removing its ingest, or before it wrote a byte) is debris."""
        try:
            size = (self.ingest_dir / _hex(digest) / "data").stat().st_size
        except FileNotFoundError:
            return False
        return size > 0 and not self.exists(digest)

    def prune_ingests(self, older_than: float) -> int:
        """Remove ingests not in use: resumable ones untouched for ``older_than`` seconds, and
        every one that is not resumable (see ``resumable``) whatever its age.

        An ingest whose lock is held by a live writer is skipped. Returns how many were removed.
        """
        now = time.time()
        removed = 0
        for name in os.listdir(self.ingest_dir):
            path = self.ingest_dir / name
            if name.startswith(".write-"):
                # A crashed write_blob left its temp file behind.
                try:
                    if now - path.stat().st_mtime >= older_than:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
                continue
            lock = FileLock(path / "lock")
            data = path / "data"
            try:
                mtime = data.stat().st_mtime
            except FileNotFoundError:
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
            if now - mtime < older_than and self._resumable_name(name):
                continue
            if not lock.acquire(blocking=False):
                continue
            try:
                for child in path.iterdir():
                    if child.name != "lock":
                        rmtree(child)
                removed += 1
                lock.release(unlink=True)
                with contextlib.suppress(OSError):
                    path.rmdir()  # fails if someone started a new ingest of it meanwhile
            finally:
                lock.release()
        return removed


class Ingest:
    """A partial blob at ``content/ingest/<hex>/data``, held under the digest's lock.

    It is a fetcher ``BlobSink``: ``offset`` says where a resumed download continues, ``write``
    appends and hashes, ``write_at`` puts ranged chunks at their offsets and ``advance`` hashes
    the contiguous prefix as it grows. A ``LayerWriter`` may instead write into ``path`` itself
    (``tee_path``) and ``commit(verified=True)`` once it proved digest and size.

    Holes: once chunks land past the prefix (``prepare_ahead``), the file's size no longer
    says what is held. The prefix is then recorded in ``content/ingest/<hex>/prefix``
    (``record_prefix``, only ever growing, written after the bytes it covers), and whoever
    opens the ingest next (after a crash, or a failed pull) truncates ``data`` to it before
    anything reads it, so a file with holes is never taken as a resumed prefix.
    """

    PREFIX_EVERY = 4 << 20  # how often (bytes) the recorded prefix moves on

    def __init__(self, store: ContentStore, desc: Descriptor) -> None:
        self.store = store
        self.desc = desc
        self.dir = store.ingest_dir / _hex(desc.digest)
        self.path = self.dir / "data"
        self.prefix_path = self.dir / "prefix"
        self._lock = FileLock(self.dir / "lock")
        self._lock.acquire()
        self._fd: int | None = None
        self._hasher: _native.Sha256 | None = None
        self._prefix_fd: int | None = None
        self._recorded = 0
        self._write_lock = threading.Lock()
        self._done = False
        try:
            ensure_dir(self.dir)
            self._trim_to_recorded_prefix()
            self._offset = self.path.stat().st_size if self.path.exists() else 0
        except BaseException:
            self._lock.release()
            raise

    def _trim_to_recorded_prefix(self) -> None:
        """A recorded prefix (ranged writes were under way): cut ``data`` to it, drop the
        record. Symlinks are never followed (a planted one counts as no bytes held)."""
        try:
            fd = os.open(self.prefix_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise StoreError(f"cannot read {self.prefix_path}: {e.strerror}") from e
            held = 0
        else:
            try:
                text = os.read(fd, 64)
            finally:
                os.close(fd)
            held = int(text) if text.strip().isdigit() else 0
        try:
            data = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.fstat(data).st_size > held:
                    os.ftruncate(data, held)
                    log.info(
                        "ingest of %s: kept its recorded prefix (%d bytes)", self.desc.digest, held
                    )
            finally:
                os.close(data)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(
                f"cannot cut the ingest of {self.desc.digest} to its prefix: {e.strerror}",
                hint=f"remove {self.dir} and pull again",
            ) from e
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.prefix_path)

    # --- state --------------------------------------------------------------------------------
    @property
    def offset(self) -> int:
        """Bytes of the blob already present in order (where a Range request resumes)."""
        if self._fd is None:
            try:
                self._offset = self.path.stat().st_size
            except FileNotFoundError:
                self._offset = 0
        return self._offset

    @property
    def committed(self) -> bool:
        """Whether the blob is already in the store (then nothing needs to be fetched)."""
        return self.store.exists(self.desc.digest)

    # --- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Append ``data`` and hash it; refuses to grow past the descriptor's size."""
        with self._write_lock:
            fd, hasher = self._open()
            self._check_end(self._offset + len(data))
            self._pwrite(fd, data, self._offset)
            hasher.update(data)
            self._offset += len(data)

    def prepare_ahead(self, held: int | None = None) -> None:
        """Record the prefix (``held`` bytes: a ``LayerWriter``'s offset; by default this
        ingest's) before any byte lands past it (see the class docstring)."""
        with self._write_lock:
            if self._prefix_fd is not None:
                return
            try:
                self._prefix_fd = os.open(
                    self.prefix_path,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as e:
                raise StoreError(
                    f"cannot record the prefix of the ingest of {self.desc.digest}: {e.strerror}",
                    hint=f"remove {self.dir} and pull again",
                ) from e
            self._recorded = -1
        self.record_prefix(self.offset if held is None else held, force=True)

    def record_prefix(self, end: int, *, force: bool = False) -> None:
        """Record that ``[0, end)`` is held (every ``PREFIX_EVERY`` bytes, and at the end)."""
        fd = self._prefix_fd
        if fd is None or end <= self._recorded:
            return
        if not force and end - self._recorded < self.PREFIX_EVERY and end != self.desc.size:
            return
        try:
            # One write of a fixed width: a later value only ever replaces a smaller one.
            os.pwrite(fd, b"%020d" % end, 0)
        except OSError as e:
            raise StoreError(f"cannot record the prefix of {self.desc.digest}: {e.strerror}") from e
        self._recorded = end

    def write_at(self, offset: int, data: bytes) -> None:
        """Put a ranged chunk's ``data`` at ``offset`` (at or past the prefix), unhashed."""
        with self._write_lock:
            fd, _ = self._open()
            if offset < self._offset:
                raise StoreError(
                    f"ingest of {self.desc.digest}: write at {offset}, below its prefix "
                    f"({self._offset})"
                )
            self._check_end(offset + len(data))
            self._pwrite(fd, data, offset)

    def advance(self, end: int) -> None:
        """``[0, end)`` is written: hash the new part of the prefix (read back from the file)."""
        with self._write_lock:
            fd, hasher = self._open()
            self._check_end(end)
            while self._offset < end:
                n = min(end - self._offset, 1 << 20)
                try:
                    got = os.pread(fd, n, self._offset)
                except OSError as e:
                    raise StoreError(
                        f"cannot read ingest of {self.desc.digest}: {e.strerror}"
                    ) from e
                if not got:
                    raise StoreError(f"ingest of {self.desc.digest}: short at {self._offset}")
                hasher.update(got)
                self._offset += len(got)
        self.record_prefix(end)

    def _check_end(self, end: int) -> None:
        if end > self.desc.size:
            self.discard()
            raise SizeMismatchError(
                f"blob {self.desc.digest}: got at least {end} bytes, expected {self.desc.size}"
            )

    def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise StoreError(f"cannot write ingest of {self.desc.digest}: {e.strerror}") from e

    def _open(self) -> tuple[int, _native.Sha256]:
        self._check_open()
        if self._fd is None or self._hasher is None:
            self._open_file()
        assert self._fd is not None
        assert self._hasher is not None
        return self._fd, self._hasher

    def _open_file(self) -> None:
        hasher = _native.Sha256()
        try:
            # Written at offsets (no O_APPEND: Linux applies it to pwrite too).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open ingest of {self.desc.digest}: {e.strerror}") from e
        try:
            # A resumed ingest: hash the prefix once so the digest covers the whole blob.
            held = os.fstat(fd).st_size
            pos = 0
            while pos < held:
                got = os.pread(fd, min(held - pos, 1 << 20), pos)
                if not got:
                    break
                hasher.update(got)
                pos += len(got)
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot open ingest of {self.desc.digest}: {e.strerror}") from e
        self._fd = fd
        self._hasher = hasher
        self._offset = hasher.size

    def commit(
        self, verified: bool = False, *, data_synced: bool = False, durable: bool = True
    ) -> None:
        """Move the blob into the store after checking size and (unless ``verified``) digest.

        ``verified=True`` means the caller already hashed the same bytes (a LayerWriter tee).
        ``data_synced=True``: the caller made ``path``'s bytes durable already (a ``syncfs`` of
        its filesystem after the tee was written), so no fsync of the file. ``durable=False``
        skips the fsync of ``blobs/`` that makes the rename survive a power loss; the caller
        calls ``ContentStore.flush`` once before it records what relies on the blob (the blob
        is never torn either way, only its name may be lost, and then it is fetched again).
        An existing blob means success. On success the ingest is removed and the lock released;
        on a mismatch the wrong bytes are discarded and the error raised.
        """
        self._check_open()
        digest = self.desc.digest
        if self.store.exists(digest):
            self._finish()
            return
        try:
            if self._fd is not None:
                if not data_synced:
                    os.fsync(self._fd)
                    data_synced = True  # once: not again below
                self._close_files()
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != self.desc.size:
                if size > self.desc.size:
                    self.discard()
                raise SizeMismatchError(
                    f"blob {digest}: have {size} bytes, expected {self.desc.size}"
                )
            if not verified:
                if self._hasher is not None and self._hasher.size == size:
                    actual = self._hasher.digest()
                else:
                    actual, _ = _native.sha256_file(str(self.path))
                if actual != digest:
                    self.discard()
                    raise DigestMismatchError(
                        f"blob {digest}: content hashes to {actual}",
                        hint="the registry sent wrong bytes; pull again or report it",
                    )
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, BLOB_MODE)
                if not data_synced:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.path, self.store.blob_path(digest))
            if durable:
                fsync_dir(self.store.blobs_dir)
        except OSError as e:
            raise StoreError(f"cannot commit blob {digest}: {e.strerror}") from e
        log.debug("committed blob %s (%d bytes)", digest, self.desc.size)
        self._finish()

    def discard(self) -> None:
        """Throw the partial data away (its bytes are wrong); the lock is kept until close."""
        self._close_files()
        self._hasher = None
        self._offset = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.prefix_path)

    def close(self) -> None:
        """Release the lock, keeping partial data for a later resume (cut to the recorded
        prefix by the next ``Ingest`` of the digest)."""
        try:
            if self._fd is not None:
                self.record_prefix(self._offset, force=True)  # all of what this one hashed
            self._close_files()
        finally:
            self._lock.release()

    def _close_files(self) -> None:
        for name in ("_fd", "_prefix_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)

    def _finish(self) -> None:
        # Committed (by us or by someone else): remove the ingest dir under the lock.
        self._done = True
        self._close_files()
        for path in (self.path, self.prefix_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._lock.release(unlink=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # fails if a waiter already recreated its lock file here

    def _check_open(self) -> None:
        if self._done or not self._lock.held:
            raise StoreError(f"ingest of {self.desc.digest} is already closed")

    def __enter__(self) -> Ingest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
