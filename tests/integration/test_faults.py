"""Pulls through Client.pull against a misbehaving registry (tests/fakeregistry.py). Each test
ends with a correct image (its unpacked tree equal to a clean pull's) or a clean typed error,
and in both cases a consistent store (``Client.check`` finds no problem)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pullkit import (
    SNAPSHOTTERS,
    big_layer,
    expected_tree,
    full_blob_gets,
    image,
    range_gets,
    serve,
    small_layer,
    unpacked_tree,
)

from fakeregistry import FakeRegistry, Fault
from fastdist.client import Client
from fastdist.errors import DigestMismatchError, ImageNotFoundError, RegistryError
from fastdist.testing.images import BuiltImage
from fastdist.transport import TransportConfig

BIG = 1_300_000  # spans several fetcher chunks


@pytest.fixture
def img() -> BuiltImage:
    return image(small_layer(1), big_layer(2, BIG), small_layer(3))


def _client(
    tmp_path: Path, snapshotter: str = "native", **cfg: float
) -> tuple[Client, list[float]]:
    client = Client(
        tmp_path / "store",
        snapshotter=snapshotter,
        transport_config=TransportConfig(**cfg),  # type: ignore[arg-type]
        hosts_dir=tmp_path / "no-mirrors",
    )
    slept: list[float] = []
    client.transport.sleep = slept.append  # backoff is policy, not something to wait for here
    return client, slept


def _assert_correct(client: Client, ref: str, img: BuiltImage) -> None:
    assert [i.name for i in client.images()] == [ref]
    assert unpacked_tree(client, ref) == expected_tree(img)
    assert client.check().ok, client.check().problems


def _assert_failed_cleanly(client: Client, ref: str, bad_digest: str | None = None) -> None:
    assert client.images() == []
    with pytest.raises(ImageNotFoundError):
        client.get(ref)
    if bad_digest is not None:
        assert not client.content.exists(bad_digest)
    report = client.check()
    assert report.ok, report.problems


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_connections_cut_at_random_offsets_resume_without_refetching(
    tmp_path: Path, img: BuiltImage, snapshotter: str, seed: int
) -> None:
    rng = random.Random(seed)
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/cut", img)
        for layer in img.layers:
            d = layer.descriptor
            for _ in range(rng.randint(1, 3)):
                reg.add_fault(Fault(path_contains=d.digest, cut_after=rng.randrange(1, d.size)))
        client, _ = _client(tmp_path, snapshotter)
        client.pull(ref)
        for layer in img.layers:
            d = layer.descriptor
            assert len(full_blob_gets(reg, d.digest)) == 1
            assert range_gets(reg, d.digest)  # every cut was resumed by Range
            assert reg.sent[d.digest] == d.size  # nothing was sent twice
    _assert_correct(client, ref, img)


def test_500_and_503_bursts_are_retried_per_request(tmp_path: Path, img: BuiltImage) -> None:
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/burst", img)
        reg.add_fault(Fault(path_contains="/manifests/", status=500, times=2))
        reg.add_fault(Fault(path_contains="/blobs/", status=503, times=4))
        client, slept = _client(tmp_path)
        client.pull(ref)
        assert len(slept) == 6
    _assert_correct(client, ref, img)


def test_429_retry_after_is_honoured(tmp_path: Path, img: BuiltImage) -> None:
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/429", img)
        reg.add_fault(
            Fault(path_contains="/blobs/", status=429, code="TOOMANYREQUESTS", retry_after="7")
        )
        client, slept = _client(tmp_path)
        client.pull(ref)
        assert slept == [7.0]
    _assert_correct(client, ref, img)


def test_429_asking_for_too_long_a_wait_is_a_typed_error(tmp_path: Path, img: BuiltImage) -> None:
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/429-long", img)
        reg.add_fault(
            Fault(
                path_contains="/blobs/",
                status=429,
                code="TOOMANYREQUESTS",
                retry_after="3600",
                times=-1,
            )
        )
        client, slept = _client(tmp_path)
        with pytest.raises(RegistryError) as exc:
            client.pull(ref)
        assert exc.value.status == 429
        assert slept == []
    _assert_failed_cleanly(client, ref)


def test_server_ignoring_range_after_a_cut_has_the_prefix_skipped(
    tmp_path: Path, img: BuiltImage
) -> None:
    big = img.layers[1].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/norange", img)
        reg.add_fault(Fault(path_contains=big.digest, cut_after=BIG // 2))
        reg.add_fault(Fault(path_contains=big.digest, ignore_range=True))
        client, _ = _client(tmp_path)
        client.pull(ref)
        assert range_gets(reg, big.digest)  # we asked to resume…
        assert reg.sent[big.digest] > big.size  # …and were sent the whole blob again
    _assert_correct(client, ref, img)


def test_slow_drip_completes(tmp_path: Path, img: BuiltImage) -> None:
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/drip", img)
        for layer in img.layers:
            reg.add_fault(
                Fault(path_contains=layer.descriptor.digest, drip=0.001, drip_chunk=65536)
            )
        client, _ = _client(tmp_path)
        client.pull(ref)
    _assert_correct(client, ref, img)


def test_stalled_body_is_abandoned_and_resumed(tmp_path: Path, img: BuiltImage) -> None:
    big = img.layers[1].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/stall", img)
        # 64 KiB, then silence far longer than the stall timeout.
        reg.add_fault(Fault(path_contains=big.digest, drip=5, drip_chunk=65536))
        client, _ = _client(tmp_path, stall_timeout=0.3)
        client.pull(ref)
        assert range_gets(reg, big.digest) == ["bytes=65536-"]
    _assert_correct(client, ref, img)


def test_truncated_bodies_exhaust_retries_then_the_next_pull_resumes(
    tmp_path: Path, img: BuiltImage
) -> None:
    big = img.layers[1].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/trunc", img)
        # Every answer ends early: 100 KiB per request, forever.
        fault = reg.add_fault(Fault(path_contains=big.digest, cut_after=100_000, times=-1))
        client, _ = _client(tmp_path, max_retries=2)
        with pytest.raises(RegistryError) as exc:
            client.pull(ref)
        assert exc.value.temporary
        _assert_failed_cleanly(client, ref, big.digest)
        assert big.digest in client.content.ingests()  # kept for the resume
        have = reg.sent[big.digest]

        fault.times = 0
        client.pull(ref)
        assert range_gets(reg, big.digest)[-1] == f"bytes={have}-"
        assert reg.sent[big.digest] == big.size
    _assert_correct(client, ref, img)


@pytest.mark.parametrize("which", [0, 1])
def test_wrong_bytes_for_a_digest_fail_typed_and_leave_nothing_visible(
    tmp_path: Path, img: BuiltImage, which: int
) -> None:
    layer = img.layers[which].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/wrong", img)
        wrong = bytearray(reg.blobs[layer.digest])
        wrong[len(wrong) // 2] ^= 0x55
        reg.add_fault(Fault(path_contains=layer.digest, body=bytes(wrong), times=-1))
        client, _ = _client(tmp_path)
        with pytest.raises(DigestMismatchError):
            client.pull(ref)
    _assert_failed_cleanly(client, ref, layer.digest)
    partial = client.content.ingest_dir / layer.digest.removeprefix("sha256:") / "data"
    assert not partial.exists()  # wrong bytes are not kept for a resume


def test_wrong_config_bytes_fail_typed(tmp_path: Path, img: BuiltImage) -> None:
    cfg = img.config_descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "faults/wrongcfg", img)
        reg.add_fault(Fault(path_contains=cfg.digest, body=b"x" * cfg.size, times=-1))
        client, _ = _client(tmp_path)
        with pytest.raises(DigestMismatchError):
            client.pull(ref)
    _assert_failed_cleanly(client, ref, cfg.digest)
