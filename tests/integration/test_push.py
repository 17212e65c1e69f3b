"""``Client.push`` to Debian's docker-registry (issue 14.5): blobs HEADed and skipped, mounted
across repositories of one registry, uploaded otherwise; manifests byte for byte; a push that
fails midway leaves no tag."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fastdist.client import Client
from fastdist.errors import AuthenticationError, RegistryError
from fastdist.progress import Phase, ProgressEvent
from fastdist.testing.images import (
    Dir,
    File,
    build_image,
    build_layer,
    push_image,
    tar_entries,
    tree_snapshot,
)

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def src_ref(registry: object, pusher: object) -> str:
    ref = f"{registry.host}/it/push-src:v1"  # type: ignore[attr-defined]
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
    src_ref: str, registry: object, tmp_path: Path
) -> None:
    client = Client(tmp_path / "store", snapshotter="native")
    img = client.pull(src_ref)
    dest = f"{registry.host}/it/push-mounted:v2"  # type: ignore[attr-defined]
    events: list[ProgressEvent] = []
    rep = client.push(src_ref, dest, progress=events.append)
    blobs = {img.record.config_digest, *img.record.layer_digests}
    assert set(rep.mounted) == blobs
    assert rep.uploaded == ()
    assert rep.digest == img.record.manifest_digest  # the stored bytes, not re-serialised
    assert {e.digest for e in events if e.phase is Phase.DONE and e.digest} == blobs
    again = client.push(src_ref, dest)
    assert set(again.existed) == blobs
    assert again.mounted == again.uploaded == ()
    fresh = Client(tmp_path / "fresh", snapshotter="native")
    assert fresh.pull(dest).record.manifest_digest == img.record.manifest_digest


def test_push_of_a_loaded_image_uploads_and_reads_back_with_skopeo_and_umoci(
    src_ref: str, registry: object, tmp_path: Path
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
    dest = f"{registry.host}/it/push-uploaded:v1"  # type: ignore[attr-defined]
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
    src_ref: str, registry: object, tmp_path: Path
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
    dest = f"{registry.host}/it/push-broken:v1"  # type: ignore[attr-defined]
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
