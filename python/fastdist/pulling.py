"""Pulling: layer plans, the per-pull job (budget, free-space check, abort flag) and the dispatcher.

``Client.pull`` is resolve → :func:`plan_layers` → :func:`dispatch` → record. A
:class:`LayerPlan` is everything one layer needs, fixed before any byte moves; the
:class:`PullJob` is what one pull owns (its byte budget, its "a sibling failed" flag); the
dispatcher runs one ``Unpacker.unpack`` per plan (unpacker.py) — all at once for overlayfs, in
layer order for the plain-copy snapshotter — and raises the first real failure.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import _native, oci
from .errors import (
    LimitExceededError,
    ManifestError,
    PullAbortedError,
    StoreError,
    UnsupportedMediaTypeError,
)
from .oci import Descriptor, Digest, ImageConfig
from .progress import Phase, Progress, ProgressEvent
from .sizes import size_and_bytes

if TYPE_CHECKING:
    from .content import ContentStore
    from .fetcher import BlobSink, Fetcher
    from .reference import Reference
    from .snapshots import Snapshotter
    from .unpacker import LayerSource, Unpacker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPlan:
    """One layer of one image, as the unpacker needs it: fixed before any byte moves."""

    index: int  # 0 = bottom
    desc: Descriptor
    diff_id: Digest
    chain_id: Digest
    parent: Digest | None  # the chain_id of the layer below (None for the bottom one)


def plan_layers(layers: Sequence[Descriptor], config: ImageConfig) -> tuple[LayerPlan, ...]:
    """The plans of an image's layers from its manifest's descriptors and its config's diff_ids.

    The one place that checks they agree: as many layers as diff_ids, every layer of a media
    type fastdist unpacks."""
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
    chains = oci.chain_ids(config.diff_ids)
    return tuple(
        LayerPlan(i, desc, config.diff_ids[i], chains[i], chains[i - 1] if i else None)
        for i, desc in enumerate(layers)
    )


class PullBudget:
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


def cap_layer_bytes(limits: _native.Limits | None, cap: int) -> _native.Limits | None:
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


class PullJob:
    """What one pull (or load) of one image owns: its byte budget and its abort flag.

    Made per pull, so concurrent pulls through one client never share or look up each other's
    state; ``aborted`` is set once any layer of this pull failed, so its siblings stop."""

    def __init__(self, what: str, max_pull_bytes: int, max_parallel: int = 8) -> None:
        self.what = what
        self.budget = PullBudget(max_pull_bytes, what)
        self.max_parallel = max(1, max_parallel)
        self.aborted = threading.Event()

    def charge(self, plan: LayerPlan, result: _native.LayerResult) -> None:
        """Count a staged layer's unpacked bytes against the pull's limit (before its commit)."""
        self.budget.add(result.uncompressed_size, plan.desc.digest)

    def check_size(
        self,
        content: ContentStore,
        snapshotter: Snapshotter,
        config: Descriptor,
        layers: Sequence[Descriptor],
        plans: Sequence[LayerPlan] | None = None,
    ) -> None:
        """Before any layer is fetched: the per-pull limit on what the descriptors announce,
        and enough free space for the blobs to fetch and (at least) their unpacked bytes.
        Without ``plans`` (the manifest alone, before the config came) the unpacked bytes
        are not counted; called again with them once they are known."""
        limit = self.budget.limit
        announced = config.size + sum(d.size for d in layers)
        if announced > limit:
            raise LimitExceededError(
                f"pull of {self.what}: its blobs total {size_and_bytes(announced)}, over the "
                f"per-pull limit of {size_and_bytes(limit)} (max_pull_bytes)",
                hint="raise Client(max_pull_bytes=...) only if you trust this image",
            )
        to_fetch = sum(d.size for d in layers if not content.exists(d.digest))
        # A layer unpacks to at least its compressed size (a lower bound, not an estimate).
        to_unpack = sum(p.desc.size for p in plans or () if not snapshotter.exists(p.chain_id))
        needs: dict[int, tuple[Path, int]] = {}
        for path, n in ((content.blobs_dir, to_fetch), (snapshotter.root, to_unpack)):
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
                    f"not enough free space to pull {self.what}: at least "
                    f"{size_and_bytes(need)} needed under {path}, {size_and_bytes(free)} available",
                    hint="free some space (fastdist prune removes what no image uses) or use "
                    "a store root on a larger filesystem (--root)",
                )


class RegistrySource:
    """A ``LayerSource`` that fetches ``ref``'s blobs from its registry (fetcher.py)."""

    def __init__(self, fetcher: Fetcher, ref: Reference) -> None:
        self._fetcher = fetcher
        self._ref = ref

    def fetch(self, desc: Descriptor, sink: BlobSink, progress: Progress) -> None:
        self._fetcher.fetch(self._ref, desc, sink, progress)


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


def dispatch(
    unpacker: Unpacker,
    plans: Sequence[LayerPlan],
    source: LayerSource,
    progress: Progress,
    job: PullJob,
) -> None:
    """Bring every plan's snapshot to committed (``Unpacker.unpack`` each), or raise the first
    real failure with nothing of the failed layers visible. On return every blob and snapshot
    of ``plans`` is durable (one flush of each store for all layers), so the image may be
    recorded."""
    for p in plans:
        progress(ProgressEvent(Phase.WAITING, p.desc.digest, p.desc.media_type, 0, p.desc.size))
    if not plans:
        return
    if unpacker.snapshotter.apply_mode == "layer":
        _dispatch_parallel(unpacker, plans, source, progress, job)
    else:
        _dispatch_ordered(unpacker, plans, source, progress, job)
    # Each layer was synced before its renames (``durable=False``); one fsync of each store's
    # directory now makes every rename of this pull, and those of layers another process
    # committed and this pull relies on, survive a power loss before the image is recorded.
    unpacker.content.flush()
    unpacker.snapshotter.flush()


def _dispatch_parallel(
    unpacker: Unpacker,
    plans: Sequence[LayerPlan],
    source: LayerSource,
    progress: Progress,
    job: PullJob,
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

    workers = min(len(plans), job.max_parallel)
    landed = [_Landing() for _ in plans]

    def one(plan: LayerPlan) -> None:
        ok = False
        try:
            below = landed[plan.index - 1] if plan.index else None
            unpacker.unpack(
                plan,
                source,
                progress,
                wait_parent=below.wait if below is not None else None,
                charge=job.charge,
                aborted=job.aborted,
                durable=False,
            )
            ok = True
        finally:
            landed[plan.index].settle(ok)

    with ThreadPoolExecutor(workers, thread_name_prefix="fastdist-layer") as pool:
        futures = [pool.submit(one, p) for p in plans]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and not f.cancelled()]
            if any(e is not None for e in errors):
                job.aborted.set()
                for fut in futures:
                    fut.cancel()
                for landing in landed:
                    landing.settle(False)  # wake waiters of cancelled layers
                wait(futures)
                errors = [f.exception() for f in futures if not f.cancelled()]
                # Raise the failure itself, not a sibling's "pull aborted" that followed it.
                real = [e for e in errors if e is not None and not isinstance(e, PullAbortedError)]
                first = real[0] if real else next(e for e in errors if e is not None)
                raise first
        except BaseException:
            job.aborted.set()
            for landing in landed:
                landing.settle(False)
            raise


def _dispatch_ordered(
    unpacker: Unpacker,
    plans: Sequence[LayerPlan],
    source: LayerSource,
    progress: Progress,
    job: PullJob,
) -> None:
    """native snapshotter: a layer applies onto a copy of its parent, so blobs download in
    parallel into the content store and apply in order as their parents commit. Only this
    thread takes chain_id locks here, one at a time, so lock order is trivially safe."""
    from concurrent.futures import Future, ThreadPoolExecutor

    def fetch(plan: LayerPlan) -> float:
        t = time.monotonic()
        unpacker.fetch_blob(plan.desc, source, progress, durable=False)
        return time.monotonic() - t

    workers = min(len(plans), job.max_parallel)
    with ThreadPoolExecutor(workers, thread_name_prefix="fastdist-blob") as pool:
        futures: list[Future[float] | None] = [
            pool.submit(fetch, p)
            if not unpacker.snapshotter.exists(p.chain_id)
            or not unpacker.content.exists(p.desc.digest)
            else None
            for p in plans
        ]
        try:
            for plan, fut in zip(plans, futures, strict=True):
                timings = (("fetch", fut.result()),) if fut is not None else ()
                unpacker.unpack(
                    plan, source, progress, charge=job.charge, timings=timings, durable=False
                )
        except BaseException:
            job.aborted.set()
            for f in futures:
                if f is not None:
                    f.cancel()
            raise
