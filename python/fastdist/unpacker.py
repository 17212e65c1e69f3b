"""The unpacker: turns one layer blob into a committed snapshot, in one streaming pass if it can.

Two paths (design.md §6):

* ``layer_sink``: while the blob downloads, a ``_native.LayerWriter`` tees the bytes into the
  content ingest, hashes them (digest), decompresses, hashes the tar (diff_id) and applies it into
  a staging directory. ``finish`` proves digest, size and diff_id, then commits the blob; the
  client commits the snapshot (``LayerSink.commit``) in layer order.
* ``unpack_blob``: the blob is already in the content store but its snapshot is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import _native
from .content import ContentStore, Ingest
from .errors import LayerError, StoreError, VerificationError
from .oci import Descriptor, Digest
from .snapshots import Snapshotter, Staging

log = logging.getLogger(__name__)

# A failure of these classes means the blob's bytes themselves are bad: never resume them.
_BAD_BYTES = (VerificationError, LayerError)


class LayerSink:
    """A fetcher ``BlobSink`` that unpacks as it receives: ``offset``, ``write``, then ``finish``.

    ``offset`` includes a resumed prefix already in the ingest (the writer re-fed it), so the
    fetcher continues with a Range request from there. A sink made by ``Unpacker.stage_blob``
    (the blob was already stored) starts out finished: only ``commit`` or ``abort`` remain.
    """

    def __init__(
        self,
        snapshotter: Snapshotter,
        staging: Staging,
        writer: _native.LayerWriter | None,
        ingest: Ingest | None,
        desc: Descriptor,
        result: _native.LayerResult | None = None,
    ) -> None:
        self.snapshotter = snapshotter
        self.staging = staging
        self.ingest = ingest
        self.desc = desc
        self._writer = writer
        self._bad = False
        # open -> finished -> committed | aborted
        self._state = "open" if writer is not None else "finished"
        self.result = result

    @property
    def chain_id(self) -> Digest:
        return self.staging.chain_id

    @property
    def offset(self) -> int:
        return self._writer.offset if self._writer is not None else self.desc.size

    def write(self, data: bytes) -> None:
        if self._state != "open" or self._writer is None:
            raise RuntimeError(f"layer sink for {self.desc.digest} is {self._state}")
        try:
            self._writer.write(data)
        except _BAD_BYTES:
            self._bad = True
            raise

    def finish(self, *, durable: bool = True) -> _native.LayerResult:
        """Verify digest, size and diff_id, seal the staged snapshot (``Snapshotter.seal``:
        durable, ready to be renamed) and commit the blob; the snapshot stays staged.

        The seal's ``syncfs`` also makes the teed blob durable when the ingest is on the same
        filesystem, so the blob's commit needs no fsync of its own. ``durable=False``: the
        blob's rename is made durable by the caller's ``ContentStore.flush`` (see
        ``Ingest.commit``). On failure everything is cleaned up (staging removed, wrong bytes
        discarded) and the error re-raised.
        """
        if self._state != "open" or self._writer is None or self.ingest is None:
            raise RuntimeError(f"layer sink for {self.desc.digest} is {self._state}")
        try:
            result = self._writer.finish()
            self.staging.manifest = result.manifest
            self.snapshotter.seal(self.staging)
            synced = self.snapshotter.sync and _same_filesystem(self.ingest.path, self.staging.dir)
            self.ingest.commit(verified=True, data_synced=synced, durable=durable)
        except _BAD_BYTES:
            self._bad = True
            self.abort()
            raise
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        self.result = result
        return result

    def commit(self, *, durable: bool = True) -> None:
        """Commit the snapshot (after ``finish``; overlayfs: after the parent's commit).
        ``durable=False``: see ``Snapshotter.commit`` (the caller ``flush``es)."""
        if self._state != "finished":
            raise RuntimeError(f"layer sink for {self.desc.digest} is {self._state}, not finished")
        try:
            self.snapshotter.commit(self.staging, durable=durable)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"

    def abort(self, discard: bool = False) -> None:
        """Stop and clean up; the partial download is kept for a resume unless its bytes were
        proved wrong (or ``discard``). Idempotent; a committed sink is left alone."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        try:
            if self._writer is not None:
                self._writer.abort()
        finally:
            try:
                self.snapshotter.abort(self.staging)
            finally:
                if self.ingest is not None:
                    if (self._bad or discard) and not self.ingest.committed:
                        self.ingest.discard()
                    self.ingest.close()

    def __enter__(self) -> LayerSink:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False  # then the blob's commit syncs it itself (or reports why it cannot)


class Unpacker:
    """Applies layers into a snapshotter, verifying every byte on the way."""

    def __init__(
        self,
        content: ContentStore,
        snapshotter: Snapshotter,
        limits: _native.Limits | None = None,
    ) -> None:
        self.content = content
        self.snapshotter = snapshotter
        self.limits = limits

    def layer_sink(
        self,
        desc: Descriptor,
        diff_id: Digest,
        chain_id: Digest,
        parent: Digest | None,
        ingest: Ingest,
    ) -> LayerSink:
        """A sink for the download of ``desc`` that unpacks it into the snapshot ``chain_id``.

        The caller holds ``ingest`` (the digest's lock); the sink takes it over and closes it
        when finished or aborted.
        """
        staging = self.snapshotter.prepare_layer(chain_id, parent)
        try:
            writer = _native.LayerWriter(
                desc.media_type,
                str(staging.path),
                mode=self.snapshotter.apply_mode,
                expected_digest=desc.digest,
                expected_size=desc.size,
                expected_diff_id=diff_id,
                tee_path=str(ingest.path),
                limits=self.limits,
            )
        except _BAD_BYTES:
            # The resumed prefix is already wrong (or the media type unusable): start over.
            self.snapshotter.abort(staging)
            ingest.discard()
            raise
        except StoreError as e:
            # The ingest itself is unusable (e.g. a planted symlink, which is never followed).
            self.snapshotter.abort(staging)
            if e.hint is None:
                raise StoreError(e.message, hint=f"remove {ingest.dir} and pull again") from e
            raise
        except BaseException:
            self.snapshotter.abort(staging)
            raise
        return LayerSink(self.snapshotter, staging, writer, ingest, desc)

    def stage_blob(
        self, desc: Descriptor, diff_id: Digest, chain_id: Digest, parent: Digest | None
    ) -> LayerSink:
        """Apply a blob already in the content store into a staging dir (verifying it again).

        Returns a finished sink; the caller ``commit``s it in layer order (or ``abort``s it).
        """
        blob = self.content.path(desc.digest)
        staging = self.snapshotter.prepare_layer(chain_id, parent)
        try:
            result = _native.apply_layer(
                str(blob),
                desc.media_type,
                str(staging.path),
                mode=self.snapshotter.apply_mode,
                expected_digest=desc.digest,
                expected_size=desc.size,
                expected_diff_id=diff_id,
                limits=self.limits,
            )
            staging.manifest = result.manifest
            self.snapshotter.seal(staging)  # now, in parallel, not at the commit in layer order
        except BaseException:
            self.snapshotter.abort(staging)
            raise
        return LayerSink(self.snapshotter, staging, None, None, desc, result)

    def unpack_blob(
        self, desc: Descriptor, diff_id: Digest, chain_id: Digest, parent: Digest | None
    ) -> _native.LayerResult | None:
        """Unpack a blob already in the content store and commit its snapshot.

        Returns None when the snapshot was already committed (by another process, say) - the
        per-chain_id lock is held throughout, so that check and the commit cannot race.
        """
        with self.snapshotter.lock(chain_id):
            if self.snapshotter.exists(chain_id):
                return None
            sink = self.stage_blob(desc, diff_id, chain_id, parent)
            sink.commit()
        log.debug("unpacked %s into snapshot %s", desc.digest, chain_id)
        return sink.result
