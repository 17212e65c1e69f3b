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
from collections.abc import Callable, Iterator
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
    """Create ``path`` (and missing parents) with mode 0700; an existing directory is kept.

    ``path`` itself must end up a real directory: a symlink in its place is refused (a store
    directory is never trusted through a symlink, design.md §7)."""
    # Path.mkdir(parents=True) would give the parents the umask's mode; make each one 0700.
    # A concurrent holder may remove what was just made (an ingest directory, after its commit):
    # then make it again, a bounded number of times.
    for attempt in range(_ENSURE_DIR_TRIES):
        try:
            st = _make_dirs(path)
            break
        except FileNotFoundError as e:
            if attempt + 1 < _ENSURE_DIR_TRIES:
                continue
            error: OSError = e
        except OSError as e:
            error = e
        raise StoreError(
            f"cannot create store directory {path}: {error.strerror}",
            hint="pass a directory you can create (or own) with --root or $FASTDIST_ROOT",
        ) from error
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"store directory {path} is not a directory (a symlink?)",
            hint="the store is not trusted through symlinks; remove it, or choose another --root",
        )
    return path


_ENSURE_DIR_TRIES = 20


def _make_dirs(path: Path) -> os.stat_result:
    """mkdir ``path`` and its missing parents 0700; the ``lstat`` of ``path`` afterwards."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.lexists(d):
                # It existed and is gone again (removed by a concurrent pull): make it again.
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(d)) from None
            if not d.is_dir():
                raise
    return os.lstat(path)


def ensure_root(root: Path) -> Path:
    """Create the store root 0700, or check an existing one; return its resolved path.

    As sshd's ``StrictModes``: the root must be a directory owned by this user with no access for
    group or others, and every directory above it (also those holding a symlink on the way) must
    be owned by this user or root and writable by no one else, unless sticky (``/tmp``: others
    cannot rename or remove what is ours). Anything else is refused with ``StoreError``, never
    repaired: an existing root is never chmod-ed (``--root /etc`` must not touch ``/etc``), only a
    root this call creates gets its mode (0700, from ``mkdir``).
    """
    root = Path(os.path.abspath(root))
    uid = os.geteuid()
    # The parents that exist already are checked before anything is created below them.
    _check_parents(root, uid)
    try:
        exists = os.path.lexists(root)
        if not exists:
            ensure_dir(root.parent)
            with contextlib.suppress(FileExistsError):  # a racing process made it: check it
                os.mkdir(root, DIR_MODE)
        real = Path(os.path.realpath(root))
        st = os.lstat(real)
    except OSError as e:
        raise StoreError(
            f"cannot open store root {root}: {e.strerror}",
            hint="pass a directory you own with --root or $FASTDIST_ROOT",
        ) from e
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"store root {root} is not a directory",
            hint="pass a new path or a directory with --root or $FASTDIST_ROOT",
        )
    if st.st_uid != uid:
        raise StoreError(
            f"store root {root} is owned by uid {st.st_uid}, not by this user (uid {uid})",
            hint="another user could plant files in it; use a root you created, e.g. a new path",
        )
    if st.st_mode & 0o077:
        raise StoreError(
            f"store root {root} has mode {stat.S_IMODE(st.st_mode):04o}: it must be private (0700)",
            hint=f"if it is yours, run: chmod 700 {root}",
        )
    _check_parents(root, uid)
    return real


def _check_parents(root: Path, uid: int) -> None:
    """Every existing directory above ``root``, and above the target of each symlink on the way
    (the directories holding those symlinks), must be trusted (see ``ensure_root``)."""
    dirs: set[Path] = set()
    for p in (root, *root.parents):
        if os.path.lexists(p):
            real = Path(os.path.realpath(p))
            dirs.update(real.parents)
            if p != root:
                dirs.add(real)
    for d in sorted(dirs):
        _check_trusted_parent(root, d, uid)


def _check_trusted_parent(root: Path, d: Path, uid: int) -> None:
    try:
        st = os.stat(d)
    except OSError as e:
        raise StoreError(f"cannot check store root {root}: {d}: {e.strerror}") from e
    if st.st_uid not in (0, uid):
        raise StoreError(
            f"store root {root} is not safe: {d} is owned by uid {st.st_uid}",
            hint="that user could swap the store for its own; choose a root below directories "
            "owned by you or root",
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StoreError(
            f"store root {root} is not safe: {d} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint="they could swap the store for their own; choose a root below private directories",
        )


def open_beneath(
    root: Path, rel: Path | str, flags: int = os.O_RDONLY, *, create: bool = False
) -> int:
    """Open ``root/rel`` walking from ``root``'s fd one component at a time with ``O_NOFOLLOW``:
    no symlink inside the store is ever followed (a planted ``layers/<hex>/fs -> /etc`` fails
    with ``StoreError``). With ``create``, missing directories on the way (``rel`` included)
    are made 0700 from their parent's fd. Returns an fd (close-on-exec) the caller closes."""
    parts = [p for p in Path(rel).parts if p not in ("", ".")]
    if any(p in ("..", "/") for p in parts):
        raise StoreError(f"store path {rel} leaves the store")
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise StoreError(f"cannot open store root {root}: {e.strerror}") from e
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            f = (flags if last else os.O_RDONLY | os.O_DIRECTORY) | nofollow
            try:
                if create and (not last or flags & os.O_DIRECTORY):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, DIR_MODE, dir_fd=fd)
                nfd = os.open(name, f, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise StoreError(
                        f"store path {root / rel} is not trusted: {name} is a symlink or not a "
                        "directory",
                        hint="something other than fastdist changed the store; inspect it and run "
                        "fastdist check",
                    ) from e
                raise StoreError(f"cannot open {root / rel}: {e.strerror}") from e
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_beneath(root: Path, rel: Path | str, *, create: bool = False) -> Path:
    """``root / rel``, refused (``StoreError``) if it is reached through a symlink or is not a
    directory (see ``open_beneath``); with ``create``, made (0700) where missing."""
    os.close(open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY, create=create))
    return root / rel


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Make every file of ``path``'s filesystem durable (``syncfs``), in a group commit: callers
    that arrive together share one ``syncfs``, and none returns before a ``syncfs`` that
    *started after it was called* has finished (so it covers everything the caller wrote).

    One layer of a pull used to cost one ``syncfs`` in turn; layers that finish unpacking at
    about the same time now share one (``SyncGroup``)."""
    try:
        dev = os.stat(path).st_dev
    except OSError as e:
        raise StoreError(f"cannot sync {path}: {e.strerror}") from e
    with _groups_lock:
        group = _groups.get(dev)
        if group is None:
            group = _groups[dev] = SyncGroup(_syncfs_path)
    group.sync(path)


class SyncGroup:
    """Group commit of one sync operation (``sync_fn(path)``, for one filesystem).

    Generations: ``started`` syncs were begun, ``finished`` have ended, at most one runs. A
    caller needs the generation ``started + 1`` as it arrives (any sync already running may
    have begun before the caller's writes); the first caller to find no sync running starts the
    next one, for everyone waiting. A failed generation fails every caller that needed it.
    """

    def __init__(self, sync_fn: Callable[[Path], None]) -> None:
        self._sync_fn = sync_fn
        self._cond = threading.Condition()
        self.started = 0
        self.finished = 0
        self.waiting = 0  # callers inside sync() (for tests: who has arrived)
        self._running = False
        self._failed: dict[int, BaseException] = {}

    def sync(self, path: Path) -> None:
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
            try:
                need = self.started + 1
                while self.finished < need:
                    if self._running:
                        self._cond.wait()
                        continue
                    self._lead(path)
                failure = self._failed.get(need)
            finally:
                self.waiting -= 1
        if failure is not None:
            if isinstance(failure, StoreError):
                raise StoreError(failure.message, hint=failure.hint) from failure
            raise StoreError(f"cannot sync {path}: interrupted") from failure

    def _lead(self, path: Path) -> None:
        """Run one sync with ``_cond`` released (called, and returning, with it held); its
        failure is raised here and recorded for the other callers that needed it."""
        self._running = True
        self.started += 1
        gen = self.started
        self._cond.release()
        ok = False
        try:
            self._sync_fn(path)
            ok = True
        finally:
            # Only the exception propagating from sync_fn: exc_info alone would also name one
            # the caller is handling (a sync from an ``except`` block, e.g. a refetch).
            failure = None if ok else sys.exc_info()[1]
            self._cond.acquire()
            self._running = False
            self.finished = gen
            if failure is not None:
                self._failed[gen] = failure
                for old in [g for g in self._failed if g < gen - 1024]:
                    del self._failed[old]
            self._cond.notify_all()


_groups: dict[int, SyncGroup] = {}
_groups_lock = threading.Lock()


def _syncfs_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc().syncfs(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise StoreError(f"cannot sync {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


_libc_handle: Any = None


def libc() -> Any:
    """libc through ctypes, loaded on first use (most commands never unmount or sync).

    ``CDLL(None)`` is ``dlopen(NULL)``: the process's own symbols, libc's among them. It
    replaces ``ctypes.util.find_library("c")``, which runs ldconfig (and gcc) in subprocesses
    on every first call."""
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (``O_EXCL|O_NOFOLLOW``) holding ``data``, without fsync: for files of a
    private staging directory that becomes visible only by a rename after a ``syncfs``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600, *, sync: bool = True) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it (unless ``sync=False``: caches
    that may be lost or torn) and rename it over ``path``: the one atomic write of the package.

    The temp file is new (``O_EXCL|O_NOFOLLOW``, a random name): a file or link planted under
    that name in a directory others can write (a docker config's) is never opened, truncated or
    followed."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, mode)
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


# Crash-safety tests kill a pull or a dedup at named points (tests/integration/test_crash.py,
# test_dedup.py); read once, so hot paths only compare against None.
CRASH_AT = os.environ.get("FASTDIST_TEST_CRASH_AT") or None


def crash_point(name: str) -> None:
    """Kill this process here if the crash test asked for ``name`` (else nothing)."""
    if name == CRASH_AT:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing); ``shared=True`` takes it shared
    (many shared holders at once, none while an exclusive one holds it: the GC lock, gc.py).

    With ``reentrant=True`` a thread already holding the lock gets it again at once (a count);
    otherwise every acquisition is a separate flock, which conflicts even within one thread.

    If ``unlink_on_release`` was requested by the holder (see ``release(unlink=True)``), the lock
    file is removed while still held; a waiter that then acquires the old, unlinked inode notices
    (its fd no longer matches the path) and retries on a fresh file, so two holders never coexist.
    """

    def __init__(self, path: Path, *, reentrant: bool = False, shared: bool = False) -> None:
        if reentrant and shared:
            raise ValueError("a shared FileLock is not reentrant")
        self.path = path
        self.reentrant = reentrant
        self.shared = shared
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
                mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
                fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
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


def lstat_tree(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` (not ``root`` itself) with its ``lstat``, directories included;
    symlinks are never followed, and entries that vanish meanwhile are skipped."""
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
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                yield e.path, st


def tree_usage(path: Path) -> int:
    """Bytes on disk under ``path`` (like ``du -s --bytes`` on blocks): hardlinks counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for _, st in lstat_tree(str(path)):
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            k = (st.st_dev, st.st_ino)
            if k in seen:
                continue
            seen.add(k)
        total += st.st_blocks * 512
    return total
