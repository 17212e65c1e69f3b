"""``prune`` on a store whose root is itself a mount point (a tmpfs, a dedicated disk): only mounts
fastdist made below its own directories are strays; the store's filesystem stays (issue 17.1)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist.client import Client
from fastdist.testing.images import File, build_image, build_layer, push_image, tar_entries

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
]


@pytest.fixture
def tmpfs_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_prune_keeps_a_store_root_that_is_a_mount_point(
    registry: LocalRegistry, pusher: Pusher, tmpfs_root: Path, tmp_path: Path
) -> None:
    ref = f"{registry.host}/it/prune-on-tmpfs:v1"
    push_image(pusher, ref, build_image([build_layer(tar_entries([File("kept", b"k")]))]))
    client = Client(tmpfs_root, snapshotter="native")
    client.pull(ref)
    stray = tmpfs_root / "containers" / "gone" / "rootfs"  # what a killed run leaves mounted
    stray.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(stray)], check=True)
    try:
        assert [x.subject for x in client.check().leftovers if x.kind == "mount"] == [str(stray)]
        client.prune()
        assert os.path.ismount(tmpfs_root)
        assert not os.path.ismount(stray)
        assert [i.name for i in client.images()] == [ref]
        report = client.check()
        assert report.ok, report.problems
        out = client.unpack(ref, tmp_path / "out")
        assert (out / "kept").read_bytes() == b"k"
    finally:
        if os.path.ismount(stray):
            subprocess.run(["umount", "-l", str(stray)], check=False)
