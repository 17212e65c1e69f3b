"""Images in and out (issue 14): ``tag``, ``save`` and ``load`` of images pulled from Debian's
docker-registry, round trips through the real ``skopeo`` and ``umoci``, and hostile archives
(each a typed error, nothing stored)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fastdist import archive
from fastdist.client import Client
from fastdist.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    InvalidArgumentError,
    LimitExceededError,
    ManifestError,
    SizeMismatchError,
    UnsafePathError,
)
from fastdist.testing.images import (
    BuiltImage,
    Dir,
    File,
    Symlink,
    build_image,
    build_layer,
    push_image,
    tar_entries,
    tree_snapshot,
)

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry


def _image(second: str = "zstd") -> BuiltImage:
    return build_image(
        [
            build_layer(
                tar_entries(
                    [
                        Dir(".", mode=0o755),
                        Dir("bin"),
                        File("bin/tool", b"\x7fELF tool", mode=0o755),
                        Symlink("bin/alias", "tool"),
                    ]
                )
            ),
            build_layer(tar_entries([Dir("etc"), File("etc/conf", b"second layer\n")]), second),  # type: ignore[arg-type]
            build_layer(tar_entries([File("etc/conf", b"third layer wins\n")]), "none"),
        ],
        cmd=["/bin/tool"],
    )


@pytest.fixture(scope="module")
def src_ref(registry: LocalRegistry, pusher: Pusher) -> str:
    ref = f"{registry.host}/it/archive:v1"
    push_image(pusher, ref, _image())
    return ref


@pytest.fixture(scope="module")
def gzip_ref(registry: LocalRegistry, pusher: Pusher) -> str:
    """The image without zstd: docker-archive readers (skopeo, docker, podman) refuse zstd."""
    ref = f"{registry.host}/it/archive-gzip:v1"
    push_image(pusher, ref, _image("gzip"))
    return ref


@pytest.fixture
def pulled(src_ref: str, tmp_path: Path) -> Client:
    client = Client(tmp_path / "src-store", snapshotter="native")
    client.pull(src_ref)
    return client


def _tree(client: Client, ref: str, dest: Path) -> dict[str, tuple[object, ...]]:
    return tree_snapshot(client.unpack(ref, dest))


def _store_files(root: Path) -> set[str]:
    """Every blob and image of a store (what a failed load must leave unchanged)."""
    blobs = set(os.listdir(root / "content/blobs/sha256"))
    return blobs | {i.name for i in Client(root).images()}


# --- tag -----------------------------------------------------------------------------------------
def test_tag_gives_a_present_image_a_new_name_with_the_same_digest(
    pulled: Client, src_ref: str
) -> None:
    img = pulled.get(src_ref)
    new = pulled.tag(img.record.config_digest[:19], "example.test/copy")  # an ID prefix as SRC
    assert new.name == "example.test/copy:latest"
    assert new.target == img.target
    assert new.record.chain_ids == img.record.chain_ids
    assert pulled.get("example.test/copy").target.digest == img.target.digest


def test_tag_refuses_a_digest_destination_and_a_missing_source(
    pulled: Client, src_ref: str
) -> None:
    with pytest.raises(InvalidArgumentError):
        pulled.tag(src_ref, "example.test/x@sha256:" + "a" * 64)
    with pytest.raises(ImageNotFoundError):
        pulled.tag("example.test/nothing:here", "example.test/y")


# --- save / load round trips ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", archive.FORMATS)
def test_save_then_load_into_a_fresh_store_gives_the_same_digests_and_tree(
    pulled: Client, src_ref: str, tmp_path: Path, fmt: archive.Format
) -> None:
    out = tmp_path / f"saved.{fmt}"
    pulled.save([src_ref], out, format=fmt)
    st = os.lstat(out)
    assert stat.S_IMODE(st.st_mode) == (0o700 if fmt == "oci-dir" else 0o600)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    fresh = Client(tmp_path / "fresh", snapshotter="native")
    loaded = fresh.load(out)
    assert [i.name for i in loaded] == [src_ref]
    orig = pulled.get(src_ref)
    assert loaded[0].record.manifest_digest == orig.record.manifest_digest
    assert loaded[0].record.chain_ids == orig.record.chain_ids
    assert _tree(fresh, src_ref, tmp_path / "a") == _tree(pulled, src_ref, tmp_path / "b")
    assert fresh.check().ok


def test_save_to_a_stream_and_load_from_a_stream(
    pulled: Client, src_ref: str, tmp_path: Path
) -> None:
    buf = io.BytesIO()
    pulled.save([src_ref], buf)
    buf.seek(0)
    fresh = Client(tmp_path / "fresh")
    (img,) = fresh.load(buf, tag="example.test/streamed:v2")
    assert img.name == "example.test/streamed:v2"
    assert img.record.manifest_digest == pulled.get(src_ref).record.manifest_digest


def test_save_replaces_a_symlink_at_the_destination_never_writing_through_it(
    pulled: Client, src_ref: str, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "out.tar"
    link.symlink_to(victim)
    pulled.save([src_ref], link)
    assert victim.read_bytes() == b"untouched"
    assert not link.is_symlink()
    assert link.stat().st_size > 0


def test_multi_image_archive_loads_every_image_with_its_name(
    pulled: Client, src_ref: str, tmp_path: Path
) -> None:
    pulled.tag(src_ref, "example.test/second:v9")
    out = tmp_path / "two.tar"
    pulled.save([src_ref, "example.test/second:v9"], out)
    fresh = Client(tmp_path / "fresh")
    names = sorted(i.name for i in fresh.load(out))
    assert names == sorted([src_ref, "example.test/second:v9"])
    with pytest.raises(InvalidArgumentError):
        Client(tmp_path / "other").load(out, tag="example.test/one")


# --- real tools ----------------------------------------------------------------------------------
def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed")


def _run(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (argv, r.stderr)
    return r.stdout


def _umoci_tree(layout: Path, ref: str, dest: Path) -> dict[str, tuple[object, ...]]:
    _run(
        "umoci",
        "unpack",
        "--rootless" if os.geteuid() else "--keep-dirlinks",
        "--image",
        f"{layout}:{ref}",
        str(dest),
    )
    tree = tree_snapshot(dest / "rootfs")
    return tree


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive", "oci"])
def test_skopeo_output_loads_and_unpacks_as_umoci_unpacks_it(
    gzip_ref: str, tmp_path: Path, transport: str
) -> None:
    src_ref = gzip_ref
    _need("skopeo")
    _need("umoci")
    dest = tmp_path / ("layout" if transport == "oci" else "image.tar")
    suffix = f":{src_ref}" if transport == "docker-archive" else ":myimage"
    _run(
        "skopeo",
        "copy",
        "--src-tls-verify=false",
        f"docker://{src_ref}",
        f"{transport}:{dest}{suffix}",
    )
    client = Client(tmp_path / "store", snapshotter="native")
    tag = None if transport == "docker-archive" else "example.test/from-skopeo:1"
    (img,) = client.load(dest, tag=tag)
    ours = _tree(client, img.name, tmp_path / "ours")
    layout = tmp_path / "umoci-layout"
    _run("skopeo", "copy", "--src-tls-verify=false", f"docker://{src_ref}", f"oci:{layout}:x")
    theirs = _umoci_tree(layout, "x", tmp_path / "theirs")
    theirs.pop(".", None)
    ours.pop(".", None)
    assert {k: v[:6] for k, v in ours.items()} == {k: v[:6] for k, v in theirs.items()}


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive", "oci-dir"])
def test_fastdist_save_is_read_by_skopeo_and_unpacks_as_umoci_unpacks_it(
    gzip_ref: str, tmp_path: Path, fmt: str
) -> None:
    src_ref = gzip_ref
    pulled = Client(tmp_path / "src-store", snapshotter="native")
    pulled.pull(src_ref)
    _need("skopeo")
    _need("umoci")
    out = tmp_path / "saved"
    pulled.save([src_ref], out, format=fmt)
    transport = {
        "docker-archive": "docker-archive",
        "oci-archive": "oci-archive",
        "oci-dir": "oci",
    }[fmt]
    inspected = json.loads(_run("skopeo", "inspect", "--raw", f"{transport}:{out}"))
    assert len(inspected["layers"]) == 3
    layout = tmp_path / "via-skopeo"
    _run("skopeo", "copy", f"{transport}:{out}", f"oci:{layout}:x")
    theirs = _umoci_tree(layout, "x", tmp_path / "theirs")
    ours = _tree(pulled, src_ref, tmp_path / "ours")
    theirs.pop(".", None)
    ours.pop(".", None)
    assert {k: v[:6] for k, v in ours.items()} == {k: v[:6] for k, v in theirs.items()}


# --- hostile archives ----------------------------------------------------------------------------
def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _saved_members(client: Client, ref: str, tmp: Path) -> list[tuple[str, bytes]]:
    out = tmp / "good.tar"
    client.save([ref], out)
    with tarfile.open(out) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]  # type: ignore[union-attr]


def _hostile(kind: str, members: list[tuple[str, bytes]]) -> bytes:
    good = [_file(n, d) for n, d in members]
    if kind == "traversal":
        return _tar([*good, _file("../../escape", b"x")])
    if kind == "absolute":
        return _tar([*good, _file("/etc/evil", b"x")])
    biggest = max((m for m in members if m[0].startswith("blobs/")), key=lambda m: len(m[1]))
    if kind in ("symlink", "hardlink"):
        # The layer blob the manifest names is a link (to a host file, to another member).
        info = tarfile.TarInfo(biggest[0])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        else:
            info.type, info.linkname = tarfile.LNKTYPE, "oci-layout"
        return _tar([*[g for g in good if g[0].name != biggest[0]], (info, None)])
    if kind == "device":
        info = tarfile.TarInfo("dev")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        return _tar([*good, (info, None)])
    if kind == "huge-json":
        return _tar(
            [_file(n, d) for n, d in members if n != "index.json"]
            + [_file("index.json", b"[" * 10 + b" " * (archive.MAX_JSON_BYTES + 1))]
        )
    if kind == "duplicate":
        return _tar([*good, good[0]])
    if kind == "missing-blob":
        # Drop the largest layer blob: the manifest names it, the archive lacks it.
        return _tar([_file(n, d) for n, d in members if n != biggest[0]])
    if kind == "digest-mismatch":
        return _tar(
            [_file(n, d if n != biggest[0] else d[:-1] + bytes([d[-1] ^ 1])) for n, d in members]
        )
    if kind == "size-lie":
        idx = json.loads(dict(members)["index.json"])
        idx["manifests"][0]["size"] += 1
        return _tar(
            [_file(n, d if n != "index.json" else json.dumps(idx).encode()) for n, d in members]
        )
    raise AssertionError(kind)


HOSTILE = {
    "traversal": UnsafePathError,
    "absolute": UnsafePathError,
    "symlink": UnsafePathError,
    "hardlink": UnsafePathError,
    "device": UnsafePathError,
    "huge-json": LimitExceededError,
    "duplicate": ManifestError,
    "missing-blob": ManifestError,
    "digest-mismatch": (DigestMismatchError, ManifestError),
    "size-lie": SizeMismatchError,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_is_refused_with_a_typed_error_and_nothing_stored(
    pulled: Client, src_ref: str, tmp_path: Path, kind: str
) -> None:
    data = _hostile(kind, _saved_members(pulled, src_ref, tmp_path))
    root = tmp_path / "victim-store"
    client = Client(root)
    before = _store_files(root)
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_bytes(b"keep")
    cwd = os.getcwd()
    os.chdir(sentinel)  # a relative escape would land here
    try:
        with pytest.raises(HOSTILE[kind]):
            client.load(io.BytesIO(data))
    finally:
        os.chdir(cwd)
    assert _store_files(root) == before
    assert os.listdir(sentinel) == ["keep"]
    assert os.listdir(root / "content/ingest") == []  # staging removed


def test_a_layer_whose_diff_id_lies_is_refused_and_its_blobs_removed(
    tmp_path: Path,
) -> None:
    layer = build_layer(tar_entries([File("a", b"a")]))
    bad = build_image([layer], diff_ids=["sha256:" + "0" * 64])
    members = [
        ("oci-layout", archive.OCI_LAYOUT),
        (
            "index.json",
            json.dumps(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            **bad.descriptor.to_json(),
                            "annotations": {archive.REF_NAME: "example.test/bad:1"},
                        }
                    ],
                }
            ).encode(),
        ),
        (f"blobs/sha256/{bad.descriptor.digest[7:]}", bad.manifest),
        *[(f"blobs/sha256/{d[7:]}", b) for d, b in bad.blobs().items()],
    ]
    root = tmp_path / "store"
    client = Client(root)
    with pytest.raises(DigestMismatchError):
        client.load(io.BytesIO(_tar([_file(n, d) for n, d in members])))
    assert client.images() == []
    assert os.listdir(root / "content/blobs/sha256") == []


# --- podman --------------------------------------------------------------------------------------
@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Any]:
    """``podman`` on a private store under ``tmp_path`` (never the host's /var/lib/containers)."""
    _need("podman")
    if os.geteuid() != 0:
        pytest.skip("podman's overlay store here needs root")
    root = tmp_path / "podman-root"
    runroot = Path(tempfile.mkdtemp(prefix="fd-podman-"))  # podman wants it under 50 chars

    def run(*args: str) -> str:
        return _run(
            "podman",
            "--root",
            str(root),
            "--runroot",
            str(runroot),
            "--storage-driver",
            "vfs",
            *args,
        )

    yield run
    with contextlib.suppress(AssertionError):
        run("image", "unmount", "--all")
    with contextlib.suppress(AssertionError):
        run("rmi", "--all", "--force")
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(runroot, ignore_errors=True)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_loads_what_fastdist_saves_with_the_same_tree(
    gzip_ref: str, tmp_path: Path, podman: Any, fmt: str
) -> None:
    client = Client(tmp_path / "src-store", snapshotter="native")
    client.pull(gzip_ref)
    out = tmp_path / "saved.tar"
    client.save([gzip_ref], out, format=fmt)
    loaded = podman("load", "-q", "-i", str(out))
    assert "Loaded image" in loaded
    name = gzip_ref if fmt == "docker-archive" else loaded.split(":", 1)[1].strip()
    mount = Path(podman("image", "mount", name).strip())
    theirs = tree_snapshot(mount)
    ours = _tree(client, gzip_ref, tmp_path / "ours")
    theirs.pop(".", None)
    ours.pop(".", None)
    assert {k: v[:6] for k, v in ours.items()} == {k: v[:6] for k, v in theirs.items()}


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_fastdist_loads_what_podman_saves_with_the_same_tree(
    gzip_ref: str, tmp_path: Path, podman: Any, fmt: str
) -> None:
    podman("pull", "-q", "--tls-verify=false", f"docker://{gzip_ref}")
    out = tmp_path / "podman.tar"
    podman("save", "-q", "--format", fmt, "-o", str(out), gzip_ref)
    client = Client(tmp_path / "store", snapshotter="native")
    (img,) = client.load(out, tag=None if fmt == "docker-archive" else "example.test/podman:1")
    mount = Path(podman("image", "mount", gzip_ref).strip())
    theirs = tree_snapshot(mount)
    ours = _tree(client, img.name, tmp_path / "ours")
    theirs.pop(".", None)
    ours.pop(".", None)
    assert {k: v[:6] for k, v in ours.items()} == {k: v[:6] for k, v in theirs.items()}
