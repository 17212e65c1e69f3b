"""``fastdist dedup`` / ``Client.dedup`` and ``system df``: equal files of committed snapshots
share one inode; anything that differs (a byte, mode, owner, mtime, xattrs) never does, even
when forced to share an xxh3; a container writing to a shared file changes only itself; removal
frees exactly what no other image uses; a crash mid-dedup leaves every tree correct."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pullkit import SNAPSHOTTERS

from fastdist import dedup as dedup_mod
from fastdist.client import Client, Image
from fastdist.fingerprint import ManifestRecord
from fastdist.snapshots import snapshotter_by_name
from fastdist.testing.images import (
    Dir,
    File,
    Hardlink,
    build_image,
    build_layer,
    push_image,
    tar_entries,
)

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry

BIG = bytes(range(256)) * 64  # 16 KiB: blocks to save
APP = [
    Dir("usr"),
    Dir("usr/lib"),
    File("usr/lib/libbig.so", BIG, mode=0o755),
    File("usr/lib/data", BIG[::-1]),
    File("usr/lib/dup1", b"same twice\n" * 500),
    File("usr/lib/dup2", b"same twice\n" * 500),  # equal to dup1 within one image
    Hardlink("usr/lib/hard", "usr/lib/data"),  # the image's own hardlink
]


def _push(
    registry: LocalRegistry, pusher: Pusher, name: str, entries: list, extra: list | None = None
) -> str:  # type: ignore[type-arg]
    ref = f"{registry.host}/it/dedup-{name}:v1"
    layers = [build_layer(tar_entries(entries + (extra or [])))]
    push_image(pusher, ref, build_image(layers, cmd=["/bin/sh"]))
    return ref


def _fs(root: Path, img: Image) -> Path:
    snap = snapshotter_by_name(img.record.snapshotter, root)
    return snap.fs_path(img.record.chain_ids[-1])


def _ino(p: Path) -> int:
    return os.lstat(p).st_ino


def _two(
    registry: LocalRegistry, pusher: Pusher, root: Path, snapshotter: str, tag: str
) -> tuple[Client, Image, Image]:
    # The same files in a "rebuilt" layer: another digest (one file more), most files unchanged.
    a = _push(registry, pusher, f"{tag}-a-{snapshotter}", APP)
    b = _push(registry, pusher, f"{tag}-b-{snapshotter}", APP, [File("usr/lib/new", "rebuilt\n")])
    client = Client(root, snapshotter=snapshotter)
    return client, client.pull(a), client.pull(b)


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_dedup_shares_equal_files_between_images_and_df_and_rmi_count_it(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    client, a, b = _two(registry, pusher, store_root, snapshotter, "share")
    before = client.disk_usage()
    assert before.shared == 0
    fa, fb = _fs(store_root, a), _fs(store_root, b)

    rep = client.dedup()
    # libbig.so, and dup1 of one image onto the other's; dup2 would be a second path of one
    # image onto that inode, and data/hard are the image's own hardlink pair: left alone.
    assert rep.linked == 2
    assert _ino(fa / "usr/lib/libbig.so") == _ino(fb / "usr/lib/libbig.so")
    assert _ino(fa / "usr/lib/dup1") == _ino(fb / "usr/lib/dup1")
    # Never two paths of one image onto one inode; the image's own hardlink pair is untouched.
    assert _ino(fb / "usr/lib/dup1") != _ino(fb / "usr/lib/dup2")
    assert _ino(fb / "usr/lib/data") == _ino(fb / "usr/lib/hard")
    assert _ino(fa / "usr/lib/data") != _ino(fb / "usr/lib/data")
    assert (fb / "usr/lib/libbig.so").read_bytes() == BIG

    after = client.disk_usage()
    assert before.physical - after.physical == rep.bytes_saved > 0
    assert after.shared == rep.bytes_saved
    ua = {i.name: i for i in after.images}
    assert ua[a.name].shared == ua[b.name].shared == rep.bytes_saved
    assert ua[a.name].logical == next(i for i in before.images if i.name == a.name).logical
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert client.dedup().linked == 0  # idempotent

    # Removing a frees exactly what only a used; b keeps every shared byte.
    client.remove(a.name)
    client.prune()
    gone = client.disk_usage()
    assert after.physical - gone.physical == ua[a.name].unique
    assert gone.shared == 0
    assert (fb / "usr/lib/libbig.so").read_bytes() == BIG
    check = client.check(deep=True)
    assert check.ok, check.problems


def _forced(rec: ManifestRecord) -> tuple[str, int]:
    return ("0" * 32, rec.size)  # every file of a size "collides"


@pytest.mark.parametrize("how", ["command", "after-pull"])
@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_dedup_never_links_files_differing_in_a_byte_mode_owner_mtime_or_xattrs(
    registry: LocalRegistry,
    pusher: Pusher,
    store_root: Path,
    snapshotter: str,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    monkeypatch.setattr(dedup_mod, "INDEX_KEY", _forced)
    data = b"x" * 5000
    variants = {
        "orig": File("f", data),
        "same": File("f", data),  # the control: must be linked
        "byte": File("f", data[:-1] + b"y"),
        "mode": File("f", data, mode=0o600),
        "owner": File("f", data, uid=1, gid=1),
        "mtime": File("f", data, mtime=1_700_000_001),
        "xattr": File("f", data, xattrs={"user.tag": "1"}),
    }
    if os.geteuid() != 0:
        del variants["owner"]
    client = Client(store_root, snapshotter=snapshotter)
    after = how == "after-pull"  # each pull's pass against the images pulled before it
    imgs = {
        k: client.pull(
            _push(registry, pusher, f"v-{k}-{how}-{snapshotter}", [Dir(f"d-{k}"), e]),
            dedup=after,
        )
        for k, e in variants.items()
    }
    rep = client.dedup()
    assert rep.linked == (0 if after else 1)
    assert rep.refused == len(variants) - 2
    inos = {k: _ino(_fs(store_root, img) / "f") for k, img in imgs.items()}
    assert inos["orig"] == inos["same"]
    assert len({inos[k] for k in variants if k not in ("orig", "same")} | {inos["orig"]}) == (
        len(variants) - 1
    )
    assert (_fs(store_root, imgs["byte"]) / "f").read_bytes().endswith(b"y")
    check = client.check(deep=True)
    assert check.ok, check.problems


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_container_writing_a_shared_file_does_not_change_the_other_image(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str, tmp_path: Path
) -> None:
    client, a, b = _two(registry, pusher, store_root, snapshotter, "write")
    assert client.dedup().linked > 0
    snap = client.snapshotter
    active = snap.prepare_active("writer", b.record.chain_ids[-1])
    target = tmp_path / "mnt"
    target.mkdir()
    snap.mount(active, target)
    try:
        with open(target / "usr/lib/libbig.so", "r+b") as f:  # in place, as a program would
            f.write(b"CHANGED")
    finally:
        snap.unmount(target)
    assert (_fs(store_root, a) / "usr/lib/libbig.so").read_bytes() == BIG
    assert (_fs(store_root, b) / "usr/lib/libbig.so").read_bytes() == BIG
    check = client.check(deep=True)
    assert check.ok, check.problems


@pytest.mark.parametrize("point", ["dedup-linked", "dedup-renamed"])
@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_crash_mid_dedup_leaves_every_tree_correct(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str, point: str
) -> None:
    client, a, b = _two(registry, pusher, store_root, snapshotter, f"crash-{point}")
    env = {**os.environ, "FASTDIST_TEST_CRASH_AT": point}
    argv = [sys.executable, "-m", "fastdist", "--root", str(store_root), "dedup"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == -9, r.stderr  # killed at the crash point
    for img in (a, b):
        assert (_fs(store_root, img) / "usr/lib/libbig.so").read_bytes() == BIG
    check = client.check(deep=True)
    assert check.ok, check.problems
    if point == "dedup-linked":
        assert any(x.kind == "staging" for x in check.leftovers)  # the link, for prune
    assert client.dedup().linked > 0  # the next run completes
    client.prune()
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert not check.leftovers


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_cli_dedup_and_system_df_as_table_and_json(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    _client, a, b = _two(registry, pusher, store_root, snapshotter, "cli")
    base = [sys.executable, "-m", "fastdist", "--root", str(store_root)]

    def run(*argv: str) -> str:
        r = subprocess.run([*base, *argv], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        return r.stdout

    before = json.loads(run("system", "df", "--json"))
    assert {i["name"] for i in before["images"]} == {a.name, b.name}
    assert before["shared"] == 0
    out = run("dedup")
    assert out.startswith("dedup: 2 file(s) now shared")
    after = json.loads(run("system", "df", "--json"))
    assert after["physical"] < before["physical"]
    assert all(i["shared"] == after["shared"] > 0 for i in after["images"])
    table = run("system", "df")
    assert table.splitlines()[0].split() == [
        "IMAGE",
        "LAYERS",
        "LOGICAL",
        "PHYSICAL",
        "SHARED",
        "UNIQUE",
        "BLOBS",
    ]
    assert a.name in table
    assert "shared by images" in table


# --- after a pull ----------------------------------------------------------------------------


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_pull_with_dedup_shares_its_new_files_and_keeps_the_indexed_ones(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    a_ref = _push(registry, pusher, f"after-a-{snapshotter}", APP)
    b_ref = _push(registry, pusher, f"after-b-{snapshotter}", APP, [File("usr/lib/new", "r\n")])
    client = Client(store_root, snapshotter=snapshotter)
    a = client.pull(a_ref, dedup=False)
    assert client.dedup().linked == 0  # a alone: indexed, nothing to share
    fa = _fs(store_root, a)
    kept = {n: _ino(fa / "usr/lib" / n) for n in ("libbig.so", "dup1", "dup2")}
    b = client.pull(b_ref, dedup=True)
    fb = _fs(store_root, b)
    # b's files became a's (a is the indexed side, never replaced); b's own second path of
    # dup1's content stays apart, as in the whole-store pass.
    assert {n: _ino(fa / "usr/lib" / n) for n in kept} == kept
    assert _ino(fb / "usr/lib/libbig.so") == kept["libbig.so"]
    assert _ino(fb / "usr/lib/dup1") in (kept["dup1"], kept["dup2"])
    assert _ino(fb / "usr/lib/dup2") != _ino(fb / "usr/lib/dup1")
    assert (fb / "usr/lib/libbig.so").read_bytes() == BIG
    assert client.metadata.files.layers() == {
        (snapshotter, c) for c in (*a.record.chain_ids, *b.record.chain_ids)
    }
    assert client.dedup().linked == 0  # the pass left nothing for the whole-store one
    check = client.check(deep=True)
    assert check.ok, check.problems


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_pull_without_dedup_shares_nothing_and_leaves_its_snapshots_to_the_next_pass(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    client, a, b = _two(registry, pusher, store_root, snapshotter, "nodedup")
    assert client.disk_usage().shared == 0
    assert client.metadata.files.layers() == set()
    c_ref = _push(registry, pusher, f"nodedup-c-{snapshotter}", APP, [File("c", "c\n")])
    client.pull(c_ref, dedup=True)  # takes every snapshot no pass has seen: a's and b's too
    assert _ino(_fs(store_root, a) / "usr/lib/libbig.so") == _ino(
        _fs(store_root, b) / "usr/lib/libbig.so"
    )


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_the_after_pull_pass_waits_for_no_one_and_a_later_pass_catches_up(
    registry: LocalRegistry,
    pusher: Pusher,
    store_root: Path,
    snapshotter: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastdist import gc

    a_ref = _push(registry, pusher, f"busy-a-{snapshotter}", APP)
    b_ref = _push(registry, pusher, f"busy-b-{snapshotter}", APP, [File("usr/lib/new", "r\n")])
    client = Client(store_root, snapshotter=snapshotter)
    a = client.pull(a_ref, dedup=True)
    with gc.gc_lock(store_root, shared=True):  # another pull (or a check) holds the store
        b = client.pull(b_ref, dedup=True)
    assert any(
        r.levelname == "WARNING" and "the store is busy" in r.getMessage() for r in caplog.records
    )  # asked for, so said
    fa, fb = _fs(store_root, a), _fs(store_root, b)
    assert _ino(fa / "usr/lib/libbig.so") != _ino(fb / "usr/lib/libbig.so")
    assert (snapshotter, b.record.chain_ids[-1]) not in client.metadata.files.layers()
    assert client.dedup().linked == 2  # b's snapshot was left unindexed: this pass takes it
    assert _ino(fa / "usr/lib/libbig.so") == _ino(fb / "usr/lib/libbig.so")


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_the_after_pull_pass_never_replaces_a_file_of_a_layer_a_container_stands_on(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    a_ref = _push(registry, pusher, f"ctr-a-{snapshotter}", APP)
    b_ref = _push(registry, pusher, f"ctr-b-{snapshotter}", APP, [File("usr/lib/new", "r\n")])
    client = Client(store_root, snapshotter=snapshotter)
    a = client.pull(a_ref, dedup=False)
    fa = _fs(store_root, a)
    before = {p.name: _ino(p) for p in (fa / "usr/lib").iterdir()}
    client.snapshotter.prepare_active("ctr", a.record.chain_ids[-1])
    b = client.pull(b_ref, dedup=True)
    assert {p.name: _ino(p) for p in (fa / "usr/lib").iterdir()} == before
    # b's files may point at a's (a is read, never written); a's own files are never replaced.
    assert (_fs(store_root, b) / "usr/lib/libbig.so").read_bytes() == BIG
    client.snapshotter.remove_active("ctr")
    check = client.check(deep=True)
    assert check.ok, check.problems


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_crash_mid_after_pull_dedup_leaves_the_image_pulled_and_every_tree_correct(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    a_ref = _push(registry, pusher, f"crashpull-a-{snapshotter}", APP)
    b_ref = _push(registry, pusher, f"crashpull-b-{snapshotter}", APP, [File("x", "x\n")])
    client = Client(store_root, snapshotter=snapshotter)
    a = client.pull(a_ref, dedup=False)
    env = {**os.environ, "FASTDIST_TEST_CRASH_AT": "dedup-linked"}
    argv = [sys.executable, "-m", "fastdist", "--root", str(store_root), "pull", "-q"]
    argv += ["--snapshotter", snapshotter, "--dedup", b_ref]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == -9, r.stderr  # killed mid-dedup, after the image was recorded
    b = client.get(b_ref)
    for img in (a, b):
        assert (_fs(store_root, img) / "usr/lib/libbig.so").read_bytes() == BIG
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert client.dedup().linked > 0
    client.prune()
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert not check.leftovers


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_cli_pull_dedup_and_no_dedup(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    base = [sys.executable, "-m", "fastdist", "--root", str(store_root), "pull", "-q"]
    base += ["--snapshotter", snapshotter]
    refs = [
        _push(registry, pusher, f"clipull-{k}-{snapshotter}", APP, [File(k, k)])
        for k in ("a", "b", "c")
    ]

    def pull(*argv: str) -> None:
        r = subprocess.run([*base, *argv], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr

    pull("--no-dedup", refs[0])
    pull("--no-dedup", refs[1])
    client = Client(store_root, snapshotter=snapshotter)
    assert client.disk_usage().shared == 0
    pull("--dedup", refs[2])
    assert client.disk_usage().shared > 0
    r = subprocess.run([*base, "--help"], capture_output=True, text=True, check=True)
    assert "--dedup" in r.stdout
    assert "--no-dedup" in r.stdout


# --- the index follows the snapshots ----------------------------------------------------------


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_the_file_index_forgets_a_snapshot_when_prune_or_repair_removes_it(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    client, a, b = _two(registry, pusher, store_root, snapshotter, "hygiene")
    client.dedup()
    index = client.metadata.files

    def indexed() -> tuple[set[object], set[object]]:
        rows = index.db._read("SELECT DISTINCT snapshotter, chain_id FROM file_index")
        return {c for _, c in index.layers()}, {r["chain_id"] for r in rows}

    both = set(a.record.chain_ids) | set(b.record.chain_ids)
    assert indexed() == (both, both)
    client.remove(a.name)
    client.prune()
    only_b = set(b.record.chain_ids)
    assert indexed() == (only_b, only_b)  # at the prune, not at the next dedup
    with open(_fs(store_root, b) / "usr/lib/new", "r+b") as f:
        f.write(b"X")  # b's own file (not shared): damage for check --deep --repair
    report = client.check(deep=True, repair=True)
    assert {r.kind for r in report.repaired} == {"snapshot-removed"}
    assert indexed() == (set(), set())
    assert list(index.groups()) == []


# --- reflinks on a filesystem that has them ---------------------------------------------------

LARGE = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(32768))  # 1 MiB


@pytest.fixture
def xfs_root(tmp_path: Path) -> Iterator[Path]:
    """A store root on a loop-mounted XFS made with reflink=1 (skipped, with the reason, where
    this machine cannot make or mount one)."""
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        pytest.skip("mkfs.xfs is not installed (xfsprogs: scripts/setup.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    made = subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs -m reflink=1 failed: {made.stderr.decode(errors='replace')}")
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount XFS here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mnt / "store"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free(p: Path) -> int:
    # XFS frees an unlinked inode's blocks in the background; freezing waits for that work.
    mnt = str(p.parent)
    subprocess.run(["fsfreeze", "-f", mnt], check=True)
    subprocess.run(["fsfreeze", "-u", mnt], check=True)
    st = os.statvfs(p)
    return st.f_bfree * st.f_frsize


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_on_xfs_dedup_reflinks_independent_inodes_and_df_counts_each_extent_once(
    registry: LocalRegistry, pusher: Pusher, xfs_root: Path, snapshotter: str
) -> None:
    entries = [*APP, File("usr/lib/large", LARGE, mode=0o640, xattrs={"user.k": "v"})]
    a_ref = _push(registry, pusher, f"xfs-a-{snapshotter}", entries)
    b_ref = _push(registry, pusher, f"xfs-b-{snapshotter}", entries, [File("new", "r\n")])
    client = Client(xfs_root, snapshotter=snapshotter)
    a, b = client.pull(a_ref, dedup=False), client.pull(b_ref, dedup=False)
    fa, fb = _fs(xfs_root, a) / "usr/lib", _fs(xfs_root, b) / "usr/lib"
    before, free_before = client.disk_usage(), _free(xfs_root)

    rep = client.dedup()
    # Reflinks are separate inodes, so even one image's two equal paths are shared; the image's
    # own hardlink pair (data/hard) is left as it is.
    assert rep.linked == 5  # large, libbig.so (b onto a); dup2 onto dup1 in a; b's dup1, dup2
    for name in ("large", "libbig.so", "dup1"):
        sa, sb = os.lstat(fa / name), os.lstat(fb / name)
        assert sa.st_ino != sb.st_ino
        assert sa.st_nlink == sb.st_nlink == 1
        assert (sa.st_mode, sa.st_uid, sa.st_mtime_ns) == (sb.st_mode, sb.st_uid, sb.st_mtime_ns)
        assert (fa / name).read_bytes() == (fb / name).read_bytes()
    assert os.getxattr(fb / "large", "user.k") == b"v"
    assert os.lstat(fb / "data").st_ino == os.lstat(fb / "hard").st_ino
    assert _free(xfs_root) - free_before >= len(LARGE)  # the copy's blocks are free again
    after = client.disk_usage()
    assert before.physical - after.physical == rep.bytes_saved  # each shared extent once
    dup = (len(b"same twice\n" * 500) + 4095) // 4096 * 4096
    assert after.shared == len(LARGE) + len(BIG) + dup  # the extents both images now use
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert client.dedup().linked == 0  # already sharing their extents: nothing to do again

    with open(fb / "large", "r+b") as f:  # in place: copy on write of that part only
        f.write(b"CHANGED")
    assert (fa / "large").read_bytes() == LARGE
    assert (fb / "large").read_bytes() == b"CHANGED" + LARGE[7:]
    written = client.disk_usage()
    # The rewritten part is counted once more, the untouched rest of the file still once.
    assert after.physical < written.physical < after.physical + len(LARGE)
    client.remove(b.name)
    client.prune()
    assert (fa / "large").read_bytes() == LARGE


@pytest.mark.parametrize("point", ["dedup-linked", "dedup-renamed"])
def test_on_xfs_a_crash_mid_reflink_dedup_leaves_every_tree_correct(
    registry: LocalRegistry, pusher: Pusher, xfs_root: Path, point: str
) -> None:
    entries = [*APP, File("usr/lib/large", LARGE, mode=0o640, xattrs={"user.k": "v"})]
    a_ref = _push(registry, pusher, f"xfscrash-a-{point}", entries)
    b_ref = _push(registry, pusher, f"xfscrash-b-{point}", entries, [File("new", "r\n")])
    client = Client(xfs_root, snapshotter="native")  # reflinks do not depend on the snapshotter
    a, b = client.pull(a_ref, dedup=False), client.pull(b_ref, dedup=False)
    env = {**os.environ, "FASTDIST_TEST_CRASH_AT": point}
    argv = [sys.executable, "-m", "fastdist", "--root", str(xfs_root), "dedup"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == -9, r.stderr  # killed at the crash point, a clone made
    for img in (a, b):
        assert (_fs(xfs_root, img) / "usr/lib/large").read_bytes() == LARGE
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert client.dedup().linked > 0  # the next run completes
    client.prune()
    check = client.check(deep=True)
    assert check.ok, check.problems
    assert not check.leftovers
