"""A pull of an image that is already present: the fast path right after resolve, and the cases
where something is missing or moved so the full pull must run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist.client import Client
from fastdist.oci import Descriptor
from fastdist.progress import Phase, ProgressEvent
from fastdist.testing.images import File, build_image, build_layer, push_image, tar_entries

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry


def _image(tag: str) -> object:
    return build_image(
        [
            build_layer(tar_entries([File("etc/base", f"base {tag}\n")])),
            build_layer(tar_entries([File("app/bin", f"app {tag}\n")]), "zstd"),
        ],
        cmd=["/app/bin"],
    )


class _NoFetch:
    """A fetcher that fails the test if the pull asks it for any blob."""

    def fetch(self, *a: object, **kw: object) -> None:
        raise AssertionError(f"unexpected blob fetch: {a[1] if len(a) > 1 else a}")

    def fetch_bytes(self, *a: object, **kw: object) -> bytes:
        raise AssertionError("unexpected small-blob fetch")


def _phases(events: list[ProgressEvent], desc: Descriptor) -> set[Phase]:
    return {e.phase for e in events if e.digest == desc.digest}


def test_pull_of_a_present_image_fetches_nothing_reports_exists_and_bumps_updated(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/present/fast:v1"
    image = _image("v1")
    push_image(pusher, ref, image)  # type: ignore[arg-type]
    client = Client(store_root)
    first = client.pull(ref)

    client.fetcher = _NoFetch()  # type: ignore[assignment]
    events: list[ProgressEvent] = []
    again = client.pull(ref, progress=events.append)

    assert again.target.digest == first.target.digest
    assert again.record.created == first.record.created
    assert again.record.updated > first.record.updated
    stored = client.metadata.images.get(ref)
    assert stored is not None
    assert stored.updated == again.record.updated
    for desc in (image.config_descriptor, *(x.descriptor for x in image.layers)):  # type: ignore[attr-defined]
        assert _phases(events, desc) == {Phase.EXISTS}
    assert events[-1].phase is Phase.DONE
    assert events[-1].digest is None
    assert again.unpacked_size() == first.unpacked_size() > 0
    assert client.check().ok


def test_pull_of_a_present_image_missing_a_snapshot_unpacks_it_again(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/present/lost-snapshot:v1"
    image = _image("snap")
    push_image(pusher, ref, image)  # type: ignore[arg-type]
    client = Client(store_root)
    img = client.pull(ref)
    top = img.record.chain_ids[-1]
    client.snapshotter.remove(top)

    client.fetcher = _NoFetch()  # type: ignore[assignment]  # the blob is still stored
    events: list[ProgressEvent] = []
    client.pull(ref, progress=events.append)

    assert client.snapshotter.exists(top)
    top_layer = image.layers[-1].descriptor  # type: ignore[attr-defined]
    assert Phase.UNPACKING in _phases(events, top_layer)
    assert client.check().ok


def test_pull_of_a_present_image_missing_a_blob_fetches_it_again(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/present/lost-blob:v1"
    image = _image("blob")
    push_image(pusher, ref, image)  # type: ignore[arg-type]
    client = Client(store_root)
    client.pull(ref)
    base = image.layers[0].descriptor  # type: ignore[attr-defined]
    client.content.delete(base.digest)

    events: list[ProgressEvent] = []
    client.pull(ref, progress=events.append)

    assert client.content.exists(base.digest)
    assert Phase.DOWNLOADING in _phases(events, base)
    assert client.check().ok


def test_pull_after_the_tag_moved_pulls_the_new_image(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/present/moved:v1"
    push_image(pusher, ref, _image("old"))  # type: ignore[arg-type]
    client = Client(store_root)
    old = client.pull(ref)
    new_image = _image("new")
    new_digest = push_image(pusher, ref, new_image)  # type: ignore[arg-type]

    events: list[ProgressEvent] = []
    new = client.pull(ref, progress=events.append)

    assert new.target.digest == new_digest != old.target.digest
    assert client.get(ref).target.digest == new_digest
    top = new_image.layers[-1].descriptor  # type: ignore[attr-defined]
    assert Phase.DOWNLOADING in _phases(events, top)
    assert client.check().ok


class _NoResolve:
    """A resolver that fails the test if the pull asks the registry anything."""

    def resolve(self, *a: object, **kw: object) -> None:
        raise AssertionError(f"unexpected resolve of {a[0] if a else a}")


def test_pull_of_a_present_digest_reference_never_asks_the_registry(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    tagged = f"{registry.host}/present/pinned:v1"
    digest = push_image(pusher, tagged, _image("pinned"))  # type: ignore[arg-type]
    pinned = f"{registry.host}/present/pinned@{digest}"
    first = Client(store_root).pull(pinned)

    client = Client(store_root)  # a new process, as the CLI would be
    client.resolver = _NoResolve()  # type: ignore[assignment]
    client.fetcher = _NoFetch()  # type: ignore[assignment]
    events: list[ProgressEvent] = []
    again = client.pull(pinned, progress=events.append)

    assert again.target.digest == first.target.digest == digest
    assert again.record.updated > first.record.updated
    layer_events = [e for e in events if e.digest in first.record.layer_digests]
    assert {e.phase for e in layer_events} == {Phase.EXISTS}
    assert "transport" not in vars(client)  # the HTTP stack was never even built


def test_pull_of_a_digest_reference_with_a_missing_layer_goes_to_the_registry(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    tagged = f"{registry.host}/present/pinned-broken:v1"
    digest = push_image(pusher, tagged, _image("broken"))  # type: ignore[arg-type]
    pinned = f"{registry.host}/present/pinned-broken@{digest}"
    client = Client(store_root)
    first = client.pull(pinned)
    client.content.delete(first.record.layer_digests[0])

    again = Client(store_root).pull(pinned)
    assert again.target.digest == digest
    assert Client(store_root).content.exists(first.record.layer_digests[0])
