"""Resolution verifies every document locally and selects the platform from an index."""

from __future__ import annotations

import json

import pytest

from fakeregistry import OCI_INDEX, OCI_MANIFEST, FakeRegistry, Fault, digest_of
from fastdist.errors import (
    DigestMismatchError,
    ManifestError,
    PlatformNotFoundError,
    UnsupportedMediaTypeError,
)
from fastdist.oci import DOCKER_MANIFEST, MAX_MANIFEST_BYTES, Manifest, Platform
from fastdist.progress import Phase, ProgressEvent
from fastdist.reference import Reference
from fastdist.resolver import Resolver
from fastdist.transport import Transport, TransportConfig

AMD64 = Platform("linux", "amd64")


def _resolver() -> Resolver:
    t = Transport(TransportConfig(backoff_base=0.001, max_retries=2))
    t.sleep = lambda _s: None
    return Resolver(t)


def _multiarch(reg: FakeRegistry) -> tuple[str, str, str]:
    amd, amd_bytes = reg.add_image("app", tag=None, layers=[b"amd"], architecture="amd64")
    arm, arm_bytes = reg.add_image(
        "app", tag=None, layers=[b"arm"], architecture="arm64", variant="v8"
    )
    idx, _ = reg.add_index(
        "app",
        [
            (arm, arm_bytes, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            (amd, amd_bytes, {"os": "linux", "architecture": "amd64"}),
        ],
    )
    return idx, amd, arm


def test_tag_to_single_manifest_is_its_own_target() -> None:
    with FakeRegistry() as reg:
        d, data = reg.add_image("app", tag="v1")
        events: list[ProgressEvent] = []
        res = _resolver().resolve(Reference.parse(f"{reg.host}/app:v1"), AMD64, events.append)
        assert res.target.digest == d
        assert res.target.size == len(data)
        assert res.target.media_type == OCI_MANIFEST
        assert res.manifest_descriptor == res.target
        assert res.target_bytes == res.manifest_bytes == data
        assert isinstance(res.manifest, Manifest)
        assert len(res.manifest.layers) == 2
        assert [e.phase for e in events] == [Phase.RESOLVING, Phase.RESOLVED]
        accept = reg.requests[0].headers["accept"]
        assert OCI_INDEX in accept
        assert DOCKER_MANIFEST in accept


@pytest.mark.parametrize(
    ("platform", "want"), [("linux/amd64", 1), ("linux/arm64", 2), ("linux/arm64/v8", 2)]
)
def test_index_selects_the_requested_platform(platform: str, want: int) -> None:
    with FakeRegistry() as reg:
        digests = _multiarch(reg)
        res = _resolver().resolve(Reference.parse(f"{reg.host}/app"), Platform.parse(platform))
        assert res.target.digest == digests[0]
        assert res.target.media_type == OCI_INDEX
        assert res.manifest_descriptor.digest == digests[want]
        assert digest_of(res.manifest_bytes) == digests[want]
        assert reg.requests[1].path.endswith(f"/manifests/{digests[want]}")


def test_missing_platform_lists_what_the_index_offers() -> None:
    with FakeRegistry() as reg:
        _multiarch(reg)
        with pytest.raises(PlatformNotFoundError) as info:
            _resolver().resolve(Reference.parse(f"{reg.host}/app"), Platform("linux", "s390x"))
        assert "linux/s390x" in info.value.message
        assert "linux/arm64/v8" in info.value.message
        assert "linux/amd64" in info.value.message


def test_digest_reference_must_match_the_body() -> None:
    with FakeRegistry() as reg:
        d, _data = reg.add_image("app")
        other, _ = reg.add_image("app", tag=None, layers=[b"other"])
        reg.manifests[("app", d)] = reg.manifests[("app", other)]  # serves the wrong document
        with pytest.raises(DigestMismatchError) as info:
            _resolver().resolve(Reference.parse(f"{reg.host}/app@{d}"), AMD64)
        assert d in info.value.message
        assert other in info.value.message


def test_docker_content_digest_header_is_not_trusted() -> None:
    with FakeRegistry() as reg:
        d, _ = reg.add_image("app")
        liar = "sha256:" + "0" * 64
        reg.add_fault(Fault(path_contains="/manifests/", headers={"Docker-Content-Digest": liar}))
        res = _resolver().resolve(Reference.parse(f"{reg.host}/app"), AMD64)
        assert res.target.digest == d


def test_index_entry_pointing_at_other_bytes_is_refused() -> None:
    with FakeRegistry() as reg:
        _idx, amd, _arm = _multiarch(reg)
        _, forged = reg.add_image("app", tag=None, layers=[b"evil"])
        reg.add_fault(Fault(path_contains=f"/manifests/{amd}", body=forged))
        with pytest.raises(DigestMismatchError):
            _resolver().resolve(Reference.parse(f"{reg.host}/app"), AMD64)


def test_content_type_disagreeing_with_media_type_is_refused() -> None:
    with FakeRegistry() as reg:
        reg.add_image("app")
        reg.add_fault(Fault(path_contains="/manifests/", content_type=DOCKER_MANIFEST))
        with pytest.raises(ManifestError, match="disagrees"):
            _resolver().resolve(Reference.parse(f"{reg.host}/app"), AMD64)


def test_unknown_media_type_is_refused() -> None:
    with FakeRegistry() as reg:
        doc = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}).encode()
        reg.add_manifest("app", doc, "application/vnd.example+json", tag="latest")
        with pytest.raises(UnsupportedMediaTypeError):
            _resolver().resolve(Reference.parse(f"{reg.host}/app"), AMD64)


def test_oversize_manifest_is_refused_before_reading_it_all() -> None:
    with FakeRegistry() as reg:
        reg.add_image("app")
        # The body is cut after 10 bytes: reading it would fail differently (truncation).
        big = b"{" + b" " * MAX_MANIFEST_BYTES + b"}"
        reg.add_fault(Fault(path_contains="/manifests/", body=big, cut_after=10, times=-1))
        with pytest.raises(ManifestError, match="limit"):
            _resolver().resolve(Reference.parse(f"{reg.host}/app"), AMD64)
        assert len(reg.requests) == 1


def test_truncated_manifest_body_is_retried() -> None:
    with FakeRegistry() as reg:
        d, _ = reg.add_image("app")
        reg.add_fault(Fault(path_contains="/manifests/", cut_after=10))
        res = _resolver().resolve(Reference.parse(f"{reg.host}/app"), AMD64)
        assert res.target.digest == d
        assert len(reg.requests) == 2
