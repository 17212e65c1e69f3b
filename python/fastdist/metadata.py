"""The metadata database (``meta.db``, SQLite in WAL mode): images, containers, GC roots.

Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent fastdist processes on one root
serialise on SQLite's lock (a busy timeout plus a bounded retry) and a reader never sees half an
image. Each thread uses its own connection.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ContainerNotFoundError, InUseError, StoreError
from .oci import Descriptor, Digest, parse_digest
from .store import ensure_root

log = logging.getLogger(__name__)

_IMAGE_COLUMNS = """(
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    layer_digests TEXT NOT NULL,
    chain_ids TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
)"""
_IMAGE_NAMES = (
    "name, target, manifest_digest, config_digest, layer_digests, chain_ids, snapshotter, size, "
    "created, updated"
)
SCHEMA_VERSION = 4
# What each version bump does to an existing database, after _SCHEMA created what is missing.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: the snapshots table was never read (the snapshotter's own info.json is the record).
    2: ("DROP TABLE IF EXISTS snapshots",),
    # 3: the file index (``file_index``, ``file_index_layers``) of dedup: created by _SCHEMA on
    # open, an older database keeps every row it had.
    # 4: images lose ``unpacked_size``, written as 0 since the pull stopped walking trees
    # (``Image.unpacked_size()`` measures). Rebuilt rather than ``DROP COLUMN``, which SQLite
    # has only since 3.35; the rows are kept.
    4: (
        f"CREATE TABLE images_v4 {_IMAGE_COLUMNS}",
        f"INSERT INTO images_v4 ({_IMAGE_NAMES}) SELECT {_IMAGE_NAMES} FROM images",
        "DROP TABLE images",
        "ALTER TABLE images_v4 RENAME TO images",
    ),
}
BUSY_TIMEOUT_MS = 5000
_RETRIES = 20
T = TypeVar("T")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS images {_IMAGE_COLUMNS};
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    snapshot_key TEXT NOT NULL,
    bundle TEXT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    created REAL NOT NULL,
    log_path TEXT,
    rm INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS file_index (
    snapshotter TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    path BLOB NOT NULL,
    xxh3 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (snapshotter, chain_id, path)
);
CREATE INDEX IF NOT EXISTS file_index_by_content ON file_index (xxh3, size);
CREATE TABLE IF NOT EXISTS file_index_layers (
    snapshotter TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    PRIMARY KEY (snapshotter, chain_id)
);
"""

CONTAINER_STATUSES = frozenset({"created", "running", "stopped"})


@dataclass(frozen=True)
class ImageRecord:
    """A local image: its name, what it resolved to, and where its layers are unpacked."""

    name: str
    target: Descriptor
    manifest_digest: Digest
    config_digest: Digest
    layer_digests: tuple[Digest, ...]
    chain_ids: tuple[Digest, ...]
    snapshotter: str
    size: int  # manifest + config + compressed layers (Image.unpacked_size() measures the trees)
    created: float
    updated: float


@dataclass(frozen=True)
class ContainerRecord:
    """A container fastdist created (runc bundle + active snapshot)."""

    id: str
    image: str
    snapshotter: str
    snapshot_key: str
    bundle: str
    command: tuple[str, ...]
    status: str  # "created" | "running" | "stopped"
    pid: int | None
    exit_code: int | None
    created: float
    log_path: str | None
    rm: bool


class MetadataDB:
    """``<root>/meta.db``; thread-safe (a connection per thread), multi-process safe (WAL)."""

    def __init__(self, path: Path) -> None:
        """``path`` is the database file (``*.db``) or a store root (then ``<root>/meta.db``)."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".db":
            path = path / "meta.db"
        ensure_root(path.parent)
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if f.is_symlink():  # SQLite would follow it: never trust a symlink in the store
                raise StoreError(
                    f"store database {f} is a symlink",
                    hint="something other than fastdist changed the store; inspect and remove it",
                )
        self.path = path
        self._local = threading.local()
        # A write transaction (and its fsync) only when the schema is missing or older: every
        # fastdist command opens the database, most of them only to read.
        if self._user_version() != SCHEMA_VERSION:
            self._write(self._init_schema)
        self.images = ImageStore(self)
        self.containers = ContainerStore(self)
        self.files = FileIndex(self)

    # --- connections and transactions ---------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
                if mode is None or str(mode[0]).lower() != "wal":
                    raise StoreError(f"cannot enable WAL on {self.path}: got {mode!r}")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error as e:
                raise StoreError(f"cannot open metadata database {self.path}: {e}") from e
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's local dies)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    def _retry(fn: Callable[[], T]) -> T:
        for attempt in range(_RETRIES):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                msg = str(e).lower()
                if ("locked" not in msg and "busy" not in msg) or attempt == _RETRIES - 1:
                    raise
                time.sleep(min(0.01 * 2**attempt, 0.5))  # back-off, not synchronisation
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (BEGIN IMMEDIATE), retried while busy."""
        conn = self._conn()

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out

        try:
            return self._retry(attempt)
        except sqlite3.Error as e:
            raise StoreError(f"metadata write failed ({self.path}): {e}") from e

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = self._conn()
        try:
            cur = self._retry(lambda: conn.execute(sql, args))
            cur.row_factory = sqlite3.Row
            rows: list[sqlite3.Row] = cur.fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"metadata read failed ({self.path}): {e}") from e
        return rows

    def _user_version(self) -> int:
        conn = self._conn()
        try:
            row = self._retry(lambda: conn.execute("PRAGMA user_version").fetchone())
        except sqlite3.Error as e:
            raise StoreError(f"cannot open metadata database {self.path}: {e}") from e
        return int(row[0])

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this fastdist's "
                f"{SCHEMA_VERSION}",
                hint="upgrade fastdist or use another --root",
            )
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in _MIGRATIONS.get(v, ()):
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def journal_mode(self) -> str:
        return str(self._conn().execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A raw write transaction for callers that must update several tables atomically."""
        conn = self._conn()
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# --- images -------------------------------------------------------------------------------------
def _digests(raw: str) -> tuple[Digest, ...]:
    return tuple(parse_digest(d) for d in json.loads(raw))


def _image_from_row(r: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        name=r["name"],
        target=Descriptor.from_json(json.loads(r["target"]), "image.target"),
        manifest_digest=parse_digest(r["manifest_digest"]),
        config_digest=parse_digest(r["config_digest"]),
        layer_digests=_digests(r["layer_digests"]),
        chain_ids=_digests(r["chain_ids"]),
        snapshotter=r["snapshotter"],
        size=r["size"],
        created=r["created"],
        updated=r["updated"],
    )


class ImageStore:
    """Images by name (``docker.io/library/alpine:3.19``)."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    def put(self, rec: ImageRecord) -> None:
        """Insert or replace the image ``rec.name``; an update keeps the original ``created``."""
        if len(rec.layer_digests) != len(rec.chain_ids):
            raise StoreError(
                f"image {rec.name}: {len(rec.layer_digests)} layers but {len(rec.chain_ids)} "
                "chain ids"
            )
        row = (
            rec.name,
            json.dumps(rec.target.to_json(), sort_keys=True),
            rec.manifest_digest,
            rec.config_digest,
            json.dumps(list(rec.layer_digests)),
            json.dumps(list(rec.chain_ids)),
            rec.snapshotter,
            rec.size,
            rec.created,
            rec.updated,
        )
        self.db._write(
            lambda c: c.execute(
                f"""INSERT INTO images ({_IMAGE_NAMES}) VALUES (?,?,?,?,?,?,?,?,?,?)
                ON CONFLICT(name) DO UPDATE SET target=excluded.target,
                  manifest_digest=excluded.manifest_digest, config_digest=excluded.config_digest,
                  layer_digests=excluded.layer_digests, chain_ids=excluded.chain_ids,
                  snapshotter=excluded.snapshotter, size=excluded.size,
                  updated=excluded.updated""",
                row,
            )
        )

    def touch(self, name: str, target: Digest, updated: float) -> float | None:
        """Set ``updated`` of the image ``name`` if it still points at ``target`` (a pull that
        found it present); the time set, or None if no such image points there."""
        n: int = self.db._write(
            lambda c: (
                c.execute(
                    "UPDATE images SET updated = ? "
                    "WHERE name = ? AND json_extract(target, '$.digest') = ?",
                    (updated, name, target),
                ).rowcount
            )
        )
        return updated if n else None

    def get(self, name: str) -> ImageRecord | None:
        rows = self.db._read("SELECT * FROM images WHERE name = ?", (name,))
        return _image_from_row(rows[0]) if rows else None

    def list(self) -> list[ImageRecord]:
        return [_image_from_row(r) for r in self.db._read("SELECT * FROM images ORDER BY name")]

    def by_digest_prefix(self, prefix: str) -> builtins.list[ImageRecord]:
        """Images whose config (docker's image ID), manifest or target digest starts with
        ``prefix`` (``sha256:`` and some hex), by name."""
        n = len(prefix)
        rows = self.db._read(
            "SELECT * FROM images WHERE substr(config_digest, 1, ?) = ? "
            "OR substr(manifest_digest, 1, ?) = ? "
            "OR substr(json_extract(target, '$.digest'), 1, ?) = ? ORDER BY name",
            (n, prefix, n, prefix, n, prefix),
        )
        return [_image_from_row(r) for r in rows]

    def delete(self, name: str) -> bool:
        """Remove the image ``name``; False if there was none."""
        n: int = self.db._write(
            lambda c: c.execute("DELETE FROM images WHERE name = ?", (name,)).rowcount
        )
        return n > 0

    def referenced_blobs(self) -> set[Digest]:
        """GC roots among blobs: targets (index or manifest), manifests, configs, layers."""
        out: set[Digest] = set()
        for rec in self.list():
            out.add(rec.target.digest)
            out.add(rec.manifest_digest)
            out.add(rec.config_digest)
            out.update(rec.layer_digests)
        return out

    def referenced_snapshots(self) -> set[tuple[str, Digest]]:
        """GC roots among snapshots: every chain_id of every image, with its snapshotter."""
        return {(rec.snapshotter, c) for rec in self.list() for c in rec.chain_ids}


# --- containers ---------------------------------------------------------------------------------
def _container_from_row(r: sqlite3.Row) -> ContainerRecord:
    return ContainerRecord(
        id=r["id"],
        image=r["image"],
        snapshotter=r["snapshotter"],
        snapshot_key=r["snapshot_key"],
        bundle=r["bundle"],
        command=tuple(json.loads(r["command"])),
        status=r["status"],
        pid=r["pid"],
        exit_code=r["exit_code"],
        created=r["created"],
        log_path=r["log_path"],
        rm=bool(r["rm"]),
    )


def _check_status(status: str) -> None:
    if status not in CONTAINER_STATUSES:
        raise StoreError(
            f"invalid container status {status!r}: expected {sorted(CONTAINER_STATUSES)}"
        )


class ContainerStore:
    """Containers by id."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    def add(self, rec: ContainerRecord) -> None:
        """Record a new container; InUseError if the id is taken."""
        _check_status(rec.status)
        row = (
            rec.id,
            rec.image,
            rec.snapshotter,
            rec.snapshot_key,
            rec.bundle,
            json.dumps(list(rec.command)),
            rec.status,
            rec.pid,
            rec.exit_code,
            rec.created,
            rec.log_path,
            int(rec.rm),
        )
        try:
            self.db._write(
                lambda c: c.execute("INSERT INTO containers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
            )
        except StoreError as e:
            if isinstance(e.__cause__, sqlite3.IntegrityError):
                raise InUseError(
                    f"container id {rec.id!r} is already in use",
                    hint="choose another --name or remove the old container",
                ) from None
            raise

    def get(self, id: str) -> ContainerRecord | None:
        rows = self.db._read("SELECT * FROM containers WHERE id = ?", (id,))
        return _container_from_row(rows[0]) if rows else None

    def list(self) -> list[ContainerRecord]:
        rows = self.db._read("SELECT * FROM containers ORDER BY created, id")
        return [_container_from_row(r) for r in rows]

    def update_status(
        self, id: str, status: str, pid: int | None = None, exit_code: int | None = None
    ) -> ContainerRecord:
        """Set status, pid and exit code; ContainerNotFoundError if there is no such container."""
        _check_status(status)
        n: int = self.db._write(
            lambda c: (
                c.execute(
                    "UPDATE containers SET status = ?, pid = ?, exit_code = ? WHERE id = ?",
                    (status, pid, exit_code, id),
                ).rowcount
            )
        )
        rec = self.get(id) if n else None
        if rec is None:
            raise ContainerNotFoundError(f"no container {id!r}")
        return rec

    def update_command(self, id: str, command: tuple[str, ...]) -> None:
        """Record the command the container really runs (after Entrypoint/Cmd resolution)."""
        self.db._write(
            lambda c: c.execute(
                "UPDATE containers SET command = ? WHERE id = ?", (json.dumps(list(command)), id)
            )
        )

    def delete(self, id: str) -> bool:
        n: int = self.db._write(
            lambda c: c.execute("DELETE FROM containers WHERE id = ?", (id,)).rowcount
        )
        return n > 0


# --- the file index (dedup) ---------------------------------------------------------------------
@dataclass(frozen=True)
class IndexedFile:
    """A regular file of a committed snapshot, by its real path in the snapshot's ``fs``."""

    snapshotter: str
    chain_id: Digest
    path: bytes
    xxh3: str
    size: int


class FileIndex:
    """xxh3-128 and size of every regular file of the indexed snapshots: dedup's candidates
    (files with equal keys), never its proof (xxh3 is not collision-resistant: dedup compares
    the bytes). A snapshot is indexed whole, in one transaction, or not at all."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    def layers(self) -> set[tuple[str, Digest]]:
        """``(snapshotter, chain_id)`` of the indexed snapshots."""
        rows = self.db._read("SELECT snapshotter, chain_id FROM file_index_layers")
        return {(r["snapshotter"], parse_digest(r["chain_id"])) for r in rows}

    def add_layer(
        self, snapshotter: str, chain_id: Digest, files: Iterable[tuple[bytes, str, int]]
    ) -> None:
        """Index one snapshot's files ``(path, xxh3, size)``, replacing what it had."""
        rows = [(snapshotter, chain_id, p, x, n) for p, x, n in files]

        def put(conn: sqlite3.Connection) -> None:
            args = (snapshotter, chain_id)
            conn.execute("DELETE FROM file_index WHERE snapshotter=? AND chain_id=?", args)
            conn.executemany("INSERT OR REPLACE INTO file_index VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("INSERT OR REPLACE INTO file_index_layers VALUES (?, ?)", args)

        self.db._write(put)

    def drop_layer(self, snapshotter: str, chain_id: Digest) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            args = (snapshotter, chain_id)
            conn.execute("DELETE FROM file_index WHERE snapshotter=? AND chain_id=?", args)
            conn.execute("DELETE FROM file_index_layers WHERE snapshotter=? AND chain_id=?", args)

        self.db._write(drop)

    def groups(
        self, min_size: int = 1, *, layers: Iterable[tuple[str, Digest]] | None = None
    ) -> Iterator[tuple[IndexedFile, ...]]:
        """Files sharing an ``(xxh3, size)`` key, by key, at least two per group; with
        ``layers``, only the groups holding a file of one of those snapshots (one query: the
        keys of those snapshots' files, by the primary key, then their groups by content; a
        group may then be one file)."""
        if layers is None:
            keys = (
                "SELECT xxh3, size FROM file_index WHERE size >= ?"
                " GROUP BY xxh3, size HAVING COUNT(*) > 1"
            )
            args: tuple[Any, ...] = (min_size,)
        else:
            keys = (
                "SELECT DISTINCT k.xxh3, k.size FROM json_each(?) j JOIN file_index k"
                " ON k.snapshotter = json_extract(j.value, '$[0]')"
                " AND k.chain_id = json_extract(j.value, '$[1]') WHERE k.size >= ?"
            )
            args = (json.dumps(sorted([s, c] for s, c in layers)), min_size)
        rows = self.db._read(
            f"SELECT f.* FROM file_index f JOIN ({keys}) g ON f.xxh3 = g.xxh3 AND f.size = g.size"
            " ORDER BY f.xxh3, f.size, f.snapshotter, f.chain_id, f.path",
            args,
        )
        group: list[IndexedFile] = []
        for r in rows:
            f = IndexedFile(
                r["snapshotter"],
                parse_digest(r["chain_id"]),
                bytes(r["path"]),
                r["xxh3"],
                r["size"],
            )
            if group and (group[0].xxh3, group[0].size) != (f.xxh3, f.size):
                yield tuple(group)
                group = []
            group.append(f)
        if group:
            yield tuple(group)
