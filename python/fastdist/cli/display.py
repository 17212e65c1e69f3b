"""The pull progress display: live rows redrawn in place on a terminal, plain lines to a pipe,
or one JSON event per line."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import IO

from ..errors import FastdistError
from ..progress import Phase, ProgressEvent
from ..sizes import human_size
from ..termsafe import sanitize
from .common import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated


@dataclass
class _Row:
    label: str
    phase: Phase
    current: int = 0
    total: int = 0
    started: float | None = None  # monotonic time of its first downloading event
    fetched: bool = False  # bytes came over the network (not "exists")


_DONE_PHASES = (Phase.DONE, Phase.EXISTS)
# Plain lines that carry the blob's size: where it starts, and how it ends.
_SIZED = {phase: phase in (Phase.DOWNLOADING, Phase.EXISTS, Phase.DONE) for phase in Phase}


class PullDisplay:
    """containerd ``dist pull``-style live display: a row per blob, elapsed time, total and rate.

    On a terminal the rows are redrawn in place ten times a second; otherwise one plain line is
    printed per change of phase (never one per chunk), so logs stay readable.
    """

    def __init__(self, out: IO[str], live: bool, json_events: bool = False) -> None:
        self._out = out
        self._live = live
        self._json = json_events
        self._rows: dict[str, _Row] = {}
        self._title = ""
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    def __enter__(self) -> PullDisplay:
        if self._live:
            self._thread = threading.Thread(target=self._loop, name="fastdist-display", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._json and exc is not None and not self._finished:
            self._emit_json_error(exc)
        # The header says how the pull ended: an interrupted or failed pull is not "done".
        if exc_type is None:
            self._finish("done")
        elif issubclass(exc_type, KeyboardInterrupt):
            self._finish("interrupted")
        else:
            self._finish("failed")

    def _finish(self, state: str) -> None:
        """Stop redrawing and draw the final state, once. A recorded pull finishes the display
        at once (``run``: the container starts right after, and a live display redrawing its
        rows would overwrite what the container prints, or corrupt a ``-t`` prompt)."""
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw(state)

    def __call__(self, ev: ProgressEvent) -> None:
        if self._json:
            self._emit_json(ev)
            return
        if self._finished:
            return  # the pull was recorded; what follows (a container) is not drawn over
        digest = ev.digest
        if digest is None:
            if self._pull_event(ev):
                self._finish("done")  # outside the lock: the drawing thread takes it
            return
        with self._lock:
            row = self._rows.get(digest)
            label = _label(ev)
            if row is None:
                row = self._rows[digest] = _Row(label, ev.phase)
                changed = True
            else:
                changed = row.phase is not ev.phase
                # A retry or a late event must not move a finished row backwards.
                if row.phase in _DONE_PHASES and ev.phase not in (Phase.FAILED,):
                    return
                row.phase = ev.phase
            row.current = max(ev.current, row.current if ev.phase is Phase.DOWNLOADING else 0)
            row.total = ev.total or row.total
            if ev.phase is Phase.DOWNLOADING:
                row.fetched = True
                if row.started is None:
                    row.started = time.monotonic()
            if ev.phase is Phase.RETRYING:
                self._plain(f"{row.label}: retrying: {ev.message}", force=True)
            elif changed and ev.phase is not Phase.WAITING:
                size = f" ({human_size(row.total)})" if row.total and _SIZED[ev.phase] else ""
                self._plain(f"{row.label}: {ev.phase.value}{size}")

    def _pull_event(self, ev: ProgressEvent) -> bool:
        """An event of the pull as a whole (no digest); True once the pull is recorded."""
        with self._lock:
            if ev.phase is Phase.RESOLVING and ev.message != self._title:
                self._title = ev.message
                self._start = time.monotonic()
                self._plain(f"{ev.message}: resolving")
            elif ev.phase is Phase.DONE:
                # The pull is recorded: the manifests and indexes it resolved (stored right
                # after resolving, with no event of their own) are done too.
                for resolved in self._rows.values():
                    if resolved.phase is Phase.RESOLVED:
                        resolved.phase = Phase.DONE
                        self._plain(f"{resolved.label}: done")
                self._plain(self._summary())
                return True
        return False

    def _summary(self) -> str:
        """The pipe's closing line: what came over the network, how long it took, how fast."""
        got = [r for r in self._rows.values() if r.fetched or r.phase is Phase.DONE]
        fetched = sum(r.total for r in got)
        blobs = len(got)
        elapsed = max(time.monotonic() - self._start, 1e-6)
        return (
            f"{self._title}: fetched {blobs} blob(s), {human_size(fetched)} in {elapsed:.1f} s "
            f"({human_size(int(fetched / elapsed))}/s)"
        )

    def _emit_json_error(self, exc: BaseException) -> None:
        """``--json``: the failure is an event too (the CLI still prints ``error:`` on stderr)."""
        obj: dict[str, object] = {
            "time": round(time.monotonic() - self._start, 4),
            "phase": Phase.FAILED.value,
            "digest": None,
        }
        if isinstance(exc, FastdistError):
            obj.update(error=exc.message, hint=exc.hint, exit_code=type(exc).exit_code)
        elif isinstance(exc, KeyboardInterrupt):
            terminated = isinstance(exc, Terminated)
            obj.update(
                error="terminated" if terminated else "interrupted",
                hint=None,
                exit_code=EXIT_TERMINATED if terminated else EXIT_INTERRUPTED,
            )
        else:
            obj.update(error=str(exc), hint=None, exit_code=1)
        with self._lock:
            self._out.write(json.dumps(obj) + "\n")
            self._out.flush()

    def _emit_json(self, ev: ProgressEvent) -> None:
        if ev.phase is Phase.DOWNLOADING and ev.current != ev.total:
            # Throttle per-chunk events to one per MiB-ish step to keep the stream small.
            with self._lock:
                row = self._rows.setdefault(ev.digest or "", _Row("", ev.phase))
                if ev.current - row.current < (1 << 20):
                    return
                row.current = ev.current
        obj: dict[str, object] = {
            "time": round(time.monotonic() - self._start, 4),
            "phase": ev.phase.value,
            "digest": ev.digest,
            "media_type": ev.media_type,
            "current": ev.current,
            "total": ev.total,
            "message": ev.message,
        }
        if ev.timings:
            obj["timings"] = {k: round(v, 4) for k, v in ev.timings}
        if ev.phase is Phase.DONE and ev.digest is None:
            # The pull's last event: the image recorded and its digest, as fields of their own
            # (the client's message is "<name> <digest>").
            name, _, image_digest = ev.message.rpartition(" ")
            obj["name"], obj["image_digest"] = name, image_digest
        with self._lock:
            self._out.write(json.dumps(obj) + "\n")
            self._out.flush()

    def _plain(self, line: str, force: bool = False) -> None:
        if self._live or self._json:
            return
        self._out.write(sanitize(line) + "\n")
        self._out.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._draw("pulling")

    def _draw(self, state: str) -> None:
        with self._lock:
            rows = list(self._rows.values())
            title = self._title
        if not title and not rows:
            return  # nothing was pulled (a present image): draw nothing at all
        import shutil  # only a live display draws

        width = shutil.get_terminal_size((100, 20)).columns
        lines = []
        if title:
            lines.append(_fit(f"{title}: {state}", width))
        done_bytes = 0
        now = time.monotonic()
        for r in rows:
            cur = r.total if r.phase in _DONE_PHASES else r.current
            done_bytes += cur if r.phase is not Phase.EXISTS else 0
            done = r.phase in _DONE_PHASES
            bar = _bar(1, 1, 20) if done and not r.total else _bar(cur, r.total, 20)
            size = f"{human_size(cur)}/{human_size(r.total)}" if r.total else ""
            lines.append(
                _fit(f"{r.label:<28} {r.phase.value:<11} {bar} {size:<21}{_speed(r, now)}", width)
            )
        elapsed = now - self._start
        rate = done_bytes / elapsed if elapsed > 0 else 0
        lines.append(
            _fit(
                f"elapsed: {elapsed:5.1f} s   total: {human_size(done_bytes)} "
                f"({human_size(int(rate))}/s)",
                width,
            )
        )
        buf = []
        if self._drawn:
            buf.append(f"\x1b[{self._drawn}F")
        for line in lines:
            buf.append("\x1b[2K" + line + "\n")
        self._out.write("".join(buf))
        self._out.flush()
        self._drawn = len(lines)


def _label(ev: ProgressEvent) -> str:
    kind = "layer"
    mt = ev.media_type or ""
    if "manifest" in mt:
        kind = "manifest"
    elif "index" in mt or "list" in mt:
        kind = "index"
    elif "config" in mt or "container.image" in mt:
        kind = "config"
    digest = (ev.digest or "").removeprefix("sha256:")
    return f"{kind}-sha256:{digest[:12]}"


def _speed(row: _Row, now: float) -> str:
    """A downloading row's rate and time left (once a quarter second of it is measured)."""
    if row.phase is not Phase.DOWNLOADING or row.started is None or not row.total:
        return ""
    spent = now - row.started
    if spent < 0.25 or row.current <= 0:
        return ""
    rate = row.current / spent
    left = max(0, row.total - row.current) / rate
    eta = f"{int(left) // 60}m{int(left) % 60:02d}s" if left >= 60 else f"{left:.0f}s"
    return f" {human_size(int(rate))}/s ETA {eta}"


def _bar(cur: int, total: int, width: int) -> str:
    if total <= 0:
        return "|" + " " * width + "|"
    filled = min(width, int(width * cur / total))
    return "|" + "+" * filled + "-" * (width - filled) + "|"


def _fit(line: str, width: int) -> str:
    line = sanitize(line)
    return line if len(line) < width else line[: max(10, width - 1)]
