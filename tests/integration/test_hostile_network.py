"""Hostile URLs, tokens and framing from a registry (issue 11 items 5 and 8, SECURITY.md).

Each case is a registry answer that once crashed the transport with a traceback (a ValueError,
InvalidURL, InvalidHeader or UnicodeEncodeError from deep inside requests) or held a pull for
minutes. Every one must end as a typed ``RegistryError`` for API callers, and as ``error:`` /
``hint:`` with no traceback from the CLI. Deadlines are proven with short configured deadlines
and the typed error they give, never with timing assertions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fakeregistry import FakeRegistry, Fault
from fastdist.cli import main as cli
from fastdist.client import Client
from fastdist.errors import RegistryError
from fastdist.transport import TransportConfig

QUICK = TransportConfig(max_retries=1, backoff_base=0.0)


@dataclass
class Case:
    """A fake registry set-up, and what the error must say."""

    name: str
    match: str
    registry: dict[str, Any] = field(default_factory=dict)  # FakeRegistry(**registry)
    fault: Callable[[FakeRegistry], Fault] | None = None


CASES = [
    Case(
        "redirect-to-unclosed-ipv6",
        r"redirect to 'http://\[evil/x' is not a valid URL",
        fault=lambda reg: Fault(path_contains="/manifests/", location="http://[evil/x"),
    ),
    Case(
        "redirect-to-port-out-of-range",
        r"redirect to 'http://127\.0\.0\.1:99999/x' is not a valid URL",
        fault=lambda reg: Fault(path_contains="/manifests/", location="http://127.0.0.1:99999/x"),
    ),
    Case(
        "redirect-to-ftp",
        r"is not an http\(s\) URL",
        fault=lambda reg: Fault(path_contains="/manifests/", location="ftp://mirror/x"),
    ),
    Case(
        "redirect-of-a-blob-to-a-bad-port",
        r"redirect to 'http://127\.0\.0\.1:0x50/b' is not a valid URL",
        fault=lambda reg: Fault(path_contains="/blobs/", location="http://127.0.0.1:0x50/b"),
    ),
    Case(
        "bearer-realm-unclosed-ipv6",
        r"token realm 'http://\[::1/x' is not a valid URL",
        registry={"auth": "token", "realm": "http://[::1/x"},
    ),
    Case(
        "bearer-realm-port-out-of-range",
        r"token realm 'http://127\.0\.0\.1:70000/token' is not a valid URL",
        registry={"auth": "token", "realm": "http://127.0.0.1:70000/token"},
    ),
    Case(
        "token-with-crlf",
        "token holding characters a header cannot carry",
        registry={"auth": "token", "token_value": "tok\r\nX-Injected: 1"},
    ),
    Case(
        "token-with-non-latin-1",
        "token holding characters a header cannot carry",
        registry={"auth": "token", "token_value": "t\u00f6k\u20ac"},
    ),
    Case(
        "token-with-space",
        "token holding characters a header cannot carry",
        registry={"auth": "token", "token_value": "tok en"},
    ),
    Case(
        # http.client reads a body with a negative length until the connection closes, and
        # the fake keeps it alive: this held a pull for minutes.
        "manifest-content-length-negative",
        "invalid Content-Length '-5'",
        fault=lambda reg: Fault(path_contains="/manifests/", content_length="-5"),
    ),
    Case(
        "manifest-content-length-two-values",
        # urllib3 refuses this one itself (InvalidHeader): mapped all the same.
        "Content-Length",
        fault=lambda reg: Fault(path_contains="/manifests/", content_length="10, 20"),
    ),
    Case(
        "blob-content-length-negative",
        "invalid Content-Length '-5'",
        fault=lambda reg: Fault(path_contains="/blobs/", content_length="-5"),
    ),
    Case(
        "blob-content-length-not-decimal",
        "invalid Content-Length '1e3'",
        fault=lambda reg: Fault(path_contains="/blobs/", content_length="1e3"),
    ),
]


@pytest.mark.timeout(30)  # a hang guard: unfixed, the read waits the 120 s read timeout
def test_an_error_answer_with_a_negative_content_length_is_not_read(tmp_path: Path) -> None:
    # Its body would be read until the kept-alive connection closes: read_timeout per attempt.
    cfg = TransportConfig(read_timeout=120, max_retries=0)
    with FakeRegistry() as reg:
        reg.add_image("app")
        reg.add_fault(
            Fault(
                path_contains="/manifests/",
                status=404,
                code="MANIFEST_UNKNOWN",
                headers={"Content-Length": "-5"},
            )
        )
        client = Client(tmp_path / "store", transport_config=cfg)
        with pytest.raises(RegistryError, match="404"):
            client.pull(f"{reg.host}/app:latest")


def _registry(case: Case) -> FakeRegistry:
    reg = FakeRegistry(**case.registry)
    reg.start()
    reg.add_image("app")
    if case.fault is not None:
        reg.add_fault(case.fault(reg))
    return reg


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_answer_is_a_typed_registry_error(case: Case, tmp_path: Path) -> None:
    reg = _registry(case)
    try:
        client = Client(tmp_path / "store", transport_config=QUICK)
        with pytest.raises(RegistryError, match=case.match) as info:
            client.pull(f"{reg.host}/app:latest")
        assert info.value.hint
        assert not info.value.temporary
        assert client.images() == []
    finally:
        reg.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_answer_gives_error_and_hint_on_the_cli(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = _registry(case)
    try:
        rc = cli.main(["--root", str(tmp_path / "store"), "pull", f"{reg.host}/app:latest"])
    finally:
        reg.stop()
    err = capsys.readouterr().err
    assert rc == RegistryError.exit_code
    assert err.startswith("error: ")
    assert "\nhint: " in err
    assert "Traceback" not in err
    # What the registry sent is shown without its control characters.
    assert "\r" not in err
    assert "X-Injected" not in err


def test_token_with_crlf_is_never_sent(tmp_path: Path) -> None:
    with FakeRegistry(auth="token", token_value="tok\r\nX-Injected: 1") as reg:
        reg.add_image("app")
        with pytest.raises(RegistryError):
            Client(tmp_path / "store", transport_config=QUICK).pull(f"{reg.host}/app:latest")
        assert all(r.authorization is None for r in reg.requests)
        assert all("x-injected" not in r.headers for r in reg.requests)


# --- deadlines and stalls (issue 11 item 8) ---------------------------------------------------
def test_a_manifest_that_stalls_mid_body_ends_at_the_request_deadline(tmp_path: Path) -> None:
    # The read timeout alone (30 s per read, retried) would hold the pull for minutes.
    cfg = TransportConfig(request_deadline=0.5, read_timeout=30, backoff_base=0.0)
    with FakeRegistry() as reg:
        reg.add_image("app")
        reg.add_fault(Fault(path_contains="/manifests/", stall_after=10, times=-1))
        with pytest.raises(RegistryError, match="request deadline") as info:
            Client(tmp_path / "store", transport_config=cfg).pull(f"{reg.host}/app:latest")
        assert "request_deadline" in (info.value.hint or "")


def test_a_manifest_dripping_bytes_ends_at_the_request_deadline(tmp_path: Path) -> None:
    # Each byte arrives well within the read timeout; only the total deadline ends it.
    cfg = TransportConfig(request_deadline=0.5, read_timeout=30, backoff_base=0.0)
    with FakeRegistry() as reg:
        reg.add_image("app")
        reg.add_fault(Fault(path_contains="/manifests/", drip=0.05, drip_chunk=1, times=-1))
        with pytest.raises(RegistryError, match="request deadline"):
            Client(tmp_path / "store", transport_config=cfg).pull(f"{reg.host}/app:latest")


def test_a_blob_that_stalls_is_a_typed_error_after_the_stall_timeout(tmp_path: Path) -> None:
    cfg = TransportConfig(stall_timeout=0.3, max_retries=1, backoff_base=0.0)
    with FakeRegistry() as reg:
        reg.add_image("app")
        reg.add_fault(Fault(path_contains="/blobs/", stall_after=3, times=-1))
        with pytest.raises(RegistryError, match="stalled: no data within the stall timeout"):
            Client(tmp_path / "store", transport_config=cfg).pull(f"{reg.host}/app:latest")


def test_the_deadline_bounds_retries_of_a_slow_registry(tmp_path: Path) -> None:
    # 503 with Retry-After 0.4 s, three times: the 0.5 s deadline ends it before the third.
    cfg = TransportConfig(request_deadline=0.5, max_retries=10, backoff_base=0.0)
    with FakeRegistry() as reg:
        reg.add_image("app")
        reg.add_fault(Fault(path_contains="/manifests/", status=503, retry_after="0.4", times=-1))
        with pytest.raises(RegistryError, match="503"):
            Client(tmp_path / "store", transport_config=cfg).pull(f"{reg.host}/app:latest")
        assert len(reg.requests_to("/manifests/")) <= 2
