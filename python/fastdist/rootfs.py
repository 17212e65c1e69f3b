"""Safe access to files inside a container root filesystem, before the container starts.

Every path is resolved inside the root component by component through directory fds opened with
``O_PATH | O_NOFOLLOW | O_DIRECTORY`` (design.md §7), the way ``openat2(RESOLVE_IN_ROOT)`` would:
a symlink is read with ``readlinkat`` and its target is resolved again *inside the root*
(absolute targets restart at the root, ``..`` never climbs above it). So an image whose
``/etc/passwd`` is a symlink to ``/etc/shadow`` reads the image's own shadow file, never the host's,
and ``mkdir -p`` of a workdir below a symlink to ``/../../tmp/x`` creates ``<root>/tmp/x``.

The rootfs is not being changed by anyone else while we look (the container has not started), so a
swapped component can at worst make an ``O_NOFOLLOW``/``O_DIRECTORY`` open fail; it cannot escape.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from pathlib import Path

MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS
_DIR_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class _Walk:
    """The resolved directory stack of one walk: ``fds[0]`` is the root, ``names`` the path."""

    def __init__(self, root: Path) -> None:
        self.fds = [os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
        self.names: list[str] = []

    @property
    def cwd(self) -> int:
        return self.fds[-1]

    def push(self, fd: int, name: str) -> None:
        self.fds.append(fd)
        self.names.append(name)

    def up(self) -> None:
        # ".." at the root stays at the root (RESOLVE_IN_ROOT semantics).
        if len(self.fds) > 1:
            os.close(self.fds.pop())
            self.names.pop()

    def to_root(self) -> None:
        while len(self.fds) > 1:
            self.up()

    def path(self, last: str | None = None) -> str:
        parts = self.names + ([last] if last else [])
        return "/" + "/".join(parts)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _walk(
    root: Path, path: str, *, create_dirs: bool = False, mode: int = 0o755
) -> tuple[_Walk, str | None]:
    """Resolve every component of ``path`` but the last inside ``root``.

    Returns the walk (positioned on the parent directory) and the final component name, with
    symlinks in the final component already followed; ``None`` as the name means ``path`` names a
    directory that the walk is positioned on (``/``, ``a/..``, or a symlink to a directory).
    With ``create_dirs`` every missing component, the last included, is created as a directory.
    """
    w = _Walk(root)
    todo: deque[str] = deque(path.split("/"))
    links = 0
    try:
        while todo:
            name = todo.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                w.up()
                continue
            is_last = not any(c not in ("", ".") for c in todo)
            try:
                st = os.stat(name, dir_fd=w.cwd, follow_symlinks=False)
            except FileNotFoundError:
                if not create_dirs:
                    if is_last:
                        return w, name
                    raise
                # Created in between is fine: the stat and open below check what it is.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, mode, dir_fd=w.cwd)
                st = os.stat(name, dir_fd=w.cwd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                target = os.readlink(name, dir_fd=w.cwd)
                if target.startswith("/"):
                    w.to_root()
                todo.extendleft(reversed(target.split("/")))
                continue
            if is_last and not stat.S_ISDIR(st.st_mode):
                if create_dirs:
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", w.path(name))
                return w, name
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", w.path(name))
            w.push(os.open(name, _DIR_FLAGS, dir_fd=w.cwd), name)
        return w, None
    except BaseException:
        w.close()
        raise


def resolve_dir(root: Path, path: str, *, create: bool = False, mode: int = 0o755) -> str:
    """The canonical in-root path (``/a/b``) of directory ``path``, created if ``create``.

    Raises ``FileNotFoundError`` / ``NotADirectoryError`` / ``OSError(ELOOP)`` like the kernel.
    """
    w, last = _walk(root, path, create_dirs=create, mode=mode)
    try:
        if last is not None:
            # Only reached without create: the final component is missing or not a directory.
            try:
                st = os.stat(last, dir_fd=w.cwd, follow_symlinks=False)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "no such directory", w.path(last)) from None
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", w.path(last))
        return w.path(last)
    finally:
        w.close()


def stat_in_root(root: Path, path: str) -> os.stat_result | None:
    """``stat`` of ``path`` resolved inside ``root`` (symlinks followed in-root), None if absent."""
    try:
        w, last = _walk(root, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if last is None:
            return os.fstat(w.cwd)
        try:
            return os.stat(last, dir_fd=w.cwd, follow_symlinks=False)
        except FileNotFoundError:
            return None
    finally:
        w.close()


def read_file(root: Path, path: str, max_bytes: int) -> bytes | None:
    """The contents of regular file ``path`` inside ``root``; None if it does not exist.

    Anything but a regular file (a device node, a FIFO, a directory) raises ``OSError``, checked
    before the open so a hostile ``/etc/passwd`` device node is never opened; a file over
    ``max_bytes`` raises ``OSError(EFBIG)``.
    """
    try:
        w, last = _walk(root, path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if last is None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        try:
            st = os.stat(last, dir_fd=w.cwd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", w.path(last))
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", w.path(last))
        fd = os.open(last, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=w.cwd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", w.path(last))
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", w.path(last))
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        w.close()
