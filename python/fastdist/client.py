"""The fastdist Python API: the only module that knows the order of the stages (design.md §1).

``Client.pull`` runs reference → resolver → fetcher → content → unpacker → snapshots → metadata;
``Client.run`` adds the runtime on top. Every stage returns a frozen value the next consumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _native, oci
from .auth import CredentialStore
from .content import ContentStore
from .errors import (
    ContainerNotFoundError,
    ContainerRunError,
    FastdistError,
    ImageNotFoundError,
    InUseError,
    ManifestError,
    StoreError,
    UnsupportedMediaTypeError,
)
from .fetcher import Fetcher
from .metadata import ContainerRecord, ImageRecord, MetadataDB
from .oci import Descriptor, Digest, ImageConfig, Platform
from .progress import Phase, Progress, ProgressEvent, no_progress
from .reference import Reference
from .resolver import Resolved, Resolver
from .runtime import Mount, RunOptions, Runtime
from .snapshots import Snapshotter, default_snapshotter, snapshotter_by_name
from .transport import Transport, TransportConfig
from .unpacker import LayerSink, Unpacker

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/fastdist"


def default_root() -> Path:
    """``$FASTDIST_ROOT`` or /var/lib/fastdist."""
    return Path(os.environ.get("FASTDIST_ROOT") or DEFAULT_ROOT)


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
        return oci.parse_config(data)

    def rootfs(self) -> tuple[Digest, ...]:
        """The layers' diff_ids, bottom first (as containerd's ``Image.RootFS``)."""
        return self.config().diff_ids

    def size(self) -> int:
        """Bytes of the image's content: documents, config and compressed layers."""
        return self.record.size

    def unpacked_size(self) -> int:
        """Bytes its committed snapshots take on disk."""
        return self.record.unpacked_size


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
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        _make_private_dir(self.root)
        self.content = ContentStore(self.root)
        self.snapshotter: Snapshotter = (
            snapshotter_by_name(snapshotter, self.root)
            if snapshotter
            else default_snapshotter(self.root)
        )
        self.metadata = MetadataDB(self.root / "meta.db")
        if credentials is None:
            credentials = CredentialStore.from_docker_config()
        self.transport = Transport(transport_config or TransportConfig(), credentials)
        self.resolver = Resolver(self.transport)
        self.fetcher = Fetcher(self.transport)
        self.unpacker = Unpacker(self.content, self.snapshotter, limits)
        self.limits = limits
        self.runtime = Runtime(self.root, runc=runc)
        self._max_parallel = max(1, max_parallel_layers)

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
        """
        reference = Reference.parse(ref)
        plat = Platform.parse(platform) if isinstance(platform, str) else platform
        with self._gc_lock(shared=True):
            progress(ProgressEvent(Phase.RESOLVING, message=str(reference)))
            resolved = self.resolver.resolve(reference, plat, progress)
            self._store_document(resolved.target, resolved.target_bytes)
            if resolved.manifest_descriptor.digest != resolved.target.digest:
                self._store_document(resolved.manifest_descriptor, resolved.manifest_bytes)
            config_bytes = self._fetch_config(reference, resolved.manifest.config, progress)
            config = oci.parse_config(config_bytes)
            layers = resolved.manifest.layers
            _check_layers(layers, config)
            chains = oci.chain_ids(config.diff_ids)
            self._pull_layers(reference, layers, config.diff_ids, chains, progress)
            record = self._record_image(reference, resolved, config, chains)
        progress(ProgressEvent(Phase.DONE, message=f"{record.name} {record.target.digest}"))
        return Image(record.name, record.target, record, self)

    def _store_document(self, desc: Descriptor, data: bytes) -> None:
        if not self.content.exists(desc.digest):
            self.content.write_blob(desc.digest, data)

    def _fetch_config(self, ref: Reference, desc: Descriptor, progress: Progress) -> bytes:
        if desc.media_type not in oci.CONFIG_TYPES:
            raise UnsupportedMediaTypeError(
                f"unsupported config media type {desc.media_type!r} in {ref}",
                hint="fastdist pulls container images (OCI or Docker schema 2), not artifacts",
            )
        if desc.size > oci.MAX_CONFIG_BYTES:
            raise ManifestError(
                f"config {desc.digest} is {desc.size} bytes, over the "
                f"{oci.MAX_CONFIG_BYTES}-byte limit"
            )
        if self.content.exists(desc.digest):
            progress(
                ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
            )
            return self.content.read_bytes(desc.digest, oci.MAX_CONFIG_BYTES)
        data = self.fetcher.fetch_bytes(ref, desc, oci.MAX_CONFIG_BYTES)
        self.content.write_blob(desc.digest, data)
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
        snapshots are committed bottom-up as their parents land (design.md §6)."""
        workers = min(len(layers), self._max_parallel)
        failed = threading.Event()
        with ThreadPoolExecutor(workers, thread_name_prefix="fastdist-layer") as pool:
            futures: list[Future[LayerSink | None]] = [
                pool.submit(
                    self._stage_layer,
                    ref,
                    layers[i],
                    diff_ids[i],
                    chains[i],
                    chains[i - 1] if i else None,
                    progress,
                    failed,
                )
                for i in range(len(layers))
            ]
            committed = 0
            try:
                for i, fut in enumerate(futures):
                    staged = fut.result()
                    if staged is not None:
                        staged.commit()
                        self._note_snapshot(layers[i], diff_ids[i], chains[i], progress)
                    committed = i + 1
            except BaseException:
                failed.set()
                for fut in futures[committed:]:
                    fut.cancel()
                for fut in futures[committed:]:
                    with contextlib.suppress(BaseException):
                        staged = fut.result()
                        if staged is not None:
                            staged.abort()
                raise

    def _stage_layer(
        self,
        ref: Reference,
        desc: Descriptor,
        diff_id: Digest,
        chain: Digest,
        parent: Digest | None,
        progress: Progress,
        failed: threading.Event,
    ) -> LayerSink | None:
        """Bring one layer to "ready to commit" (a staged sink) or "already there" (None)."""
        if failed.is_set():
            raise FastdistError("pull aborted")
        have_blob = self.content.exists(desc.digest)
        have_snap = self.snapshotter.exists(chain)
        if have_blob and have_snap:
            progress(
                ProgressEvent(Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size)
            )
            return None
        if have_snap:
            self._fetch_blob(ref, desc, progress)
            return None
        if have_blob:
            progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
            return self.unpacker.stage_blob(desc, diff_id, chain, parent)
        with self.content.ingest(desc) as ingest:
            if self.content.exists(desc.digest):
                # Another process fetched it while we waited for the digest's lock.
                progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
                return self.unpacker.stage_blob(desc, diff_id, chain, parent)
            sink = self.unpacker.layer_sink(desc, diff_id, chain, parent, ingest)
            try:
                self.fetcher.fetch(ref, desc, sink, progress)
                progress(
                    ProgressEvent(
                        Phase.UNPACKING, desc.digest, desc.media_type, desc.size, desc.size
                    )
                )
                sink.finish()
            except BaseException:
                sink.abort()
                raise
            return sink

    def _pull_layers_ordered(
        self,
        ref: Reference,
        layers: Sequence[Descriptor],
        diff_ids: Sequence[Digest],
        chains: Sequence[Digest],
        progress: Progress,
    ) -> None:
        """native snapshotter: a layer applies onto a copy of its parent, so blobs download in
        parallel into the content store and apply in order as their parents commit."""
        workers = min(len(layers), self._max_parallel)
        with ThreadPoolExecutor(workers, thread_name_prefix="fastdist-blob") as pool:
            futures = [
                pool.submit(self._fetch_blob, ref, desc, progress)
                if not self.snapshotter.exists(chains[i]) or not self.content.exists(desc.digest)
                else None
                for i, desc in enumerate(layers)
            ]
            for i, desc in enumerate(layers):
                fut = futures[i]
                if fut is not None:
                    fut.result()
                if self.snapshotter.exists(chains[i]):
                    progress(
                        ProgressEvent(
                            Phase.EXISTS, desc.digest, desc.media_type, desc.size, desc.size
                        )
                    )
                    continue
                progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
                staged = self.unpacker.stage_blob(
                    desc, diff_ids[i], chains[i], chains[i - 1] if i else None
                )
                try:
                    staged.commit()
                except BaseException:
                    staged.abort()
                    raise
                self._note_snapshot(desc, diff_ids[i], chains[i], progress)

    def _fetch_blob(self, ref: Reference, desc: Descriptor, progress: Progress) -> None:
        """Fetch a blob into the content store only (verified, resumable, once per digest)."""
        if self.content.exists(desc.digest):
            return
        with self.content.ingest(desc) as ingest:
            if self.content.exists(desc.digest):
                return
            self.fetcher.fetch(ref, desc, ingest, progress)
            ingest.commit()

    def _note_snapshot(
        self, desc: Descriptor, diff_id: Digest, chain: Digest, progress: Progress
    ) -> None:
        progress(ProgressEvent(Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size))

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
        unpacked = sum(self.snapshotter.usage(c) for c in chains)
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
            unpacked_size=unpacked,
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
        """The local image called ``ref`` (normalised like ``pull`` does)."""
        name = self._local_name(ref)
        rec = self.metadata.images.get(name)
        if rec is None:
            raise ImageNotFoundError(
                f"image {name} not found in {self.root}",
                hint=f"pull it first: fastdist pull {ref}",
            )
        return Image(rec.name, rec.target, rec, self)

    def _local_name(self, ref: str) -> str:
        return str(Reference.parse(ref))

    def inspect(self, ref: str) -> dict[str, Any]:
        """The image's record, manifest and config as JSON-able data."""
        import json

        img = self.get(ref)
        manifest = self.content.read_bytes(img.record.manifest_digest, oci.MAX_MANIFEST_BYTES)
        config = self.content.read_bytes(img.record.config_digest, oci.MAX_CONFIG_BYTES)
        return {
            "name": img.name,
            "target": img.target.to_json(),
            "snapshotter": img.record.snapshotter,
            "size": img.record.size,
            "unpacked_size": img.record.unpacked_size,
            "chain_ids": list(img.record.chain_ids),
            "manifest": json.loads(manifest),
            "config": json.loads(config),
        }

    def remove(self, ref: str) -> None:
        """Forget the image called ``ref``; its content stays until ``prune``."""
        img = self.get(ref)
        users = [c.id for c in self.metadata.containers.list() if c.image == img.name]
        if users:
            raise InUseError(
                f"image {img.name} is used by container(s) {', '.join(users)}",
                hint="remove the containers first: fastdist rm -f " + " ".join(users),
            )
        self.metadata.images.delete(img.name)

    def prune(self) -> PruneReport:
        """Delete blobs and snapshots that no image references, stale staging and ingests."""
        with self._gc_lock(shared=False):
            blobs_kept = self.metadata.images.referenced_blobs()
            snaps_kept = {c for (_, c) in self.metadata.images.referenced_snapshots()}
            for c in self.metadata.containers.list():
                with contextlib.suppress(ImageNotFoundError):
                    img = self.get(c.image)
                    snaps_kept.update(img.record.chain_ids)
                    blobs_kept.update(img.record.layer_digests)
            removed_blobs = 0
            freed = 0
            for digest in list(self.content.digests()):
                if digest not in blobs_kept:
                    freed += self.content.size(digest)
                    self.content.delete(digest)
                    removed_blobs += 1
            removed_snaps = 0
            # Children before parents, so an overlay lower is never removed under an upper.
            for chain in sorted(self.snapshotter.list(), key=lambda c: -self._depth(c)):
                if chain not in snaps_kept:
                    self.snapshotter.remove(chain)
                    removed_snaps += 1
            swept = self.snapshotter.sweep_staging()
            ingests = self.content.prune_ingests(older_than=0)
        return PruneReport(removed_blobs, removed_snaps, freed, swept + ingests)

    def _depth(self, chain: Digest) -> int:
        depth = 0
        cur: Digest | None = chain
        while cur is not None and depth < 10_000:
            cur = self.snapshotter.parent(cur)
            depth += 1
        return depth

    def unpack(
        self, ref: str, dest: str | os.PathLike[str], progress: Progress = no_progress
    ) -> Path:
        """Write the image's flattened root filesystem into ``dest`` (created; must be empty),
        as ``umoci unpack`` / ``crane export`` would. Every layer is verified again on the way."""
        img = self.get(ref)
        config = img.config()
        manifest = oci.parse_document(
            self.content.read_bytes(img.record.manifest_digest, oci.MAX_MANIFEST_BYTES),
            None,
        )
        if not isinstance(manifest, oci.Manifest):
            raise StoreError(f"{img.record.manifest_digest} is not an image manifest")
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise FastdistError(
                f"unpack destination {out} is not empty",
                hint="pass a new or empty directory",
            )
        for desc, diff_id in zip(manifest.layers, config.diff_ids):
            progress(ProgressEvent(Phase.UNPACKING, desc.digest, desc.media_type, 0, desc.size))
            _native.apply_layer(
                str(self.content.path(desc.digest)),
                desc.media_type,
                str(out),
                mode="flatten",
                expected_digest=desc.digest,
                expected_size=desc.size,
                expected_diff_id=diff_id,
                limits=self.limits,
            )
            progress(ProgressEvent(Phase.DONE, desc.digest, desc.media_type, desc.size, desc.size))
        return out

    # --- containers ------------------------------------------------------------------------
    def run(
        self,
        ref: str,
        command: Sequence[str] | None = None,
        *,
        id: str | None = None,
        detach: bool = False,
        rm: bool = False,
        pull: bool = True,
        platform: str | Platform | None = None,
        progress: Progress = no_progress,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        entrypoint: str | None = None,
        env: Sequence[str] = (),
        env_file: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
        interactive: bool = False,
        net: str = "none",
        mounts: Sequence[Mount] = (),
        hostname: str | None = None,
        read_only: bool = False,
    ) -> Container:
        """Run ``ref`` (pulled first if missing and ``pull``) in a fresh writable snapshot.

        Foreground (default): returns once the container exited, with ``exit_code`` set.
        ``detach``: returns once it runs; output goes to its log. ``rm`` removes the container
        and its snapshot when it exits (for detached containers: at the next ``containers()``
        or ``ps``, since nothing of fastdist waits for them).
        """
        img = self._image_for_run(ref, pull, platform, progress)
        cid = id or _generate_id(self)
        opts = RunOptions(
            id=cid,
            command=tuple(command) if command else None,
            entrypoint=entrypoint,
            env=tuple(env),
            env_file=tuple(env_file),
            workdir=workdir,
            user=user,
            tty=tty,
            interactive=interactive,
            detach=detach,
            net=net,
            mounts=tuple(mounts),
            hostname=hostname,
            read_only=read_only,
            rm=rm,
        )
        config = img.config()
        chains = img.record.chain_ids
        snap = self._snapshotter_for(img)
        self.runtime.prepare(cid)  # InUseError when the id is taken: nothing created yet
        record = ContainerRecord(
            id=cid,
            image=img.name,
            snapshotter=snap.name,
            snapshot_key=cid,
            bundle=str(self.runtime.bundle(cid)),
            command=tuple(command or ()),
            status="created",
            pid=None,
            exit_code=None,
            created=time.time(),
            log_path=str(self.runtime.bundle(cid) / "log") if detach else None,
            rm=rm,
        )
        container = Container(cid, img.name, self)
        try:
            self.metadata.containers.add(record)
            active = snap.prepare_active(cid, chains[-1] if chains else None)
            snap.mount(active, self.runtime.rootfs_dir(cid), readonly=False)
            spec = self.runtime.create(config, opts)
            args = tuple(spec["process"]["args"])
            self.metadata.containers.update_command(cid, args)
        except BaseException:
            container._cleanup(force=True)
            raise
        if detach:
            try:
                state = self.runtime.start(cid)
            except BaseException:
                container._cleanup(force=True)
                raise
            self.metadata.containers.update_status(cid, "running", state.pid, None)
            return container
        try:
            code = self.runtime.run(cid, stdin=stdin, stdout=stdout, stderr=stderr)
        except BaseException:
            if rm:
                container._cleanup(force=True)
            raise
        container.exit_code = code
        self.metadata.containers.update_status(cid, "stopped", None, code)
        if rm:
            container.remove(force=True)
        return container

    def _image_for_run(
        self, ref: str, pull: bool, platform: str | Platform | None, progress: Progress
    ) -> Image:
        try:
            return self.get(ref)
        except ImageNotFoundError:
            if not pull:
                raise
        return self.pull(ref, platform=platform, progress=progress)

    def _snapshotter_for(self, img: Image) -> Snapshotter:
        if img.record.snapshotter == self.snapshotter.name:
            return self.snapshotter
        return snapshotter_by_name(img.record.snapshotter, self.root)

    def container(self, cid: str) -> Container:
        rec = self.metadata.containers.get(cid)
        if rec is None:
            raise ContainerNotFoundError(
                f"no such container: {cid}", hint="list them with: fastdist ps -a"
            )
        return Container(rec.id, rec.image, self)

    def containers(self, all: bool = True) -> list[ContainerInfo]:
        """Every container with its live status; reaps stopped ``--rm`` containers."""
        out = []
        for rec in self.metadata.containers.list():
            try:
                state = self.runtime.state(rec.id)
                status, exit_code = state.status, state.exit_code
            except ContainerNotFoundError:
                status, exit_code = "missing", rec.exit_code
            if status == "stopped" and rec.rm:
                with contextlib.suppress(FastdistError):
                    Container(rec.id, rec.image, self).remove(force=True)
                continue
            if all or status == "running":
                out.append(
                    ContainerInfo(rec.id, rec.image, rec.command, status, exit_code, rec.created)
                )
        return out

    # --- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _gc_lock(self, shared: bool) -> Iterator[None]:
        """Pulls hold the root's GC lock shared; prune holds it exclusively, so prune never
        removes a blob a running pull has committed but not yet recorded."""
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass
class Container:
    """A container created by ``Client.run``: its runc state, log and snapshot."""

    id: str
    image: str
    _client: Client
    exit_code: int | None = None

    @property
    def status(self) -> str:
        """created, running, paused or stopped (what runc and the exit record say)."""
        return self._client.runtime.state(self.id).status

    def wait(self) -> int | None:
        """Block until a detached container exits; its exit status."""
        code = self._client.runtime.wait(self.id)
        self.exit_code = code
        with contextlib.suppress(FastdistError):
            self._client.metadata.containers.update_status(self.id, "stopped", None, code)
        return code

    def kill(self, sig: int | str = "TERM") -> None:
        """Send ``sig`` to the container's init process; a stopped container is an error."""
        state = self._client.runtime.state(self.id)
        if state.status not in ("running", "paused", "created"):
            raise ContainerRunError(
                f"cannot kill container {self.id}: it is {state.status}",
                hint=f"see its output with: fastdist logs {self.id}",
            )
        self._client.runtime.kill(self.id, sig)

    def logs(self, follow: bool = False) -> Iterator[bytes]:
        """What a detached container wrote to stdout/stderr."""
        return self._client.runtime.logs(self.id, follow=follow)

    def remove(self, force: bool = False) -> None:
        """Delete the container, its bundle and its writable snapshot (``force``: kill first)."""
        state = self._client.runtime.state(self.id)
        if state.status in ("running", "paused") and not force:
            raise InUseError(
                f"container {self.id} is {state.status}",
                hint=f"stop it first (fastdist kill {self.id}) or use rm -f",
            )
        self._cleanup(force=force)

    def _cleanup(self, force: bool) -> None:
        c = self._client
        rec = c.metadata.containers.get(self.id)
        snap = (
            snapshotter_by_name(rec.snapshotter, c.root)
            if rec is not None and rec.snapshotter != c.snapshotter.name
            else c.snapshotter
        )
        with contextlib.suppress(ContainerNotFoundError):
            c.runtime.delete(self.id, force=force)
        snap.unmount(c.runtime.rootfs_dir(self.id))
        with contextlib.suppress(ContainerNotFoundError):
            c.runtime.remove(self.id)
        with contextlib.suppress(StoreError):
            snap.remove_active(self.id)
        c.metadata.containers.delete(self.id)


@dataclass(frozen=True)
class ContainerInfo:
    """A row of ``fastdist ps``."""

    id: str
    image: str
    command: tuple[str, ...]
    status: str
    exit_code: int | None
    created: float


_ADJECTIVES = (
    "brisk",
    "calm",
    "eager",
    "fast",
    "keen",
    "lucid",
    "nimble",
    "quiet",
    "rapid",
    "steady",
    "swift",
    "tidy",
    "vivid",
    "witty",
    "bold",
    "crisp",
)
_NOUNS = (
    "otter",
    "falcon",
    "lynx",
    "heron",
    "badger",
    "marten",
    "osprey",
    "puffin",
    "raven",
    "stoat",
    "tern",
    "wren",
    "ibex",
    "kestrel",
    "lemur",
    "gecko",
)


def _generate_id(client: Client) -> str:
    """A readable unique id like ``swift-heron-3fa2``."""
    import secrets

    for _ in range(100):
        cid = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
        if client.metadata.containers.get(cid) is None and not client.runtime.bundle(cid).exists():
            return cid
    raise StoreError("could not generate a free container id")


@dataclass(frozen=True)
class PruneReport:
    blobs: int
    snapshots: int
    bytes_freed: int
    leftovers: int


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


def _make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


__all__ = ["Client", "Container", "ContainerInfo", "Image", "PruneReport", "default_root"]
