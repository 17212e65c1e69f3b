"""``Client.push`` to Debian's docker-registry (issue 14.5): blobs HEADed and skipped, mounted
across repositories of one registry, uploaded otherwise; manifests byte for byte; a push that
fails midway leaves no tag."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist.client import Client
from fastdist.errors import AuthenticationError, IncompleteImageError, RegistryError
from fastdist.oci import Platform
from fastdist.progress import Phase, ProgressEvent
from fastdist.testing.images import (
    BuiltIndex,
    Dir,
    File,
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


@pytest.fixture(scope="module")
def src_ref(registry: LocalRegistry, pusher: Pusher) -> str:
    ref = f"{registry.host}/it/push-src:v1"
    image = build_image(
        [
            build_layer(tar_entries([Dir("etc"), File("etc/a", b"one\n")])),
            build_layer(tar_entries([File("etc/b", os.urandom(3 << 20))]), "none"),
        ],
        cmd=["sh"],
    )
    push_image(pusher, ref, image)
    return ref


def _manifest_digest(ref: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_push_to_another_repository_of_the_same_registry_mounts_every_blob(
    src_ref: str, registry: LocalRegistry, tmp_path: Path
) -> None:
    client = Client(tmp_path / "store", snapshotter="native")
    img = client.pull(src_ref)
    dest = f"{registry.host}/it/push-mounted:v2"
    events: list[ProgressEvent] = []
    rep = client.push(src_ref, dest, progress=events.append)
    blobs = {img.record.config_digest, *img.record.layer_digests}
    assert set(rep.mounted) == blobs
    assert rep.uploaded == ()
    assert rep.digest == img.record.manifest_digest  # the stored bytes, not re-serialised
    done = {e.digest: e.message for e in events if e.phase is Phase.DONE and e.digest}
    assert done == {**dict.fromkeys(blobs, "mounted"), img.record.manifest_digest: "manifest"}
    again = client.push(src_ref, dest)
    assert set(again.existed) == blobs
    assert again.mounted == again.uploaded == ()
    fresh = Client(tmp_path / "fresh", snapshotter="native")
    assert fresh.pull(dest).record.manifest_digest == img.record.manifest_digest


def test_push_of_a_loaded_image_uploads_and_reads_back_with_skopeo_and_umoci(
    src_ref: str, registry: LocalRegistry, tmp_path: Path
) -> None:
    if shutil.which("skopeo") is None or shutil.which("umoci") is None:
        pytest.skip("needs skopeo and umoci")
    src = Client(tmp_path / "src", snapshotter="native")
    src.pull(src_ref)
    buf = io.BytesIO()
    src.save([src_ref], buf)
    buf.seek(0)
    client = Client(tmp_path / "store", snapshotter="native")
    (img,) = client.load(buf, tag="example.test/loaded:1")
    dest = f"{registry.host}/it/push-uploaded:v1"
    sent: list[int] = []
    rep = client.push(
        img.name,
        dest,
        progress=lambda e: sent.append(e.current) if e.phase is Phase.UPLOADING else None,
    )
    assert set(rep.uploaded) == {img.record.config_digest, *img.record.layer_digests}
    assert max(sent) >= 3 << 20  # the big layer's bytes were counted as they were sent
    assert _manifest_digest(dest) == img.record.manifest_digest
    layout = tmp_path / "layout"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{dest}", f"oci:{layout}:x"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:x", str(tmp_path / "umoci")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    theirs = tree_snapshot(tmp_path / "umoci" / "rootfs")
    ours = tree_snapshot(client.unpack(img.name, tmp_path / "ours"))
    theirs.pop(".", None)
    ours.pop(".", None)
    assert {k: v[:6] for k, v in ours.items()} == {k: v[:6] for k, v in theirs.items()}


def test_push_that_fails_midway_leaves_no_tag(
    src_ref: str, registry: LocalRegistry, tmp_path: Path
) -> None:
    src = Client(tmp_path / "src", snapshotter="native")
    src.pull(src_ref)
    buf = io.BytesIO()
    src.save([src_ref], buf)
    buf.seek(0)
    client = Client(tmp_path / "store", snapshotter="native")
    (img,) = client.load(buf, tag="example.test/broken:1")  # another registry: nothing to mount
    last = client.content.path(img.record.layer_digests[-1])
    os.chmod(last, 0o600)
    data = bytearray(last.read_bytes())
    data[100] ^= 0xFF  # the registry verifies the digest of what it receives and refuses it
    last.write_bytes(bytes(data))
    dest = f"{registry.host}/it/push-broken:v1"
    with pytest.raises(RegistryError):
        client.push(img.name, dest)
    fresh = Client(tmp_path / "fresh")
    with pytest.raises(RegistryError) as e:
        fresh.pull(dest)
    assert e.value.status == 404


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d / "config.json"


def test_push_with_htpasswd_auth_after_login(
    src_ref: str, tmp_path: Path, docker_config: Path
) -> None:
    if shutil.which("htpasswd") is None or shutil.which("skopeo") is None:
        pytest.skip("needs htpasswd (apache2-utils) and skopeo")
    from fastdist.testing.registry import LocalRegistry

    client = Client(tmp_path / "store", snapshotter="native")
    img = client.pull(src_ref)
    with LocalRegistry(users={"alice": "s3cret"}) as reg:
        dest = f"{reg.host}/it/auth-push:v1"
        with pytest.raises(RegistryError):  # no credentials yet: the registry refuses the push
            client.push(src_ref, dest)
        with pytest.raises(AuthenticationError):
            client.login(reg.host, "alice", "wrong")
        assert not docker_config.exists()  # a refused login saves nothing
        assert client.login(reg.host, "alice", "s3cret") == str(docker_config)
        rep = client.push(src_ref, dest)
        assert set(rep.uploaded) == {img.record.config_digest, *img.record.layer_digests}
        out = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--tls-verify=false",
                "--creds",
                "alice:s3cret",
                "--format",
                "{{.Digest}}",
                f"docker://{dest}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == img.record.manifest_digest == rep.digest
        anon = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--no-creds", f"docker://{dest}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert anon.returncode != 0  # the registry really asks for the password


def _raw(ref: str) -> bytes:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def multi(registry: LocalRegistry, pusher: Pusher) -> tuple[str, BuiltIndex]:
    """A two-platform index (amd64 and arm64), each platform with a layer of its own."""
    ref = f"{registry.host}/it/push-multi:v1"
    images = [
        build_image(
            [build_layer(tar_entries([File(f"etc/{arch}", os.urandom(2000))]))],
            platform=Platform("linux", arch),
        )
        for arch in ("amd64", "arm64")
    ]
    index = build_index(images)
    push_image(pusher, ref, index)
    return ref, index


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_push_of_an_index_with_every_platform_present_sends_the_whole_index(
    multi: tuple[str, BuiltIndex], registry: LocalRegistry, tmp_path: Path
) -> None:
    ref, index = multi
    client = Client(tmp_path / "store", snapshotter="native")
    client.pull(ref, platform="linux/arm64")
    client.pull(ref, platform="linux/amd64")  # the name now points at amd64; arm64 stays
    dest = f"{registry.host}/it/push-multi-copy:v1"
    rep = client.push(ref, dest, all_platforms=True)
    assert rep.digest == index.descriptor.digest
    assert rep.missing == ()
    assert rep.manifests == tuple(img.descriptor.digest for img in index.images)
    assert _raw(dest) == index.index  # the index itself, byte for byte, at the tag
    base = dest.rpartition(":")[0]
    for img in index.images:
        assert _raw(f"{base}@{img.descriptor.digest}") == img.manifest
    fresh = Client(tmp_path / "fresh", snapshotter="native")
    assert fresh.pull(dest, platform="linux/arm64").record.manifest_digest == (
        index.images[1].descriptor.digest
    )


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_push_of_an_index_with_a_platform_missing_pushes_the_present_one_or_refuses(
    multi: tuple[str, BuiltIndex], registry: LocalRegistry, tmp_path: Path
) -> None:
    ref, index = multi
    client = Client(tmp_path / "store", snapshotter="native")
    client.pull(ref, platform="linux/arm64")
    strict = f"{registry.host}/it/push-multi-strict:v1"
    with pytest.raises(IncompleteImageError) as info:
        client.push(ref, strict, all_platforms=True)
    assert info.value.missing == ("linux/amd64",)
    assert "linux/amd64" in info.value.message
    assert info.value.hint
    fresh = Client(tmp_path / "fresh", snapshotter="native")
    with pytest.raises(RegistryError) as e:
        fresh.pull(strict)  # refused before anything was sent: no tag
    assert e.value.status == 404
    dest = f"{registry.host}/it/push-multi-partial:v1"
    rep = client.push(ref, dest)
    assert rep.missing == ("linux/amd64",)
    assert rep.manifests == ()
    arm64 = index.images[1]
    assert rep.digest == arm64.descriptor.digest
    assert _raw(dest) == arm64.manifest  # the present platform's manifest at the tag


def test_a_blob_over_the_chunk_size_goes_to_the_real_registry_in_chunks(
    registry: LocalRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastdist.oci import sha256_digest
    from fastdist.pusher import Pusher
    from fastdist.reference import Reference
    from fastdist.transport import Transport

    data = os.urandom((3 << 20) + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = sha256_digest(data)
    ref = Reference.parse(f"{registry.host}/it/push-chunked")
    t = Transport()
    with caplog.at_level("DEBUG", logger="fastdist.pusher"):
        assert Pusher(t, chunk_size=1 << 20).push_blob(ref, digest, str(path)) == "uploaded"
    held = [r.args[1] for r in caplog.records if "the upload session holds" in r.getMessage()]
    assert held == [1 << 20, 2 << 20, 3 << 20, len(data)]  # the registry's own Range answers
    resp = t.request(
        "GET", t.url(ref.registry, f"/v2/{ref.path}/blobs/{digest}"), registry=ref.registry
    )
    try:
        assert resp.content == data
    finally:
        resp.close()
