"""A blob that went bad on disk after it was stored (issue 17.5): ``check --repair`` removes it,
and ``pull`` fetches again what is missing or corrupt, against Debian's docker-registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist.client import Client
from fastdist.oci import Digest
from fastdist.progress import Phase, ProgressEvent
from fastdist.testing.images import BuiltImage, File, build_image, build_layer, push_image
from fastdist.testing.images import tar_entries as tar

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry


def _image(tag: str) -> BuiltImage:
    return build_image(
        [
            build_layer(tar([File("etc/base", f"base {tag}\n" * 200)])),
            build_layer(tar([File("app/bin", f"app {tag}\n" * 200)]), "zstd"),
        ],
        cmd=["/app/bin"],
    )


def _flip_a_byte(client: Client, digest: Digest, at: int = -10) -> None:
    path = client.content.blob_path(digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x55
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)
    assert not client.content.intact(digest)


def _pushed(registry: LocalRegistry, pusher: Pusher, name: str) -> tuple[str, BuiltImage]:
    ref = f"{registry.host}/corrupt/{name}:v1"
    image = _image(name)
    push_image(pusher, ref, image)
    return ref, image


def _downloaded(events: list[ProgressEvent]) -> set[str]:
    return {e.digest for e in events if e.phase is Phase.DOWNLOADING and e.digest}


def test_check_repair_removes_a_corrupt_layer_and_the_next_pull_fetches_it_again(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref, image = _pushed(registry, pusher, "repair")
    client = Client(store_root)
    client.pull(ref)
    layer = image.layers[0].descriptor.digest
    _flip_a_byte(client, layer)

    found = client.check()
    assert found.corrupt_blobs == (layer,)
    repaired = client.check(repair=True)
    assert [(r.kind, r.subject) for r in repaired.repaired] == [("blob-removed", layer)]
    assert not client.content.exists(layer)
    assert repaired.incomplete_images == (ref,)
    assert client.get(ref).name == ref  # still listed, incomplete

    events: list[ProgressEvent] = []
    client.pull(ref, progress=events.append)
    assert _downloaded(events) == {layer}
    assert client.content.intact(layer)
    assert client.check().ok


@pytest.mark.parametrize("snapshotter", ["native", "overlayfs"])
def test_pull_refetches_a_corrupt_stored_layer_it_must_unpack_again(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    if snapshotter == "overlayfs" and os.geteuid() != 0:
        pytest.skip("overlayfs needs root")
    ref, image = _pushed(registry, pusher, f"unpack-{snapshotter}")
    client = Client(store_root, snapshotter=snapshotter)
    img = client.pull(ref)
    layer = image.layers[1].descriptor.digest
    _flip_a_byte(client, layer, at=len(image.layers[1].blob) // 2)
    client.snapshotter.remove(img.record.chain_ids[1])  # so the pull must read the blob again

    events: list[ProgressEvent] = []
    client.pull(ref, progress=events.append)

    assert _downloaded(events) == {layer}
    assert client.content.intact(layer)
    assert client.snapshotter.exists(img.record.chain_ids[1])
    assert client.check().ok


def test_a_present_image_with_a_corrupt_config_is_pulled_again_not_reported_present(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref, image = _pushed(registry, pusher, "config")
    client = Client(store_root)
    client.pull(ref)
    config = image.config_descriptor.digest
    _flip_a_byte(client, config, at=5)

    events: list[ProgressEvent] = []
    client.pull(ref, progress=events.append)

    assert client.content.intact(config)
    assert Phase.EXISTS not in {e.phase for e in events if e.digest == config}
    assert client.get(ref).config().diff_ids == tuple(x.diff_id for x in image.layers)
    assert client.check().ok


def test_a_corrupt_stored_manifest_is_replaced_by_the_pull(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref, image = _pushed(registry, pusher, "manifest")
    client = Client(store_root)
    client.pull(ref)
    _flip_a_byte(client, image.descriptor.digest, at=3)

    client.pull(ref)

    assert client.content.intact(image.descriptor.digest)
    assert client.inspect(ref)["manifest"]["config"]["digest"] == image.config_descriptor.digest
    assert client.check().ok
