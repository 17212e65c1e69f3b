"""Filesystem helpers shared by the local store: private directories, file locks, atomic writes.

Every directory of the store is created 0700 (design.md §7). Locks are ``flock`` locks on small
files, so they work across processes *and* across threads of one process (each acquisition opens
its own file description); within one thread a lock is re-entrant, so a caller holding a chain
lock may call a method that takes it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StoreError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/lib/fastdist")
DIR_MODE = 0o700


def default_root() -> Path:
    """``$FASTDIST_ROOT`` or ``/var/lib/fastdist`` (the CLI's ``--root`` overrides both)."""
    env = os.environ.get("FASTDIST_ROOT")
    return Path(env) if env else DEFAULT_ROOT


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; an existing directory is kept."""
    # Path.mkdir(parents=True) would give the parents the umask's mode; make each one 0700.
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                if not d.is_dir():
                    raise
    except OSError as e:
        raise StoreError(f"cannot create store directory {path}: {e.strerror}") from e
    return path


def ensure_root(root: Path) -> Path:
    """Create the store root 0700 and tighten its mode if it already existed looser."""
    ensure_dir(root)
    try:
        st = root.stat()
        if stat.S_IMODE(st.st_mode) != DIR_MODE and st.st_uid == os.getuid():
            os.chmod(root, DIR_MODE)
    except OSError as e:
        raise StoreError(f"cannot secure store root {root}: {e.strerror}") from e
    return root


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600, *, sync: bool = True) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it (unless ``sync=False``: caches
    that may be lost or torn) and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_missing():
            os.unlink(tmp)
        raise


def _suppress_missing() -> contextlib.suppress:
    return contextlib.suppress(FileNotFoundError)


# --- locks ----------------------------------------------------------------------------------------
_held = threading.local()


def _held_counts() -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] | None = getattr(_held, "counts", None)
    if counts is None:
        counts = {}
        _held.counts = counts
    return counts


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing).

    With ``reentrant=True`` a thread already holding the lock gets it again at once (a count);
    otherwise every acquisition is a separate flock, which conflicts even within one thread.

    If ``unlink_on_release`` was requested by the holder (see ``release(unlink=True)``), the lock
    file is removed while still held; a waiter that then acquires the old, unlinked inode notices
    (its fd no longer matches the path) and retries on a fresh file, so two holders never coexist.
    """

    def __init__(self, path: Path, *, reentrant: bool = False) -> None:
        self.path = path
        self.reentrant = reentrant
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        key = str(self.path)
        counts = _held_counts()
        if self.reentrant and key in counts:
            fd, n = counts[key]
            counts[key] = (fd, n + 1)
            self._fd = fd
            return True
        while True:
            try:
                ensure_dir(self.path.parent)
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
                )
            except FileNotFoundError:
                continue  # the directory was removed between mkdir and open: try again
            except OSError as e:
                raise StoreError(f"cannot open lock {self.path}: {e.strerror}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) and not blocking:
                    return False
                raise StoreError(f"cannot lock {self.path}: {e.strerror}") from e
            # The previous holder may have unlinked the file after we opened it.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                if self.reentrant:
                    counts[key] = (fd, 1)
                self._fd = fd
                return True
            os.close(fd)

    def release(self, unlink: bool = False) -> None:
        """Drop the lock; ``unlink`` removes the lock file first (only by the outermost holder)."""
        if self._fd is None:
            return
        fd, n = self._fd, 1
        self._fd = None
        if self.reentrant:
            key = str(self.path)
            counts = _held_counts()
            fd, n = counts.get(key, (fd, 1))
            if n > 1:
                counts[key] = (fd, n - 1)
                return
            counts.pop(key, None)
        try:
            if unlink:
                with _suppress_missing():
                    os.unlink(self.path)
        finally:
            os.close(fd)  # closing the last fd of the description drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- removal of trees with odd permissions --------------------------------------------------------
def rmtree(path: Path) -> None:
    """Remove a tree, fixing directory modes that stop the removal (a layer may ship 0500 dirs).

    Symlinks are never followed (``shutil.rmtree`` uses ``O_NOFOLLOW`` dir fds on Linux).
    """
    import shutil  # here: a pull of a present image never removes anything

    def fix(func: Callable[..., Any], p: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, PermissionError):
            parent = os.path.dirname(p)
            try:
                os.chmod(parent, 0o700)
                if os.path.isdir(p) and not os.path.islink(p):
                    os.chmod(p, 0o700)
                    shutil.rmtree(p, **_onexc(fix))
                else:
                    func(p)
                return
            except OSError:
                pass
        raise exc

    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    shutil.rmtree(path, **_onexc(fix))


def _onexc(fix: Callable[[Callable[..., Any], str, BaseException], None]) -> dict[str, Any]:
    if sys.version_info >= (3, 12):
        return {"onexc": fix}

    def onerror(func: Callable[..., Any], p: str, info: Any) -> None:
        fix(func, p, info[1])

    return {"onerror": onerror}


def tree_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (like ``du -s --bytes`` on blocks): hardlinks counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    k = (st.st_dev, st.st_ino)
                    if k in seen:
                        continue
                    seen.add(k)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return total
