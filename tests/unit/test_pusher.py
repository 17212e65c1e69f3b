"""Pushing blobs (monolithic, skip when present) and manifests, then resolving them back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fakeregistry import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, FakeRegistry, Fault, digest_of
from fastdist.errors import DigestMismatchError, RegistryError
from fastdist.fetcher import BytesSink, Fetcher
from fastdist.oci import Descriptor, Digest, Platform
from fastdist.pusher import Pusher
from fastdist.reference import Reference
from fastdist.resolver import Resolver
from fastdist.transport import Transport, TransportConfig


def _transport() -> Transport:
    return Transport(TransportConfig(backoff_base=0.001))


def test_push_blob_uploads_then_skips_when_present() -> None:
    with FakeRegistry() as reg:
        pusher = Pusher(_transport())
        ref = Reference.parse(f"{reg.host}/app")
        data = os.urandom(50_000)
        d = Digest(digest_of(data))
        pusher.push_blob(ref, d, data)
        assert reg.blobs[d] == data
        assert [r.method for r in reg.requests] == ["HEAD", "POST", "PUT"]
        put = reg.requests[2]
        assert f"digest={d.replace(':', '%3A')}" in put.path
        assert "_state=x" in put.path
        pusher.push_blob(ref, d, data)
        assert [r.method for r in reg.requests] == ["HEAD", "POST", "PUT", "HEAD"]


def test_push_blob_streams_a_file(tmp_path: Path) -> None:
    with FakeRegistry() as reg:
        data = os.urandom(3 << 20)
        path = tmp_path / "layer.tar.gz"
        path.write_bytes(data)
        d = Digest(digest_of(data))
        Pusher(_transport()).push_blob(Reference.parse(f"{reg.host}/app"), d, str(path))
        assert reg.blobs[d] == data


def test_push_blob_with_wrong_digest_is_rejected_by_the_registry() -> None:
    with FakeRegistry() as reg, pytest.raises(RegistryError, match="DIGEST_INVALID"):
        Pusher(_transport()).push_blob(
            Reference.parse(f"{reg.host}/app"), Digest(digest_of(b"a")), b"b"
        )


def test_pushed_image_resolves_and_fetches_back_with_token_auth() -> None:
    with FakeRegistry(auth="token") as reg:
        t = _transport()
        pusher = Pusher(t)
        ref = Reference.parse(f"{reg.host}/team/app:v1")
        layer = os.urandom(10_000)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
            }
        ).encode()
        for blob in (layer, config):
            pusher.push_blob(ref, Digest(digest_of(blob)), blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER_GZIP, "digest": digest_of(layer), "size": len(layer)}
                ],
            }
        ).encode()
        d = pusher.push_manifest(ref, manifest, OCI_MANIFEST)
        assert d == digest_of(manifest)
        assert reg.requests_to("/manifests/v1", "PUT")[-1].headers["content-type"] == OCI_MANIFEST
        assert any("pull%2Cpush" in r.path or "pull,push" in r.path for r in reg.token_requests)

        res = Resolver(t).resolve(ref, Platform("linux", "amd64"))
        assert res.target.digest == d
        desc: Descriptor = res.manifest.layers[0]
        sink = BytesSink()
        Fetcher(t).fetch(ref, desc, sink)
        assert sink.getvalue() == layer


def test_push_manifest_by_digest_checks_the_reference_digest() -> None:
    with FakeRegistry() as reg:
        d, data = reg.add_image("app", tag=None)
        pusher = Pusher(_transport())
        ref = Reference.parse(f"{reg.host}/app@{d}")
        assert pusher.push_manifest(ref, data, OCI_MANIFEST) == d
        assert reg.requests[-1].path == f"/v2/app/manifests/{d}"
        with pytest.raises(DigestMismatchError):
            pusher.push_manifest(ref, data + b" ", OCI_MANIFEST)


@pytest.mark.parametrize("location", ["http://[evil/x", "http://127.0.0.1:99999/u", "ftp://x/u"])
def test_a_malformed_upload_location_is_a_registry_error(location: str) -> None:
    with FakeRegistry() as reg:
        reg.add_fault(
            Fault(
                path_contains="/blobs/uploads/",
                method="POST",
                location=location,
                redirect_status=202,
            )
        )
        data = os.urandom(1000)
        with pytest.raises(RegistryError, match="upload location") as info:
            Pusher(_transport()).push_blob(
                Reference.parse(f"{reg.host}/app"), Digest(digest_of(data)), data
            )
        assert info.value.hint
        assert [r.method for r in reg.requests] == ["HEAD", "POST"]


def _ranges(reg: FakeRegistry) -> list[str]:
    return [r.headers.get("content-range", "") for r in reg.requests if r.method == "PATCH"]


def test_a_blob_over_the_chunk_size_goes_in_patch_chunks_then_a_bodyless_put(
    tmp_path: Path,
) -> None:
    with FakeRegistry() as reg:
        data = os.urandom((3 << 20) + 5)
        path = tmp_path / "big"
        path.write_bytes(data)
        d = Digest(digest_of(data))
        counted: list[int] = []
        outcome = Pusher(_transport(), chunk_size=1 << 20).push_blob(
            Reference.parse(f"{reg.host}/app"), d, str(path), on_read=counted.append
        )
        assert outcome == "uploaded"
        assert reg.blobs[d] == data
        assert [r.method for r in reg.requests] == ["HEAD", "POST", *["PATCH"] * 4, "PUT"]
        mib = 1 << 20
        assert _ranges(reg) == [
            f"0-{mib - 1}",
            f"{mib}-{2 * mib - 1}",
            f"{2 * mib}-{3 * mib - 1}",
            f"{3 * mib}-{3 * mib + 4}",
        ]
        assert reg.requests[-1].body == b""
        assert sum(counted) == len(data)


def test_a_small_blob_stays_one_monolithic_put(tmp_path: Path) -> None:
    with FakeRegistry() as reg:
        data = os.urandom(1 << 20)
        path = tmp_path / "small"
        path.write_bytes(data)
        d = Digest(digest_of(data))
        Pusher(_transport(), chunk_size=1 << 20).push_blob(
            Reference.parse(f"{reg.host}/app"), d, str(path)
        )
        assert [r.method for r in reg.requests] == ["HEAD", "POST", "PUT"]
        assert reg.blobs[d] == data


def test_a_cut_chunk_resumes_from_the_range_the_registry_reports(tmp_path: Path) -> None:
    with FakeRegistry() as reg:
        mib = 1 << 20
        data = os.urandom(3 * mib)
        path = tmp_path / "big"
        path.write_bytes(data)
        d = Digest(digest_of(data))
        # The first chunk is cut after 1000 of its bytes reached the registry.
        reg.add_fault(Fault(path_contains="/blobs/uploads/", method="PATCH", cut_after=1000))
        Pusher(_transport(), chunk_size=mib).push_blob(
            Reference.parse(f"{reg.host}/app"), d, str(path)
        )
        assert reg.blobs[d] == data
        methods = [r.method for r in reg.requests]
        assert methods == ["HEAD", "POST", "PATCH", "GET", "PATCH", "PATCH", "PATCH", "PUT"]
        assert _ranges(reg) == [
            f"0-{mib - 1}",  # cut: the registry kept 1000 bytes of it
            f"1000-{mib + 999}",  # resumed where the registry said, not from 0
            f"{mib + 1000}-{2 * mib + 999}",
            f"{2 * mib + 1000}-{3 * mib - 1}",
        ]


def test_a_refused_chunk_resyncs_with_the_session_and_goes_on(tmp_path: Path) -> None:
    with FakeRegistry() as reg:
        mib = 1 << 20
        data = os.urandom(2 * mib)
        path = tmp_path / "big"
        path.write_bytes(data)
        d = Digest(digest_of(data))
        reg.add_fault(Fault(path_contains="/blobs/uploads/", method="PATCH", status=416))
        Pusher(_transport(), chunk_size=mib).push_blob(
            Reference.parse(f"{reg.host}/app"), d, str(path)
        )
        assert reg.blobs[d] == data
        assert [r.method for r in reg.requests] == [
            "HEAD",
            "POST",
            "PATCH",
            "GET",
            "PATCH",
            "PATCH",
            "PUT",
        ]


def test_an_upload_session_reporting_a_range_past_the_blob_is_a_registry_error(
    tmp_path: Path,
) -> None:
    with FakeRegistry() as reg:
        data = os.urandom(3 << 20)
        path = tmp_path / "big"
        path.write_bytes(data)
        reg.add_fault(
            Fault(
                path_contains="/blobs/uploads/",
                method="PATCH",
                status=202,
                headers={"Range": f"0-{len(data) * 2}"},
            )
        )
        with pytest.raises(RegistryError, match="Range") as info:
            Pusher(_transport(), chunk_size=1 << 20).push_blob(
                Reference.parse(f"{reg.host}/app"), Digest(digest_of(data)), str(path)
            )
        assert info.value.hint


def test_a_registry_that_acknowledges_no_progress_ends_in_an_error_not_a_loop(
    tmp_path: Path,
) -> None:
    with FakeRegistry() as reg:
        data = os.urandom(2 << 20)
        path = tmp_path / "big"
        path.write_bytes(data)
        # Every PATCH is answered 202 "holding nothing", however often it is resent.
        reg.add_fault(
            Fault(
                path_contains="/blobs/uploads/",
                method="PATCH",
                status=202,
                headers={"Range": "0-0"},
                times=-1,
            )
        )
        with pytest.raises(RegistryError, match="took none of bytes"):
            Pusher(_transport(), chunk_size=1 << 20).push_blob(
                Reference.parse(f"{reg.host}/app"), Digest(digest_of(data)), str(path)
            )
        patches = [r for r in reg.requests if r.method == "PATCH"]
        assert len(patches) == _transport().config.max_retries + 1
