"""``check --deep``: every committed snapshot's tree against the manifests the applier recorded.

A clean pull checks clean on both snapshotters; a flipped byte, a chmod, a deleted and an added
file are each found, in the layer and the image they belong to; ``--repair`` removes the damaged
snapshot (and those above it) and the next pull unpacks it again from its verified blob."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pullkit import SNAPSHOTTERS
from test_pull import BASE, TOP

from fastdist.check import CheckReport, LayerCheck
from fastdist.client import Client, Image
from fastdist.snapshots import snapshotter_by_name
from fastdist.testing.images import build_image, build_layer, push_image, tar_entries

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry


def _pull(
    registry: LocalRegistry, pusher: Pusher, root: Path, snapshotter: str, name: str
) -> Image:
    ref = f"{registry.host}/it/deep-{name}-{snapshotter}:v1"
    layers = [build_layer(tar_entries(t)) for t in (BASE, TOP)]  # type: ignore[arg-type]
    push_image(pusher, ref, build_image(layers, cmd=["/bin/sh"]))
    return Client(root, snapshotter=snapshotter).pull(ref)


def _holder(root: Path, img: Image, snapshotter: str, rel: str) -> Path:
    """The snapshot fs that holds ``rel`` of the BASE layer: the layer's own directory on
    overlayfs, the top snapshot's flattened tree on native."""
    chains = img.record.chain_ids
    chain = chains[0] if snapshotter == "overlayfs" else chains[-1]
    return snapshotter_by_name(snapshotter, root).fs_path(chain) / rel


def _damaged(report: CheckReport) -> list[LayerCheck]:
    assert report.deep is not None
    return list(report.deep.damaged)


def _findings(report: CheckReport) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(f.kind, f.display_path, f.aspects) for x in _damaged(report) for f in x.findings}


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_deep_check_of_a_clean_pull_finds_nothing(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    img = _pull(registry, pusher, store_root, snapshotter, "clean")
    report = Client(store_root, snapshotter=snapshotter).check(deep=True)
    assert report.ok, report.problems
    assert report.deep is not None
    layers = [x for x in report.deep.layers if x.snapshotter == snapshotter]
    assert {x.chain_id for x in layers} == set(img.record.chain_ids)
    assert all(x.checked and x.files > 0 for x in layers)
    assert report.deep.bytes_hashed > 3000  # usr/bin/tool at least


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    st = p.stat()
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # content alone differs


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("flip", {("changed", "usr/bin/tool", ("content",))}),
        ("chmod", {("changed", "usr/bin/tool", ("mode",))}),
        ("delete", {("missing", "data/keep", ())}),
        ("add", {("extra", "etc/planted", ())}),
        ("chown", {("changed", "owned", ("owner",))}),
        ("xattr", {("changed", "data/keep", ("xattrs",))}),
        ("mtime", {("changed", "data/keep", ("mtime",))}),
    ],
)
@pytest.mark.damages_trees
def test_deep_check_finds_each_kind_of_damage_in_its_layer_and_image(
    registry: LocalRegistry,
    pusher: Pusher,
    store_root: Path,
    snapshotter: str,
    damage: str,
    expected: set[tuple[str, str, tuple[str, ...]]],
) -> None:
    if damage == "chown" and os.geteuid() != 0:
        pytest.skip("owners are recorded only when the applier could chown (root)")
    img = _pull(registry, pusher, store_root, snapshotter, damage)
    tool = _holder(store_root, img, snapshotter, "usr/bin/tool")
    keep = _holder(store_root, img, snapshotter, "data/keep")
    if damage == "flip":
        _flip(tool)
        # usr/bin/tool-link is the same inode: it changed too
        expected = expected | {("changed", "usr/bin/tool-link", ("content",))}
    elif damage == "chmod":
        tool.chmod(0o755)
        expected = expected | {("changed", "usr/bin/tool-link", ("mode",))}
    elif damage == "delete":
        keep.unlink()
    elif damage == "add":
        (_holder(store_root, img, snapshotter, "etc") / "planted").write_text("x")
    elif damage == "chown":
        os.chown(_holder(store_root, img, snapshotter, "owned"), 0, 0, follow_symlinks=False)
    elif damage == "xattr":
        os.setxattr(keep, "user.planted", b"1", follow_symlinks=False)
    elif damage == "mtime":
        os.utime(keep, ns=(0, 123_000_000_000))

    client = Client(store_root, snapshotter=snapshotter)
    report = client.check(deep=True)
    assert not report.ok
    assert _findings(report) == expected
    damaged = _damaged(report)
    assert [x.chain_id for x in damaged] == [
        img.record.chain_ids[0] if snapshotter == "overlayfs" else img.record.chain_ids[-1]
    ]
    assert report.deep is not None
    assert report.deep.images == {img.name: tuple(x.chain_id for x in damaged)}
    assert [p.kind for p in report.problems] == ["snapshot-tree"]


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_deep_repair_removes_the_damaged_snapshot_and_a_pull_restores_it(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    img = _pull(registry, pusher, store_root, snapshotter, "repair")
    tool = _holder(store_root, img, snapshotter, "usr/bin/tool")
    good = tool.read_bytes()
    _flip(tool)
    client = Client(store_root, snapshotter=snapshotter)
    report = client.check(deep=True, repair=True)
    assert report.deep is not None
    removed = {c for _, c in report.deep.removed}
    # The damaged snapshot and every one above it (overlay: all; native: the top alone).
    assert removed == (
        set(img.record.chain_ids) if snapshotter == "overlayfs" else {img.record.chain_ids[-1]}
    )
    assert {r.kind for r in report.repaired} == {"snapshot-removed"}
    assert report.incomplete_images == (img.name,)
    assert all(not client.snapshotter.exists(c) for c in removed)

    again = client.pull(img.name)
    assert _holder(store_root, again, snapshotter, "usr/bin/tool").read_bytes() == good
    after = client.check(deep=True)
    assert after.ok, after.problems
    assert after.deep is not None
    assert not after.deep.damaged


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.damages_trees
def test_cli_check_deep_reports_files_as_text_and_json(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    img = _pull(registry, pusher, store_root, snapshotter, "cli")
    (_holder(store_root, img, snapshotter, "data/keep")).unlink()
    base = [sys.executable, "-m", "fastdist", "--root", str(store_root), "check", "--deep"]
    text = subprocess.run(base, capture_output=True, text=True, check=False)
    assert text.returncode == 1, text.stderr
    assert "missing: data/keep" in text.stdout
    assert f"image {img.name}: 1 damaged layer snapshot(s)" in text.stdout
    assert "fastdist check --deep --repair" in text.stdout
    out = subprocess.run([*base, "--json"], capture_output=True, text=True, check=False)
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    layers = [x for x in doc["deep"]["layers"] if x["missing"]]
    assert [x["missing"] for x in layers] == [["data/keep"]]
    assert doc["deep"]["images"] == {img.name: [layers[0]["chain_id"]]}
    rep = subprocess.run([*base, "--repair"], capture_output=True, text=True, check=False)
    assert "removed damaged snapshot" in rep.stdout
    assert "fastdist pull" in rep.stdout  # the hint names the image to pull again


@pytest.mark.damages_trees
@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_deep_repair_keeps_a_damaged_snapshot_a_container_stands_on(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str
) -> None:
    img = _pull(registry, pusher, store_root, snapshotter, "inuse")
    snap = snapshotter_by_name(snapshotter, store_root)
    snap.prepare_active("c1", img.record.chain_ids[-1])  # what run prepares for a container
    _flip(_holder(store_root, img, snapshotter, "usr/bin/tool"))
    report = Client(store_root, snapshotter=snapshotter).check(deep=True, repair=True)
    assert report.deep is not None
    assert report.deep.removed == ()
    assert all(snap.exists(c) for c in img.record.chain_ids)
    assert "snapshot-in-use" in {p.kind for p in report.problems}
