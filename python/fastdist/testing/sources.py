"""Layer sources for tests: bytes in memory instead of a registry (``unpacker.LayerSource``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from ..errors import RegistryError
from ..oci import Descriptor, Digest
from ..progress import Progress

if TYPE_CHECKING:
    from ..fetcher import BlobSink


class BytesSource:
    """A ``LayerSource`` from bytes in memory, honouring resume offsets; counts its fetches.

    ``stop_after``: raise (a dropped connection) once that many bytes of a blob went out;
    ``on_half``: called once half a blob went out (to abort the pull mid-stream);
    ``refuse``: digests whose fetch fails at once (a registry error)."""

    def __init__(
        self,
        blobs: dict[Digest, bytes],
        *,
        stop_after: int | None = None,
        on_half: Callable[[], None] | None = None,
        refuse: Collection[Digest] = (),
    ) -> None:
        self.refuse = frozenset(refuse)
        self.blobs = blobs
        self.fetches = 0
        self.stop_after = stop_after
        self.on_half = on_half
        self._lock = threading.Lock()

    def fetch(self, desc: Descriptor, sink: BlobSink, progress: Progress) -> None:
        with self._lock:
            self.fetches += 1
        if desc.digest in self.refuse:
            raise RegistryError(f"fetching {desc.digest}: 500 Internal Server Error")
        data = self.blobs[desc.digest]
        pos = sink.offset
        chunk = 16_384
        while pos < len(data):
            if self.stop_after is not None and pos >= self.stop_after:
                raise RegistryError(f"connection reset fetching {desc.digest}")
            if self.on_half is not None and pos >= len(data) // 2:
                self.on_half()
            sink.write(data[pos : pos + chunk])
            pos += chunk
