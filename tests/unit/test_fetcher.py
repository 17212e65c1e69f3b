"""Blob fetching: streaming into a sink, resume with Range, ignored Range, size limits."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from fakeregistry import FakeRegistry, Fault
from fastdist.errors import DigestMismatchError, ManifestError, RegistryError, SizeMismatchError
from fastdist.fetcher import BytesSink, Fetcher
from fastdist.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ND_GZIP, Descriptor, Digest
from fastdist.progress import Phase, ProgressEvent
from fastdist.reference import Reference
from fastdist.transport import Transport, TransportConfig

BLOB = os.urandom(700_000)


def _setup(
    reg: FakeRegistry, data: bytes = BLOB, **config: object
) -> tuple[Fetcher, Reference, Descriptor]:
    d = reg.add_blob(data)
    t = Transport(TransportConfig(backoff_base=0.001, backoff_max=0.01, **config))  # type: ignore[arg-type]
    t.sleep = lambda _s: None
    return (
        Fetcher(t),
        Reference.parse(f"{reg.host}/app"),
        Descriptor(OCI_LAYER_GZIP, Digest(d), len(data)),
    )


class PrefilledSink(BytesSink):
    def __init__(self, prefix: bytes) -> None:
        super().__init__()
        self.write(prefix)


def test_fetch_streams_the_whole_blob_and_reports_progress() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        sink = BytesSink()
        events: list[ProgressEvent] = []
        fetcher.fetch(ref, desc, sink, events.append)
        assert sink.getvalue() == BLOB
        downloading = [e for e in events if e.phase is Phase.DOWNLOADING]
        assert downloading
        assert downloading[-1].current == len(BLOB) == downloading[-1].total
        assert all(e.digest == desc.digest for e in downloading)
        assert "range" not in reg.requests[0].headers


def test_cut_connection_resumes_with_range_from_the_sink_offset() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        reg.add_fault(Fault(path_contains="/blobs/", cut_after=100_000))
        sink = BytesSink()
        events: list[ProgressEvent] = []
        fetcher.fetch(ref, desc, sink, events.append)
        assert sink.getvalue() == BLOB
        assert len(reg.requests) == 2
        # Every byte that arrived before the cut was kept: the resume starts right after them.
        assert reg.requests[1].headers["range"] == "bytes=100000-"
        resumed_at = 100_000
        retrying = [e for e in events if e.phase is Phase.RETRYING]
        assert len(retrying) == 1
        assert retrying[0].current == resumed_at


def test_stalled_body_is_abandoned_and_resumed() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, stall_timeout=0.2)
        # First answer: 100 kB, then silence far longer than the stall timeout.
        reg.add_fault(Fault(path_contains="/blobs/", drip=3.0, drip_chunk=100_000))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert len(reg.requests) == 2
        assert reg.requests[1].headers["range"] == "bytes=100000-"  # the 100 kB were kept


def test_server_ignoring_range_has_the_held_prefix_skipped() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        reg.add_fault(Fault(path_contains="/blobs/", cut_after=300_000))
        reg.add_fault(Fault(path_contains="/blobs/", ignore_range=True))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert "range" in reg.requests[1].headers


def test_partial_ingest_resumes_with_range() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        sink = PrefilledSink(BLOB[:12345])
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert reg.requests[0].headers["range"] == "bytes=12345-"


def test_complete_sink_makes_no_request() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        fetcher.fetch(ref, desc, PrefilledSink(BLOB))
        assert reg.requests == []


def test_more_bytes_than_the_descriptor_is_a_size_mismatch() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        short = Descriptor(desc.media_type, desc.digest, len(BLOB) - 1)
        sink = BytesSink()
        with pytest.raises(SizeMismatchError):
            fetcher.fetch(ref, short, sink)
        assert sink.offset <= short.size


def test_excess_bytes_without_content_length_stop_at_the_descriptor_size() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        # A longer body with no Content-Length: only counting while reading can catch it.
        reg.add_fault(
            Fault(path_contains="/blobs/", body=BLOB + b"extra", no_content_length=True, times=-1)
        )
        sink = BytesSink()
        with pytest.raises(SizeMismatchError):
            fetcher.fetch(ref, desc, sink)
        assert sink.offset <= desc.size


def test_blob_shorter_than_descriptor_fails_after_bounded_retries() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, max_retries=2)
        reg.add_fault(Fault(path_contains="/blobs/", body=BLOB[:1000], times=-1))
        with pytest.raises(RegistryError) as info:
            fetcher.fetch(ref, desc, BytesSink())
        assert info.value.temporary
        assert len(reg.requests) == 3


def test_a_failing_sink_stops_the_fetch_without_retrying() -> None:
    class Boom(BytesSink):
        def write(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        with pytest.raises(OSError, match="No space"):
            fetcher.fetch(ref, desc, Boom())
        assert len(reg.requests) == 1


def test_fetch_bytes_verifies_the_digest() -> None:
    with FakeRegistry() as reg:
        config = b'{"architecture":"amd64"}'
        fetcher, ref, desc = _setup(reg, config)
        desc = Descriptor(OCI_CONFIG, desc.digest, desc.size)
        assert fetcher.fetch_bytes(ref, desc, 1 << 20) == config
        reg.add_fault(Fault(path_contains="/blobs/", body=b'{"architecture":"arm64"}'))
        with pytest.raises(DigestMismatchError):
            fetcher.fetch_bytes(ref, desc, 1 << 20)


def test_fetch_bytes_refuses_a_blob_over_the_limit_unread() -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg)
        with pytest.raises(ManifestError, match="limit"):
            fetcher.fetch_bytes(ref, desc, 1000)
        assert reg.requests == []


def _foreign(
    reg: FakeRegistry, cdn: FakeRegistry, allow: bool
) -> tuple[Fetcher, Reference, Descriptor]:
    fetcher, ref, desc = _setup(reg, allow_foreign_urls=allow)
    cdn.blobs[desc.digest] = BLOB
    url = f"{cdn.url}/v2/elsewhere/blobs/{desc.digest}"
    return fetcher, ref, Descriptor(OCI_LAYER_ND_GZIP, desc.digest, desc.size, urls=(url,))


def test_foreign_urls_are_ignored_unless_allowed() -> None:
    with FakeRegistry(hostname="localhost") as cdn, FakeRegistry() as reg:
        fetcher, ref, desc = _foreign(reg, cdn, allow=False)
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert cdn.requests == []
        assert len(reg.requests) == 1


def test_allowed_foreign_urls_are_fetched_without_credentials() -> None:
    with FakeRegistry(hostname="localhost") as cdn, FakeRegistry(auth="token") as reg:
        fetcher, ref, desc = _foreign(reg, cdn, allow=True)
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert [r.authorization for r in cdn.requests] == [None]
        assert reg.requests == []
        assert reg.token_requests == []


@pytest.mark.parametrize(
    "url", ["http://[evil/x", "http://127.0.0.1:99999/x", "file:///etc/shadow", "http://a b/x"]
)
def test_a_malformed_foreign_url_is_skipped_for_the_registry(url: str) -> None:
    with FakeRegistry() as reg:
        fetcher, ref, desc = _setup(reg, allow_foreign_urls=True)
        desc = Descriptor(OCI_LAYER_ND_GZIP, desc.digest, desc.size, urls=(url,))
        sink = BytesSink()
        fetcher.fetch(ref, desc, sink)
        assert sink.getvalue() == BLOB
        assert len(reg.requests) == 1


def test_concurrent_fetches_share_one_transport() -> None:
    with FakeRegistry(auth="token") as reg:
        t = Transport(TransportConfig(backoff_base=0.001))
        fetcher = Fetcher(t)
        ref = Reference.parse(f"{reg.host}/app")
        blobs = [os.urandom(200_000 + i) for i in range(6)]
        descs = [Descriptor(OCI_LAYER_GZIP, Digest(reg.add_blob(b)), len(b)) for b in blobs]
        sinks = [BytesSink() for _ in blobs]
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                fetcher.fetch(ref, descs[i], sinks[i])
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(blobs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert [hashlib.sha256(s.getvalue()).hexdigest() for s in sinks] == [
            hashlib.sha256(b).hexdigest() for b in blobs
        ]
