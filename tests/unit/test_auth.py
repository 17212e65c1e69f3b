"""Credentials from docker's config, and the Bearer/Basic flows against the fake registry."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from fakeregistry import FakeRegistry, Fault, route_https
from fastdist.auth import (
    Credentials,
    CredentialStore,
    TokenCache,
    parse_token_response,
    parse_www_authenticate,
)
from fastdist.errors import AuthenticationError
from fastdist.reference import Reference
from fastdist.resolver import Resolver
from fastdist.transport import Transport, TransportConfig

FAST = TransportConfig(backoff_base=0.001, backoff_max=0.01)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write_config(tmp_path: Path, obj: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(obj))
    return path


# --- the credential store ------------------------------------------------------------------------
def test_config_auths_base64_and_plain_fields_are_read(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _b64("hubuser:hubpass")},
                "registry.example:5000": {"username": "u", "password": "p:with:colons"},
                "https://ghcr.io": {"identitytoken": "refresh-me"},
            }
        },
    )
    store = CredentialStore.from_docker_config(str(path))
    assert store.get("registry-1.docker.io") == Credentials("hubuser", "hubpass")
    assert store.get("docker.io") == Credentials("hubuser", "hubpass")
    assert store.get("registry.example:5000") == Credentials("u", "p:with:colons")
    ghcr = store.get("ghcr.io")
    assert ghcr is not None
    assert ghcr.identity_token == "refresh-me"
    assert store.get("other.example") is None


def test_docker_config_env_points_at_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_config(tmp_path, {"auths": {"r.example": {"auth": _b64("a:b")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert CredentialStore.from_docker_config().get("r.example") == Credentials("a", "b")


def test_missing_config_means_anonymous(tmp_path: Path) -> None:
    assert CredentialStore.from_docker_config(str(tmp_path / "nope.json")).get("x.io") is None


def test_corrupt_auth_field_is_an_authentication_error(tmp_path: Path) -> None:
    path = _write_config(tmp_path, {"auths": {"r.example": {"auth": "!!!not base64"}}})
    with pytest.raises(AuthenticationError, match="base64"):
        CredentialStore.from_docker_config(str(path))


def test_credentials_repr_hides_secrets() -> None:
    text = repr(Credentials("user", "hunter2", "idtok"))
    assert "hunter2" not in text
    assert "idtok" not in text
    assert "user" in text


@pytest.fixture
def fake_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``docker-credential-test`` on PATH: knows helped.example, logs the hosts it is asked."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    script = bindir / "docker-credential-test"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 3\n'
        "read host\n"
        f'echo "$host" >> {log}\n'
        'case "$host" in\n'
        '  helped.example) echo \'{"Username":"hu","Secret":"hs"}\' ;;\n'
        '  token.example) echo \'{"Username":"<token>","Secret":"rt"}\' ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_cred_helpers_run_the_named_helper_with_the_host_on_stdin(
    tmp_path: Path, fake_helper: Path
) -> None:
    path = _write_config(
        tmp_path,
        {
            "credHelpers": {
                "helped.example": "test",
                "token.example": "test",
                "gone.example": "test",
            }
        },
    )
    store = CredentialStore.from_docker_config(str(path))
    assert store.get("helped.example") == Credentials("hu", "hs")
    tok = store.get("token.example")
    assert tok is not None
    assert tok.identity_token == "rt"
    assert tok.username == ""
    assert store.get("gone.example") is None
    assert store.get("helped.example") == Credentials("hu", "hs")  # cached: not asked again
    assert fake_helper.read_text().split() == ["helped.example", "token.example", "gone.example"]


def test_creds_store_falls_back_to_auths(tmp_path: Path, fake_helper: Path) -> None:
    path = _write_config(
        tmp_path, {"credsStore": "test", "auths": {"file.example": {"auth": _b64("f:g")}}}
    )
    store = CredentialStore.from_docker_config(str(path))
    assert store.get("helped.example") == Credentials("hu", "hs")
    assert store.get("file.example") == Credentials("f", "g")


def test_missing_helper_is_an_authentication_error_with_hint(tmp_path: Path) -> None:
    store = CredentialStore(cred_helpers={"x.example": "definitely-not-installed"})
    with pytest.raises(AuthenticationError) as info:
        store.get("x.example")
    assert info.value.hint is not None
    assert "credHelpers" in info.value.hint


# --- challenge and token parsing -----------------------------------------------------------------
def test_www_authenticate_parses_multiple_challenges_and_quoted_commas() -> None:
    header = (
        'Basic realm="a, b", Bearer realm="https://auth.example/token",'
        'service="registry.example",scope="repository:a/b:pull,push"'
    )
    basic, bearer = parse_www_authenticate(header)
    assert basic.scheme == "basic"
    assert basic.realm == "a, b"
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


def test_token_response_accepts_access_token_and_default_lifetime() -> None:
    tok = parse_token_response(b'{"access_token": "abc"}', now=1000.0)
    assert tok.value == "abc"
    assert 1000.0 < tok.expires_at <= 1060.0
    with pytest.raises(AuthenticationError):
        parse_token_response(b'{"nothing": 1}')


def test_expired_tokens_are_dropped_from_the_cache() -> None:
    cache = TokenCache()
    cache.put("h", "s", parse_token_response(b'{"token":"t","expires_in":1}', now=0.0))
    assert cache.get("h", "s") is None


# --- flows against the fake registry --------------------------------------------------------------
def _resolve(reg: FakeRegistry, transport: Transport, repo: str = "app") -> None:
    Resolver(transport).resolve(Reference.parse(f"{reg.host}/{repo}"))


def test_anonymous_token_flow_then_cached_token_is_reused() -> None:
    with FakeRegistry(auth="token") as reg:
        reg.add_image("app")
        t = Transport(FAST)
        _resolve(reg, t)
        _resolve(reg, t)
        assert len(reg.token_requests) == 1
        tr = reg.token_requests[0]
        assert tr.authorization is None
        assert "scope=repository%3Aapp%3Apull" in tr.path
        assert "service=fake-registry" in tr.path
        auths = [r.authorization for r in reg.requests]
        assert auths[0] is None  # the first request meets the challenge
        assert all(a is not None and a.startswith("Bearer tok-") for a in auths[1:])
        assert len(reg.requests) == 3  # 401, manifest, manifest (cached token)


def test_token_server_outage_is_retried() -> None:
    with FakeRegistry(auth="token") as reg:
        reg.add_image("app")
        reg.add_fault(Fault(path_contains="/token", status=503))
        t = Transport(FAST)
        t.sleep = lambda _s: None
        _resolve(reg, t)
        assert len(reg.token_requests) == 2


def test_token_flow_with_credentials_sends_basic_to_the_realm_only() -> None:
    with FakeRegistry(auth="token", users={"alice": "pw"}, anonymous_pull=False) as reg:
        reg.add_image("app")
        creds = CredentialStore(auths={reg.host: Credentials("alice", "pw")})
        _resolve(reg, Transport(FAST, creds))
        (tr,) = reg.token_requests
        assert tr.authorization == "Basic " + _b64("alice:pw")
        assert all(
            r.authorization is None or r.authorization.startswith("Bearer ") for r in reg.requests
        )


def test_wrong_credentials_at_the_realm_raise_authentication_error() -> None:
    with FakeRegistry(auth="token", users={"alice": "pw"}, anonymous_pull=False) as reg:
        reg.add_image("app")
        creds = CredentialStore(auths={reg.host: Credentials("alice", "wrong")})
        with pytest.raises(AuthenticationError) as info:
            _resolve(reg, Transport(FAST, creds))
        assert "refused" in info.value.message
        assert info.value.hint
        assert "wrong" not in info.value.message
        assert len(reg.token_requests) == 1  # not retried


def test_identity_token_uses_the_oauth2_refresh_grant() -> None:
    with FakeRegistry(auth="token", anonymous_pull=False, identity_tokens={"rt-1": "bob"}) as reg:
        reg.add_image("app")
        creds = CredentialStore(auths={reg.host: Credentials(identity_token="rt-1")})
        _resolve(reg, Transport(FAST, creds))
        (tr,) = reg.token_requests
        assert tr.method == "POST"
        assert b"grant_type=refresh_token" in tr.body
        assert b"refresh_token=rt-1" in tr.body


def test_realm_on_another_host_issues_tokens_the_registry_accepts() -> None:
    with (
        FakeRegistry(hostname="localhost", users={"alice": "pw"}, anonymous_pull=False) as ts,
        FakeRegistry(auth="token", realm=ts.realm, token_issuer=ts) as reg,
    ):
        reg.add_image("app")
        creds = CredentialStore(auths={reg.host: Credentials("alice", "pw")})
        _resolve(reg, Transport(FAST, creds))
        (tr,) = ts.token_requests
        assert tr.authorization == "Basic " + _b64("alice:pw")
        assert not ts.requests  # nothing but the token endpoint was asked there


def test_basic_auth_is_answered_once_then_sent_up_front() -> None:
    with FakeRegistry(auth="basic", users={"alice": "pw"}) as reg:
        reg.add_image("app")
        creds = CredentialStore(auths={reg.host: Credentials("alice", "pw")})
        t = Transport(FAST, creds)
        _resolve(reg, t)
        _resolve(reg, t)
        auths = [r.authorization for r in reg.requests]
        assert auths == [None] + ["Basic " + _b64("alice:pw")] * 2


def test_basic_challenge_without_credentials_hints_at_login() -> None:
    with FakeRegistry(auth="basic", users={"alice": "pw"}) as reg:
        reg.add_image("app")
        with pytest.raises(AuthenticationError) as info:
            _resolve(reg, Transport(FAST))
        assert info.value.hint is not None
        assert "login" in info.value.hint
        assert len(reg.requests) == 1


def test_rejected_basic_credentials_are_not_retried() -> None:
    with FakeRegistry(auth="basic", users={"alice": "pw"}) as reg:
        reg.add_image("app")
        creds = CredentialStore(auths={reg.host: Credentials("alice", "nope")})
        with pytest.raises(AuthenticationError) as info:
            _resolve(reg, Transport(FAST, creds))
        assert info.value.status == 401
        assert len(reg.requests) == 2  # the challenge, one authenticated attempt


def test_http_realm_is_refused_for_an_https_registry() -> None:
    with (
        FakeRegistry(hostname="localhost") as ts,
        FakeRegistry(auth="token", realm=ts.realm, token_issuer=ts) as reg,
    ):
        reg.add_image("app")
        creds = CredentialStore(auths={"registry.example": Credentials("alice", "pw")})
        t = Transport(FAST, creds)
        route_https(t.session, "registry.example", reg)
        with pytest.raises(AuthenticationError, match="plain http"):
            Resolver(t).resolve(Reference.parse("registry.example/app"))
        assert ts.token_requests == []  # neither credentials nor a token request went out
        assert len(reg.requests) == 1
