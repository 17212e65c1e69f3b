"""Resource limits: the defaults SECURITY.md documents, the per-pull limit, the free-space check,
and redaction of text headed for messages and logs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakeregistry import FakeRegistry
from fastdist import _native, oci, resolver, transport
from fastdist.client import DEFAULT_MAX_PULL_BYTES, Client
from fastdist.errors import LimitExceededError, StoreError
from fastdist.fetcher import FetchConfig
from fastdist.pulling import PullBudget, cap_layer_bytes
from fastdist.testing.images import File, build_image, build_layer, tar_entries
from fastdist.transport import TransportConfig, redact_text


def test_documented_defaults_are_the_real_defaults() -> None:
    """The table in SECURITY.md, value by value."""
    d = _native.Limits()
    assert d.max_entries == 1_000_000
    assert d.max_layer_bytes == 64 << 30
    assert d.max_entry_bytes == 32 << 30
    assert d.max_header_bytes == 1 << 20
    assert (d.max_path_len, d.max_path_depth) == (4096, 128)
    assert (d.max_ratio, d.ratio_grace_bytes) == (1000, 256 << 20)
    assert d.zstd_window_log_max == 27
    assert d.max_volumes == 1024
    assert oci.MAX_MANIFEST_BYTES == 4 << 20
    assert oci.MAX_CONFIG_BYTES == 8 << 20
    assert oci.MAX_JSON_DEPTH == 64
    assert DEFAULT_MAX_PULL_BYTES == 256 << 30
    assert transport.MAX_ERROR_BODY == 64 << 10
    assert transport.MAX_TOKEN_BODY == 1 << 20
    assert transport.MAX_REDIRECTS == 5
    assert resolver.MAX_INDEX_DEPTH == 4


def test_layer_limits_are_capped_by_the_per_pull_limit() -> None:
    capped = cap_layer_bytes(None, 1 << 20)
    assert capped is not None
    assert capped.max_layer_bytes == 1 << 20
    assert capped.max_entry_bytes == 1 << 20
    assert capped.max_entries == _native.Limits().max_entries
    own = _native.Limits(max_layer_bytes=4096, max_entries=7)
    assert cap_layer_bytes(own, 1 << 20) is own
    kept = cap_layer_bytes(_native.Limits(max_entries=7, zstd_window_log_max=20), 1 << 20)
    assert kept is not None
    assert (kept.max_entries, kept.zstd_window_log_max) == (7, 20)


def test_default_limits_are_left_alone_when_the_pull_limit_is_larger() -> None:
    assert cap_layer_bytes(None, DEFAULT_MAX_PULL_BYTES) is None


def test_pull_budget_refuses_the_layer_that_crosses_it() -> None:
    budget = PullBudget(100, "r")
    budget.add(60, oci.Digest("sha256:" + "a" * 64))
    with pytest.raises(LimitExceededError, match="per-pull limit of 100"):
        budget.add(41, oci.Digest("sha256:" + "b" * 64))


def test_max_pull_bytes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        Client(tmp_path / "store", max_pull_bytes=0)


@pytest.fixture
def reg() -> Iterator[FakeRegistry]:
    with FakeRegistry() as r:
        yield r


def _serve(reg: FakeRegistry, size: int) -> tuple[str, str]:
    layer = build_layer(tar_entries([File("f", os.urandom(size))]))
    image = build_image([layer])
    for blob in image.blobs().values():
        reg.add_blob(blob)
    reg.add_manifest("app", image.manifest, image.descriptor.media_type, "v1")
    return f"{reg.host}/app:v1", layer.descriptor.digest


@pytest.mark.parametrize("early_after", [None, 0.0], ids=["near", "far-early-requests"])
def test_free_space_is_checked_before_any_layer_is_fetched(
    tmp_path: Path,
    reg: FakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
    early_after: float | None,
) -> None:
    """Also when a far registry's layer requests would go out with the config's: the check
    runs on the manifest's descriptors first."""
    ref, digest = _serve(reg, 64 << 10)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    client = Client(
        tmp_path / "store",
        transport_config=TransportConfig(max_retries=0),
        fetch_config=FetchConfig(early_after=early_after),
    )
    real = os.statvfs

    class Tiny:
        def __init__(self, st: os.statvfs_result) -> None:
            self.f_frsize = st.f_frsize
            self.f_bavail = 1

    monkeypatch.setattr(os, "statvfs", lambda p: Tiny(real(p)))
    with pytest.raises(StoreError, match="not enough free space") as info:
        client.pull(ref)
    assert "prune" in (info.value.hint or "")
    assert not any(digest in r.path for r in reg.requests)
    assert client.images() == []
    assert client.snapshotter.list() == []


def test_pull_with_room_passes_the_free_space_check(tmp_path: Path, reg: FakeRegistry) -> None:
    ref, _ = _serve(reg, 4096)
    client = Client(tmp_path / "store", credentials=None, max_pull_bytes=1 << 20)
    assert client.pull(ref).name == ref


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://cdn/x?X-Amz-Signature=abc123&e=1 failed", "abc123"),
        ("sent Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi"),
        ("Basic YWxpY2U6cHc= is wrong", "YWxpY2U6cHc="),
        ('{"token": "t0k3n-value"}', "t0k3n-value"),
        ("password=hunter2&user=a", "hunter2"),
        ("access_token: qwerty123", "qwerty123"),
    ],
)
def test_redact_text_removes_credentials(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


def test_redact_text_removes_known_secrets_anywhere() -> None:
    out = redact_text("your password is s3cr3t-pw, yes s3cr3t-pw", ["s3cr3t-pw"])
    assert "s3cr3t-pw" not in out
    assert out.count("<redacted>") == 2


def test_redact_text_keeps_ordinary_messages() -> None:
    msg = "GET http://127.0.0.1:5000/v2/app/blobs/sha256:ab: 404 BLOB_UNKNOWN blob unknown"
    assert redact_text(msg) == msg


def test_token_in_a_json_error_body_is_redacted() -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": "token=abc.def.ghi"}]})
    assert "abc.def.ghi" not in redact_text(body)


# --- Volumes (issue 11 item 8) ------------------------------------------------------------------
def _config_with_volumes(n: int) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Volumes": {f"/v/{i}": {} for i in range(n)}},
        }
    ).encode()


def test_a_config_with_more_volumes_than_the_limit_is_refused() -> None:
    assert len(oci.parse_config(_config_with_volumes(1024)).config.volumes) == 1024
    with pytest.raises(LimitExceededError, match="20000 Volumes, over the limit of 1024") as info:
        oci.parse_config(_config_with_volumes(20_000))
    assert "max_volumes" in (info.value.hint or "")


def test_the_volumes_limit_is_configurable_through_limits(
    tmp_path: Path, reg: FakeRegistry
) -> None:
    reg.add_image("vols", "v1", layers=[], config=_config_with_volumes(5))
    ref = f"{reg.host}/vols:v1"
    strict = Client(tmp_path / "a", limits=_native.Limits(max_volumes=4), credentials=None)
    with pytest.raises(LimitExceededError, match="5 Volumes, over the limit of 4"):
        strict.pull(ref)
    assert strict.images() == []
    # cap_layer_bytes (a max_pull_bytes below max_layer_bytes) keeps the setting.
    roomy = Client(
        tmp_path / "b",
        limits=_native.Limits(max_volumes=5),
        credentials=None,
        max_pull_bytes=1 << 20,
    )
    assert roomy.pull(ref).config().config.volumes == tuple(f"/v/{i}" for i in range(5))
