"""unpacker.py: one streaming pass from downloaded bytes to a committed blob and snapshot."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from fastdist.content import ContentStore
from fastdist.errors import CorruptLayerError, DigestMismatchError, LayerError, StoreError
from fastdist.oci import OCI_LAYER_GZIP, Descriptor, Digest, chain_ids, sha256_digest
from fastdist.snapshots import NativeSnapshotter, OverlaySnapshotter, Snapshotter, overlay_supported
from fastdist.unpacker import LayerSink, Unpacker


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


def test_unpack_blob_applies_a_stored_blob_once(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    content.write_blob(L1.desc.digest, L1.blob)
    result = unpacker.unpack_blob(L1.desc, L1.diff_id, C1, None)
    assert result is not None
    assert result.diff_id == L1.diff_id
    assert snap.exists(C1)
    assert unpacker.unpack_blob(L1.desc, L1.diff_id, C1, None) is None


def test_unpack_blob_with_a_wrong_diff_id_commits_nothing(
    unpacker: Unpacker, content: ContentStore, snap: Snapshotter
) -> None:
    content.write_blob(L1.desc.digest, L1.blob)
    with pytest.raises(DigestMismatchError):
        unpacker.unpack_blob(L1.desc, L2.diff_id, C1, None)
    assert not snap.exists(C1)
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
