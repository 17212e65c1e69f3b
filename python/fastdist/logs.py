"""A detached container's log: one JSON record per line written, capped, rotated once, read back.

``<bundle>/log`` (and ``log.1``, the rotated one) hold ``{"s": stream, "t": time, "b": text}``
records, so stdout and stderr keep apart and in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


DEFAULT_LOG_MAX_SIZE = 20 << 20  # a detached container's log file (docker's local driver: 20m)
MIN_LOG_MAX_SIZE = 1 << 10


_LOG_LINE_MAX = 16 * 1024  # a longer line is recorded in pieces (docker: 16 KiB too)


@dataclass(frozen=True)
class LogEntry:
    """One line (or piece of a long one) a detached container wrote, with its stream and time."""

    stream: str  # "stdout" or "stderr"
    time: float
    data: bytes


class LogWriter:
    """``<bundle>/log``: one JSON object per line the container wrote, so stdout and stderr
    stay apart and keep their order (``{"s": stream, "t": unix time, "b": text}``, the text
    with undecodable bytes kept as surrogate escapes).

    Capped like docker's json-file ``max-size`` with ``max-file=2``: a record that would take
    the file past ``max_bytes`` first renames it to ``log.1`` (replacing the older one), so a
    chatty container holds at most twice the cap (plus one record) on disk."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_LOG_MAX_SIZE) -> None:
        import threading

        self._path = path
        self._max = max_bytes
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size  # a restarted container appends
        self._lock = threading.Lock()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        return os.open(self._path, flags, 0o600)

    def write(self, stream: str, data: bytes) -> None:
        record = {"s": stream, "t": time.time(), "b": data.decode("utf-8", "surrogateescape")}
        line = json.dumps(record).encode() + b"\n"
        with self._lock:
            if self._size > 0 and self._size + len(line) > self._max:
                try:
                    os.rename(self._path, self._path.with_name(self._path.name + ".1"))
                    fd = self._open()
                except OSError as e:  # keep writing where we are rather than lose output
                    log.warning("log rotation of %s: %s", self._path, e)
                else:
                    os.close(self._fd)
                    self._fd, self._size = fd, 0
            os.write(self._fd, line)
            self._size += len(line)

    def follow(self, fd: int, stream: str) -> Any:
        import threading

        def pump() -> None:
            pending = b""
            try:
                while True:
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    pending += chunk
                    while True:
                        cut = pending.find(b"\n")
                        if cut < 0 and len(pending) < _LOG_LINE_MAX:
                            break
                        end = cut + 1 if 0 <= cut < _LOG_LINE_MAX else _LOG_LINE_MAX
                        self.write(stream, pending[:end])
                        pending = pending[end:]
                if pending:
                    self.write(stream, pending)
            finally:
                os.close(fd)

        t = threading.Thread(target=pump, name=f"log-{stream}", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        os.close(self._fd)


def same_file(a: IO[bytes], b: IO[bytes]) -> bool:
    sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def parse_log_line(line: bytes) -> LogEntry:
    """A line of ``<bundle>/log``; anything not ours (an older raw log) is stdout text."""
    try:
        record = json.loads(line)
        if isinstance(record, dict) and record.get("s") in ("stdout", "stderr"):
            text = str(record.get("b", ""))
            return LogEntry(
                str(record["s"]),
                float(record.get("t", 0.0)),
                text.encode("utf-8", "surrogateescape"),
            )
    except (ValueError, TypeError, UnicodeError):
        pass
    return LogEntry("stdout", 0.0, line)


def read_log(
    b: Path, *, follow: bool = False, tail: int | None = None, writer_gone: Callable[[], bool]
) -> Iterator[LogEntry]:
    """The records of bundle ``b``'s log (``log.1`` then ``log``); ``tail``: only the last N
    already written; with ``follow``, then what comes until ``writer_gone()``."""
    try:
        f = open(b / "log", "rb")  # noqa: SIM115 - closed in the generator's finally
    except FileNotFoundError:
        return iter(())
    older: IO[bytes] | None = None
    with contextlib.suppress(FileNotFoundError):
        older = open(b / "log.1", "rb")  # noqa: SIM115 - closed in the generator's finally
    if older is not None and same_file(older, f):
        older.close()  # rotated between the two opens: f is that file, read it once
        older = None
    return _read(b, older, f, follow, tail, writer_gone)


def _read(
    b: Path,
    older: IO[bytes] | None,
    f: IO[bytes],
    follow: bool,
    tail: int | None,
    writer_gone: Callable[[], bool],
) -> Iterator[LogEntry]:
    """``older`` (``log.1``, complete) then ``f`` (``log``, maybe being written); following,
    a rotation is seen as ``log`` naming another file, read from its start."""
    try:
        earlier = (line for line in older or () if line.endswith(b"\n"))  # streamed
        if tail is not None:
            import collections

            last: collections.deque[bytes] = collections.deque(earlier, maxlen=max(0, tail))
            pending = b""
            for line in f:
                if not line.endswith(b"\n"):
                    pending = line  # being written: read again below
                    break
                last.append(line)
            for line in last:
                yield parse_log_line(line)
            f.seek(-len(pending), os.SEEK_CUR)
        else:
            for line in earlier:
                yield parse_log_line(line)
        if older is not None:
            older.close()
        pending = b""
        while True:
            chunk = f.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield parse_log_line(line)
                continue
            if not follow:
                break
            if writer_gone():
                pending += f.read()
                break
            rotated = _reopen_if_rotated(b, f)
            if rotated is not None:
                pending += f.read()  # what was written before the rename
                f.close()
                f = rotated
                continue
            time.sleep(0.1)  # like tail -f; the supervisor gives no write notifications
        if pending and not pending.startswith(b'{"s": '):  # else a record still being written
            yield parse_log_line(pending)
    finally:
        if older is not None:
            older.close()
        f.close()


def _reopen_if_rotated(b: Path, f: IO[bytes]) -> IO[bytes] | None:
    """The new ``log`` when the writer renamed the one ``f`` reads (else None)."""
    try:
        new = open(b / "log", "rb")  # noqa: SIM115 - the caller owns it
    except FileNotFoundError:
        return None
    if same_file(new, f):
        new.close()
        return None
    return new
