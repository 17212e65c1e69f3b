"""Ranged parallel fetch against Debian's real docker-registry (it honours Range): the stored
blobs and the unpacked trees are byte-identical to the image's, gzip and zstd, both
snapshotters; and the fault registry's faults end in a correct image, never a corrupt one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pullkit import SNAPSHOTTERS, expected_tree, serve, unpacked_tree

from fakeregistry import FakeRegistry, Fault, covered_once
from fastdist.client import Client
from fastdist.errors import InvalidArgumentError, RegistryError
from fastdist.fetcher import FetchConfig
from fastdist.testing.images import (
    BuiltImage,
    Dir,
    File,
    build_image,
    build_layer,
    push_image,
    tar_entries,
)
from fastdist.transport import TransportConfig

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

CH = 64 << 10
RANGED = FetchConfig(range_threshold=2 * CH, chunk_size=CH, window=4 * CH, adaptive=False)


def _image(compression: str, seed: int = 1) -> BuiltImage:
    rng = random.Random(seed)
    big = [
        Dir("data"),
        File("data/random.bin", rng.randbytes(900_000)),
        File("data/text.txt", b"".join(b"line %d of text\n" % i for i in range(60_000))),
        File("data/tail.bin", rng.randbytes(123_457)),
    ]
    small = [Dir("etc"), File("etc/hostname", "ranged\n")]
    return build_image(
        [
            build_layer(tar_entries(big), compression),  # type: ignore[arg-type]
            build_layer(tar_entries(small), compression),  # type: ignore[arg-type]
        ],
        cmd=["sh"],
    )


@pytest.mark.registry
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_ranged_pull_stores_identical_blobs_and_unpacks_identical_trees(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, compression: str, snapshotter: str
) -> None:
    img = _image(compression)
    assert img.layers[0].descriptor.size > 4 * CH  # fetched in ranges
    ref = f"{registry.host}/it/ranged-{compression}-{snapshotter}:v1"
    push_image(pusher, ref, img)  # type: ignore[arg-type]
    client = Client(store_root, snapshotter=snapshotter, fetch_config=RANGED)
    windowed: list[int] = []
    client.fetcher.observe_window = windowed.append
    client.pull(ref)
    assert windowed  # chunks came through the window: the registry answered the ranges
    for digest, blob in img.blobs().items():
        assert client.content.read_bytes(digest, len(blob)) == blob  # type: ignore[arg-type]
    assert unpacked_tree(client, ref) == expected_tree(img)


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_chunks_landing_out_of_order_make_identical_blobs_and_trees_each_range_fetched_once(
    store_root: Path, snapshotter: str
) -> None:
    # The head chunk drips, so the next chunks land first, past the prefix, at their offsets.
    img = _image("gzip", seed=3)
    big = img.layers[0].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "app", img)
        reg.add_fault(Fault(path_contains=big.digest, drip=0.01, drip_chunk=4096, range_start=0))
        client = Client(store_root, snapshotter=snapshotter, fetch_config=RANGED)
        ahead: list[int] = []
        client.fetcher.observe_window = ahead.append
        client.pull(ref)
        assert max(ahead) > 0  # bytes were held past the contiguous prefix
        assert max(ahead) <= RANGED.window
        assert covered_once(reg.ranges_served(big.digest), big.size)
        for digest, blob in img.blobs().items():
            assert client.content.read_bytes(digest, len(blob)) == blob  # type: ignore[arg-type]
        assert unpacked_tree(client, ref) == expected_tree(img)


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_failed_ranged_pull_records_its_whole_prefix_and_the_next_asks_only_for_the_rest(
    store_root: Path, snapshotter: str
) -> None:
    img = _image("gzip", seed=4)
    big = img.layers[0].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "app", img)
        fail = reg.add_fault(
            Fault(path_contains=big.digest, status=404, code="BLOB_UNKNOWN", range_start=5 * CH)
        )
        cfg = TransportConfig(backoff_base=0.001, backoff_max=0.01)
        client = Client(
            store_root, snapshotter=snapshotter, transport_config=cfg, fetch_config=RANGED
        )
        with pytest.raises(RegistryError):
            client.pull(ref)
        ingest = client.content.ingest_dir / big.digest.removeprefix("sha256:")
        recorded = int((ingest / "prefix").read_text())
        # At least the head chunk, streamed before the window was consumed: recorded when the
        # pull failed, not only every few MiB.
        assert CH <= recorded < big.size
        fail.times = 0
        before = len(reg.ranges_served(big.digest))
        client.pull(ref)
        assert reg.ranges_served(big.digest)[before] == (recorded, recorded + CH - 1)
        assert unpacked_tree(client, ref) == expected_tree(img)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(path_contains="/blobs/", ignore_range=True, range_start=2 * CH),
        Fault(path_contains="/blobs/", wrong_content_range=True, range_start=3 * CH),
        Fault(path_contains="/blobs/", no_accept_ranges=True, times=-1),
        Fault(path_contains="/blobs/", cut_after=5000, range_start=4 * CH),
        Fault(path_contains="/blobs/", stall_after=5000, range_start=5 * CH),
        Fault(path_contains="/blobs/", status=503, range_start=6 * CH, times=2),
    ],
    ids=["200-for-range", "wrong-content-range", "no-accept-ranges", "cut", "stall", "503"],
)
@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_faults_in_a_ranged_pull_end_in_a_correct_image(
    store_root: Path, snapshotter: str, fault: Fault
) -> None:
    img = _image("gzip", seed=2)
    with FakeRegistry() as reg:
        ref = serve(reg, "app", img)
        reg.add_fault(fault)
        cfg = TransportConfig(backoff_base=0.001, backoff_max=0.01, stall_timeout=1.0)
        client = Client(
            store_root, snapshotter=snapshotter, transport_config=cfg, fetch_config=RANGED
        )
        client.pull(ref)
        assert unpacked_tree(client, ref) == expected_tree(img)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"max_connections": 0}, "at least 1"),
        ({"max_connections": "8"}, "must be an int"),
        ({"limit_rate": "fast"}, "invalid rate"),
        ({"limit_rate": 0}, "positive"),
    ],
)
def test_bad_link_options_are_typed_errors(
    store_root: Path, kwargs: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=says):
        Client(store_root, **kwargs)  # type: ignore[arg-type]


def test_limit_rate_and_max_connections_reach_the_transport(store_root: Path) -> None:
    client = Client(store_root, max_connections=3, limit_rate="2M")
    assert client.transport.config.max_connections == 3
    assert client.transport.config.limit_rate == 2 << 20
    assert client.transport.rate is not None
