"""Every committed snapshot carries the applier's file manifest, and its xxh3-128 fingerprints
(computed in Rust while writing) agree with the Python ``xxhash`` package on the tree on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pullkit import SNAPSHOTTERS
from test_pull import BASE, TOP

from fastdist.client import Client
from fastdist.fingerprint import open_in_root, parse_manifest, xxh3_file
from fastdist.testing.images import build_image, build_layer, push_image, tar_entries

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_every_committed_layer_has_a_manifest_matching_its_tree(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, snapshotter: str, compression: str
) -> None:
    ref = f"{registry.host}/it/manifest-{compression}:v1"
    layers = [build_layer(tar_entries(t), compression) for t in (BASE, TOP)]  # type: ignore[arg-type]
    push_image(pusher, ref, build_image(layers, cmd=["/bin/sh"]))
    client = Client(store_root, snapshotter=snapshotter)
    img = client.pull(ref)
    snap = client.snapshotter
    kinds: set[str] = set()
    for chain in img.record.chain_ids:
        data = snap.manifest(chain)
        assert data is not None, chain
        records = parse_manifest(data)
        fs = snap.fs_path(chain)
        # The last record of a path wins; whiteouts (and in the flattened native tree, files a
        # later entry replaced) are checked by check --deep, not here.
        last = {r.path: r for r in records}
        for r in last.values():
            kinds.add(r.kind)
            if r.kind != "f":
                continue
            fd = open_in_root(fs, r.path)  # var/run/pid is in /run, through var/run -> /run
            try:
                st = os.fstat(fd)
                assert xxh3_file(fd) == (r.xxh3, r.size), r.path
            finally:
                os.close(fd)
            assert stat.S_IMODE(st.st_mode) == r.mode, r.path
            assert st.st_mtime_ns == r.mtime_ns, r.path
            if os.geteuid() == 0:
                assert (st.st_uid, st.st_gid) == (r.uid, r.gid), r.path
    assert {"f", "d", "l", "h", "w", "o"} <= kinds
