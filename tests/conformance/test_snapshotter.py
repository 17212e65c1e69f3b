"""Conformance suite of the Snapshotter interface, run against every implementation.

Layers are real tar streams (Python's ``tarfile``) applied with ``_native.LayerWriter`` in the
snapshotter's own mode ("layer" for overlayfs, "flatten" for native).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastdist import _native
from fastdist.errors import StoreError
from fastdist.oci import OCI_LAYER, Digest, chain_ids, sha256_digest
from fastdist.snapshots import (
    NativeSnapshotter,
    OverlaySnapshotter,
    Snapshotter,
    default_snapshotter,
    overlay_supported,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting needs root")

IMPLEMENTATIONS: dict[str, Callable[[Path], Snapshotter]] = {
    "overlayfs": OverlaySnapshotter,
    "native": NativeSnapshotter,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Snapshotter:
    root = tmp_path / "root"
    if request.param == "overlayfs" and not (IS_ROOT and overlay_supported(root)):
        pytest.skip("overlayfs needs root and a filesystem that supports overlay mounts")
    return IMPLEMENTATIONS[request.param](root)


# --- layer building -------------------------------------------------------------------------------
Entry = tuple[str, str, bytes]  # (kind, path, data): kind in file|dir|whiteout|opaque


def tar_layer(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, path, data in entries:
            if kind == "whiteout":
                parent, _, name = path.rpartition("/")
                path, kind, data = (
                    (f"{parent}/.wh.{name}" if parent else f".wh.{name}"),
                    "file",
                    b"",
                )
            elif kind == "opaque":
                path, kind, data = f"{path}/.wh..wh..opq", "file", b""
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def diff_id(tar: bytes) -> Digest:
    return sha256_digest(tar)


def apply(snap: Snapshotter, chain: Digest, parent: Digest | None, tar: bytes) -> None:
    staging = snap.prepare_layer(chain, parent)
    writer = _native.LayerWriter(
        OCI_LAYER, str(staging.path), mode=snap.apply_mode, expected_diff_id=diff_id(tar)
    )
    writer.write(tar)
    writer.finish()
    snap.commit(staging)


LAYERS = [
    tar_layer(
        [
            ("dir", "etc", b""),
            ("file", "etc/modified", b"v1"),
            ("file", "etc/removed", b"gone soon"),
            ("dir", "opq", b""),
            ("file", "opq/lower", b"hidden by opaque"),
            ("file", "kept", b"kept"),
        ]
    ),
    tar_layer(
        [
            ("dir", "etc", b""),
            ("file", "etc/modified", b"v2"),
            ("file", "etc/added", b"new in 2"),
        ]
    ),
    tar_layer(
        [
            ("dir", "etc", b""),
            ("whiteout", "etc/removed", b""),
            ("dir", "opq", b""),
            ("opaque", "opq", b""),
            ("file", "opq/upper", b"from 3"),
        ]
    ),
]
CHAINS = chain_ids(diff_id(t) for t in LAYERS)


def apply_stack(snap: Snapshotter) -> Digest:
    parent: Digest | None = None
    for chain, tar in zip(CHAINS, LAYERS, strict=True):
        apply(snap, chain, parent, tar)
        parent = chain
    return CHAINS[-1]


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path → file content (None for dirs), what a container would see."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            # An overlay layer dir holds whiteouts as 0/0 char devices: name them, don't read them.
            data = (
                Path(p).read_bytes() if stat.S_ISREG(st.st_mode) else f"<{st.st_mode:o}>".encode()
            )
            out[os.path.relpath(p, root)] = data
    return out


EXPECTED_VIEW = {
    "etc": None,
    "etc/modified": b"v2",
    "etc/added": b"new in 2",
    "opq": None,
    "opq/upper": b"from 3",
    "kept": b"kept",
}


@pytest.fixture
def mounted(snap: Snapshotter, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    targets: list[Path] = []

    def mount(key: str, parent: Digest | None, readonly: bool = False) -> Path:
        active = snap.prepare_active(key, parent)
        target = tmp_path / f"mnt-{key}"
        target.mkdir()
        snap.mount(active, target, readonly=readonly)
        targets.append(target)
        return target

    yield mount
    for t in targets:
        snap.unmount(t)


# --- committed layers -----------------------------------------------------------------------------
def test_prepare_then_commit_makes_the_layer_exist_with_parent_and_usage(
    snap: Snapshotter,
) -> None:
    c1, c2 = CHAINS[0], CHAINS[1]
    assert not snap.exists(c1)
    staging = snap.prepare_layer(c1, None)
    (staging.path / "file").write_bytes(b"x" * 10_000)
    assert not snap.exists(c1)  # staged is not visible
    snap.commit(staging)
    assert snap.exists(c1)
    assert snap.parent(c1) is None
    assert snap.usage(c1) >= 10_000
    apply(snap, c2, c1, LAYERS[1])
    assert snap.parent(c2) == c1
    assert snap.list() == sorted([c1, c2])
    assert snap.staging_leftovers() == []


def test_abort_removes_staging_even_with_unfriendly_permissions(snap: Snapshotter) -> None:
    staging = snap.prepare_layer(CHAINS[0], None)
    locked = staging.path / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    locked.chmod(0o000)
    (staging.path / "ro").mkdir()
    (staging.path / "ro" / "g").write_bytes(b"y")
    (staging.path / "ro").chmod(0o500)
    snap.abort(staging)
    assert not staging.dir.exists()
    assert not snap.exists(CHAINS[0])
    assert os.listdir(snap.staging_dir) == []


def test_commit_when_already_committed_is_success_and_keeps_the_first(
    snap: Snapshotter,
) -> None:
    first = snap.prepare_layer(CHAINS[0], None)
    second = snap.prepare_layer(CHAINS[0], None)
    (first.path / "who").write_bytes(b"first")
    (second.path / "who").write_bytes(b"second")
    snap.commit(first)
    snap.commit(second)
    assert (snap.fs_path(CHAINS[0]) / "who").read_bytes() == b"first"
    assert not second.dir.exists()
    assert os.listdir(snap.staging_dir) == []


def test_commit_requires_the_parent_to_be_committed(snap: Snapshotter) -> None:
    apply(snap, CHAINS[0], None, LAYERS[0])
    orphan = sha256_digest(b"not committed")
    if snap.apply_mode == "flatten":
        with pytest.raises(StoreError, match="parent"):
            snap.prepare_layer(CHAINS[1], orphan)
        return
    staging = snap.prepare_layer(CHAINS[1], orphan)  # overlayfs: staging does not need it
    with pytest.raises(StoreError, match="parent"):
        snap.commit(staging)
    assert not snap.exists(CHAINS[1])
    snap.abort(staging)


def test_remove_deletes_a_committed_layer(snap: Snapshotter) -> None:
    apply(snap, CHAINS[0], None, LAYERS[0])
    snap.remove(CHAINS[0])
    snap.remove(CHAINS[0])
    assert not snap.exists(CHAINS[0])
    assert snap.list() == []
    with pytest.raises(StoreError):
        snap.parent(CHAINS[0])


def test_sweep_removes_staging_left_by_a_dead_owner_only(snap: Snapshotter) -> None:
    dead = snap.prepare_layer(CHAINS[0], None)
    (dead.path / "f").write_bytes(b"partial")
    dead._lock.release()  # as if its process had died: the flock is gone
    alive = snap.prepare_layer(CHAINS[1], None)
    assert snap.staging_leftovers() == [dead.dir]
    assert snap.sweep_staging() == 1
    assert not dead.dir.exists()
    assert alive.path.is_dir()
    snap.abort(alive)


def test_store_directories_are_private(snap: Snapshotter) -> None:
    for p in (snap.store_root, snap.store_root / "snapshots", snap.root, snap.layers_dir):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p


# --- active snapshots -----------------------------------------------------------------------------
@needs_root
def test_three_layer_stack_is_seen_through_an_active_mount(
    snap: Snapshotter, mounted: Callable[..., Path]
) -> None:
    top = apply_stack(snap)
    view = mounted("ctr1", top)
    assert tree(view) == EXPECTED_VIEW


@needs_root
def test_writes_in_an_active_snapshot_never_modify_committed_layers(
    snap: Snapshotter, mounted: Callable[..., Path]
) -> None:
    top = apply_stack(snap)
    before = {c: tree(snap.fs_path(c)) for c in CHAINS}
    view = mounted("writer", top)
    (view / "etc" / "modified").write_bytes(b"changed by the container")
    (view / "etc" / "added").unlink()
    (view / "new").write_bytes(b"created")
    (view / "kept").chmod(0o600)
    assert {c: tree(snap.fs_path(c)) for c in CHAINS} == before
    other = mounted("reader", top)
    assert tree(other) == EXPECTED_VIEW


@needs_root
def test_readonly_mount_refuses_writes(snap: Snapshotter, mounted: Callable[..., Path]) -> None:
    top = apply_stack(snap)
    view = mounted("ro", top, readonly=True)
    assert tree(view) == EXPECTED_VIEW
    with pytest.raises(OSError, match="Read-only"):
        (view / "new").write_bytes(b"x")


@needs_root
def test_active_snapshot_without_parent_is_an_empty_writable_root(
    snap: Snapshotter, mounted: Callable[..., Path]
) -> None:
    view = mounted("scratch", None)
    assert tree(view) == {}
    (view / "f").write_bytes(b"ok")
    assert (view / "f").read_bytes() == b"ok"


@needs_root
def test_deep_stack_mounts_within_the_option_limit(
    snap: Snapshotter, mounted: Callable[..., Path]
) -> None:
    tars = [tar_layer([("file", f"f{i:03d}", str(i).encode())]) for i in range(130)]
    chains = chain_ids(diff_id(t) for t in tars)
    parent: Digest | None = None
    for c, t in zip(chains, tars, strict=True):
        apply(snap, c, parent, t)
        parent = c
    view = mounted("deep", chains[-1])
    assert len(os.listdir(view)) == 130
    assert (view / "f000").read_bytes() == b"0"


def test_active_keys_are_validated_and_unique(snap: Snapshotter) -> None:
    with pytest.raises(StoreError, match="key"):
        snap.prepare_active("../escape", None)
    snap.prepare_active("k1", None)
    with pytest.raises(StoreError, match="exists"):
        snap.prepare_active("k1", None)
    assert snap.list_active() == ["k1"]
    assert snap.get_active("k1").parent is None
    snap.remove_active("k1")
    assert snap.list_active() == []


def test_active_snapshot_needs_a_committed_parent(snap: Snapshotter) -> None:
    with pytest.raises(StoreError, match="not committed"):
        snap.prepare_active("k", CHAINS[0])


@needs_root
def test_unmount_of_something_not_mounted_is_fine(snap: Snapshotter, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "kept").write_bytes(b"kept")
    snap.unmount(plain)  # returns without raising and without touching the directory
    assert (plain / "kept").read_bytes() == b"kept"
    assert not os.path.ismount(plain)
    snap.unmount(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


@needs_root
def test_unmount_detaches_a_mount_even_while_it_is_busy(snap: Snapshotter, tmp_path: Path) -> None:
    import subprocess

    for name, busy in (("idle", False), ("busy", True)):
        target = tmp_path / f"mnt-{name}"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
        assert os.path.ismount(target)
        (target / "f").write_bytes(b"x")
        try:
            # An open file makes umount EBUSY; the snapshotter must then detach lazily.
            with open(target / "f", "rb") if busy else contextlib.nullcontext():
                snap.unmount(target)
                assert not os.path.ismount(target)
                assert not (target / "f").exists()  # the mount's contents are gone from the path
        finally:
            if os.path.ismount(target):  # the unmount under test failed: do not leak the mount
                subprocess.run(["umount", "-l", str(target)], check=False)


def test_default_snapshotter_is_overlayfs_exactly_when_overlay_works(tmp_path: Path) -> None:
    s = default_snapshotter(tmp_path / "r")
    expected = "overlayfs" if overlay_supported(tmp_path / "r") else "native"
    assert s.name == expected
    assert s.apply_mode == ("layer" if expected == "overlayfs" else "flatten")
    assert os.listdir(tmp_path / "r" / "tmp") == []  # the probe cleaned up after itself


def _stage_and_commit(name: str, root: str, who: str) -> None:
    snap = IMPLEMENTATIONS[name](Path(root))
    staging = snap.prepare_layer(CHAINS[0], None)
    (staging.path / "who").write_text(who)
    snap.commit(staging)


def test_two_processes_committing_one_chain_id_both_succeed_and_one_wins(
    snap: Snapshotter,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_stage_and_commit, args=(snap.name, str(snap.store_root), who))
        for who in ("a", "b")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert (snap.fs_path(CHAINS[0]) / "who").read_text() in ("a", "b")
    assert snap.list() == [CHAINS[0]]
    assert os.listdir(snap.staging_dir) == []
