"""The unpacker: turns one layer blob into a committed snapshot, in one streaming pass if it can.

Two paths (design.md §6):

* ``layer_sink``: while the blob downloads, a ``_native.LayerWriter`` writes the bytes into the
  content ingest (appended, or ranged chunks at their offsets), reads its contiguous prefix back
  as it grows, hashes it (digest), decompresses, hashes the tar (diff_id) and applies it into a
  staging directory. ``finish`` proves digest, size and diff_id, then commits the blob; the
  client commits the snapshot (``LayerSink.commit``) in layer order.
* ``stage_blob``: the blob is already in the content store but its snapshot is missing.

``Unpacker.unpack(plan, source, progress)`` owns the whole sequence for one layer (locks, the
choice of path, waiting for the parent, the commit); the dispatcher (pulling.py) runs it per layer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import _native
from .content import ContentStore, Ingest
from .errors import LayerError, PullAbortedError, StoreError, VerificationError
from .oci import Descriptor, Digest
from .progress import Phase, Progress, ProgressEvent, no_progress
from .snapshots import Snapshotter, Staging
from .store import CRASH_AT, crash_point

if TYPE_CHECKING:
    from .fetcher import BlobSink
    from .pulling import LayerPlan

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
        try:
            self._open_writer().write(data)
        except _BAD_BYTES:
            self._bad = True
            raise

    def prepare_ahead(self) -> None:
        """Ranged chunks land in the ingest past the prefix from now on: the ingest records
        its prefix (``Ingest.prepare_ahead``), so a crash keeps only that."""
        assert self.ingest is not None
        self.ingest.prepare_ahead(held=self.offset)

    def write_at(self, offset: int, data: bytes) -> None:
        try:
            self._open_writer().write_at(offset, data)
        except _BAD_BYTES:
            self._bad = True
            raise

    def advance(self, end: int) -> None:
        try:
            self._open_writer().advance(end)
        except _BAD_BYTES:
            self._bad = True
            raise
        assert self.ingest is not None
        self.ingest.record_prefix(end)

    def _open_writer(self) -> _native.LayerWriter:
        if self._state != "open" or self._writer is None:
            raise RuntimeError(f"layer sink for {self.desc.digest} is {self._state}")
        return self._writer

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
                    elif self._writer is not None:
                        # Ranged bytes may lie past the prefix: record all of it for a resume.
                        with contextlib.suppress(StoreError):
                            self.ingest.record_prefix(self._writer.offset, force=True)
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
                hint = f"remove {ingest.dir} and pull again"
                raise StoreError(e.message, hint=hint, op=e.op, path=e.path, errno=e.errno) from e
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

    def flatten(self, plan: LayerPlan, dest: str, limits: _native.Limits | None) -> None:
        """Apply a stored layer onto the plain tree ``dest`` (``Client.unpack``), verifying its
        digest, size and diff_id again; ``limits`` as the caller's (not capped per pull)."""
        _native.apply_layer(
            str(self.content.path(plan.desc.digest)),
            plan.desc.media_type,
            dest,
            mode="flatten",
            expected_digest=plan.desc.digest,
            expected_size=plan.desc.size,
            expected_diff_id=plan.diff_id,
            limits=limits,
        )

    # --- the one sequence for one layer -------------------------------------------------------
    def unpack(
        self,
        plan: LayerPlan,
        source: LayerSource,
        progress: Progress = no_progress,
        *,
        wait_parent: Callable[[], bool] | None = None,
        charge: Callable[[LayerPlan, _native.LayerResult], None] | None = None,
        aborted: threading.Event | None = None,
        timings: Sequence[tuple[str, float]] = (),
        durable: bool = True,
    ) -> bool:
        """Bring ``plan``'s snapshot to committed, with its blob in the content store.

        Idempotent: a snapshot already committed (by this or another process) is success and
        nothing is applied again; returns whether this call committed it. Under the chain_id
        lock from the ``exists`` re-check to the commit, so a layer is applied once across
        threads and processes. The bytes come from the content store if the blob is there, else
        from ``source``: overlayfs streams them socket → tree in one pass (blob and tree land
        together), the plain-copy snapshotter stores the blob first and applies it from there.
        A stored blob that went bad on disk is fetched again once.

        ``wait_parent``: called (holding only this layer's chain lock) before the commit; False
        aborts (the layer below failed). Without it, a parent that is not committed fails the
        commit (StoreError), leaving nothing. ``charge``: told each staged layer's result before
        its commit (the pull's byte budget; may raise). ``aborted``: once set, the stream stops
        (PullAbortedError) with its partial download kept for a resume. ``timings`` go first
        in the DONE event's timings. On any failure nothing of this layer is visible.

        ``durable=False``: the tree and blob are still synced before they are renamed into view
        (``Snapshotter.seal``), but the renames themselves are made durable by the caller's one
        ``ContentStore.flush`` + ``Snapshotter.flush`` for all layers (the dispatcher's).
        """
        desc = plan.desc
        if aborted is not None and aborted.is_set():
            raise PullAbortedError("pull aborted")
        spent = list(timings)
        with self.snapshotter.lock(plan.chain_id):
            have_snap = self.snapshotter.exists(plan.chain_id)
            if not have_snap:
                staged = self._stage(plan, source, progress, aborted, spent, durable)
                if CRASH_AT is not None:
                    crash_point("staged")
                try:
                    if charge is not None and staged.result is not None:
                        charge(plan, staged.result)
                    t = time.monotonic()
                    if wait_parent is not None and not wait_parent():
                        raise PullAbortedError("pull aborted")
                    spent.append(("wait", time.monotonic() - t))
                    t = time.monotonic()
                    staged.commit(durable=durable)
                    spent.append(("commit", time.monotonic() - t))
                except BaseException:
                    staged.abort()
                    raise
                if CRASH_AT is not None:
                    crash_point("layer-committed")
                log.debug("unpacked %s into snapshot %s", desc.digest, plan.chain_id)
        if have_snap and not self.fetch_blob(desc, source, progress, durable=durable):
            progress(
                ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
            )
            return False
        progress(
            ProgressEvent(
                Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size, timings=tuple(spent)
            )
        )
        return not have_snap

    def fetch_blob(
        self, desc: Descriptor, source: LayerSource, progress: Progress, *, durable: bool = True
    ) -> bool:
        """Fetch a blob into the content store only (verified, resumable, once per digest).
        Returns whether this call downloaded it (False: it was there already). ``durable``: as
        for ``unpack``."""
        if self.content.exists(desc.digest):
            return False
        with self.content.ingest(desc) as ingest:
            if self.content.exists(desc.digest):
                return False
            try:
                source.fetch(desc, ingest, progress)
            except VerificationError:
                ingest.discard()  # wrong or extra bytes from the registry: no resume from them
                raise
            ingest.commit(durable=durable)
        return True

    def _stage(
        self,
        plan: LayerPlan,
        source: LayerSource,
        progress: Progress,
        aborted: threading.Event | None,
        timings: list[tuple[str, float]],
        durable: bool,
        refetched: bool = False,
    ) -> LayerSink:
        """Bring one missing layer to "ready to commit" (a staged sink). The caller holds the
        chain_id lock; the blob is streamed (overlayfs) unless it is stored, or fetched into the
        store first (plain copy)."""
        desc = plan.desc
        t = time.monotonic()
        if not self.content.exists(desc.digest):
            if self.snapshotter.apply_mode != "layer":
                self.fetch_blob(desc, source, progress, durable=durable)
                timings.append(("fetch", time.monotonic() - t))
                t = time.monotonic()
            else:
                with self.content.ingest(desc) as ingest:
                    if not self.content.exists(desc.digest):
                        return self._stream(
                            plan, source, progress, aborted, timings, ingest, durable
                        )
                # Another process fetched it while we waited for the digest's lock: the blob is
                # stored now, and is unpacked from there with the ingest lock released.
        progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
        try:
            staged = self.stage_blob(desc, plan.diff_id, plan.chain_id, plan.parent)
        except (VerificationError, LayerError):
            # Verified while read: a stored blob that went bad on disk is fetched again.
            if refetched or not self._drop_if_corrupt(desc.digest):
                raise
            return self._stage(plan, source, progress, aborted, timings, durable, refetched=True)
        timings.append(("unpack", time.monotonic() - t))
        return staged

    def _stream(
        self,
        plan: LayerPlan,
        source: LayerSource,
        progress: Progress,
        aborted: threading.Event | None,
        timings: list[tuple[str, float]],
        ingest: Ingest,
        durable: bool,
    ) -> LayerSink:
        desc = plan.desc
        t = time.monotonic()
        sink = self.layer_sink(desc, plan.diff_id, plan.chain_id, plan.parent, ingest)
        try:
            source.fetch(desc, sink if aborted is None else _AbortableSink(sink, aborted), progress)
            timings.append(("fetch", time.monotonic() - t))
            t = time.monotonic()
            progress(
                ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, desc.size, desc.size)
            )
            sink.finish(durable=durable)
            timings.append(("unpack", time.monotonic() - t))
        except BaseException as e:
            # A registry that sent the wrong (or too many) bytes gets no resume.
            sink.abort(discard=isinstance(e, VerificationError))
            raise
        return sink

    def _drop_if_corrupt(self, digest: Digest) -> bool:
        """After a stored blob failed to read back: whether it was corrupt, in which case it is
        removed, for the pull to fetch it again. False: the blob is intact, the failure is the
        image's own (a hostile layer, say) and stands."""
        if self.content.intact(digest):
            return False
        log.warning("blob %s in the content store is corrupt; fetching it again", digest)
        self.content.delete(digest)
        return True


class LayerSource(Protocol):
    """What gives a layer's bytes when its blob is not in the content store yet."""

    def fetch(self, desc: Descriptor, sink: BlobSink, progress: Progress) -> None:
        """Write the blob ``desc`` into ``sink``, from ``sink.offset`` on (a resume)."""
        ...


class StoredSource:
    """A ``LayerSource`` for blobs that must already be in the content store (load, a local
    re-unpack): asked for bytes, it fails, naming the missing blob."""

    def fetch(self, desc: Descriptor, sink: BlobSink, progress: Progress) -> None:
        raise StoreError(
            f"blob {desc.digest} is not in the content store",
            hint="fastdist pull the image again to fetch it",
        )


class _AbortableSink:
    """Passes bytes to a layer sink until the pull failed elsewhere, so a failed pull stops its
    other downloads promptly instead of finishing them (the partial data stays resumable)."""

    def __init__(self, sink: LayerSink, aborted: threading.Event) -> None:
        self._sink = sink
        self._aborted = aborted

    @property
    def offset(self) -> int:
        return self._sink.offset

    def _check(self) -> None:
        if self._aborted.is_set():
            raise PullAbortedError("pull aborted")

    def write(self, data: bytes) -> None:
        self._check()
        self._sink.write(data)

    def prepare_ahead(self) -> None:
        self._check()
        self._sink.prepare_ahead()

    def write_at(self, offset: int, data: bytes) -> None:
        self._check()
        self._sink.write_at(offset, data)

    def advance(self, end: int) -> None:
        self._check()
        self._sink.advance(end)
