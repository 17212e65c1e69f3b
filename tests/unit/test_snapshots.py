"""snapshots.py specifics: overlay mount options, short links, info files, key checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fastdist.errors import InvalidDigestError, StoreError
from fastdist.oci import Digest, sha256_digest
from fastdist.snapshots import (
    NativeSnapshotter,
    OverlaySnapshotter,
    snapshotter_by_name,
)


def chain(i: int) -> Digest:
    return sha256_digest(f"layer {i}".encode())


def commit_empty(snap: OverlaySnapshotter | NativeSnapshotter, c: Digest, p: Digest | None) -> None:
    s = snap.prepare_layer(c, p)
    (s.path / f"f-{c[7:15]}").write_bytes(b"x")
    snap.commit(s)


def test_committed_layer_records_parent_in_info_and_measures_usage_on_request(
    tmp_path: Path,
) -> None:
    snap = OverlaySnapshotter(tmp_path)
    commit_empty(snap, chain(0), None)
    commit_empty(snap, chain(1), chain(0))
    info = json.loads((snap.layer_dir(chain(1)) / "info.json").read_text())
    assert info["parent"] == chain(0)
    assert info["chain_id"] == chain(1)
    assert "size" not in info  # measured on request, not at commit
    assert snap.usage(chain(1)) > 0
    assert snap.chain(chain(1)) == [chain(1), chain(0)]


def test_overlay_options_use_short_relative_lowerdirs_top_first(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(tmp_path)
    parent: Digest | None = None
    for i in range(3):
        commit_empty(snap, chain(i), parent)
        parent = chain(i)
    active = snap.prepare_active("ctr", parent)
    opts = snap.mount_options(active)
    lower = opts.split(",")[0].removeprefix("lowerdir=").split(":")
    assert len(lower) == 3
    assert all(p.startswith("l/") and len(p) == 12 for p in lower)
    tops = [os.path.realpath(snap.root / p) for p in lower]
    assert tops == [str(snap.fs_path(c).resolve()) for c in (chain(2), chain(1), chain(0))]
    assert "upperdir=active/ctr/upper" in opts
    assert "workdir=active/ctr/work" in opts
    ro = snap.mount_options(active, readonly=True)
    assert ro.startswith("lowerdir=active/ctr/upper:l/")
    assert "upperdir" not in ro


def test_overlay_options_over_the_page_limit_are_refused(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(tmp_path)
    parent: Digest | None = None
    for i in range(320):  # 320 x len("l/xxxxxxxxxx:") > 4095
        commit_empty(snap, chain(i), parent)
        parent = chain(i)
    active = snap.prepare_active("deep", parent)
    with pytest.raises(StoreError, match="option limit"):
        snap.mount_options(active)


def test_a_lost_short_link_is_recreated_and_sweep_drops_dangling_ones(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(tmp_path)
    commit_empty(snap, chain(0), None)
    (link,) = os.listdir(snap.links_dir)
    os.unlink(snap.links_dir / link)
    snap.mount_options(snap.prepare_active("a", chain(0)))
    assert os.listdir(snap.links_dir) == [link]
    os.symlink("../layers/gone/fs", snap.links_dir / "abcdefghij")
    snap.sweep_staging()
    assert os.listdir(snap.links_dir) == [link]


def test_remove_drops_the_short_link(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(tmp_path)
    commit_empty(snap, chain(0), None)
    snap.remove(chain(0))
    assert os.listdir(snap.links_dir) == []
    assert os.listdir(snap.staging_dir) == []


def test_native_staging_is_a_copy_of_the_parent(tmp_path: Path) -> None:
    snap = NativeSnapshotter(tmp_path)
    s0 = snap.prepare_layer(chain(0), None)
    (s0.path / "a").write_bytes(b"base")
    os.link(s0.path / "a", s0.path / "hard")
    os.symlink("/abs/target", s0.path / "sym")
    snap.commit(s0)
    s1 = snap.prepare_layer(chain(1), chain(0))
    assert (s1.path / "a").read_bytes() == b"base"
    assert os.readlink(s1.path / "sym") == "/abs/target"
    assert os.stat(s1.path / "a").st_ino == os.stat(s1.path / "hard").st_ino
    (s1.path / "a").unlink()
    assert (snap.fs_path(chain(0)) / "a").read_bytes() == b"base"
    snap.abort(s1)


def test_snapshotter_by_name(tmp_path: Path) -> None:
    assert snapshotter_by_name("native", tmp_path).name == "native"
    assert snapshotter_by_name("overlayfs", tmp_path).apply_mode == "layer"
    with pytest.raises(StoreError, match="unknown snapshotter"):
        snapshotter_by_name("zfs", tmp_path)


def test_chain_ids_are_validated_before_becoming_paths(tmp_path: Path) -> None:
    snap = NativeSnapshotter(tmp_path)
    with pytest.raises(InvalidDigestError):
        snap.exists("sha256:../../x")  # type: ignore[arg-type]


def test_usage_is_cached_beside_the_layer_and_survives_a_new_snapshotter(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(tmp_path)
    s = snap.prepare_layer(chain(0), None)
    (s.path / "big").write_bytes(b"y" * 50_000)
    snap.commit(s)
    first = snap.usage(chain(0))
    assert first >= 50_000
    cached = snap.layer_dir(chain(0)) / "usage"
    assert int(cached.read_text()) == first
    # A committed layer never changes, so a later reader trusts the cache without walking.
    cached.write_text("123")
    assert OverlaySnapshotter(tmp_path).usage(chain(0)) == 123
    # A torn cache file is measured again.
    cached.write_text("")
    assert OverlaySnapshotter(tmp_path).usage(chain(0)) == first


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")
def test_overlay_probe_success_is_remembered_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from fastdist import snapshots

    if not snapshots.overlay_supported(tmp_path):
        pytest.skip("overlayfs not available here")
    stamp = tmp_path / "snapshots" / ".overlay-ok"
    assert stamp.read_text() == f"{os.uname().release} {os.stat(tmp_path).st_dev}\n"

    # A new process (empty in-memory cache) trusts the stamp and mounts nothing.
    snapshots._probed.clear()

    def no_mount(*_a: object, **_k: object) -> None:
        raise AssertionError("the probe ran again")

    monkeypatch.setattr(subprocess, "run", no_mount)
    assert snapshots.overlay_supported(tmp_path)

    # A stamp from another kernel or filesystem is not trusted.
    stamp.write_text("0.0.0 1\n")
    snapshots._probed.clear()
    with pytest.raises(AssertionError, match="probe ran again"):
        snapshots.overlay_supported(tmp_path)


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter])
def test_a_sealed_layer_is_complete_on_disk_but_invisible_until_its_commit(
    tmp_path: Path, cls: type[OverlaySnapshotter] | type[NativeSnapshotter]
) -> None:
    snap = cls(tmp_path)
    s = snap.prepare_layer(chain(0), None)
    (s.path / "f").write_bytes(b"x")
    s.manifest = b"manifest bytes"
    snap.seal(s)
    # info.json and the manifest are written (and synced) with the tree, before the rename.
    info = json.loads((s.dir / "info.json").read_bytes())
    assert info["chain_id"] == chain(0)
    assert info["parent"] is None
    assert (s.dir / "manifest").read_bytes() == b"manifest bytes"
    assert not snap.exists(chain(0))
    assert snap.list() == []
    snap.seal(s)  # idempotent: nothing written twice (O_EXCL would refuse it)
    snap.commit(s, durable=False)
    assert snap.exists(chain(0))
    assert snap.manifest(chain(0)) == b"manifest bytes"
    assert snap._info(chain(0)) == info
    snap.flush()


def test_overlay_layers_seal_before_their_parent_commits_and_commit_in_order(
    tmp_path: Path,
) -> None:
    snap = OverlaySnapshotter(tmp_path)
    parent = snap.prepare_layer(chain(0), None)
    child = snap.prepare_layer(chain(1), chain(0))
    snap.seal(child)  # needs neither the parent nor a lock
    with pytest.raises(StoreError, match=r"parent .* is not committed"):
        snap.commit(child)
    assert not snap.exists(chain(1))
    snap.commit(parent)
    snap.commit(child)
    assert snap.chain(chain(1)) == [chain(1), chain(0)]
    link = snap._info(chain(1))["link"]
    assert os.readlink(snap.links_dir / str(link)) == f"../layers/{chain(1)[7:]}/fs"


def test_a_sealed_staging_left_by_a_crash_is_swept_and_never_committed(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(tmp_path)
    s = snap.prepare_layer(chain(0), None)
    snap.seal(s)
    s._lock.release()  # the owner dies: its flock goes with it
    assert snap.staging_leftovers() == [s.dir]
    assert snap.sweep_staging() == 1
    assert not snap.exists(chain(0))
    assert not s.dir.exists()
