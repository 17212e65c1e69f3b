"""Progress events: the one callback that is passed down the pipeline (design.md §1).

Stages report what they do to a ``Progress`` callable; only the CLI turns events into a display.
Callbacks may be invoked from worker threads and must be cheap and thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Phase(str, Enum):
    """What is happening to one blob (the rows of ``fastdist pull``'s display)."""

    RESOLVING = "resolving"  # the reference is being resolved (digest is None)
    RESOLVED = "resolved"  # a manifest/index is known (digest set)
    WAITING = "waiting"  # queued for download
    DOWNLOADING = "downloading"  # bytes arriving: current/total
    RETRYING = "retrying"  # a temporary failure; message says why, current = resume offset
    UPLOADING = "uploading"  # push: bytes sent, current/total
    UNPACKING = "unpacking"  # downloaded, apply still running
    EXISTS = "exists"  # already in the store; nothing fetched
    DONE = "done"  # verified (and unpacked/committed for layers)
    FAILED = "failed"  # message says why


@dataclass(frozen=True)
class ProgressEvent:
    """One update about one blob (or about the pull as a whole when ``digest`` is None)."""

    phase: Phase
    digest: str | None = None
    media_type: str | None = None
    current: int = 0
    total: int = 0
    message: str = ""
    # Seconds spent per phase, e.g. (("fetch", 1.2), ("unpack", 0.3), ("commit", 0.01)); set on
    # a layer's DONE event and on the pull's final DONE (("resolve", …), ("total", …)).
    timings: tuple[tuple[str, float], ...] = ()


Progress = Callable[[ProgressEvent], None]


def no_progress(_event: ProgressEvent) -> None:
    """The default callback: ignore every event."""
