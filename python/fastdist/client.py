"""The fastdist Python API: the only module that knows the order of the stages (design.md §1).

``Client.pull`` runs reference → resolver → fetcher → content → unpacker → snapshots → metadata;
``Client.run`` adds the runtime on top. Every stage returns a frozen value the next consumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from . import _native, oci
from .content import ContentStore
from .errors import (
    AmbiguousImageError,
    FastdistError,
    ImageNotFoundError,
    InUseError,
    InvalidArgumentError,
    InvalidPlatformError,
    LayerError,
    LimitExceededError,
    ManifestError,
    PlatformNotFoundError,
    StoreError,
    UnsupportedMediaTypeError,
    VerificationError,
)
from .metadata import ImageRecord, MetadataDB
from .oci import Descriptor, Digest, ImageConfig, Platform
from .progress import Phase, Progress, ProgressEvent, no_progress
from .reference import Reference, names_only_an_id, parse_image_id
from .sizes import over_limit, size_and_bytes
from .snapshots import SNAPSHOTTERS, Snapshotter, default_snapshotter, snapshotter_by_name
from .store import default_root, ensure_root, rmtree
from .unpacker import LayerSink, Unpacker

if TYPE_CHECKING:
    # Imported where used, so local commands (images, ps, run of a present image, a pull of a
    # present name@digest) never load the registry side (requests: ~50 ms) or the runtime.
    from .archive import LoadedImage
    from .auth import CredentialStore
    from .check import CheckReport
    from .containers import Container, ContainerInfo, Containers
    from .fetcher import Fetcher
    from .mirrors import Mirrors
    from .resolver import Resolved, Resolver
    from .runc import Runtime
    from .serve import RegistryServer, ServeConfig
    from .spec import RunOptions
    from .transport import Transport, TransportConfig

log = logging.getLogger(__name__)

# Crash-safety tests kill a pull at named points (tests/integration/test_crash.py); read once, so
# the pull's hot path only compares against None.
_CRASH_AT = os.environ.get("FASTDIST_TEST_CRASH_AT") or None


def _crash_point(name: str) -> None:
    if name == _CRASH_AT:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# Bytes one pull may download (compressed, from the descriptors) and unpack (uncompressed).
DEFAULT_MAX_PULL_BYTES = 256 << 30


@dataclass(frozen=True)
class Image:
    """A local image: a name pointing at a target descriptor (index or manifest)."""

    name: str
    target: Descriptor
    record: ImageRecord
    _client: Client

    def config(self) -> ImageConfig:
        """The parsed image config (from the content store, verified)."""
        data = self._client.content.read_bytes(self.record.config_digest, oci.MAX_CONFIG_BYTES)
        return oci.parse_config(data, max_volumes=self._client.max_volumes)

    def rootfs(self) -> tuple[Digest, ...]:
        """The layers' diff_ids, bottom first (as containerd's ``Image.RootFS``)."""
        return self.config().diff_ids

    def size(self) -> int:
        """Bytes of the image's content: documents, config and compressed layers."""
        return self.record.size

    def unpacked_size(self) -> int:
        """Bytes its layer snapshots take on disk: the sum of each layer directory's ``du``
        (blocks, hardlinks once; overlayfs: each layer's own diff, so a layer shared with other
        images counts in each). Measured on first request and cached beside each snapshot, so
        a pull never waits for the walk; a missing snapshot counts 0 (``fastdist check``)."""
        snap = self._client._snapshotter_for(self)
        total = 0
        for chain in self.record.chain_ids:
            with contextlib.suppress(StoreError):
                total += snap.usage(chain)
        return total


#: How long ``prune`` keeps a partial download by default (a day): long enough for its pull to be
#: rerun and resume.
PARTIAL_KEEP_SECONDS = 24 * 3600.0


class Client:
    """Pull, list, inspect, unpack and remove images in one fastdist store.

    Thread-safe: several threads may pull through one client; several processes may share a root.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        snapshotter: str | None = None,
        transport_config: TransportConfig | None = None,
        credentials: CredentialStore | None = None,
        limits: _native.Limits | None = None,
        max_parallel_layers: int = 8,
        runc: str = "runc",
        max_pull_bytes: int = DEFAULT_MAX_PULL_BYTES,
        hosts_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_pull_bytes <= 0:
            raise InvalidArgumentError(f"max_pull_bytes must be positive, got {max_pull_bytes}")
        if root is not None and not os.fspath(root):
            # Path("") is the working directory, which would become the store (and 0700).
            raise InvalidArgumentError(
                "the store root is an empty path",
                hint="pass --root DIR, or leave it out for $FASTDIST_ROOT or /var/lib/fastdist",
            )
        # Checked once, as sshd's StrictModes (store.ensure_root); then used by its resolved path.
        self.root = ensure_root(Path(root) if root is not None else default_root())
        self.content = ContentStore(self.root)
        self.snapshotter: Snapshotter = (
            snapshotter_by_name(snapshotter, self.root)
            if snapshotter
            else default_snapshotter(self.root)
        )
        self.metadata = MetadataDB(self.root / "meta.db")
        self._transport_config = transport_config
        self._credentials = credentials
        self._hosts_dir = hosts_dir
        self.max_pull_bytes = max_pull_bytes
        self.unpacker = Unpacker(
            self.content, self.snapshotter, _cap_layer_bytes(limits, max_pull_bytes)
        )
        self.limits = limits
        self.max_volumes = (limits or _native.Limits()).max_volumes
        self._budgets: dict[int, _PullBudget] = {}
        self._budgets_lock = threading.Lock()
        self._runc = runc
        self._max_parallel = max(1, max_parallel_layers)

    @functools.cached_property
    def transport(self) -> Transport:
        """The registry transport (one pooled HTTP session), made on first use."""
        from .auth import CredentialStore
        from .transport import Transport, TransportConfig

        creds = self._credentials
        if creds is None:
            creds = CredentialStore.from_docker_config()
        return Transport(self._transport_config or TransportConfig(), creds)

    @functools.cached_property
    def mirrors(self) -> Mirrors:
        """Registry mirrors from containerd-style certs.d/<host>/hosts.toml (mirrors.py)."""
        from .mirrors import Mirrors, hosts_dirs

        return Mirrors(hosts_dirs(self._hosts_dir), self.transport)

    @functools.cached_property
    def resolver(self) -> Resolver:
        from .resolver import Resolver

        return Resolver(self.transport, self.mirrors)

    @functools.cached_property
    def fetcher(self) -> Fetcher:
        from .fetcher import Fetcher

        return Fetcher(self.transport, self.mirrors)

    @functools.cached_property
    def runtime(self) -> Runtime:
        """The container runtime (runc), made on first use."""
        from .runc import Runtime

        return Runtime(self.root, runc=self._runc)

    # --- pull -------------------------------------------------------------------------------
    def pull(
        self,
        ref: str,
        platform: str | Platform | None = None,
        progress: Progress = no_progress,
    ) -> Image:
        """Resolve ``ref``, fetch and verify every blob, unpack every layer, record the image.

        All or nothing: the image is listed only once every blob is verified and every snapshot
        committed; an interrupted pull leaves partial downloads that the next pull resumes.

        ``platform``: ``os/arch[/variant]`` or a :class:`Platform` (default: this host's). Asked
        for explicitly, a single-platform image built for another one is refused
        (PlatformNotFoundError); ``"any"`` takes it whatever its platform, and an index's first
        entry when it has none for this host.
        """
        reference = Reference.parse(ref)
        plat, any_platform = _wanted_platform(platform)
        started = time.monotonic()
        with self._gc_lock(shared=True):
            progress(ProgressEvent(Phase.RESOLVING, message=str(reference)))
            pinned = self._present_by_digest(reference, progress)
            if pinned is not None:
                # Content addressed and already verified: nothing to ask the registry.
                self._check_platform(reference, plat, pinned.target.media_type, pinned)
                return Image(pinned.name, pinned.target, pinned, self)
            resolved = self.resolver.resolve(reference, plat, progress, any_platform=any_platform)
            resolve_seconds = time.monotonic() - started
            present = self._already_present(reference, resolved, progress)
            if present is not None:
                self._check_platform(reference, plat, present.target.media_type, present)
                progress(
                    ProgressEvent(
                        Phase.DONE,
                        message=f"{present.name} {present.target.digest}",
                        timings=(
                            ("resolve", resolve_seconds),
                            ("total", time.monotonic() - started),
                        ),
                    )
                )
                return Image(present.name, present.target, present, self)
            self._store_document(resolved.target, resolved.target_bytes)
            if resolved.manifest_descriptor.digest != resolved.target.digest:
                self._store_document(resolved.manifest_descriptor, resolved.manifest_bytes)
            config_bytes = self._fetch_config(reference, resolved.manifest.config, progress)
            config = oci.parse_config(config_bytes, max_volumes=self.max_volumes)
            self._check_platform(reference, plat, resolved.target.media_type, config)
            layers = resolved.manifest.layers
            _check_layers(layers, config)
            chains = oci.chain_ids(config.diff_ids)
            self._check_pull_size(reference, resolved.manifest.config, layers, chains)
            with self._budgets_lock:
                self._budgets[id(reference)] = _PullBudget(self.max_pull_bytes, str(reference))
            try:
                self._pull_layers(reference, layers, config.diff_ids, chains, progress)
            finally:
                with self._budgets_lock:
                    self._budgets.pop(id(reference), None)
            if _CRASH_AT is not None:
                _crash_point("committed")
            record = self._record_image(reference, resolved, config, chains)
        progress(
            ProgressEvent(
                Phase.DONE,
                message=f"{record.name} {record.target.digest}",
                timings=(("resolve", resolve_seconds), ("total", time.monotonic() - started)),
            )
        )
        return Image(record.name, record.target, record, self)

    def _check_platform(
        self,
        ref: Reference,
        want: Platform | None,
        target_type: str,
        config: ImageConfig | ImageRecord,
    ) -> None:
        """A platform the user asked for, on a single-platform image built for another one, is
        refused (as docker does), before any layer is fetched. An index was already matched by
        the resolver; no ``--platform`` (this host's) or ``any`` accepts what there is."""
        if want is None or target_type in oci.INDEX_TYPES:
            return
        if isinstance(config, ImageRecord):
            config = oci.parse_config(
                self.content.read_bytes(config.config_digest, oci.MAX_CONFIG_BYTES)
            )
        found = config.platform
        if not want.matches(found):
            raise PlatformNotFoundError(
                f"image {ref} is built for {found.normalized()} only, not {want.normalized()}",
                hint=f"pull it anyway with --platform {oci.ANY_PLATFORM} "
                f"(platform={oci.ANY_PLATFORM!r} in the API), or choose an image built for "
                f"{want.normalized()}",
            )

    def _present_by_digest(self, ref: Reference, progress: Progress) -> ImageRecord | None:
        """A pull of ``name@sha256:…`` whose record already points at that digest with all its
        content present: the digest pins the content, so the registry need not be asked."""
        if ref.digest is None:
            return None
        rec = self.metadata.images.get(str(ref))
        if rec is None or rec.target.digest != ref.digest or not self._complete(rec):
            return None
        return self._touch(rec, progress)

    def _already_present(
        self, ref: Reference, resolved: Resolved, progress: Progress
    ) -> ImageRecord | None:
        """The fast path of a pull of an image that is already here: the record called ``ref``
        points at the resolved target and manifest, on this snapshotter, and every blob and
        snapshot it names exists. Then only its ``updated`` time changes (EXISTS events keep
        the display right) and the record is returned; otherwise None and the pull runs.

        Existence is what the full pull checks too for stored blobs and committed snapshots
        (both were verified on the way in, and content is immutable); ``fastdist check``
        re-verifies. The GC lock (held shared by the caller) keeps prune away meanwhile."""
        rec = self.metadata.images.get(str(ref))
        if (
            rec is None
            or rec.target.digest != resolved.target.digest
            or rec.manifest_digest != resolved.manifest_descriptor.digest
            or rec.config_digest != resolved.manifest.config.digest
            or rec.layer_digests != tuple(d.digest for d in resolved.manifest.layers)
            or not self._complete(rec)
        ):
            return None
        return self._touch(rec, progress, resolved.manifest)

    def _complete(self, rec: ImageRecord) -> bool:
        """Whether every blob and snapshot of ``rec`` is here, on this client's snapshotter.

        The documents (target, manifest, config: small, and read again by run and inspect) are
        verified; a layer blob need only exist, since its snapshot is committed (what a
        container uses) and a pull that must read it again verifies it while reading."""
        if rec.snapshotter != self.snapshotter.name:
            return False
        docs = (rec.target.digest, rec.manifest_digest, rec.config_digest)
        return (
            all(self._intact_document(d) for d in docs)
            and all(self.content.exists(d) for d in rec.layer_digests)
            and all(self.snapshotter.exists(c) for c in rec.chain_ids)
        )

    def _intact_document(self, digest: Digest) -> bool:
        """Whether a stored manifest, index or config reads back whole (read_bytes verifies)."""
        try:
            self.content.read_bytes(digest, max(oci.MAX_MANIFEST_BYTES, oci.MAX_CONFIG_BYTES))
        except (StoreError, VerificationError):
            return False
        return True

    def _drop_if_corrupt(self, digest: Digest) -> bool:
        """After a stored blob failed to read back: whether it was corrupt, in which case it is
        removed, for the pull to fetch it again. False: the blob is intact, the failure is the
        image's own (a hostile layer, say) and stands."""
        if self.content.intact(digest):
            return False
        log.warning("blob %s in the content store is corrupt; fetching it again", digest)
        self.content.delete(digest)
        return True

    def _touch(
        self, rec: ImageRecord, progress: Progress, manifest: oci.Manifest | None = None
    ) -> ImageRecord | None:
        """Bump ``updated`` of a complete image and report its blobs as EXISTS."""
        touched = self.metadata.images.touch(rec.name, rec.target.digest, time.time())
        if touched is None:
            return None  # removed or re-pointed meanwhile: let the full pull decide
        if manifest is None:
            doc = oci.parse_document(
                self.content.read_bytes(rec.manifest_digest, oci.MAX_MANIFEST_BYTES), None
            )
            if not isinstance(doc, oci.Manifest):
                return None
            manifest = doc
        for desc in (manifest.config, *manifest.layers):
            progress(
                ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
            )
        return dataclasses.replace(rec, updated=touched)

    def _check_pull_size(
        self,
        ref: Reference,
        config: Descriptor,
        layers: Sequence[Descriptor],
        chains: Sequence[Digest],
    ) -> None:
        """Before any layer is fetched: the per-pull limit on what the descriptors announce,
        and enough free space for the blobs to fetch and (at least) their unpacked bytes."""
        announced = config.size + sum(d.size for d in layers)
        if announced > self.max_pull_bytes:
            raise LimitExceededError(
                f"pull of {ref}: its blobs total {size_and_bytes(announced)}, over the per-pull "
                f"limit of {size_and_bytes(self.max_pull_bytes)} (max_pull_bytes)",
                hint="raise Client(max_pull_bytes=...) only if you trust this image",
            )
        to_fetch = sum(d.size for d in layers if not self.content.exists(d.digest))
        # A layer unpacks to at least its compressed size (a lower bound, not an estimate).
        to_unpack = sum(
            d.size for d, c in zip(layers, chains, strict=True) if not self.snapshotter.exists(c)
        )
        needs: dict[int, tuple[Path, int]] = {}
        for path, n in ((self.content.blobs_dir, to_fetch), (self.snapshotter.root, to_unpack)):
            dev = os.stat(path).st_dev
            prev = needs.get(dev)
            needs[dev] = (prev[0] if prev else path, (prev[1] if prev else 0) + n)
        for path, need in needs.values():
            if need == 0:
                continue
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize
            if free < need:
                raise StoreError(
                    f"not enough free space to pull {ref}: at least {size_and_bytes(need)} "
                    f"needed under {path}, {size_and_bytes(free)} available",
                    hint="free some space (fastdist prune removes what no image uses) or use "
                    "a store root on a larger filesystem (--root)",
                )

    def _charge(self, ref: Reference, staged: LayerSink) -> None:
        """Count a staged layer's unpacked bytes against its pull's limit (before its commit)."""
        with self._budgets_lock:
            budget = self._budgets.get(id(ref))
        if budget is not None and staged.result is not None:
            budget.add(staged.result.uncompressed_size, staged.desc.digest)

    def _store_document(self, desc: Descriptor, data: bytes) -> None:
        """Store a resolved (verified) document; a corrupt stored copy is replaced."""
        if not self.content.exists(desc.digest):
            self.content.write_blob(desc.digest, data)
        elif not self._intact_document(desc.digest):
            log.warning("document %s in the content store is corrupt; replacing it", desc.digest)
            self.content.write_blob(desc.digest, data, replace=True)

    def _fetch_config(self, ref: Reference, desc: Descriptor, progress: Progress) -> bytes:
        if desc.media_type not in oci.CONFIG_TYPES:
            raise UnsupportedMediaTypeError(
                f"unsupported config media type {desc.media_type!r} in {ref}",
                hint="fastdist pulls container images (OCI or Docker schema 2), not artifacts",
            )
        if desc.size > oci.MAX_CONFIG_BYTES:
            raise ManifestError(
                f"config {desc.digest} is {over_limit(desc.size, oci.MAX_CONFIG_BYTES)}"
            )
        if self.content.exists(desc.digest):
            try:
                data = self.content.read_bytes(desc.digest, oci.MAX_CONFIG_BYTES)
            except VerificationError:
                log.warning(
                    "config %s in the content store is corrupt; fetching it again", desc.digest
                )
                self.content.delete(desc.digest)
            else:
                progress(
                    ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
                )
                return data
        # Under the digest's ingest lock, so concurrent pulls fetch it once.
        with self.content.ingest(desc) as ingest:
            if self.content.exists(desc.digest):
                ingest.commit()  # another pull stored it meanwhile: just removes the ingest dir
                progress(
                    ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
                )
                return self.content.read_bytes(desc.digest, oci.MAX_CONFIG_BYTES)
            data = self.fetcher.fetch_bytes(ref, desc, oci.MAX_CONFIG_BYTES)
            self.content.write_blob(desc.digest, data)
            ingest.commit()  # already there now: just removes the ingest dir
        progress(ProgressEvent(Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size))
        return data

    def _pull_layers(
        self,
        ref: Reference,
        layers: Sequence[Descriptor],
        diff_ids: Sequence[Digest],
        chains: Sequence[Digest],
        progress: Progress,
    ) -> None:
        for desc in layers:
            progress(ProgressEvent(Phase.WAITING, desc.digest, desc.media_type, 0, desc.size))
        if not layers:
            return
        if self.snapshotter.apply_mode == "layer":
            self._pull_layers_parallel(ref, layers, diff_ids, chains, progress)
        else:
            self._pull_layers_ordered(ref, layers, diff_ids, chains, progress)

    def _pull_layers_parallel(
        self,
        ref: Reference,
        layers: Sequence[Descriptor],
        diff_ids: Sequence[Digest],
        chains: Sequence[Digest],
        progress: Progress,
    ) -> None:
        """overlayfs: every layer streams socket → tree into its own staging directory at once;
        each worker commits its snapshot as soon as its parent landed (design.md §6).

        Lock order, and why two processes cannot deadlock: a worker takes its layer's chain_id
        lock first, then (inside the fetch) the digest's ingest lock, which it releases once the
        blob is committed, before it waits for anything else. The only wait while holding a
        chain lock is for the parent's commit, i.e. for the lock of a chain one layer *shorter*
        (a chain_id names its whole prefix, so its depth is fixed). Every wait-for edge goes
        from depth d to depth d-1 and the bottom layer waits for nobody, so no cycle can form,
        whatever prefix two images share. The pool takes tasks in layer order, so a running
        worker's ancestors have all started too. The lock is held by the worker thread from
        the ``exists`` re-check to the commit, so a layer is unpacked once across processes and
        threads (a flock per open file conflicts between threads of one process as well).
        """
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        workers = min(len(layers), self._max_parallel)
        failed = threading.Event()
        landed = [_Landing() for _ in layers]
        with ThreadPoolExecutor(workers, thread_name_prefix="fastdist-layer") as pool:
            futures = [
                pool.submit(
                    self._pull_layer,
                    ref,
                    layers[i],
                    diff_ids[i],
                    chains[i],
                    chains[i - 1] if i else None,
                    progress,
                    failed,
                    landed[i - 1] if i else None,
                    landed[i],
                )
                for i in range(len(layers))
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                errors = [f.exception() for f in futures if f.done() and not f.cancelled()]
                if any(e is not None for e in errors):
                    failed.set()
                    for fut in futures:
                        fut.cancel()
                    for landing in landed:
                        landing.settle(False)  # wake waiters of cancelled layers
                    wait(futures)
                    errors = [f.exception() for f in futures if not f.cancelled()]
                    # Raise the failure itself, not a sibling's "pull aborted" that followed it.
                    real = [e for e in errors if e is not None and not isinstance(e, _PullAborted)]
                    first = real[0] if real else next(e for e in errors if e is not None)
                    raise first
            except BaseException:
                failed.set()
                for landing in landed:
                    landing.settle(False)
                raise

    def _pull_layer(
        self,
        ref: Reference,
        desc: Descriptor,
        diff_id: Digest,
        chain: Digest,
        parent: Digest | None,
        progress: Progress,
        failed: threading.Event,
        parent_landed: _Landing | None,
        landed: _Landing,
    ) -> None:
        """One overlayfs layer, start to commit, under its chain_id lock (see above)."""
        ok = False
        timings: list[tuple[str, float]] = []
        try:
            if failed.is_set():
                raise _PullAborted("pull aborted")
            with self.snapshotter.lock(chain):
                have_snap = self.snapshotter.exists(chain)
                if not have_snap:
                    staged = self._stage_layer(
                        ref, desc, diff_id, chain, parent, progress, failed, timings
                    )
                    if _CRASH_AT is not None:
                        _crash_point("staged")
                    try:
                        self._charge(ref, staged)
                        t = time.monotonic()
                        if parent_landed is not None and not parent_landed.wait():
                            raise _PullAborted("pull aborted")
                        timings.append(("wait", time.monotonic() - t))
                        t = time.monotonic()
                        staged.commit()
                        timings.append(("commit", time.monotonic() - t))
                    except BaseException:
                        staged.abort()
                        raise
            if have_snap:
                fetched = self._fetch_blob(ref, desc, progress)
                if not fetched:
                    progress(
                        ProgressEvent(
                            Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size
                        )
                    )
                    ok = True
                    return
            self._note_snapshot(desc, diff_id, chain, progress, tuple(timings))
            ok = True
        finally:
            landed.settle(ok)

    def _stage_layer(
        self,
        ref: Reference,
        desc: Descriptor,
        diff_id: Digest,
        chain: Digest,
        parent: Digest | None,
        progress: Progress,
        failed: threading.Event,
        timings: list[tuple[str, float]],
        refetched: bool = False,
    ) -> LayerSink:
        """Bring one missing layer to "ready to commit" (a staged sink). The caller holds the
        chain_id lock; the blob is streamed (fetch + apply in one pass) unless it is stored."""
        t = time.monotonic()
        if not self.content.exists(desc.digest):
            with self.content.ingest(desc) as ingest:
                if not self.content.exists(desc.digest):
                    sink = self.unpacker.layer_sink(desc, diff_id, chain, parent, ingest)
                    try:
                        self.fetcher.fetch(ref, desc, _AbortableSink(sink, failed), progress)
                        timings.append(("fetch", time.monotonic() - t))
                        t = time.monotonic()
                        progress(
                            ProgressEvent(
                                Phase.UNPACKING, desc.digest, desc.media_type, desc.size, desc.size
                            )
                        )
                        sink.finish()
                        timings.append(("unpack", time.monotonic() - t))
                    except BaseException as e:
                        # A registry that sent the wrong (or too many) bytes gets no resume.
                        sink.abort(discard=isinstance(e, VerificationError))
                        raise
                    return sink
            # Another process fetched it while we waited for the digest's lock: the blob is
            # stored now, and is unpacked from there with the ingest lock released.
        progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
        try:
            staged = self.unpacker.stage_blob(desc, diff_id, chain, parent)
        except (VerificationError, LayerError):
            # Verified while read: a stored blob that went bad on disk is fetched again.
            if refetched or not self._drop_if_corrupt(desc.digest):
                raise
            return self._stage_layer(
                ref, desc, diff_id, chain, parent, progress, failed, timings, refetched=True
            )
        timings.append(("unpack", time.monotonic() - t))
        return staged

    def _pull_layers_ordered(
        self,
        ref: Reference,
        layers: Sequence[Descriptor],
        diff_ids: Sequence[Digest],
        chains: Sequence[Digest],
        progress: Progress,
    ) -> None:
        """native snapshotter: a layer applies onto a copy of its parent, so blobs download in
        parallel into the content store and apply in order as their parents commit. Only this
        thread takes chain_id locks here, one at a time, so lock order is trivially safe."""
        from concurrent.futures import ThreadPoolExecutor

        workers = min(len(layers), self._max_parallel)
        with ThreadPoolExecutor(workers, thread_name_prefix="fastdist-blob") as pool:
            futures = [
                pool.submit(self._timed_fetch_blob, ref, desc, progress)
                if not self.snapshotter.exists(chains[i]) or not self.content.exists(desc.digest)
                else None
                for i, desc in enumerate(layers)
            ]
            for i, desc in enumerate(layers):
                fut = futures[i]
                timings: list[tuple[str, float]] = []
                if fut is not None:
                    timings.append(("fetch", fut.result()))
                with self.snapshotter.lock(chains[i]):
                    if self.snapshotter.exists(chains[i]):
                        progress(
                            ProgressEvent(
                                Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size
                            )
                        )
                        continue
                    progress(
                        ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size)
                    )
                    t = time.monotonic()
                    staged = self._stage_stored(
                        ref, desc, diff_ids[i], chains[i], chains[i - 1] if i else None, progress
                    )
                    timings.append(("unpack", time.monotonic() - t))
                    if _CRASH_AT is not None:
                        _crash_point("staged")
                    t = time.monotonic()
                    try:
                        self._charge(ref, staged)
                        staged.commit()
                    except BaseException:
                        staged.abort()
                        raise
                    timings.append(("commit", time.monotonic() - t))
                self._note_snapshot(desc, diff_ids[i], chains[i], progress, tuple(timings))

    def _stage_stored(
        self,
        ref: Reference,
        desc: Descriptor,
        diff_id: Digest,
        chain: Digest,
        parent: Digest | None,
        progress: Progress,
    ) -> LayerSink:
        """Apply a stored blob into staging (native snapshotter); verified while read, so a
        blob that went bad on disk is fetched again once and applied from the new copy."""
        try:
            return self.unpacker.stage_blob(desc, diff_id, chain, parent)
        except (VerificationError, LayerError):
            if not self._drop_if_corrupt(desc.digest):
                raise
        self._fetch_blob(ref, desc, progress)
        return self.unpacker.stage_blob(desc, diff_id, chain, parent)

    def _timed_fetch_blob(self, ref: Reference, desc: Descriptor, progress: Progress) -> float:
        t = time.monotonic()
        self._fetch_blob(ref, desc, progress)
        return time.monotonic() - t

    def _fetch_blob(self, ref: Reference, desc: Descriptor, progress: Progress) -> bool:
        """Fetch a blob into the content store only (verified, resumable, once per digest).
        Returns whether this call downloaded it (False: it was there already)."""
        if self.content.exists(desc.digest):
            return False
        with self.content.ingest(desc) as ingest:
            if self.content.exists(desc.digest):
                return False
            try:
                self.fetcher.fetch(ref, desc, ingest, progress)
            except VerificationError:
                ingest.discard()  # wrong or extra bytes from the registry: no resume from them
                raise
            ingest.commit()
        return True

    def _note_snapshot(
        self,
        desc: Descriptor,
        diff_id: Digest,
        chain: Digest,
        progress: Progress,
        timings: tuple[tuple[str, float], ...] = (),
    ) -> None:
        progress(
            ProgressEvent(
                Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size, timings=timings
            )
        )

    def _record_image(
        self,
        ref: Reference,
        resolved: Resolved,
        config: ImageConfig,
        chains: Sequence[Digest],
    ) -> ImageRecord:
        manifest = resolved.manifest
        size = (
            resolved.target.size
            + (
                resolved.manifest_descriptor.size
                if resolved.manifest_descriptor.digest != resolved.target.digest
                else 0
            )
            + manifest.config.size
            + sum(layer.size for layer in manifest.layers)
        )
        now = time.time()
        record = ImageRecord(
            name=str(ref),
            target=resolved.target,
            manifest_digest=resolved.manifest_descriptor.digest,
            config_digest=manifest.config.digest,
            layer_digests=tuple(layer.digest for layer in manifest.layers),
            chain_ids=tuple(chains),
            snapshotter=self.snapshotter.name,
            size=size,
            unpacked_size=0,  # not measured at pull time: Image.unpacked_size() measures
            created=now,
            updated=now,
        )
        self.metadata.images.put(record)
        stored = self.metadata.images.get(record.name)
        return stored or record

    # --- local images ----------------------------------------------------------------------
    def images(self) -> list[Image]:
        """Every local image, by name."""
        return [Image(r.name, r.target, r, self) for r in self.metadata.images.list()]

    def get(self, ref: str) -> Image:
        """The local image ``ref`` names: a name (normalised like ``pull`` does),
        ``name@digest``, an image ID (config digest) or manifest/index digest, whole or a unique
        prefix (see :meth:`find`)."""
        rec = self.find(ref)[0]
        return Image(rec.name, rec.target, rec, self)

    def find(self, ref: str) -> list[ImageRecord]:
        """The one lookup of local images by what a user typed, as docker does; every command
        that names an image (inspect, rmi, run, unpack) goes through it.

        In order: the name ``ref`` normalises to; for ``name@digest``, the images of that
        repository whose target or manifest is that digest; then, if ``ref`` looks like one,
        an image ID or digest (``sha256:<hex>`` or bare hex, whole or a prefix) matched against
        every image's config (docker's IMAGE ID), manifest and target digests. A short bare hex
        string (``cafe``) is tried as a name first. The records returned (one or more names)
        are all the same image; ImageNotFoundError if none matches, AmbiguousImageError if a
        prefix matches different images.
        """
        hex_id = parse_image_id(ref)  # set whenever names_only_an_id(ref)
        if not names_only_an_id(ref):
            reference = Reference.parse(ref)
            named = self._find_by_name(reference)
            if named:
                return named
            if hex_id is None:
                raise ImageNotFoundError(
                    f"image {reference} not found in {self.root}",
                    hint=f"pull it first: fastdist pull {ref}",
                )
        found = self.metadata.images.by_digest_prefix(f"sha256:{hex_id}")
        if not found:
            raise ImageNotFoundError(
                f"no local image has the name, ID or digest {ref!r} (in {self.root})",
                hint="list local images with: fastdist images",
            )
        ids = sorted({r.config_digest for r in found})
        if len(ids) > 1:
            names = tuple(r.name for r in found)
            raise AmbiguousImageError(
                f"{ref!r} matches {len(ids)} different images: " + ", ".join(names[:10]),
                hint="use a longer ID prefix, or a name",
                candidates=names,
            )
        return found

    def _find_by_name(self, reference: Reference) -> list[ImageRecord]:
        """The record called ``reference``; for ``name@digest``, else every image of that
        repository whose target or manifest is that digest (pulled by a tag, say)."""
        rec = self.metadata.images.get(str(reference))
        if rec is not None:
            return [rec]
        if reference.digest is None:
            return []
        return [
            r
            for r in self.metadata.images.by_digest_prefix(reference.digest)
            if reference.digest in (r.target.digest, r.manifest_digest)
            and Reference.parse(r.name).name == reference.name
        ]

    def inspect(self, ref: str) -> dict[str, Any]:
        """The image's record, manifest and config as JSON-able data."""
        import json

        img = self.get(ref)
        manifest = self.content.read_bytes(img.record.manifest_digest, oci.MAX_MANIFEST_BYTES)
        config = self.content.read_bytes(img.record.config_digest, oci.MAX_CONFIG_BYTES)
        return {
            "name": img.name,
            "id": img.record.config_digest,
            "target": img.target.to_json(),
            "snapshotter": img.record.snapshotter,
            "size": img.record.size,
            "unpacked_size": img.unpacked_size(),
            "chain_ids": list(img.record.chain_ids),
            "manifest": json.loads(manifest),
            "config": json.loads(config),
        }

    def remove(self, ref: str) -> str:
        """Forget the image ``ref`` names (any form :meth:`find` takes); its content stays
        until ``prune``. An ID or digest that several names point at is refused (as docker
        does without ``-f``): which name to forget is the user's choice. Returns the name
        forgotten."""
        found = self.find(ref)
        if len(found) > 1:
            names = [r.name for r in found]
            raise InUseError(
                f"image {ref} is referenced by {len(names)} names: {', '.join(names)}",
                hint="remove them by name: fastdist rmi " + " ".join(names),
            )
        img = Image(found[0].name, found[0].target, found[0], self)
        users = [c.id for c in self.metadata.containers.list() if c.image == img.name]
        if users:
            raise InUseError(
                f"image {img.name} is used by container(s) {', '.join(users)}",
                hint="remove the containers first: fastdist rm -f " + " ".join(users),
            )
        self.metadata.images.delete(img.name)
        return img.name

    def tag(self, src: str, dest: str) -> Image:
        """Give the present image ``src`` (any form :meth:`find` takes) the new name ``dest``
        (``name[:tag]``, normalised as ``pull`` does): same target, manifest and snapshots, as
        ``docker tag``. An image already called ``dest`` is re-pointed. Returns the new name's
        image."""
        rec = self.find(src)[0]
        target = Reference.parse(dest)
        if target.digest is not None:
            raise InvalidArgumentError(
                f"cannot tag {src} as {dest}: a tag names no digest",
                hint="give a name with an optional :tag, e.g. registry.example/app:v2",
            )
        if target.tag is None:
            target = dataclasses.replace(target, tag="latest")
        now = time.time()
        self.metadata.images.put(
            dataclasses.replace(rec, name=str(target), created=now, updated=now)
        )
        stored = self.metadata.images.get(str(target))
        if stored is None:  # removed by another process right away
            raise ImageNotFoundError(f"image {target} vanished right after it was tagged")
        return Image(stored.name, stored.target, stored, self)

    # --- push ------------------------------------------------------------------------------
    def push(
        self, ref: str, dest: str | None = None, progress: Progress = no_progress
    ) -> PushReport:
        """Push the present image ``ref`` (any form :meth:`find` takes) to ``dest`` (default:
        its own name). Blobs first (HEAD each and skip what the registry has; a
        cross-repository mount when the image's own repository is on the same registry;
        otherwise a monolithic upload), then the manifest, and an index last, so a push that
        fails midway leaves no tag pointing at missing content. Every document is sent as the
        bytes stored (digests preserved). An index is pushed only when every platform it
        lists is present; otherwise the present platform's manifest is pushed at the tag and
        ``missing`` names the others."""
        from .pusher import Pusher

        rec = self.find(ref)[0]
        src = Reference.parse(rec.name)
        target = Reference.parse(dest) if dest is not None else src
        manifest_bytes = self.content.read_bytes(rec.manifest_digest, oci.MAX_MANIFEST_BYTES)
        manifest = oci.parse_document(manifest_bytes, None)
        if not isinstance(manifest, oci.Manifest):
            raise StoreError(f"{rec.manifest_digest} of {rec.name} is not an image manifest")
        missing: list[str] = []
        index_bytes: bytes | None = None
        if rec.target.digest != rec.manifest_digest:
            index_bytes = self.content.read_bytes(rec.target.digest, oci.MAX_MANIFEST_BYTES)
            index = oci.parse_document(index_bytes, rec.target.media_type)
            if isinstance(index, oci.Index):
                missing = [
                    str(d.platform) if d.platform is not None else d.digest
                    for d in index.manifests
                    if d.digest != rec.manifest_digest
                ]
        mount_from = src if src.registry == target.registry and src.path != target.path else None
        pusher = Pusher(self.transport)
        outcomes: dict[str, list[Digest]] = {"exists": [], "mounted": [], "uploaded": []}
        with self._gc_lock(shared=True):
            for desc in (manifest.config, *manifest.layers):
                progress(ProgressEvent(Phase.UPLOADING, desc.digest, desc.media_type, 0, desc.size))
                outcome = pusher.push_blob(
                    target,
                    desc.digest,
                    self.content.path(desc.digest),
                    mount_from=mount_from,
                    on_read=_UploadMeter(desc, progress),
                )
                outcomes[outcome].append(desc.digest)
                phase = Phase.EXISTS if outcome == "exists" else Phase.DONE
                progress(ProgressEvent(phase, desc.digest, desc.media_type, desc.size, desc.size))
            mtype = manifest.media_type
            if index_bytes is not None and not missing:
                pusher.push_manifest(target.with_digest(rec.manifest_digest), manifest_bytes, mtype)
                top = pusher.push_manifest(target, index_bytes, rec.target.media_type)
            else:
                top = pusher.push_manifest(target, manifest_bytes, mtype)
        progress(ProgressEvent(Phase.DONE, message=f"{target} {top}"))
        return PushReport(
            str(target),
            top,
            tuple(outcomes["uploaded"]),
            tuple(outcomes["mounted"]),
            tuple(outcomes["exists"]),
            tuple(missing),
        )

    # --- login / logout (auth.py owns the docker config) -------------------------------------
    def login(self, registry: str, username: str, password: str) -> str:
        """Check ``username``/``password`` against ``registry`` (``GET /v2/`` answering its
        challenge, Basic or token) and only then save them where docker would (the host's
        credential helper, the ``credsStore``, or ``auths`` in ``$DOCKER_CONFIG/config.json`` or
        ``~/.docker/config.json``, written 0600 and atomically). Returns where they went."""
        from .auth import Credentials, CredentialStore, normalize_host, store_login
        from .transport import Transport, TransportConfig

        if not username or not password:
            raise InvalidArgumentError(
                "login needs a username and a password", hint="pass -u USER --password-stdin"
            )
        host = normalize_host(registry)
        server = Reference.parse(f"{host}/x").registry  # docker.io → registry-1.docker.io
        creds = Credentials(username, password)
        t = Transport(
            self._transport_config or TransportConfig(),
            CredentialStore({host: creds, server: creds}),
        )
        t.request("GET", t.url(server, "/v2/"), registry=server).close()
        where = store_login(host, creds)
        # This client's transport read the old config: the next request reads the new one.
        self.__dict__.pop("transport", None)
        return where

    def logout(self, registry: str) -> bool:
        """Forget the saved credentials of ``registry``; whether there were any."""
        from .auth import normalize_host, remove_login

        gone = remove_login(normalize_host(registry))
        self.__dict__.pop("transport", None)
        return gone

    # --- save / load (archive.py owns the formats) ------------------------------------------
    def save(
        self,
        refs: Sequence[str],
        dest: str | os.PathLike[str] | IO[bytes],
        *,
        format: str = "docker-archive",
    ) -> None:
        """Write the present images ``refs`` (any form :meth:`find` takes) to ``dest``: a path,
        made privately (0600/0700) and atomically, or a binary stream. ``format``:
        ``docker-archive`` (docker ≥ 25's form, an OCI layout inside, which ``docker load``,
        ``podman load`` and OCI tools all read), ``oci-archive`` or ``oci-dir``. Streaming:
        every blob is read once from the content store, verified on the way, never
        re-serialised. An image pulled through an index is saved as its present platform's
        manifest (the other platforms' blobs are not here)."""
        from . import archive

        if format not in archive.FORMATS:
            raise InvalidArgumentError(
                f"unknown archive format {format!r}",
                hint="use one of: " + ", ".join(archive.FORMATS),
            )
        entries = []
        for ref in refs:
            rec = self.find(ref)[0]
            data = self.content.read_bytes(rec.manifest_digest, oci.MAX_MANIFEST_BYTES)
            manifest = oci.parse_document(data, None)
            if not isinstance(manifest, oci.Manifest):
                raise StoreError(f"{rec.manifest_digest} of {rec.name} is not an image manifest")
            plat = self.get(rec.name).config().platform
            mdesc = Descriptor(manifest.media_type, rec.manifest_digest, len(data), platform=plat)
            name = None if Reference.parse(rec.name).digest is not None else rec.name
            entries.append(archive.SaveEntry(name, mdesc, manifest.config, manifest.layers))

        def open_blob(digest: Digest) -> Any:
            return open(self.content.path(digest), "rb")

        with self._gc_lock(shared=True):
            archive.save(dest, entries, open_blob, format)

    def load(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        tag: str | None = None,
        progress: Progress = no_progress,
    ) -> list[Image]:
        """Load the images of an archive or layout ``source`` (a docker-archive of either form,
        an OCI layout directory or tar, podman/skopeo output; a path or a binary stream) into
        the store, verified as a pull is: blob digests and sizes, media types and limits, and
        diff_ids while each layer unpacks into its snapshot. Names come from the archive, or
        ``tag`` (a single-image archive only). All or nothing: on any error no image is
        recorded and no blob this load added is left in the store."""
        from . import archive

        staging = self.content.ingest_dir / f".load-{os.urandom(8).hex()}"
        out: list[Image] = []
        with (
            self._gc_lock(shared=True),
            archive.open_layout(source, staging, self.max_pull_bytes) as layout,
        ):
            found = archive.read_images(layout, Platform.host())
            if not found:
                raise InvalidArgumentError("the archive holds no image")
            if tag is not None:
                if len(found) != 1:
                    raise InvalidArgumentError(
                        f"--tag needs an archive with one image; this one has {len(found)}",
                        hint="load it without --tag, then fastdist tag each image",
                    )
                found = [dataclasses.replace(found[0], names=(tag,))]
            for img in found:
                if not img.names:
                    raise InvalidArgumentError(
                        f"image {img.target.digest} in the archive has no name",
                        hint="name it with --tag NAME (tag= in the API)",
                    )
            added: list[Digest] = []
            try:
                landed = [self._land_loaded(img, added, progress) for img in found]
            except BaseException:
                # Nothing half-loaded: the blobs this load stored go (snapshots it
                # committed are content-addressed and unreferenced: prune removes them).
                for digest in added:
                    self.content.delete(digest)
                raise
            # Recorded last, once every image is complete.
            for img, (config, chains) in zip(found, landed, strict=True):
                out.extend(self._record_loaded(img, config, chains))
        return out

    def _land_loaded(
        self, img: LoadedImage, added: list[Digest], progress: Progress
    ) -> tuple[ImageConfig, list[Digest]]:
        """Commit one verified archive image's blobs (staged files renamed into the store
        through the content ingest) and unpack its layers as a pull does."""
        config = oci.parse_config(img.config_bytes)
        manifest = img.manifest
        _check_layers(manifest.layers, config)
        chains = oci.chain_ids(config.diff_ids)
        for desc, data in (
            (img.target, img.target_bytes),
            (img.manifest_descriptor, img.manifest_bytes),
            (manifest.config, img.config_bytes),
        ):
            if not self.content.exists(desc.digest):
                self.content.write_blob(desc.digest, data)
                added.append(desc.digest)
        for desc, staged in zip(manifest.layers, img.layers, strict=True):
            if self.content.exists(desc.digest):
                progress(
                    ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
                )
                continue
            with self.content.ingest(desc) as ingest:
                if not self.content.exists(desc.digest):
                    os.replace(staged.path, ingest.path)
                    ingest.commit(verified=True)  # hashed while staged; size checked again
                    added.append(desc.digest)
            progress(ProgressEvent(Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size))
        reference = Reference.parse(img.names[0])
        with self._budgets_lock:
            self._budgets[id(reference)] = _PullBudget(self.max_pull_bytes, str(reference))
        try:
            # Every blob is stored now: the pull's layer path only unpacks (never fetches),
            # verifying each layer's digest, size and diff_id on the way.
            self._pull_layers(reference, manifest.layers, config.diff_ids, chains, progress)
        finally:
            with self._budgets_lock:
                self._budgets.pop(id(reference), None)
        return config, chains

    def _record_loaded(
        self, img: LoadedImage, config: ImageConfig, chains: Sequence[Digest]
    ) -> list[Image]:
        from .resolver import Resolved

        images = []
        for name in img.names:
            reference = Reference.parse(name)
            resolved = Resolved(
                reference,
                img.target,
                img.target_bytes,
                img.manifest_descriptor,
                img.manifest,
                img.manifest_bytes,
            )
            rec = self._record_image(reference, resolved, config, chains)
            images.append(Image(rec.name, rec.target, rec, self))
        return images

    def prune(self, *, partial_older_than: float = PARTIAL_KEEP_SECONDS) -> PruneReport:
        """Delete blobs and snapshots that no image references, stale staging, stray mounts,
        and partial downloads untouched for ``partial_older_than`` seconds (default a day).

        A recent partial download is kept so that the pull it belongs to, interrupted or still
        to be rerun, resumes where it stopped; one a running pull holds is never removed. An
        ingest with nothing to resume (no bytes, or its blob already stored) goes whatever its
        age. Pass 0 to remove every partial download nobody holds.
        """
        if partial_older_than < 0:
            raise InvalidArgumentError(f"partial_older_than must be >= 0, got {partial_older_than}")
        with self._gc_lock(shared=False):
            blobs_kept = self.metadata.images.referenced_blobs()
            snaps_kept = set(self.metadata.images.referenced_snapshots())
            for c in self.metadata.containers.list():
                with contextlib.suppress(ImageNotFoundError):
                    img = self.get(c.image)
                    snaps_kept.update((img.record.snapshotter, x) for x in img.record.chain_ids)
                    blobs_kept.update(img.record.layer_digests)
            removed_blobs = 0
            freed = 0
            for digest in list(self.content.digests()):
                if digest not in blobs_kept:
                    freed += self.content.size(digest)
                    self.content.delete(digest)
                    removed_blobs += 1
            removed_snaps = 0
            swept = 0
            # Every snapshotter with data on this root (a pull may have used the other one).
            for snap in self._present_snapshotters().values():
                # Children before parents, so an overlay lower is never removed under an upper.
                for chain in sorted(snap.list(), key=lambda c: -self._depth(c, snap)):
                    if (snap.name, chain) not in snaps_kept:
                        snap.remove(chain)
                        removed_snaps += 1
                swept += snap.sweep_staging()
            ingests = self.content.prune_ingests(older_than=partial_older_than)
            unmounted = self._unmount_strays()
        return PruneReport(removed_blobs, removed_snaps, freed, swept + ingests + unmounted)

    def _unmount_strays(self) -> int:
        """Unmount what a killed fastdist left mounted under the store (not containers')."""
        from .check import stray_mounts

        n = 0
        for mount in stray_mounts(self.root, self._container_mounts()):
            with contextlib.suppress(StoreError):
                self.snapshotter.unmount(Path(mount))
                n += 1
        return n

    def _container_mounts(self) -> list[str]:
        return self._containers.mounts()

    def _present_snapshotters(self) -> dict[str, Snapshotter]:
        """Every snapshotter that has a directory on this root, by name."""
        snaps: dict[str, Snapshotter] = {self.snapshotter.name: self.snapshotter}
        for name in SNAPSHOTTERS:
            if name not in snaps and (self.root / "snapshots" / name).is_dir():
                snaps[name] = snapshotter_by_name(name, self.root)
        return snaps

    def check(self, verify_blobs: bool = True, repair: bool = False) -> CheckReport:
        """Verify the store: every blob's digest (and size against its descriptors), every
        image's blobs and snapshots, snapshot parent chains; list leftovers for prune.
        Reads only, under the GC lock held shared, so it can run next to pulls but not prune.

        ``repair``: remove the corrupt blobs found (under the GC lock held exclusively, as
        prune), then check again (sizes and links only) and return that report, with
        ``repaired`` set; the images that used them are incomplete until pulled again."""
        from . import check

        def checker(verify: bool) -> check.StoreChecker:
            return check.StoreChecker(
                self.root,
                self.content,
                self.metadata,
                self._present_snapshotters(),
                self._container_mounts(),
                verify_blobs=verify,
            )

        if repair and not verify_blobs:
            raise InvalidArgumentError("check(repair=True) needs verify_blobs=True")
        with self._gc_lock(shared=not repair):
            report = checker(verify_blobs).run()
            if not repair or not report.corrupt_blobs:
                return report
            done = check.repair(report, self.content)
            return dataclasses.replace(checker(False).run(), repaired=done)

    def _depth(self, chain: Digest, snap: Snapshotter | None = None) -> int:
        snap = snap or self.snapshotter
        depth = 0
        cur: Digest | None = chain
        while cur is not None and depth < 10_000:
            try:
                cur = snap.parent(cur)
            except (StoreError, ValueError):
                break  # a broken info.json: remove it early rather than fail the prune
            depth += 1
        return depth

    def unpack(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        progress: Progress = no_progress,
        *,
        keep_root_mode: bool = False,
    ) -> Path:
        """Write the image's flattened root filesystem into ``dest`` (created; must be empty),
        as ``umoci unpack`` / ``crane export`` would. Every layer is verified again on the way.

        ``dest`` is opened once (never through a symlink), must be owned by this user and not
        writable by group or others, and every layer is applied through that one descriptor, so
        swapping the path mid-way redirects nothing. It is made 0700 (setuid files of the image
        stay as the image says, but no other user can reach them); ``keep_root_mode=True`` gives
        it the mode of the image's own ``./`` entry instead. The layers are applied in a private
        staging directory inside ``dest`` and moved into it only once all of them succeeded: a
        failure leaves ``dest`` as it was (and removes it if this call created it).
        """
        img = self.get(ref)
        config = img.config()
        manifest = oci.parse_document(
            self.content.read_bytes(img.record.manifest_digest, oci.MAX_MANIFEST_BYTES),
            None,
        )
        if not isinstance(manifest, oci.Manifest):
            raise StoreError(f"{img.record.manifest_digest} is not an image manifest")
        _check_layers(manifest.layers, config)
        out = Path(dest)
        with _UnpackDestination(out) as target:
            for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
                progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
                try:
                    _native.apply_layer(
                        str(self.content.path(desc.digest)),
                        desc.media_type,
                        target.staging_path,
                        mode="flatten",
                        expected_digest=desc.digest,
                        expected_size=desc.size,
                        expected_diff_id=diff_id,
                        limits=self.limits,
                    )
                except (StoreError, VerificationError, LayerError) as e:
                    raise self._read_back_error(img.name, desc.digest, e) from e
                progress(
                    ProgressEvent(Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size)
                )
            target.commit(keep_root_mode=keep_root_mode)
        return out

    def _read_back_error(self, name: str, digest: Digest, e: FastdistError) -> FastdistError:
        """What to say when a stored layer failed to read back: if the blob is missing or went
        bad on disk, that (and how to repair it), rather than a tar error from its middle."""
        if self.content.intact(digest):
            return e  # the blob is what was verified at pull time: the error is the image's
        return VerificationError(
            f"layer {digest} of {name} is missing or corrupt in the content store",
            hint="fastdist check --repair removes what is corrupt; then "
            f"fastdist pull {name} fetches it again",
        )

    # --- containers (containers.py) --------------------------------------------------------
    @functools.cached_property
    def _containers(self) -> Containers:
        from .containers import Containers

        return Containers(self)

    def run(
        self,
        ref: str,
        options: RunOptions | None = None,
        *,
        pull: bool = True,
        platform: str | Platform | None = None,
        progress: Progress = no_progress,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        on_interrupt: Callable[[str], None] | None = None,
    ) -> Container:
        """Run ``ref`` (pulled first if missing and ``pull``) in a fresh writable snapshot, as
        ``options`` say (:class:`fastdist.spec.RunOptions`; default: the image's command, no
        network, docker's default capabilities and seccomp filter, a generated id).

        Foreground (default): returns once the container exited, with ``exit_code`` set.
        ``options.detach``: returns once it runs; output goes to its log. ``options.rm``
        removes the container and its snapshot when it exits (for detached containers: at the
        next ``containers()`` or ``ps``, since nothing of fastdist waits for them).

        The options are checked (capability names, sizes, the restart policy, published ports
        free) before anything is pulled or created. ``on_interrupt(id)`` is called when a first
        ^C was relayed to a foreground container (a second one within two seconds kills it).
        """
        from .spec import RunOptions

        return self._containers.run(
            ref,
            options if options is not None else RunOptions(),
            pull=pull,
            platform=platform,
            progress=progress,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            on_interrupt=on_interrupt,
        )

    def image_for_run(
        self,
        ref: str,
        *,
        pull: bool = True,
        platform: str | Platform | None = None,
        progress: Progress = no_progress,
    ) -> Image:
        """The image ``run`` would use for ``ref``: the present one, or (with ``pull``) pulled
        when missing or present only for another platform than ``platform``. An ID or digest
        names no registry image, so it is never pulled."""
        return self._containers.image_for_run(ref, pull=pull, platform=platform, progress=progress)

    def _snapshotter_for(self, img: Image) -> Snapshotter:
        return self._containers.snapshotter_named(img.record.snapshotter)

    def container(self, cid: str) -> Container:
        return self._containers.get(cid)

    def containers(self, all: bool = True) -> list[ContainerInfo]:
        """Every container with its live status; reaps stopped ``--rm`` containers."""
        return self._containers.list(all)

    # --- serve -----------------------------------------------------------------------------
    def serve(self, config: ServeConfig | None = None) -> RegistryServer:
        """This store as a read-only OCI registry (serve.py), not yet listening: call
        ``start()`` (or use it as a context manager), then ``address``/``url``, and ``stop()``.

        It reads the store while this or other processes pull, prune and remove: a blob being
        removed is served whole (from its open fd) or not found, never truncated."""
        from .serve import RegistryServer

        return RegistryServer(self, config)

    # --- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _gc_lock(self, shared: bool) -> Iterator[None]:
        """Pulls hold the root's GC lock shared; prune holds it exclusively, so prune never
        removes a blob a running pull has committed but not yet recorded."""
        try:
            fd = os.open(
                self.root / "gc.lock",
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
            )
        except OSError as e:
            raise StoreError(f"cannot open {self.root / 'gc.lock'}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class _PullBudget:
    """The uncompressed bytes one pull has unpacked so far, against ``max_pull_bytes``."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.used = 0
        self._lock = threading.Lock()

    def add(self, n: int, digest: Digest) -> None:
        with self._lock:
            self.used += n
            if self.used > self.limit:
                raise LimitExceededError(
                    f"pull of {self.what}: layer {digest} brings the unpacked total to "
                    f"{size_and_bytes(self.used)}, over the per-pull limit of "
                    f"{size_and_bytes(self.limit)} (max_pull_bytes)",
                    hint="raise Client(max_pull_bytes=...) only if you trust this image",
                )


def _cap_layer_bytes(limits: _native.Limits | None, cap: int) -> _native.Limits | None:
    """The layer limits with ``max_layer_bytes`` no larger than the per-pull limit."""
    base = limits or _native.Limits()
    if base.max_layer_bytes <= cap:
        return limits
    return _native.Limits(
        max_entries=base.max_entries,
        max_layer_bytes=cap,
        max_entry_bytes=min(base.max_entry_bytes, cap),
        max_header_bytes=base.max_header_bytes,
        max_path_len=base.max_path_len,
        max_path_depth=base.max_path_depth,
        max_ratio=base.max_ratio,
        ratio_grace_bytes=base.ratio_grace_bytes,
        zstd_window_log_max=base.zstd_window_log_max,
        max_volumes=base.max_volumes,
    )


class _PullAborted(FastdistError):
    """A layer stopped because another layer of the same pull failed."""


class _Landing:
    """Whether a layer's snapshot landed (committed or already there): set once, waited on by
    the layer above it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._ok = False
        self._lock = threading.Lock()

    def settle(self, ok: bool) -> None:
        with self._lock:
            if not self._event.is_set():
                self._ok = ok
                self._event.set()

    def wait(self) -> bool:
        self._event.wait()
        return self._ok


class _AbortableSink:
    """Passes bytes to a layer sink until the pull failed elsewhere, so a failed pull stops its
    other downloads promptly instead of finishing them (the partial data stays resumable)."""

    def __init__(self, sink: LayerSink, failed: threading.Event) -> None:
        self._sink = sink
        self._failed = failed

    @property
    def offset(self) -> int:
        return self._sink.offset

    def write(self, data: bytes) -> None:
        if self._failed.is_set():
            raise _PullAborted("pull aborted")
        self._sink.write(data)


@dataclass(frozen=True)
class PushReport:
    """What ``Client.push`` did: the name and digest pushed, and per blob what happened."""

    name: str
    digest: Digest
    uploaded: tuple[Digest, ...]
    mounted: tuple[Digest, ...]
    existed: tuple[Digest, ...]
    missing: tuple[str, ...]  # platforms of the image's index not present, so not pushed


class _UploadMeter:
    """Turns the pusher's read counts into UPLOADING events, about one per MiB."""

    def __init__(self, desc: Descriptor, progress: Progress) -> None:
        self._desc = desc
        self._progress = progress
        self._sent = 0
        self._told = 0

    def __call__(self, n: int) -> None:
        self._sent += n
        if self._sent - self._told >= (1 << 20) or self._sent == self._desc.size:
            self._told = self._sent
            d = self._desc
            self._progress(
                ProgressEvent(Phase.UPLOADING, d.digest, d.media_type, self._sent, d.size)
            )


@dataclass(frozen=True)
class PruneReport:
    blobs: int
    snapshots: int
    bytes_freed: int
    leftovers: int


def _wanted_platform(platform: object) -> tuple[Platform | None, bool]:
    """``pull``'s platform argument as (the platform asked for, or None for this host's;
    whether any platform will do)."""
    if platform is None:
        return None, False
    if isinstance(platform, Platform):
        return platform.normalized(), False
    if isinstance(platform, str) and platform.strip().lower() == oci.ANY_PLATFORM:
        return None, True
    if not isinstance(platform, str):
        raise InvalidPlatformError(
            f"invalid platform {platform!r}: expected a string or a Platform",
            hint="e.g. 'linux/amd64'",
        )
    return Platform.parse(platform), False


def _check_layers(layers: Sequence[Descriptor], config: ImageConfig) -> None:
    if len(layers) != len(config.diff_ids):
        raise ManifestError(
            f"manifest has {len(layers)} layers but the config lists {len(config.diff_ids)} "
            "diff_ids",
            hint="the image is malformed; ask its publisher to rebuild it",
        )
    for desc in layers:
        if desc.media_type not in oci.LAYER_TYPES:
            raise UnsupportedMediaTypeError(
                f"layer {desc.digest} has unsupported media type {desc.media_type!r}"
            )


class _UnpackDestination:
    """``unpack``'s destination, opened once with ``O_NOFOLLOW`` and used only through its fd.

    The layer applier is handed ``/proc/self/fd/<staging fd>``: the kernel resolves that magic
    link to the directory this process opened, whatever the path names by then (design.md §7:
    a destination is opened once and used by fd only).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False
        self._parent_fd = -1
        self._fd = -1
        self._staging_fd = -1
        self._staging = f".fastdist-unpack-{os.urandom(8).hex()}"
        self._moved: list[str] = []

    @property
    def staging_path(self) -> str:
        return f"/proc/self/fd/{self._staging_fd}"

    def __enter__(self) -> _UnpackDestination:
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        return self

    def _fail(self, why: str, hint: str = "pass a new or empty directory you own") -> NoReturn:
        raise FastdistError(f"unpack destination {self.path}: {why}", hint=hint)

    def _open(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            self._fail("/proc is not mounted", hint="unpack needs /proc (it applies by fd)")
        absolute = Path(os.path.abspath(self.path))
        name = absolute.name
        try:
            absolute.parent.mkdir(parents=True, exist_ok=True)
            self._parent_fd = os.open(absolute.parent, _DIR_FLAGS)
            if name:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=self._parent_fd)
                    self.created = True
                self._fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self._parent_fd)
            else:  # "/"
                self._fd = os.open(absolute, _DIR_FLAGS)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                self._fail("is not a directory (or is a symlink)")
            self._fail(f"cannot open it: {e.strerror}")
        st = os.fstat(self._fd)
        uid = os.geteuid()
        if st.st_uid != uid:
            self._fail(f"is owned by uid {st.st_uid}, not by this user (uid {uid})")
        if st.st_mode & 0o022:
            self._fail(
                f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "they could swap what is unpacked"
            )
        if os.listdir(self._fd):
            self._fail("is not empty")
        try:
            os.mkdir(self._staging, 0o700, dir_fd=self._fd)
            self._staging_fd = os.open(self._staging, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self._fd)
        except OSError as e:
            self._fail(f"cannot create a staging directory in it: {e.strerror}")

    def commit(self, *, keep_root_mode: bool) -> None:
        """Move the staged tree into the destination and set the destination's mode."""
        for name in os.listdir(self._staging_fd):
            os.rename(name, name, src_dir_fd=self._staging_fd, dst_dir_fd=self._fd)
            self._moved.append(name)
        mode = stat.S_IMODE(os.fstat(self._staging_fd).st_mode) if keep_root_mode else 0o700
        os.rmdir(self._staging, dir_fd=self._fd)
        os.fchmod(self._fd, mode)
        self._staging = ""

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None and self._fd >= 0:
                self._discard()
        finally:
            self._close()

    def _discard(self) -> None:
        """Remove what this unpack put into the destination (and the destination it created)."""
        here = Path(f"/proc/self/fd/{self._fd}")
        for name in [*self._moved, self._staging]:
            if name:
                with contextlib.suppress(OSError):
                    rmtree(here / name)
        if self.created and self._parent_fd >= 0:
            with contextlib.suppress(OSError):
                os.rmdir(self.path.name, dir_fd=self._parent_fd)  # only if still empty

    def _close(self) -> None:
        for fd in (self._staging_fd, self._fd, self._parent_fd):
            if fd >= 0:
                os.close(fd)
        self._staging_fd = self._fd = self._parent_fd = -1


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


__all__ = [
    "Client",
    "Image",
    "PruneReport",
    "PushReport",
    "default_root",
]
