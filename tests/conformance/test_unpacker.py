"""unpacker.py across both snapshotters (overlayfs and plain-copy ``native``), no registry needed.

First the streaming sink (``LayerSink``: one pass from downloaded bytes to a committed blob and
snapshot), then ``Unpacker.unpack(plan, source, progress)``, the whole sequence for one layer: a
fresh layer lands with its blob; an already-committed one is success without a second apply; a
missing parent fails cleanly; bad bytes are a typed error with nothing committed; two threads
unpacking one plan apply it once; a stream that stops mid-way leaves nothing visible.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from fastdist.content import ContentStore
from fastdist.errors import (
    CorruptLayerError,
    DigestMismatchError,
    FastdistError,
    LayerError,
    PullAbortedError,
    RegistryError,
    StoreError,
    VerificationError,
)
from fastdist.oci import OCI_LAYER_GZIP, Descriptor, Digest, chain_ids, parse_config, sha256_digest
from fastdist.progress import Phase, ProgressEvent
from fastdist.pulling import LayerPlan, plan_layers
from fastdist.snapshots import NativeSnapshotter, OverlaySnapshotter, Snapshotter, overlay_supported
from fastdist.testing.sources import BytesSource
from fastdist.unpacker import LayerSink, LayerSource, StoredSource, Unpacker


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Layer:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.tar = tar_of(files)
        self.blob = gzip.compress(self.tar, mtime=0)
        self.diff_id = sha256_digest(self.tar)
        self.desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(self.blob), len(self.blob))


# Incompressible content so the blob is big enough to feed in many chunks.
L1 = Layer({"bin/tool": os.urandom(300_000), "etc/conf": b"one"})
L2 = Layer({"etc/conf": b"two", "etc/extra": b"x"})
C1, C2 = chain_ids([L1.diff_id, L2.diff_id])
BLOBS = {L1.desc.digest: L1.blob, L2.desc.digest: L2.blob}
CONFIG = parse_config(
    json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [L1.diff_id, L2.diff_id]},
        }
    ).encode()
)
P1, P2 = plan_layers([L1.desc, L2.desc], CONFIG)


def _source(kind: str, content: ContentStore, blobs: dict[Digest, bytes]) -> LayerSource:
    if kind == "store":
        for digest, data in blobs.items():
            content.write_blob(digest, data)
        return StoredSource()
    return BytesSource(blobs)


# The plain-copy path stages a layer only once its parent is committed and fetches blobs whole,
# so the parent wait and the stream's abort exist only with overlayfs.
OVERLAY_ONLY = pytest.mark.parametrize("snap", ["overlayfs"], indirect=True)


@pytest.fixture(params=["overlayfs", "native"])
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Snapshotter:
    root = tmp_path / "root"
    if request.param == "overlayfs":
        if not (os.geteuid() == 0 and overlay_supported(root)):
            pytest.skip("overlayfs needs root and overlay support")
        return OverlaySnapshotter(root)
    return NativeSnapshotter(root)


@pytest.fixture
def content(snap: Snapshotter) -> ContentStore:
    return ContentStore(snap.store_root)


@pytest.fixture
def unpacker(content: ContentStore, snap: Snapshotter) -> Unpacker:
    return Unpacker(content, snap)


def feed(sink: LayerSink, data: bytes, chunk: int = 16_384) -> None:
    for i in range(0, len(data), chunk):
        sink.write(data[i : i + chunk])


def feed_and_finish(sink: LayerSink, data: bytes) -> None:
    feed(sink, data)
    sink.finish()


def stream(u: Unpacker, layer: Layer, chain: Digest, parent: Digest | None) -> LayerSink:
    ingest = u.content.ingest(layer.desc)
    sink = u.layer_sink(layer.desc, layer.diff_id, chain, parent, ingest)
    feed(sink, layer.blob[sink.offset :])
    return sink


def nothing_staged(snap: Snapshotter) -> bool:
    return os.listdir(snap.staging_dir) == []


def test_gzip_layer_fed_in_chunks_ends_committed_in_content_and_snapshots(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    sink = stream(unpacker, L1, C1, None)
    result = sink.finish()
    assert (result.digest, result.diff_id) == (L1.desc.digest, L1.diff_id)
    assert result.compressed_size == L1.desc.size
    assert content.path(L1.desc.digest).read_bytes() == L1.blob
    assert not snap.exists(C1)  # staged until the client commits in layer order
    sink.commit()
    assert snap.exists(C1)
    assert (snap.fs_path(C1) / "etc" / "conf").read_bytes() == b"one"
    assert content.ingests() == []
    assert nothing_staged(snap)


def test_wrong_diff_id_fails_with_nothing_committed_and_staging_removed(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    ingest = content.ingest(L1.desc)
    sink = unpacker.layer_sink(L1.desc, L2.diff_id, C1, None, ingest)
    with pytest.raises(DigestMismatchError):
        feed_and_finish(sink, L1.blob)
    sink.abort()  # what a caller does after any failure: idempotent here
    assert not content.exists(L1.desc.digest)
    assert not snap.exists(C1)
    assert nothing_staged(snap)
    with content.ingest(L1.desc) as again:
        assert again.offset == 0  # proved-wrong bytes are not kept for a resume


def test_corrupted_blob_fails_verification_and_is_not_kept(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    bad = bytearray(L1.blob)
    bad[len(bad) // 2] ^= 0x55
    ingest = content.ingest(L1.desc)
    sink = unpacker.layer_sink(L1.desc, L1.diff_id, C1, None, ingest)
    with pytest.raises((DigestMismatchError, LayerError)):
        feed_and_finish(sink, bytes(bad))
    sink.abort()
    assert not content.exists(L1.desc.digest)
    assert nothing_staged(snap)
    with content.ingest(L1.desc) as again:
        assert again.offset == 0


def test_sink_resumes_a_partial_ingest_from_its_offset(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    half = len(L1.blob) // 2
    with content.ingest(L1.desc) as ingest:
        ingest.write(L1.blob[:half])  # an earlier download stopped half way
    ingest = content.ingest(L1.desc)
    assert ingest.offset == half
    sink = unpacker.layer_sink(L1.desc, L1.diff_id, C1, None, ingest)
    assert sink.offset == half  # the writer re-fed the prefix from the ingest
    feed(sink, L1.blob[half:])
    sink.finish()
    sink.commit()
    assert content.path(L1.desc.digest).read_bytes() == L1.blob
    assert (snap.fs_path(C1) / "bin" / "tool").stat().st_size == 300_000


def test_aborted_sink_keeps_a_true_prefix_that_a_new_sink_finishes(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    half = len(L1.blob) // 2
    ingest = content.ingest(L1.desc)
    sink = unpacker.layer_sink(L1.desc, L1.diff_id, C1, None, ingest)
    feed(sink, L1.blob[:half])
    sink.abort()  # the connection dropped: keep what reached the disk
    assert nothing_staged(snap)
    assert not content.exists(L1.desc.digest)

    ingest = content.ingest(L1.desc)
    kept = ingest.offset
    assert kept <= half
    assert ingest.path.read_bytes() == L1.blob[:kept]
    sink = unpacker.layer_sink(L1.desc, L1.diff_id, C1, None, ingest)
    assert sink.offset == kept
    feed(sink, L1.blob[kept:])
    sink.finish()
    sink.commit()
    assert content.path(L1.desc.digest).read_bytes() == L1.blob
    assert (snap.fs_path(C1) / "etc" / "conf").read_bytes() == b"one"


def test_truncated_stream_cannot_finish_and_commits_nothing(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    ingest = content.ingest(L1.desc)
    sink = unpacker.layer_sink(L1.desc, L1.diff_id, C1, None, ingest)
    feed(sink, L1.blob[:1000])
    with pytest.raises((CorruptLayerError, DigestMismatchError, LayerError, StoreError)):
        sink.finish()
    assert not content.exists(L1.desc.digest)
    assert nothing_staged(snap)


def test_layers_commit_in_order_and_the_child_sees_through_to_its_parent(
    unpacker: Unpacker, snap: Snapshotter
) -> None:
    s1 = stream(unpacker, L1, C1, None)
    s1.finish()
    if snap.apply_mode == "flatten":
        s1.commit()  # native: the child's staging starts as a copy of the committed parent
    s2 = stream(unpacker, L2, C2, C1)
    s2.finish()
    if snap.apply_mode == "layer":
        with pytest.raises(StoreError, match="parent"):
            s2.commit()  # overlayfs: staged in parallel, but commits wait for the parent
        s2 = stream(unpacker, L2, C2, C1)  # the failed commit cleaned up; stage again
        s2.finish()
        s1.commit()
    s2.commit()
    assert snap.parent(C2) == C1
    assert (snap.fs_path(C2) / "etc" / "conf").read_bytes() == b"two"
    assert nothing_staged(snap)


def test_stage_blob_returns_a_finished_sink_to_commit_in_order(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    content.write_blob(L1.desc.digest, L1.blob)
    staged = unpacker.stage_blob(L1.desc, L1.diff_id, C1, None)
    assert staged.result is not None
    assert not snap.exists(C1)
    staged.commit()
    assert snap.exists(C1)


def test_stage_blob_of_a_missing_blob_raises_store_error(unpacker: Unpacker) -> None:
    with pytest.raises(StoreError):
        unpacker.stage_blob(L1.desc, L1.diff_id, C1, None)


# --- Unpacker.unpack ---------------------------------------------------------------------------
def _source(kind: str, content: ContentStore, blobs: dict[Digest, bytes]) -> LayerSource:
    if kind == "store":
        for digest, data in blobs.items():
            content.write_blob(digest, data)
        return StoredSource()
    return BytesSource(blobs)


class Events:
    def __init__(self) -> None:
        self.seen: list[ProgressEvent] = []

    def __call__(self, ev: ProgressEvent) -> None:
        self.seen.append(ev)

    def phases(self, digest: Digest) -> list[Phase]:
        return [e.phase for e in self.seen if e.digest == digest]


def nothing_visible(snap: Snapshotter, content: ContentStore, plan: LayerPlan) -> bool:
    return (
        not snap.exists(plan.chain_id)
        and not content.exists(plan.desc.digest)
        and os.listdir(snap.staging_dir) == []
    )


@pytest.mark.parametrize("kind", ["store", "bytes"])
def test_a_fresh_layer_lands_committed_with_its_blob(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter, kind: str
) -> None:
    source = _source(kind, content, BLOBS)
    events = Events()
    assert unpacker.unpack(P1, source, events) is True
    assert unpacker.unpack(P2, source, events) is True
    assert (snap.fs_path(P2.chain_id) / "etc" / "conf").read_bytes() == b"two"
    assert snap.parent(P2.chain_id) == P1.chain_id
    assert content.path(L1.desc.digest).read_bytes() == L1.blob
    assert events.phases(L1.desc.digest)[-1] == Phase.DONE
    assert os.listdir(snap.staging_dir) == []


@pytest.mark.parametrize("kind", ["store", "bytes"])
def test_an_already_committed_layer_is_success_without_a_second_apply(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter, kind: str
) -> None:
    source = _source(kind, content, BLOBS)
    assert unpacker.unpack(P1, source) is True
    marker = snap.fs_path(P1.chain_id) / "marker"
    marker.write_bytes(b"left by the first apply")  # a second apply would replace the tree
    counting = BytesSource(BLOBS)
    events = Events()
    assert unpacker.unpack(P1, counting, events) is False
    assert marker.read_bytes() == b"left by the first apply"
    assert counting.fetches == 0
    assert events.phases(L1.desc.digest) == [Phase.EXISTS]


def test_a_committed_layer_whose_blob_went_missing_gets_its_blob_back(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    unpacker.unpack(P1, BytesSource(BLOBS))
    content.delete(L1.desc.digest)
    source = BytesSource(BLOBS)
    assert unpacker.unpack(P1, source) is False  # the snapshot was there: not applied again
    assert source.fetches == 1
    assert content.exists(L1.desc.digest)


@pytest.mark.parametrize("kind", ["store", "bytes"])
def test_a_missing_parent_fails_cleanly(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter, kind: str
) -> None:
    source = _source(kind, content, {L2.desc.digest: L2.blob})
    with pytest.raises(StoreError, match="parent"):
        unpacker.unpack(P2, source)
    assert not snap.exists(P2.chain_id)
    assert os.listdir(snap.staging_dir) == []


@OVERLAY_ONLY
def test_a_parent_that_never_lands_aborts_the_child(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    with pytest.raises(PullAbortedError):
        unpacker.unpack(P2, BytesSource(BLOBS), wait_parent=lambda: False)
    assert not snap.exists(P2.chain_id)
    assert os.listdir(snap.staging_dir) == []


@OVERLAY_ONLY
def test_a_child_waits_for_its_parent_then_commits(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    parent_landed = threading.Event()
    waiting = threading.Event()
    errors: list[BaseException] = []

    def wait_parent() -> bool:
        waiting.set()  # the child is staged and holds its chain lock only
        parent_landed.wait()
        return True

    def child() -> None:
        try:
            unpacker.unpack(P2, BytesSource(BLOBS), wait_parent=wait_parent)
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            errors.append(e)

    t = threading.Thread(target=child)
    t.start()
    waiting.wait()
    assert not snap.exists(P2.chain_id)
    unpacker.unpack(P1, BytesSource(BLOBS))
    parent_landed.set()
    t.join()
    assert errors == []
    assert snap.parent(P2.chain_id) == P1.chain_id


@pytest.mark.parametrize("kind", ["store", "bytes"])
def test_a_corrupt_blob_is_a_typed_error_and_nothing_is_committed(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter, kind: str
) -> None:
    bad = bytearray(L1.blob)
    bad[len(bad) // 2] ^= 0xFF
    if kind == "store":
        # A blob that went bad on disk after it was verified, and nowhere to fetch it again.
        content.write_blob(L1.desc.digest, L1.blob)
        content.path(L1.desc.digest).write_bytes(bytes(bad))
        source: LayerSource = StoredSource()
    else:
        source = BytesSource({L1.desc.digest: bytes(bad)})
    with pytest.raises((VerificationError, LayerError, StoreError)) as e:
        unpacker.unpack(P1, source)
    assert isinstance(e.value, FastdistError)
    assert e.value.hint is not None or e.value.message
    assert nothing_visible(snap, content, P1)


def test_a_corrupt_stored_blob_is_fetched_again_once(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    content.write_blob(L1.desc.digest, L1.blob)
    bad = bytearray(L1.blob)
    bad[len(bad) // 2] ^= 0xFF
    content.path(L1.desc.digest).write_bytes(bytes(bad))
    source = BytesSource(BLOBS)
    assert unpacker.unpack(P1, source) is True
    assert source.fetches == 1
    assert content.path(L1.desc.digest).read_bytes() == L1.blob


@pytest.mark.parametrize("kind", ["store", "bytes"])
def test_two_threads_unpacking_one_plan_apply_it_once(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter, kind: str
) -> None:
    source = _source(kind, content, BLOBS)
    both = threading.Barrier(2)
    results: list[bool] = []
    errors: list[BaseException] = []

    def one() -> None:
        both.wait()
        try:
            results.append(unpacker.unpack(P1, source))
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [False, True]  # one applied it; the other found it committed
    if isinstance(source, BytesSource):
        assert source.fetches == 1
    assert snap.exists(P1.chain_id)


def test_a_stream_dropped_mid_way_leaves_nothing_visible_and_resumes(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    half = len(L1.blob) // 2
    with pytest.raises(RegistryError, match="reset"):
        unpacker.unpack(P1, BytesSource(BLOBS, stop_after=half))
    assert nothing_visible(snap, content, P1)
    # The partial download is kept: the next unpack resumes it (no byte before it again).
    resumed = BytesSource(BLOBS)
    assert unpacker.unpack(P1, resumed) is True
    assert snap.exists(P1.chain_id)


@OVERLAY_ONLY
def test_an_aborted_pull_stops_the_stream_and_leaves_nothing_visible(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    aborted = threading.Event()
    with pytest.raises(PullAbortedError):
        unpacker.unpack(P1, BytesSource(BLOBS, on_half=aborted.set), aborted=aborted)
    assert nothing_visible(snap, content, P1)


def test_the_charge_hook_sees_the_result_before_the_commit_and_may_refuse(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    seen: list[int] = []

    def charge(plan: LayerPlan, result: object) -> None:
        seen.append(getattr(result, "uncompressed_size", -1))
        assert not snap.exists(plan.chain_id)
        raise StoreError("over budget")

    with pytest.raises(StoreError, match="over budget"):
        unpacker.unpack(P1, BytesSource(BLOBS), charge=charge)
    assert seen == [len(L1.tar)]
    assert not snap.exists(P1.chain_id)
    assert os.listdir(snap.staging_dir) == []
