"""Conformance suite of the content store interface, run against every implementation."""

from __future__ import annotations

import multiprocessing
import os
import random
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fastdist.content import ContentStore
from fastdist.errors import DigestMismatchError, SizeMismatchError, StoreError
from fastdist.oci import OCI_LAYER_GZIP, Descriptor, sha256_digest

# Every implementation of the interface: a factory taking the store root.
IMPLEMENTATIONS: list[Callable[[Path], ContentStore]] = [ContentStore]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda f: f.__name__)
def factory(request: pytest.FixtureRequest) -> Callable[[Path], ContentStore]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def store(factory: Callable[[Path], ContentStore], tmp_path: Path) -> ContentStore:
    return factory(tmp_path / "root")


BLOB = random.Random(42).randbytes(3 * 65536 + 123)  # same bytes in every process
DESC = Descriptor(OCI_LAYER_GZIP, sha256_digest(BLOB), len(BLOB))


def visible_blobs(store: ContentStore) -> list[str]:
    return sorted(store.digests())


def test_write_blob_makes_a_readonly_verified_blob(store: ContentStore) -> None:
    data = b'{"schemaVersion": 2}'
    digest = sha256_digest(data)
    assert not store.exists(digest)
    store.write_blob(digest, data)
    assert store.exists(digest)
    assert store.size(digest) == len(data)
    assert store.read_bytes(digest, 1024) == data
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444
    assert visible_blobs(store) == [digest]


def test_write_blob_is_idempotent(store: ContentStore) -> None:
    data = b"same"
    store.write_blob(sha256_digest(data), data)
    store.write_blob(sha256_digest(data), data)
    assert visible_blobs(store) == [sha256_digest(data)]


def test_write_blob_with_wrong_digest_leaves_nothing_visible(store: ContentStore) -> None:
    with pytest.raises(DigestMismatchError):
        store.write_blob(sha256_digest(b"other"), b"data")
    assert visible_blobs(store) == []
    assert not store.exists(sha256_digest(b"other"))


def test_missing_blob_path_and_size_raise_store_error(store: ContentStore) -> None:
    with pytest.raises(StoreError):
        store.path(DESC.digest)
    with pytest.raises(StoreError):
        store.size(DESC.digest)


def test_ingest_write_and_commit_publishes_the_blob(store: ContentStore) -> None:
    with store.ingest(DESC) as ing:
        assert ing.offset == 0
        assert not ing.committed
        for i in range(0, len(BLOB), 50_000):
            ing.write(BLOB[i : i + 50_000])
        assert ing.offset == len(BLOB)
        ing.commit()
    assert store.exists(DESC.digest)
    assert store.path(DESC.digest).read_bytes() == BLOB
    assert store.ingests() == []


def test_ingest_with_wrong_bytes_fails_and_leaves_nothing_visible(store: ContentStore) -> None:
    bad = bytearray(BLOB)
    bad[1000] ^= 0xFF
    with store.ingest(DESC) as ing:
        ing.write(bytes(bad))
        with pytest.raises(DigestMismatchError):
            ing.commit()
        assert ing.offset == 0  # the wrong bytes were thrown away, not kept for a resume
    assert not store.exists(DESC.digest)
    assert visible_blobs(store) == []


def test_ingest_refuses_more_bytes_than_the_descriptor_promises(store: ContentStore) -> None:
    with store.ingest(DESC) as ing:
        with pytest.raises(SizeMismatchError):
            ing.write(BLOB + b"extra")
        assert ing.offset == 0
    assert not store.exists(DESC.digest)


def test_commit_of_a_short_ingest_fails_but_keeps_the_prefix(store: ContentStore) -> None:
    with store.ingest(DESC) as ing:
        ing.write(BLOB[:1000])
        with pytest.raises(SizeMismatchError):
            ing.commit()
    assert not store.exists(DESC.digest)
    with store.ingest(DESC) as ing:
        assert ing.offset == 1000


def test_interrupted_ingest_resumes_from_its_offset(store: ContentStore) -> None:
    half = len(BLOB) // 2
    with store.ingest(DESC) as ing:
        ing.write(BLOB[:half])
    # A new store object, as after a crash and restart.
    store2 = type(store)(store.root)
    with store2.ingest(DESC) as ing:
        assert ing.offset == half
        ing.write(BLOB[ing.offset :])
        ing.commit()
    assert store2.path(DESC.digest).read_bytes() == BLOB


def test_resumed_ingest_with_a_corrupt_prefix_is_caught(store: ContentStore) -> None:
    half = len(BLOB) // 2
    with store.ingest(DESC) as ing:
        ing.write(b"\0" * half)
    with store.ingest(DESC) as ing:
        ing.write(BLOB[half:])
        with pytest.raises(DigestMismatchError):
            ing.commit()
    assert not store.exists(DESC.digest)


def test_commit_when_the_blob_already_exists_is_success(store: ContentStore) -> None:
    store.write_blob(DESC.digest, BLOB)
    with store.ingest(DESC) as ing:
        assert ing.committed
        ing.write(BLOB[:10])
        ing.commit()
    assert store.path(DESC.digest).read_bytes() == BLOB
    assert store.ingests() == []


def test_verified_commit_skips_hashing_but_checks_size(store: ContentStore) -> None:
    with store.ingest(DESC) as ing:
        ing.path.write_bytes(BLOB)  # as a LayerWriter tee would
        ing.commit(verified=True)
    assert store.path(DESC.digest).read_bytes() == BLOB


def test_discarded_ingest_restarts_from_zero(store: ContentStore) -> None:
    with store.ingest(DESC) as ing:
        ing.write(BLOB[:500])
        ing.discard()
    with store.ingest(DESC) as ing:
        assert ing.offset == 0


def test_delete_removes_a_blob(store: ContentStore) -> None:
    store.write_blob(DESC.digest, BLOB)
    store.delete(DESC.digest)
    store.delete(DESC.digest)
    assert not store.exists(DESC.digest)
    assert visible_blobs(store) == []


def test_read_bytes_detects_a_corrupted_blob_on_disk(store: ContentStore) -> None:
    data = b'{"a": 1}'
    digest = sha256_digest(data)
    store.write_blob(digest, data)
    p = store.path(digest)
    os.chmod(p, 0o644)
    p.write_bytes(b'{"a": 2}')
    with pytest.raises(DigestMismatchError):
        store.read_bytes(digest, 1024)


def test_read_bytes_refuses_a_blob_over_the_limit(store: ContentStore) -> None:
    store.write_blob(DESC.digest, BLOB)
    with pytest.raises(StoreError, match="limit"):
        store.read_bytes(DESC.digest, 100)


def test_prune_removes_stale_ingests_but_not_one_in_use(store: ContentStore) -> None:
    other = b"other blob"
    other_desc = Descriptor(OCI_LAYER_GZIP, sha256_digest(other), len(other))
    with store.ingest(DESC) as ing:
        ing.write(BLOB[:100])
    with store.ingest(other_desc) as held:
        held.write(other[:3])
        assert store.prune_ingests(older_than=0) == 1
        assert store.ingests() == [other_desc.digest]
        held.write(other[3:])
        held.commit()
    assert store.exists(other_desc.digest)
    with store.ingest(DESC) as ing:
        assert ing.offset == 0


def test_store_directories_are_private(store: ContentStore) -> None:
    for p in (store.root, store.root / "content", store.blobs_dir, store.ingest_dir):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p


def _download_once(store: ContentStore, outcomes: list[str]) -> None:
    with store.ingest(DESC) as ing:
        if ing.committed:
            outcomes.append("exists")
            return
        for i in range(0, len(BLOB), 4096):
            ing.write(BLOB[i : i + 4096])
        ing.commit()
        outcomes.append("downloaded")


def test_two_threads_ingesting_one_digest_download_it_once(store: ContentStore) -> None:
    outcomes: list[str] = []
    threads = [threading.Thread(target=_download_once, args=(store, outcomes)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["downloaded", "exists"]
    assert store.path(DESC.digest).read_bytes() == BLOB


def _process_download(root: str, impl: int, out: str) -> None:
    outcomes: list[str] = []
    _download_once(IMPLEMENTATIONS[impl](Path(root)), outcomes)
    Path(out).write_text(outcomes[0])


def test_two_processes_ingesting_one_digest_download_it_once(
    factory: Callable[[Path], ContentStore], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    factory(root)
    ctx = multiprocessing.get_context("spawn")
    impl = IMPLEMENTATIONS.index(factory)
    outs = [tmp_path / f"out{i}" for i in range(2)]
    procs = [ctx.Process(target=_process_download, args=(str(root), impl, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(o.read_text() for o in outs) == ["downloaded", "exists"]
    assert factory(root).path(DESC.digest).read_bytes() == BLOB
