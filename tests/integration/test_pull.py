"""Pull against Debian's real docker-registry: images built from trees in the test, pushed with
fastdist's own client, pulled, listed, unpacked and compared file by file."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist import oci
from fastdist.client import Client
from fastdist.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    ManifestError,
    PlatformNotFoundError,
)
from fastdist.oci import Platform
from fastdist.progress import Phase, ProgressEvent
from fastdist.testing.images import (
    Dir,
    Entry,
    File,
    Hardlink,
    Opaque,
    Symlink,
    Whiteout,
    build_image,
    build_index,
    build_layer,
    push_image,
    tar_entries,
    tree_snapshot,
)

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry

BASE = [
    Dir("etc"),
    File("etc/os-release", "NAME=fastdist-test\n"),
    Dir("usr/bin"),
    File("usr/bin/tool", b"\x7fELF" + os.urandom(3000), mode=0o4755),
    Hardlink("usr/bin/tool-link", "usr/bin/tool"),
    Symlink("usr/bin/rel", "tool"),
    Dir("var"),
    Symlink("var/run", "/run"),
    Dir("run"),
    Dir("data"),
    File("data/keep", "lower\n"),
    File("data/gone", "deleted by layer 2\n"),
    Dir("cache"),
    File("cache/old1", "x"),
    File("cache/old2", "y"),
    File("owned", "by 1000:1001\n", mode=0o640, uid=1000, gid=1001),
]
TOP = [
    Whiteout("data/gone"),
    Opaque("cache"),
    File("cache/new", "only this survives\n"),
    File("var/run/pid", "42\n"),  # through the absolute symlink, lands in /run inside the root
    File("etc/os-release", "NAME=fastdist-test\nVERSION=2\n"),
    Entry("dev-null", "char", mode=0o666, devmajor=1, devminor=3),
    Entry("fifo", "fifo", mode=0o600),
]


def _two_layer_image(compression: str = "gzip", flavor: str = "oci") -> object:
    return build_image(
        [
            build_layer(tar_entries(BASE), compression, flavor),  # type: ignore[arg-type]
            build_layer(tar_entries(TOP), compression, flavor),  # type: ignore[arg-type]
        ],
        flavor=flavor,  # type: ignore[arg-type]
        cmd=["/bin/sh"],
    )


def _client(root: Path) -> Client:
    return Client(root)


@pytest.mark.parametrize(
    ("compression", "flavor"),
    [("gzip", "oci"), ("zstd", "oci"), ("none", "oci"), ("gzip", "docker")],
)
def test_pull_applies_whiteouts_opaque_dirs_links_and_special_files(
    registry: LocalRegistry,
    pusher: Pusher,
    store_root: Path,
    tmp_path: Path,
    compression: str,
    flavor: str,
) -> None:
    ref = f"{registry.host}/it/two-layer-{compression}-{flavor}:v1"
    image = _two_layer_image(compression, flavor)
    digest = push_image(pusher, ref, image)  # type: ignore[arg-type]

    client = _client(store_root)
    img = client.pull(ref)
    assert img.target.digest == digest
    assert img.name == ref

    out = client.unpack(ref, tmp_path / "rootfs")
    assert (out / "etc/os-release").read_text() == "NAME=fastdist-test\nVERSION=2\n"
    assert not (out / "data/gone").exists()
    assert (out / "data/keep").read_text() == "lower\n"
    assert sorted(os.listdir(out / "cache")) == ["new"]
    assert (out / "run/pid").read_text() == "42\n"
    assert os.readlink(out / "var/run") == "/run"
    tool = out / "usr/bin/tool"
    assert os.stat(tool).st_ino == os.stat(out / "usr/bin/tool-link").st_ino
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o4755
    assert os.readlink(out / "usr/bin/rel") == "tool"
    st = os.stat(out / "owned")
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1000, 1001)
        dev = os.lstat(out / "dev-null")
        assert stat.S_ISCHR(dev.st_mode)
        assert (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
        assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_images_lists_reference_type_digest_and_full_size(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/it/listed:v1"
    image = _two_layer_image()
    push_image(pusher, ref, image)  # type: ignore[arg-type]
    client = _client(store_root)
    client.pull(ref)
    [img] = client.images()
    assert img.name == ref
    assert img.target.media_type == oci.OCI_MANIFEST
    expected = (
        image.descriptor.size  # type: ignore[attr-defined]
        + image.config_descriptor.size  # type: ignore[attr-defined]
        + sum(x.descriptor.size for x in image.layers)  # type: ignore[attr-defined]
    )
    assert img.size() == expected
    assert img.unpacked_size() > 3000
    assert img.rootfs() == tuple(x.diff_id for x in image.layers)  # type: ignore[attr-defined]
    assert img.config().config.cmd == ("/bin/sh",)


def test_second_pull_fetches_nothing_and_shares_layers(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    base = build_layer(tar_entries(BASE))
    a = build_image([base], cmd=["a"])
    b = build_image([base, build_layer(tar_entries([File("only-b", "b")]))], cmd=["b"])
    ref_a = f"{registry.host}/it/share-a:v1"
    ref_b = f"{registry.host}/it/share-b:v1"
    push_image(pusher, ref_a, a)  # type: ignore[arg-type]
    push_image(pusher, ref_b, b)  # type: ignore[arg-type]
    client = _client(store_root)
    client.pull(ref_a)

    events: list[ProgressEvent] = []
    client.pull(ref_b, progress=events.append)
    base_events = {e.phase for e in events if e.digest == base.descriptor.digest}
    assert Phase.EXISTS in base_events
    assert Phase.DOWNLOADING not in base_events

    again: list[ProgressEvent] = []
    client.pull(ref_b, progress=again.append)
    assert not [e for e in again if e.phase is Phase.DOWNLOADING]
    assert len(client.images()) == 2


def test_index_resolves_host_platform_and_platform_flag(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    host = Platform.host()
    other = (
        Platform("linux", "arm64", "v8")
        if host.architecture != "arm64"
        else Platform("linux", "amd64")
    )
    img_host = build_image([build_layer(tar_entries([File("arch", "host")]))], platform=host)
    img_other = build_image([build_layer(tar_entries([File("arch", "other")]))], platform=other)
    ref = f"{registry.host}/it/multi:v1"
    idx = build_index([img_other, img_host])
    push_image(pusher, ref, idx)

    c1 = _client(store_root / "a")
    got = c1.pull(ref)
    assert got.target.media_type == oci.OCI_INDEX
    assert got.record.manifest_digest == img_host.descriptor.digest

    c2 = _client(store_root / "b")
    got2 = c2.pull(ref, platform=str(other))
    assert got2.record.manifest_digest == img_other.descriptor.digest

    with pytest.raises(PlatformNotFoundError) as exc:
        _client(store_root / "c").pull(ref, platform="linux/s390x")
    assert str(host) in str(exc.value)
    assert str(other) in str(exc.value)


def test_config_diff_id_mismatch_fails_and_lists_nothing(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    layer = build_layer(tar_entries([File("a", "a")]))
    bad = build_image([layer], diff_ids=["sha256:" + "0" * 64])
    ref = f"{registry.host}/it/bad-diffid:v1"
    push_image(pusher, ref, bad)  # type: ignore[arg-type]
    client = _client(store_root)
    with pytest.raises(DigestMismatchError):
        client.pull(ref)
    assert client.images() == []
    assert not client.snapshotter.list()
    with pytest.raises(ImageNotFoundError):
        client.get(ref)


def test_layer_count_mismatch_is_a_manifest_error(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    layer = build_layer(tar_entries([File("a", "a")]))
    bad = build_image([layer], diff_ids=[layer.diff_id, layer.diff_id])
    ref = f"{registry.host}/it/bad-count:v1"
    push_image(pusher, ref, bad)  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match="2 diff_ids"):
        _client(store_root).pull(ref)


@pytest.mark.slow
def test_large_layer_pulls_and_verifies(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, tmp_path: Path
) -> None:
    big = os.urandom(1 << 20) * 40 + os.urandom(70 << 20)  # 110 MiB, partly compressible
    layer = build_layer(tar_entries([File("big.bin", big)]))
    ref = f"{registry.host}/it/big:v1"
    push_image(pusher, ref, build_image([layer]))  # type: ignore[arg-type]
    client = _client(store_root)
    client.pull(ref)
    out = client.unpack(ref, tmp_path / "big")
    assert (out / "big.bin").stat().st_size == len(big)
    with open(out / "big.bin", "rb") as f:
        assert f.read() == big


def test_rmi_then_prune_frees_content_and_snapshots(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/it/pruned:v1"
    push_image(pusher, ref, _two_layer_image())  # type: ignore[arg-type]
    client = _client(store_root)
    client.pull(ref)
    assert list(client.content.digests())
    client.remove(ref)
    assert client.images() == []
    report = client.prune()
    assert report.blobs >= 3
    assert report.snapshots == 2
    assert not list(client.content.digests())
    assert not client.snapshotter.list()


@pytest.mark.skipif(
    shutil.which("umoci") is None and not os.environ.get("CI"), reason="umoci not installed"
)
@pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack of owned files needs root")
def test_unpack_matches_umoci_unpack(
    registry: LocalRegistry, pusher: Pusher, store_root: Path, tmp_path: Path
) -> None:
    """Differential: the same image unpacked by fastdist and by umoci gives the same tree."""
    ref = f"{registry.host}/it/diff-umoci:v1"
    image = _two_layer_image()
    push_image(pusher, ref, image)  # type: ignore[arg-type]
    client = _client(store_root)
    client.pull(ref)
    ours = client.unpack(ref, tmp_path / "ours")

    layout = tmp_path / "layout"
    _write_oci_layout(layout, image)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:v1", str(tmp_path / "bundle")],
        check=True,
        capture_output=True,
    )
    theirs = tmp_path / "bundle" / "rootfs"
    a, b = tree_snapshot(ours), tree_snapshot(theirs)
    assert a.keys() == b.keys()
    # umoci sets the root dir's own mode; compare entries below it
    diffs = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert diffs == {}


def _write_oci_layout(layout: Path, image: object) -> None:
    """An OCI image layout (image-spec image-layout.md) holding ``image`` tagged v1."""
    import json

    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for digest, data in image.blobs().items():  # type: ignore[attr-defined]
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    desc = image.descriptor  # type: ignore[attr-defined]
    (blobs / desc.digest.removeprefix("sha256:")).write_bytes(image.manifest)  # type: ignore[attr-defined]
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {
        "mediaType": desc.media_type,
        "digest": desc.digest,
        "size": desc.size,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
