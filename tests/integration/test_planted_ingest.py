"""A local attacker's symlink in the ingest area (issue 11.6): a planted
``content/ingest/<hex>/data -> /host/file`` must never be read as a resumed prefix nor appended
to, on the streaming (overlayfs, Rust ``LayerWriter``) path and the ordered (native, Python
ingest) path alike: the pull fails with a typed ``StoreError``, the host file is unchanged, and
once the link is gone the next pull is clean."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pullkit import SNAPSHOTTERS, expected_tree, image, serve, small_layer, unpacked_tree

from fakeregistry import FakeRegistry
from fastdist.client import Client
from fastdist.errors import StoreError


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_planted_ingest_symlink_is_neither_read_nor_appended_to(
    tmp_path: Path, snapshotter: str
) -> None:
    img = image(small_layer(1), small_layer(2))
    layer = img.layers[1]
    blob = layer.blob
    host = tmp_path / "host-file"
    # It even holds a true prefix of the blob: read as one, the pull would "resume" from it.
    original = blob[: len(blob) // 2]
    host.write_bytes(original)
    os.utime(host, (1_000_000_000, 1_000_000_000))
    before = host.stat()

    client = Client(tmp_path / "store", snapshotter=snapshotter, hosts_dir=tmp_path / "none")
    ingest_dir = client.content.ingest_dir / layer.descriptor.digest.removeprefix("sha256:")
    ingest_dir.mkdir(parents=True)
    (ingest_dir / "data").symlink_to(host)

    with FakeRegistry() as reg:
        ref = serve(reg, "tamper/ingest", img)
        with pytest.raises(StoreError) as failed:
            client.pull(ref)
        if snapshotter == "overlayfs":
            assert "symlink" in failed.value.message
            assert failed.value.hint is not None
            assert str(ingest_dir) in failed.value.hint
            assert failed.value.path is not None  # the native error's fields survive the hint
            assert failed.value.path.endswith("data")
        after = host.stat()
        assert host.read_bytes() == original
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        assert (ingest_dir / "data").is_symlink()  # refused, not silently replaced
        assert client.images() == []

        (ingest_dir / "data").unlink()  # what the hint says
        client.pull(ref)
    assert unpacked_tree(client, ref) == expected_tree(img)
    assert host.read_bytes() == original
