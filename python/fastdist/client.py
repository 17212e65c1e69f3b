"""The fastdist Python API: the only module that knows the order of the stages (design.md §1).

``Client.pull`` runs reference → resolver → fetcher → content → unpacker → snapshots → metadata;
``Client.run`` adds the runtime on top. Every stage returns a frozen value the next consumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from . import _native, gc, oci, pulling
from .content import ContentStore
from .errors import (
    AmbiguousImageError,
    FastdistError,
    ImageNotFoundError,
    InUseError,
    InvalidArgumentError,
    LayerError,
    ManifestError,
    PlatformNotFoundError,
    StoreError,
    UnsupportedMediaTypeError,
    VerificationError,
)
from .gc import PARTIAL_KEEP_SECONDS, PruneReport
from .metadata import ImageRecord, MetadataDB
from .oci import Descriptor, Digest, ImageConfig, Platform
from .progress import Phase, Progress, ProgressEvent, no_progress
from .reference import Reference, names_only_an_id, parse_image_id
from .sizes import over_limit
from .snapshots import Snapshotter, default_snapshotter, snapshotter_by_name
from .store import CRASH_AT, crash_point, default_root, ensure_root, rmtree
from .unpacker import StoredSource, Unpacker

if TYPE_CHECKING:
    # Imported where used, so local commands (images, ps, run of a present image, a pull of a
    # present name@digest) never load the registry side (requests: ~50 ms) or the runtime.
    from .archive import LoadedImage
    from .auth import CredentialStore
    from .check import CheckReport
    from .containers import Container, ContainerInfo, Containers
    from .dedup import DedupReport, DiskUsage
    from .fetcher import FetchConfig, Fetcher
    from .mirrors import Mirrors
    from .resolver import Resolved, Resolver
    from .runc import Runtime
    from .serve import RegistryServer, ServeConfig
    from .spec import RunOptions
    from .transport import Transport, TransportConfig

log = logging.getLogger(__name__)

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


# Connections opened while a pull's manifest is in flight, before it says how many blobs there
# are, for a name the store has no image of: the whole budget, so every layer's request finds
# its connection open when the config has arrived (through the link emulator at 80 ms RTT,
# the 36-layer many-layers pulled in 0.97 s with 32 opened early against 1.07 s with 4 and
# 1.13 s with 16, medians of 6 interleaved in-process pulls on a loaded machine). For a name
# the store has (a re-pull, most often of an image that is still current): none, so a pull of
# an image already here opens only the manifest's connection; a moved tag opens the rest once
# its manifest is known.
PRECONNECT_KNOWN = 0


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
        max_parallel_layers: int | None = None,
        runc: str = "runc",
        max_pull_bytes: int = DEFAULT_MAX_PULL_BYTES,
        hosts_dir: str | os.PathLike[str] | None = None,
        max_connections: int | None = None,
        limit_rate: int | str | None = None,
        fetch_config: FetchConfig | None = None,
    ) -> None:
        """``max_connections``: blob requests in flight per registry host, shared by every pull
        of the process (default 32, ``transport.DEFAULT_MAX_CONNECTIONS``). ``limit_rate``: bytes/s
        for all downloads together (an int, or curl's ``500k``/``20M``). ``fetch_config``: when
        blobs are fetched over parallel ranged connections (``fetcher.FetchConfig``).
        ``max_parallel_layers``: layers a pull works on at once (threads); default: as many as
        the connection budget, so the dispatcher never holds a layer's request back while a
        connection is free (a ``load``, which fetches nothing, uses 8)."""
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
        self._transport_config = _with_link_options(transport_config, max_connections, limit_rate)
        self._fetch_policy = fetch_config
        self._credentials = credentials
        self._hosts_dir = hosts_dir
        self.max_pull_bytes = max_pull_bytes
        self.unpacker = Unpacker(
            self.content, self.snapshotter, pulling.cap_layer_bytes(limits, max_pull_bytes)
        )
        self.limits = limits
        self.max_volumes = (limits or _native.Limits()).max_volumes
        self._runc = runc
        self._max_parallel = None if max_parallel_layers is None else max(1, max_parallel_layers)

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

        return Fetcher(self.transport, self.mirrors, self._fetch_policy)

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
        *,
        dedup: bool | None = None,
    ) -> Image:
        """Resolve ``ref``, fetch and verify every blob, unpack every layer, record the image.

        All or nothing: the image is listed only once every blob is verified and every snapshot
        committed; an interrupted pull leaves partial downloads that the next pull resumes.

        ``platform``: ``os/arch[/variant]`` or a :class:`Platform` (default: this host's). Asked
        for explicitly, a single-platform image built for another one is refused
        (PlatformNotFoundError); ``"any"`` takes it whatever its platform, and an index's first
        entry when it has none for this host.

        ``dedup``: share the new snapshots' files with the store's equal ones once the image is
        recorded (``dedup.after_pull``); None: the snapshotter's ``dedup_after_pull``.
        """
        reference = Reference.parse(ref)
        plat, any_platform = oci.wanted_platform(platform)
        started = time.monotonic()
        with self._gc_lock(shared=True):
            progress(ProgressEvent(Phase.RESOLVING, message=str(reference)))
            pinned = self._present_by_digest(reference, progress)
            if pinned is not None:
                # Content addressed and already verified: nothing to ask the registry.
                self._check_platform(reference, plat, pinned.target.media_type, pinned)
                return Image(pinned.name, pinned.target, pinned, self)
            # While the manifest is in flight, connections for the blobs it will name.
            known = self.metadata.images.get(str(reference)) is not None
            early = PRECONNECT_KNOWN if known else self.transport.config.max_connections
            self._preconnect(reference, early)
            asked = time.monotonic()
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
            # From a far registry, while the config is in flight: the first GET of every layer
            # blob to fetch (within the budget), so the layers' bytes come one round trip after
            # the manifest, not two (FetchConfig.early_after).
            layers = resolved.manifest.layers
            workers = self._max_parallel or self.transport.config.max_connections
            job = pulling.PullJob(str(reference), self.max_pull_bytes, workers)
            job.check_size(self.content, self.snapshotter, resolved.manifest.config, layers)
            missing = [d for d in layers if not self.content.exists(d.digest)]
            ahead: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
            if missing:
                sent = self.fetcher.send_early(
                    reference, missing, time.monotonic() - asked, self._early_fetch
                )
                if not sent.early:
                    # Not sent early: a connection per layer blob to fetch is opened instead,
                    # so every layer's request goes out on an open connection.
                    self._preconnect(reference, len(missing))
                ahead = sent
            with ahead:
                self._store_document(resolved.target, resolved.target_bytes)
                if resolved.manifest_descriptor.digest != resolved.target.digest:
                    self._store_document(resolved.manifest_descriptor, resolved.manifest_bytes)
                config_bytes = self._fetch_config(reference, resolved.manifest.config, progress)
                config = oci.parse_config(config_bytes, max_volumes=self.max_volumes)
                self._check_platform(reference, plat, resolved.target.media_type, config)
                plans = pulling.plan_layers(layers, config)
                job.check_size(
                    self.content, self.snapshotter, resolved.manifest.config, layers, plans
                )
                source = pulling.RegistrySource(self.fetcher, reference)
                pulling.dispatch(self.unpacker, plans, source, progress, job)
            if CRASH_AT is not None:
                crash_point("committed")
            record = self._record_image(reference, resolved, plans)
        self._dedup_after_pull(dedup)
        progress(
            ProgressEvent(
                Phase.DONE,
                message=f"{record.name} {record.target.digest}",
                timings=(("resolve", resolve_seconds), ("total", time.monotonic() - started)),
            )
        )
        return Image(record.name, record.target, record, self)

    def _early_fetch(self, desc: Descriptor) -> bool:
        """Whether ``desc``'s blob is fetched from its first byte (not stored, no partial
        download to resume with a Range request, no thread or process fetching it now): its
        GET can be sent early (asked right before it is sent: ``Fetcher.send_early``)."""
        c = self.content
        try:
            return not (
                c.exists(desc.digest) or c.resumable(desc.digest) or c.being_fetched(desc.digest)
            )
        except OSError:
            return False  # the layer's own fetch reports what is wrong with the store

    def _preconnect(self, ref: Reference, count: int) -> None:
        """Open up to ``count`` connections ahead of need to the host ``ref``'s blobs are
        fetched from first (its first mirror, else the registry): ``Transport.preconnect``."""
        hosts = self.mirrors.hosts(ref, "pull")
        if hosts and count > 0:
            self.transport.preconnect(hosts[0].api_url("/v2/", ns=ref.domain), count)

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

    def _record_image(
        self, ref: Reference, resolved: Resolved, plans: Sequence[pulling.LayerPlan]
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
            chain_ids=tuple(p.chain_id for p in plans),
            snapshotter=self.snapshotter.name,
            size=size,
            created=now,
            updated=now,
        )
        # pulling.dispatch made every blob and snapshot this image names durable (one flush).
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
        self,
        ref: str,
        dest: str | None = None,
        progress: Progress = no_progress,
        *,
        all_platforms: bool = False,
    ) -> PushReport:
        """Push the present image ``ref`` (any form :meth:`find` takes) to ``dest`` (default:
        its own name). Blobs first (HEAD each and skip what the registry has; a
        cross-repository mount when the image's own repository is on the same registry;
        otherwise an upload, in chunks for big blobs), then each manifest, an index last, the
        tag with the last document, so a push that fails midway leaves no tag pointing at
        missing content. Every document is sent as the bytes stored (digests preserved). An
        image pulled through an index is pushed as that whole index when every platform it
        lists is present (manifest and blobs); otherwise the present platform's manifest is
        pushed at the tag and ``missing`` names the others, or, with ``all_platforms``,
        IncompleteImageError is raised before anything is sent. Progress: per blob an
        UPLOADING then an EXISTS or DONE event whose message is the outcome (``exists``,
        ``mounted``, ``uploaded``), per manifest a DONE event with message ``manifest``, last
        a DONE event without digest, message ``<dest> <digest>``."""
        from .pusher import Pusher, plan_push

        rec = self.find(ref)[0]
        src = Reference.parse(rec.name)
        target = Reference.parse(dest) if dest is not None else src
        mount_from = src if src.registry == target.registry and src.path != target.path else None
        pusher = Pusher(self.transport)
        outcomes: dict[str, list[Digest]] = {"exists": [], "mounted": [], "uploaded": []}
        seen: set[Digest] = set()
        with self._gc_lock(shared=True):
            plan = plan_push(
                self._stored_document,
                self.content.exists,
                rec.target,
                rec.manifest_digest,
                name=rec.name,
                whole=all_platforms,
            )
            for doc in (*plan.children, plan.top):
                for desc in doc.blobs:
                    if desc.digest in seen:
                        continue
                    seen.add(desc.digest)
                    progress(
                        ProgressEvent(Phase.UPLOADING, desc.digest, desc.media_type, 0, desc.size)
                    )
                    outcome = pusher.push_blob(
                        target,
                        desc.digest,
                        self.content.path(desc.digest),
                        mount_from=mount_from,
                        on_read=_UploadMeter(desc, progress),
                    )
                    outcomes[outcome].append(desc.digest)
                    phase = Phase.EXISTS if outcome == "exists" else Phase.DONE
                    progress(
                        ProgressEvent(
                            phase, desc.digest, desc.media_type, desc.size, desc.size, outcome
                        )
                    )
                at = target if doc is plan.top else target.with_digest(doc.digest)
                top = pusher.push_manifest(at, doc.data, doc.media_type)
                n = len(doc.data)
                progress(ProgressEvent(Phase.DONE, top, doc.media_type, n, n, "manifest"))
        progress(ProgressEvent(Phase.DONE, message=f"{target} {top}"))
        return PushReport(
            str(target),
            top,
            tuple(outcomes["uploaded"]),
            tuple(outcomes["mounted"]),
            tuple(outcomes["exists"]),
            plan.missing,
            tuple(d.digest for d in plan.children),
        )

    def _stored_document(self, digest: Digest) -> bytes | None:
        """A manifest's bytes from the content store, or None when it is not there."""
        if not self.content.exists(digest):
            return None
        return self.content.read_bytes(digest, oci.MAX_MANIFEST_BYTES)

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
            for img, plans in zip(found, landed, strict=True):
                out.extend(self._record_loaded(img, plans))
        return out

    def _land_loaded(
        self, img: LoadedImage, added: list[Digest], progress: Progress
    ) -> tuple[pulling.LayerPlan, ...]:
        """Commit one verified archive image's blobs (staged files renamed into the store
        through the content ingest) and unpack its layers as a pull does."""
        config = oci.parse_config(img.config_bytes)
        manifest = img.manifest
        plans = pulling.plan_layers(manifest.layers, config)
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
        # Every blob is stored now: the pull's layer path only unpacks (never fetches),
        # verifying each layer's digest, size and diff_id on the way.
        what = str(Reference.parse(img.names[0]))
        job = pulling.PullJob(what, self.max_pull_bytes, self._max_parallel or 8)
        pulling.dispatch(self.unpacker, plans, StoredSource(), progress, job)
        return plans

    def _record_loaded(self, img: LoadedImage, plans: Sequence[pulling.LayerPlan]) -> list[Image]:
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
            rec = self._record_image(reference, resolved, plans)
            images.append(Image(rec.name, rec.target, rec, self))
        return images

    def prune(self, *, partial_older_than: float = PARTIAL_KEEP_SECONDS) -> PruneReport:
        """Delete blobs and snapshots that no image references, stale staging, stray mounts,
        and partial downloads untouched for ``partial_older_than`` seconds (default a day).

        A recent partial download is kept so that the pull it belongs to, interrupted or still
        to be rerun, resumes where it stopped; one a running pull holds is never removed. An
        ingest with nothing to resume (no bytes, or its blob already stored) goes whatever its
        age. Pass 0 to remove every partial download nobody holds (gc.py).
        """
        return gc.prune(self, partial_older_than)

    def check(
        self, verify_blobs: bool = True, repair: bool = False, deep: bool = False
    ) -> CheckReport:
        """Verify the store: every blob's digest (and size against its descriptors), every
        image's blobs and snapshots, snapshot parent chains; list leftovers for prune.
        Reads only, under the GC lock held shared, so it can run next to pulls but not prune.

        ``deep``: also re-hash every committed snapshot's files and compare them (content, mode,
        owner, mtime, xattrs) with the layer manifests the applier recorded (``report.deep``).

        ``repair``: remove the corrupt blobs found and (with ``deep``) the damaged snapshots and
        those above them (under the GC lock held exclusively, as prune), then check again (sizes
        and links only) and return that report, with ``repaired`` set; the images that used
        them are incomplete until pulled again, which fetches and unpacks them verified."""
        from . import check

        def checker(verify: bool, deep: bool) -> check.StoreChecker:
            return check.StoreChecker(
                self.root,
                self.content,
                self.metadata,
                gc.present_snapshotters(self.root, self.snapshotter),
                gc.container_mounts(self),
                verify_blobs=verify,
                deep=deep,
            )

        if repair and not verify_blobs:
            raise InvalidArgumentError("check(repair=True) needs verify_blobs=True")
        with self._gc_lock(shared=not repair):
            first = checker(verify_blobs, deep)
            report = first.run()
            damaged = report.deep is not None and bool(report.deep.damaged)
            if not repair or not (report.corrupt_blobs or damaged):
                return report
            done = check.repair(report, self.content)
            deep_report = report.deep
            kept: tuple[check.Finding, ...] = ()
            if deep_report is not None and damaged:
                removed, kept = check.repair_snapshots(
                    deep_report.layers,
                    first.snapshotters,
                    check.container_snapshots(first.snapshotters),
                )
                for name, chain in removed:
                    self.metadata.files.drop_layer(name, chain)  # dedup's index too
                done += check.removed_findings(removed)
                deep_report = dataclasses.replace(deep_report, removed=removed)
            after = checker(False, False).run()
            return dataclasses.replace(
                after, repaired=done, deep=deep_report, problems=after.problems + kept
            )

    def disk_usage(self) -> DiskUsage:
        """Logical vs physical bytes of every image's layer snapshots, and what images share
        (``fastdist system df``; see ``dedup.disk_usage``). Under the GC lock held shared."""
        from .dedup import disk_usage

        with self._gc_lock(shared=True):
            return disk_usage(
                gc.present_snapshotters(self.root, self.snapshotter),
                self.metadata.images.list(),
                self.content,
            )

    def dedup(self) -> DedupReport:
        """Share equal files between the committed snapshots (``fastdist dedup``; see
        ``dedup.dedup``), under the GC lock held exclusively (as prune): no pull commits and no
        removal runs meanwhile. Snapshots a container uses are left alone."""
        from .check import container_snapshots
        from .dedup import dedup

        with self._gc_lock(shared=False):
            snaps = gc.present_snapshotters(self.root, self.snapshotter)
            return dedup(snaps, self.metadata.files, in_use=container_snapshots(snaps))

    def _dedup_after_pull(self, dedup: bool | None) -> None:
        if dedup or (dedup is None and self.snapshotter.dedup_after_pull):
            from . import dedup as dedup_mod

            snaps = gc.present_snapshotters(self.root, self.snapshotter)
            dedup_mod.after_pull(self.root, snaps, self.metadata.files, asked=dedup is True)

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
        plans = pulling.plan_layers(manifest.layers, config)
        out = Path(dest)
        with _UnpackDestination(out) as target:
            for plan in plans:
                desc = plan.desc
                progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
                try:
                    self.unpacker.flatten(plan, target.staging_path, self.limits)
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
    def _gc_lock(self, shared: bool) -> contextlib.AbstractContextManager[None]:
        """The root's GC lock (gc.py): pulls hold it shared, prune exclusively."""
        return gc.gc_lock(self.root, shared)


def _with_link_options(
    config: TransportConfig | None, max_connections: int | None, limit_rate: int | str | None
) -> TransportConfig | None:
    """``config`` with ``Client``'s connection budget and rate cap put in (checked here, so a
    bad value fails at construction with a typed error)."""
    if max_connections is None and limit_rate is None:
        return config
    import dataclasses

    from .transport import TransportConfig, parse_rate

    base = config or TransportConfig()
    if max_connections is not None:
        hint = "e.g. --max-connections 4 (Client(max_connections=4)); the default is 32"
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise InvalidArgumentError(
                f"max_connections must be an int, got {max_connections!r}", hint=hint
            )
        if max_connections < 1:
            raise InvalidArgumentError(
                f"max_connections must be at least 1, got {max_connections}", hint=hint
            )
        base = dataclasses.replace(base, max_connections=max_connections)
    if limit_rate is not None:
        rate_hint = 'e.g. limit_rate="20M" or 20971520 (bytes/s)'
        if isinstance(limit_rate, bool):
            raise InvalidArgumentError(
                f"limit_rate must be bytes/s, got {limit_rate!r}", hint=rate_hint
            )
        rate = parse_rate(limit_rate) if isinstance(limit_rate, str) else limit_rate
        if not isinstance(rate, int) or rate < 1:
            raise InvalidArgumentError(
                f"limit_rate must be positive bytes/s, got {limit_rate!r}", hint=rate_hint
            )
        base = dataclasses.replace(base, limit_rate=rate)
    return base


@dataclass(frozen=True)
class PushReport:
    """What ``Client.push`` did: the name and digest pushed, and per blob what happened."""

    name: str
    digest: Digest
    uploaded: tuple[Digest, ...]
    mounted: tuple[Digest, ...]
    existed: tuple[Digest, ...]
    missing: tuple[str, ...]  # platforms of the image's index not present, so not pushed
    manifests: tuple[Digest, ...] = ()  # an index's platform manifests pushed before it


class _UploadMeter:
    """Turns the pusher's read counts into UPLOADING events, about one per MiB."""

    def __init__(self, desc: Descriptor, progress: Progress) -> None:
        self._desc = desc
        self._progress = progress
        self._sent = 0
        self._told = 0

    def __call__(self, n: int) -> None:
        # A resumed chunk is read again: the count never passes the blob's size.
        self._sent = min(self._sent + n, self._desc.size)
        if self._sent == self._told:
            return
        if self._sent - self._told >= (1 << 20) or self._sent == self._desc.size:
            self._told = self._sent
            d = self._desc
            self._progress(
                ProgressEvent(Phase.UPLOADING, d.digest, d.media_type, self._sent, d.size)
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
