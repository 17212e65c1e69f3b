"""metadata.py: images, snapshots and containers in SQLite (WAL), safe across processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from fastdist.errors import ContainerNotFoundError, InUseError, StoreError
from fastdist.metadata import (
    SCHEMA_VERSION,
    ContainerRecord,
    ContainerStore,
    ImageRecord,
    ImageStore,
    MetadataDB,
)
from fastdist.oci import OCI_INDEX, OCI_MANIFEST, Descriptor, Digest, sha256_digest


def d(tag: str) -> Digest:
    return sha256_digest(tag.encode())


def image(name: str = "docker.io/library/alpine:3.19", **kw: object) -> ImageRecord:
    base = ImageRecord(
        name=name,
        target=Descriptor(OCI_MANIFEST, d(name + "m"), 500),
        manifest_digest=d(name + "m"),
        config_digest=d(name + "c"),
        layer_digests=(d(name + "l1"), d(name + "l2")),
        chain_ids=(d(name + "c1"), d(name + "c2")),
        snapshotter="overlayfs",
        size=1234,
        created=100.0,
        updated=100.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def container(cid: str = "c1", **kw: object) -> ContainerRecord:
    base = ContainerRecord(
        id=cid,
        image="docker.io/library/alpine:3.19",
        snapshotter="overlayfs",
        snapshot_key=f"ctr-{cid}",
        bundle=f"/run/fastdist/{cid}",
        command=("sh", "-c", "echo hi"),
        status="created",
        pid=None,
        exit_code=None,
        created=10.0,
        log_path=None,
        rm=False,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    return MetadataDB(tmp_path / "store")


def test_database_uses_wal_journal_and_lives_in_the_store_root(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path / "store")
    assert db.path == tmp_path / "store" / "meta.db"
    assert db.journal_mode == "wal"
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700


def test_database_file_path_is_accepted_too(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir(mode=0o700)  # an existing root must be private
    db = MetadataDB(tmp_path / "r" / "meta.db")
    ImageStore(db).put(image())
    assert MetadataDB(tmp_path / "r").images.get(image().name) == image()


def test_put_then_get_round_trips_every_field(db: MetadataDB) -> None:
    rec = image(target=Descriptor(OCI_INDEX, d("idx"), 321, annotations={"a": "b"}))
    db.images.put(rec)
    assert db.images.get(rec.name) == rec
    assert db.images.get("docker.io/library/nope:1") is None


def test_put_of_an_existing_name_updates_but_keeps_created(db: MetadataDB) -> None:
    db.images.put(image(created=100.0, updated=100.0))
    newer = image(
        created=999.0,
        updated=200.0,
        layer_digests=(d("x"),),
        chain_ids=(d("y"),),
        size=1,
    )
    db.images.put(newer)
    got = db.images.get(newer.name)
    assert got is not None
    assert got.created == 100.0
    assert got.updated == 200.0
    assert got.layer_digests == (d("x"),)
    assert len(db.images.list()) == 1


def test_put_refuses_mismatched_layers_and_chain_ids_and_writes_nothing(db: MetadataDB) -> None:
    with pytest.raises(StoreError, match="chain ids"):
        db.images.put(image(chain_ids=(d("only-one"),)))
    assert db.images.list() == []


def test_delete_removes_the_image_and_reports_whether_it_existed(db: MetadataDB) -> None:
    db.images.put(image("a:1"))
    db.images.put(image("b:1"))
    assert db.images.delete("a:1") is True
    assert db.images.delete("a:1") is False
    assert [r.name for r in db.images.list()] == ["b:1"]


def test_referenced_blobs_cover_index_manifest_config_and_layers(db: MetadataDB) -> None:
    rec = image(target=Descriptor(OCI_INDEX, d("index"), 100))
    db.images.put(rec)
    db.images.put(image("other:1"))
    refs = db.images.referenced_blobs()
    assert {d("index"), rec.manifest_digest, rec.config_digest, *rec.layer_digests} <= refs
    assert image("other:1").config_digest in refs
    assert len(refs) == 5 + 4


def test_referenced_snapshots_pair_chain_ids_with_their_snapshotter(db: MetadataDB) -> None:
    db.images.put(image("a:1"))
    db.images.put(image("b:1", snapshotter="native"))
    refs = db.images.referenced_snapshots()
    assert ("overlayfs", image("a:1").chain_ids[1]) in refs
    assert ("native", image("b:1").chain_ids[0]) in refs
    assert ("overlayfs", image("b:1").chain_ids[0]) not in refs


def test_a_version_1_database_loses_snapshots_and_unpacked_size_and_keeps_its_images(
    tmp_path: Path,
) -> None:
    # The row an image has today, as the v1 table held it (plus its always-0 unpacked_size).
    current = MetadataDB(tmp_path / "current")
    current.images.put(image())
    conn = sqlite3.connect(tmp_path / "current" / "meta.db")
    row = conn.execute(
        "SELECT name, target, manifest_digest, config_digest, layer_digests, chain_ids,"
        " snapshotter, size, created, updated FROM images"
    ).fetchone()
    conn.close()
    current.close()
    # A meta.db as fastdist 1 wrote it: schema version 1, the snapshots table, unpacked_size.
    (tmp_path / "old").mkdir(mode=0o700)
    path = tmp_path / "old" / "meta.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE images (name TEXT PRIMARY KEY, target TEXT NOT NULL,
            manifest_digest TEXT NOT NULL, config_digest TEXT NOT NULL,
            layer_digests TEXT NOT NULL, chain_ids TEXT NOT NULL, snapshotter TEXT NOT NULL,
            size INTEGER NOT NULL, unpacked_size INTEGER NOT NULL, created REAL NOT NULL,
            updated REAL NOT NULL);
        CREATE TABLE snapshots (snapshotter TEXT NOT NULL, chain_id TEXT NOT NULL, parent TEXT,
            diff_id TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
            PRIMARY KEY (snapshotter, chain_id));
        PRAGMA user_version = 1;
        """
    )
    conn.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,0,?,?)", row)
    conn.commit()
    conn.close()
    migrated = MetadataDB(tmp_path / "old")
    assert migrated.images.get(image().name) == image()  # the row survived the rebuild
    migrated.images.put(image())  # and the new table takes writes
    migrated.close()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    columns = {r[1] for r in conn.execute("PRAGMA table_info(images)")}
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    assert "snapshots" not in tables
    assert {"images", "containers", "file_index"} <= tables
    assert "unpacked_size" not in columns
    assert version == SCHEMA_VERSION == 4


def test_container_ids_are_unique(db: MetadataDB) -> None:
    db.containers.add(container("web"))
    with pytest.raises(InUseError, match="web"):
        db.containers.add(container("web", image="other:1"))
    got = db.containers.get("web")
    assert got is not None
    assert got.image == "docker.io/library/alpine:3.19"


def test_container_status_updates_and_round_trip(db: MetadataDB) -> None:
    db.containers.add(container("a", rm=True, log_path="/x/log"))
    rec = db.containers.update_status("a", "running", pid=4242)
    assert (rec.status, rec.pid, rec.exit_code) == ("running", 4242, None)
    rec = db.containers.update_status("a", "stopped", exit_code=3)
    assert rec == container("a", rm=True, log_path="/x/log", status="stopped", exit_code=3)
    with pytest.raises(ContainerNotFoundError):
        db.containers.update_status("missing", "stopped")
    with pytest.raises(StoreError, match="status"):
        db.containers.update_status("a", "paused")


def test_container_delete(db: MetadataDB) -> None:
    db.containers.add(container("a", image="x:1"))
    db.containers.add(container("b", image="y:1", status="stopped", exit_code=0))
    assert db.containers.delete("a") is True
    assert db.containers.delete("a") is False
    assert [c.id for c in db.containers.list()] == ["b"]


def test_facades_can_be_built_over_a_shared_db(db: MetadataDB) -> None:
    ImageStore(db).put(image())
    ContainerStore(db).add(container())
    assert db.images.get(image().name) == image()
    assert db.containers.get("c1") == container()


def _writer(root: str, prefix: str, n: int) -> None:
    db = MetadataDB(Path(root))
    for i in range(n):
        db.images.put(image(f"{prefix}-{i}:1"))
        db.containers.add(container(f"{prefix}-{i}"))


def test_concurrent_writers_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    MetadataDB(root)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(root), p, 40)) for p in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    db = MetadataDB(root)
    assert len(db.images.list()) == 80
    assert len(db.containers.list()) == 80


def test_threads_share_one_db_object(db: MetadataDB) -> None:
    import threading

    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                db.images.put(image(f"t{k}-{i}:1"))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(db.images.list()) == 80


def test_a_version_1_database_gains_the_file_index_and_keeps_its_rows(tmp_path: Path) -> None:
    db = MetadataDB(tmp_path)
    ImageStore(db).put(image())
    conn = sqlite3.connect(tmp_path / "meta.db")
    conn.execute("DROP TABLE file_index")
    conn.execute("DROP TABLE file_index_layers")
    conn.execute("PRAGMA user_version = 1")  # what a fastdist before the file index left
    conn.commit()
    conn.close()
    db.close()

    again = MetadataDB(tmp_path)
    assert again._user_version() == SCHEMA_VERSION
    assert [r.name for r in again.images.list()] == [image().name]
    again.files.add_layer("overlayfs", d("c1"), [(b"a", "0" * 32, 10), (b"b", "0" * 32, 10)])
    again.files.add_layer("overlayfs", d("c2"), [(b"a", "0" * 32, 10), (b"z", "1" * 32, 10)])
    assert again.files.layers() == {("overlayfs", d("c1")), ("overlayfs", d("c2"))}
    groups = list(again.files.groups())
    assert [[(f.chain_id, f.path) for f in g] for g in groups] == [
        sorted([(d("c1"), b"a"), (d("c1"), b"b"), (d("c2"), b"a")])
    ]
    again.files.drop_layer("overlayfs", d("c1"))
    assert list(again.files.groups()) == []


def test_file_index_groups_of_some_layers_are_the_groups_their_files_are_in(
    tmp_path: Path,
) -> None:
    db = MetadataDB(tmp_path)
    x, y = "1" * 32, "2" * 32
    db.files.add_layer("overlayfs", d("old"), [(b"a", x, 10), (b"b", y, 10)])
    db.files.add_layer("overlayfs", d("old2"), [(b"b", y, 10)])
    db.files.add_layer("native", d("new"), [(b"a", x, 10), (b"c", "3" * 32, 10)])
    got = list(db.files.groups(layers={("native", d("new"))}))
    # x's group whole (the old file with it); y's group is no new file's; c's is one file.
    assert [sorted((f.snapshotter, f.path) for f in g) for g in got] == [
        [("native", b"a"), ("overlayfs", b"a")],
        [("native", b"c")],
    ]
    assert list(db.files.groups(layers=set())) == []
    assert len(list(db.files.groups())) == 2  # x and y: the whole-store pass
