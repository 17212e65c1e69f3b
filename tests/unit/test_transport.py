"""Transport policy: plain-HTTP rules, typed errors, retries, Retry-After, redirects."""

from __future__ import annotations

import socket
import threading

import pytest

from fakeregistry import FakeRegistry, Fault, route_https
from fastdist.auth import Credentials, CredentialStore
from fastdist.errors import AuthenticationError, NotFoundError, RegistryError
from fastdist.transport import Transport, TransportConfig, parse_retry_after, redact_url

FAST = TransportConfig(backoff_base=0.001, backoff_max=0.01)


def _transport(config: TransportConfig = FAST, creds: CredentialStore | None = None) -> Transport:
    t = Transport(config, creds)
    t.sleep = lambda _s: None  # retries run without waiting; the delays are asserted instead
    return t


def _get(t: Transport, reg: FakeRegistry, path: str, **kw: object) -> bytes:
    resp = t.request("GET", t.url(reg.host, path), registry=reg.host, **kw)  # type: ignore[arg-type]
    with resp:
        return resp.content


# --- plain HTTP policy ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "config", "expected"),
    [
        # Loopback is tried over TLS first (a plain-HTTP answer is learned: test_tls.py).
        ("127.0.0.1:5000", TransportConfig(), "https://127.0.0.1:5000"),
        ("localhost:5000", TransportConfig(), "https://localhost:5000"),
        ("[::1]:5000", TransportConfig(), "https://[::1]:5000"),
        ("registry.example", TransportConfig(), "https://registry.example"),
        ("127.0.0.1.example.com", TransportConfig(), "https://127.0.0.1.example.com"),
        ("10.0.0.5:5000", TransportConfig(), "https://10.0.0.5:5000"),
        (
            "10.0.0.5:5000",
            TransportConfig(plain_http_hosts=frozenset({"10.0.0.5:5000"})),
            "http://10.0.0.5:5000",
        ),
        (
            "lan.example:80",
            TransportConfig(plain_http_hosts=frozenset({"lan.example"})),
            "http://lan.example:80",
        ),
    ],
)
def test_plain_http_from_the_start_only_for_allowed_hosts(
    host: str, config: TransportConfig, expected: str
) -> None:
    assert Transport(config).base_url(host) == expected


def test_redirect_to_plain_http_on_another_host_is_refused_without_retry() -> None:
    with FakeRegistry() as reg:
        d = reg.add_blob(b"x" * 10)
        reg.add_fault(Fault(path_contains="/blobs/", redirect_to="http://cdn.invalid:1", times=-1))
        t = _transport()
        with pytest.raises(RegistryError, match="only https") as info:
            _get(t, reg, f"/v2/app/blobs/{d}")
        assert not info.value.temporary
        assert len(reg.requests) == 1


def test_https_registry_never_falls_back_to_http() -> None:
    t = _transport()
    with pytest.raises(RegistryError) as info:
        # Nothing listens there over https; the error must not come from an http attempt.
        t.request("GET", t.url("127.0.0.2.invalid", "/v2/"), registry="127.0.0.2.invalid")
    assert info.value.url is not None
    assert info.value.url.startswith("https://")


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "cls", "temporary"),
    [
        (404, "MANIFEST_UNKNOWN", NotFoundError, False),
        (400, "BLOB_UNKNOWN", NotFoundError, False),
        (403, "DENIED", AuthenticationError, False),
        (400, "MANIFEST_INVALID", RegistryError, False),
        (503, "UNAVAILABLE", RegistryError, True),
        (429, "TOOMANYREQUESTS", RegistryError, True),
    ],
)
def test_error_json_maps_to_typed_errors(
    status: int, code: str, cls: type[RegistryError], temporary: bool
) -> None:
    with FakeRegistry() as reg:
        reg.add_fault(Fault(path_contains="/v2/", status=status, code=code, times=-1))
        t = _transport(TransportConfig(max_retries=0))
        with pytest.raises(RegistryError) as info:
            _get(t, reg, "/v2/app/manifests/latest")
        err = info.value
        assert type(err) is cls
        assert (err.status, err.code, err.temporary) == (status, code, temporary)
        assert err.url == f"{reg.url}/v2/app/manifests/latest"
        assert code in err.message


def test_retries_503_then_succeeds() -> None:
    with FakeRegistry() as reg:
        d = reg.add_blob(b"payload")
        reg.add_fault(Fault(path_contains="/blobs/", status=503, times=2))
        retries: list[int] = []
        t = _transport()
        body = _get(t, reg, f"/v2/app/blobs/{d}", on_retry=lambda e, n, s: retries.append(n))
        assert body == b"payload"
        assert len(reg.requests) == 3
        assert retries == [1, 2]


def test_gives_up_after_max_retries_with_a_temporary_error() -> None:
    with FakeRegistry() as reg:
        reg.add_fault(Fault(path_contains="/v2/", status=500, code="UNKNOWN", times=-1))
        t = _transport(TransportConfig(max_retries=2, backoff_base=0.001))
        with pytest.raises(RegistryError) as info:
            _get(t, reg, "/v2/app/manifests/latest")
        assert info.value.temporary
        assert info.value.status == 500
        assert len(reg.requests) == 3


def test_429_honours_retry_after() -> None:
    with FakeRegistry() as reg:
        d = reg.add_blob(b"payload")
        reg.add_fault(
            Fault(path_contains="/blobs/", status=429, code="TOOMANYREQUESTS", retry_after="0.05")
        )
        delays: list[float] = []
        t = _transport()
        assert (
            _get(t, reg, f"/v2/app/blobs/{d}", on_retry=lambda e, n, s: delays.append(s))
            == b"payload"
        )
        assert delays == [0.05]
        assert len(reg.requests) == 2


def test_retry_after_beyond_the_budget_fails_fast_with_a_hint() -> None:
    with FakeRegistry() as reg:
        reg.add_fault(
            Fault(path_contains="/v2/", status=429, code="TOOMANYREQUESTS", retry_after="3600")
        )
        t = _transport()
        with pytest.raises(RegistryError) as info:
            _get(t, reg, "/v2/app/manifests/latest")
        assert info.value.hint is not None
        assert "3600" in info.value.hint
        assert len(reg.requests) == 1


def test_not_found_is_not_retried() -> None:
    with FakeRegistry() as reg:
        with pytest.raises(NotFoundError):
            _get(_transport(), reg, "/v2/app/manifests/missing")
        assert len(reg.requests) == 1


def test_connection_refused_is_temporary_and_retried() -> None:
    with FakeRegistry() as reg:
        host = reg.host
    t = _transport(TransportConfig(max_retries=1, backoff_base=0.001))
    retries: list[int] = []
    with pytest.raises(RegistryError) as info:
        t.request(
            "GET", t.url(host, "/v2/"), registry=host, on_retry=lambda e, n, s: retries.append(n)
        )
    assert info.value.temporary
    assert retries == [1]
    assert info.value.message.endswith(": connection refused")
    assert info.value.hint is not None
    assert host in info.value.hint


def test_unresolvable_host_is_named_as_such() -> None:
    t = _transport(TransportConfig(max_retries=0))
    host = "registry.invalid"  # RFC 2606: never resolves
    with pytest.raises(RegistryError) as info:
        t.request("GET", t.url(host, "/v2/"), registry=host)
    assert info.value.message == f"GET https://{host}/v2/: cannot resolve the host name"


# --- redirects and credentials --------------------------------------------------------------------
def test_redirect_to_another_host_drops_authorization() -> None:
    with (
        FakeRegistry(hostname="localhost") as cdn,
        FakeRegistry(auth="basic", users={"u": "p"}) as reg,
    ):
        d = reg.add_blob(b"blob bytes")
        cdn.blobs[d] = b"blob bytes"
        reg.add_fault(Fault(path_contains="/blobs/", method="GET", redirect_to=cdn.url, times=-1))
        t = _transport(creds=CredentialStore(auths={reg.host: Credentials("u", "p")}))
        assert _get(t, reg, f"/v2/app/blobs/{d}") == b"blob bytes"
        assert [r.authorization is not None for r in reg.requests] == [False, True]
        assert len(cdn.requests) == 1
        assert cdn.requests[0].authorization is None


def test_bearer_token_does_not_follow_a_redirect_to_the_cdn() -> None:
    with FakeRegistry(hostname="localhost") as cdn, FakeRegistry(auth="token") as reg:
        d = reg.add_blob(b"blob bytes")
        cdn.blobs[d] = b"blob bytes"
        reg.add_fault(Fault(path_contains="/blobs/", method="GET", redirect_to=cdn.url, times=-1))
        t = _transport()
        assert _get(t, reg, f"/v2/app/blobs/{d}", scope="repository:app:pull") == b"blob bytes"
        assert reg.requests[-1].authorization is not None
        assert [r.authorization for r in cdn.requests] == [None]


def test_https_registry_redirect_to_loopback_http_is_allowed_without_credentials() -> None:
    with FakeRegistry() as cdn, FakeRegistry(auth="basic", users={"u": "p"}) as reg:
        d = reg.add_blob(b"z")
        cdn.blobs[d] = b"z"
        reg.add_fault(Fault(path_contains="/blobs/", method="GET", redirect_to=cdn.url, times=-1))
        t = _transport(creds=CredentialStore(auths={"registry.example": Credentials("u", "p")}))
        route_https(t.session, "registry.example", reg)
        resp = t.request(
            "GET", f"https://registry.example/v2/app/blobs/{d}", registry="registry.example"
        )
        with resp:
            assert resp.content == b"z"
        assert [r.authorization for r in cdn.requests] == [None]


# --- helpers -------------------------------------------------------------------------------------
def test_redact_url_drops_userinfo_and_query() -> None:
    url = "https://user:secret@cdn.example:8443/blobs/x?X-Amz-Signature=abc&token=t"
    assert redact_url(url) == "https://cdn.example:8443/blobs/x?…"
    assert "secret" not in redact_url(url)
    assert "abc" not in redact_url(url)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.05") == 0.05
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- TLS first on loopback, plain HTTP only when the server answers in it (issue 17) ------------
def test_loopback_registry_in_plain_http_is_learned_after_tls_fails() -> None:
    with FakeRegistry() as reg:
        d = reg.add_blob(b"payload")
        t = _transport()
        assert t.base_url(reg.host) == f"https://{reg.host}"
        assert _get(t, reg, f"/v2/app/blobs/{d}") == b"payload"
        assert t.base_url(reg.host) == f"http://{reg.host}"
        # The TLS handshake probe and the OPTIONS * probe are not registry requests.
        assert [(r.method, r.path) for r in reg.requests] == [("GET", f"/v2/app/blobs/{d}")]
        # Probed once per host: a second transport probes again, this one does not.
        assert _get(t, reg, f"/v2/app/blobs/{d}") == b"payload"
        assert len(reg.requests) == 2


def test_a_refused_connection_is_not_remembered_as_tls() -> None:
    with FakeRegistry() as reg:
        port = reg.port
    # Nothing listens now: the probe learns nothing, and the error is a connection error.
    t = _transport(TransportConfig(max_retries=0))
    host = f"127.0.0.1:{port}"
    with pytest.raises(RegistryError, match="connection refused"):
        t.request("GET", t.url(host, "/v2/"), registry=host)
    assert t.may_fall_back(host)
    assert t.base_url(host) == f"https://{host}"


@pytest.mark.parametrize(
    ("host", "config", "expected"),
    [
        ("127.0.0.1:5000", TransportConfig(), True),
        ("localhost:5443", TransportConfig(), True),
        ("[::1]:5000", TransportConfig(), True),
        ("127.0.0.1", TransportConfig(), False),  # no port: http would go to port 80
        ("registry.example:5000", TransportConfig(), False),
        (
            "lan.example:5000",
            TransportConfig(insecure_skip_verify_hosts=frozenset({"lan.example"})),
            True,
        ),
    ],
)
def test_only_loopback_and_insecure_hosts_may_fall_back(
    host: str, config: TransportConfig, expected: bool
) -> None:
    assert Transport(config).may_fall_back(host) is expected


def test_a_tls_failure_without_a_plain_http_answer_does_not_fall_back() -> None:
    # A loopback server that speaks neither TLS nor HTTP (an SSH banner, then close).
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    host = f"127.0.0.1:{srv.getsockname()[1]}"

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        t = _transport(TransportConfig(max_retries=0))
        with pytest.raises(RegistryError, match="TLS failure") as info:
            t.request("GET", t.url(host, "/v2/"), registry=host)
        assert info.value.url == f"https://{host}/v2/"
        assert t.base_url(host) == f"https://{host}"
    finally:
        srv.close()
