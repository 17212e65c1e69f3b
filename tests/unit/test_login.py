"""``Client.login`` / ``logout`` (issue 14.6): credentials are checked against the registry
before they are saved, saved 0600 and atomically in docker's config (or given to a credential
helper), read back by pulls, and removed by logout."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from fakeregistry import FakeRegistry
from fastdist.auth import CredentialStore
from fastdist.client import Client
from fastdist.errors import AuthenticationError


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d / "config.json"


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_login_checks_then_saves_and_logout_removes(
    tmp_path: Path, docker_config: Path, auth: str
) -> None:
    with FakeRegistry(auth=auth, users={"alice": "s3cret"}, anonymous_pull=False) as reg:
        client = Client(tmp_path / "store")
        where = client.login(reg.host, "alice", "s3cret")
        assert where == str(docker_config)
        assert stat.S_IMODE(os.stat(docker_config).st_mode) == 0o600
        entry = json.loads(docker_config.read_text())["auths"][reg.host]
        assert base64.b64decode(entry["auth"]) == b"alice:s3cret"
        assert CredentialStore.from_docker_config().get(reg.host) is not None
        assert [p.name for p in docker_config.parent.iterdir()] == ["config.json"]
        assert client.logout(reg.host) is True
        assert reg.host not in json.loads(docker_config.read_text())["auths"]
        assert client.logout(reg.host) is False


def test_login_with_a_wrong_password_saves_nothing(tmp_path: Path, docker_config: Path) -> None:
    docker_config.parent.mkdir()
    docker_config.write_text('{"auths": {}, "keep": "me"}')
    before = docker_config.read_bytes()
    with (
        FakeRegistry(auth="basic", users={"alice": "s3cret"}) as reg,
        pytest.raises(AuthenticationError),
    ):
        Client(tmp_path / "store").login(reg.host, "alice", "wrong")
    assert docker_config.read_bytes() == before


def test_login_keeps_other_config_and_never_writes_through_a_symlink(
    tmp_path: Path, docker_config: Path
) -> None:
    docker_config.parent.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text('{"auths": {}, "other": 1}')
    docker_config.symlink_to(victim)
    with FakeRegistry(auth="basic", users={"alice": "s3cret"}) as reg:
        Client(tmp_path / "store").login(reg.host, "alice", "s3cret")
    assert victim.read_text() == '{"auths": {}, "other": 1}'
    assert not docker_config.is_symlink()
    assert json.loads(docker_config.read_text())["other"] == 1


def test_login_gives_credentials_to_the_configured_helper(
    tmp_path: Path, docker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    helper = bindir / "docker-credential-fdtest"
    helper.write_text(f'#!/bin/sh\necho "$1 $(cat)" >> {log}\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    docker_config.parent.mkdir()
    docker_config.write_text('{"credsStore": "fdtest"}')
    with FakeRegistry(auth="basic", users={"alice": "s3cret"}) as reg:
        where = Client(tmp_path / "store").login(reg.host, "alice", "s3cret")
        host = reg.host
    assert where == "credential helper docker-credential-fdtest"
    action, payload = log.read_text().split(" ", 1)
    assert action == "store"
    assert json.loads(payload) == {"ServerURL": host, "Username": "alice", "Secret": "s3cret"}
    assert json.loads(docker_config.read_text()) == {"credsStore": "fdtest"}  # no secret here
