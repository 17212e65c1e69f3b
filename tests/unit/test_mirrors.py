"""Mirrors from containerd's certs.d hosts.toml: parsing, URLs, order, ns=, and fallback."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fakeregistry import FakeRegistry, Fault
from fastdist.client import Client
from fastdist.mirrors import (
    HostsConfigError,
    Mirrors,
    RegistryHost,
    find_hosts_toml,
    parse_hosts_toml,
)
from fastdist.reference import Reference
from fastdist.testing.images import File, build_image, build_layer, tar_entries
from fastdist.transport import Transport

HOSTS = b"""
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]

[host."https://mirror-a.example:5000"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.pem"
  client = [["client.cert", "client.key"]]
  [host."https://mirror-a.example:5000".header]
    x-token = ["one", "two"]

[host."http://cache.example/base/v2/proxy"]
  override_path = true
"""


def test_hosts_toml_lists_mirrors_in_file_order_then_the_server(tmp_path: Path) -> None:
    hosts = parse_hosts_toml(HOSTS, tmp_path, "https://docker.io")
    assert [h.url for h in hosts] == [
        "https://mirror-a.example:5000",
        "http://cache.example/base/v2/proxy",
        "https://registry-1.docker.io",
    ]
    a, cache, server = hosts
    assert a.capabilities == {"pull"}
    assert a.skip_verify
    assert a.ca == (str(tmp_path / "ca.pem"),)
    assert a.client == ((str(tmp_path / "client.cert"), str(tmp_path / "client.key")),)
    assert a.header_map() == {"x-token": "one, two"}
    assert cache.capabilities == {"pull", "resolve", "push"}  # containerd's default
    assert server.upstream
    assert server.capabilities == {"pull", "resolve"}


def test_api_urls_append_v2_unless_override_path_and_send_ns_only_to_mirrors(
    tmp_path: Path,
) -> None:
    a, cache, server = parse_hosts_toml(HOSTS, tmp_path, "https://docker.io")
    path = "/v2/library/alpine/blobs/sha256:" + "a" * 64
    url = a.api_url(path, ns="docker.io")
    assert url.startswith("https://mirror-a.example:5000/v2/library/alpine/blobs/")
    assert parse_qs(urlsplit(url).query) == {"ns": ["docker.io"]}
    assert cache.api_url(path, ns="docker.io").startswith(
        "http://cache.example/base/v2/proxy/library/alpine/blobs/"
    )
    assert (
        RegistryHost("https://m.example/sub")
        .api_url(path)
        .startswith("https://m.example/sub/v2/library/")
    )
    assert "ns=" not in server.api_url(path, ns="docker.io")


def test_without_server_the_registry_itself_is_the_upstream(tmp_path: Path) -> None:
    hosts = parse_hosts_toml(b'[host."https://m.example"]\n', tmp_path, "https://quay.io")
    assert [h.url for h in hosts] == ["https://m.example", "https://quay.io"]
    assert hosts[-1].upstream


@pytest.mark.parametrize(
    "toml",
    [
        b"server = [",
        b'[host."ftp://m.example"]\n',
        b'[host."https://m.example"]\ncapabilities = ["fly"]\n',
        b'[host."https://m.example"]\nskip_verify = "yes"\n',
        b'[host."https://user:pw@m.example"]\n',
        # Header values that requests would refuse (InvalidHeader) or fail to encode
        # (UnicodeEncodeError) at request time, and a name that is not a token.
        b'[host."https://m.example".header]\nx-a = "one\\u0007two"\n',
        b'[host."https://m.example".header]\nx-a = "\\u20ac"\n',
        b'[host."https://m.example".header]\n"x a" = "v"\n',
    ],
)
def test_bad_hosts_toml_is_a_typed_error(tmp_path: Path, toml: bytes) -> None:
    with pytest.raises(HostsConfigError):
        parse_hosts_toml(toml, tmp_path, "https://quay.io")


def test_host_dir_wins_over_default_and_first_dir_wins(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (two / "quay.io", one / "_default", two / "_default"):
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text("")
    assert find_hosts_toml("quay.io", [one, two]) == two / "quay.io" / "hosts.toml"
    assert find_hosts_toml("ghcr.io", [one, two]) == one / "_default" / "hosts.toml"
    assert find_hosts_toml("ghcr.io", [tmp_path / "none"]) is None


# --- pulls through mirrors ------------------------------------------------------------------
def _serve_image(reg: FakeRegistry) -> tuple[str, object]:
    img = build_image([build_layer(tar_entries([File(f"f{i}", f"layer {i}\n")])) for i in range(3)])
    for digest, blob in img.blobs().items():
        reg.blobs[digest] = blob
    reg.add_manifest("mir/img", img.manifest, img.descriptor.media_type, "v1")
    return f"{reg.host}/mir/img:v1", img


def _hosts_dir(tmp_path: Path, upstream: FakeRegistry, mirrors: list[str]) -> Path:
    d = tmp_path / "certs.d" / upstream.host
    d.mkdir(parents=True)
    body = f'server = "{upstream.url}"\n' + "".join(f'[host."{m}"]\n' for m in mirrors)
    (d / "hosts.toml").write_text(body)
    return tmp_path / "certs.d"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_dead_mirror_falls_back_to_the_upstream(tmp_path: Path) -> None:
    with FakeRegistry() as upstream:
        ref, img = _serve_image(upstream)
        dead = f"http://127.0.0.1:{_closed_port()}"
        hosts_dir = _hosts_dir(tmp_path, upstream, [dead])
        client = Client(tmp_path / "store", snapshotter="native", hosts_dir=hosts_dir)
        client.transport.sleep = lambda _s: None
        pulled = client.pull(ref)
        assert pulled.target.digest == img.descriptor.digest  # type: ignore[attr-defined]
        for digest in img.blobs():  # type: ignore[attr-defined]
            assert len(upstream.requests_to(f"/blobs/{digest}", "GET")) == 1
        # Remembered: the next lookups skip the dead mirror.
        assert [h.url for h in client.mirrors.hosts(Reference.parse(ref), "pull")] == [upstream.url]
    assert client.check().ok


def test_failing_mirror_is_tried_once_per_pull_not_once_per_blob(tmp_path: Path) -> None:
    with FakeRegistry() as upstream, FakeRegistry(hostname="localhost") as broken:
        ref, img = _serve_image(upstream)
        broken.add_fault(Fault(status=503, times=-1))
        hosts_dir = _hosts_dir(tmp_path, upstream, [broken.url])
        client = Client(tmp_path / "store", snapshotter="native", hosts_dir=hosts_dir)
        client.transport.sleep = lambda _s: None
        client.pull(ref)
        # One request and its single retry; every other document and blob skipped it.
        assert len(broken.requests) == 2
        assert len(upstream.requests_to("/blobs/", "GET")) == len(img.blobs())  # type: ignore[attr-defined]


def test_healthy_mirror_serves_everything_with_ns(tmp_path: Path) -> None:
    with FakeRegistry() as upstream, FakeRegistry(hostname="localhost") as mirror:
        ref, img = _serve_image(upstream)
        _serve_image(mirror)
        hosts_dir = _hosts_dir(tmp_path, upstream, [mirror.url])
        client = Client(tmp_path / "store", snapshotter="native", hosts_dir=hosts_dir)
        client.pull(ref)
        assert upstream.requests_to("/blobs/") == []
        assert upstream.requests_to("/manifests/") == []
        served = mirror.requests_to("/v2/mir/img/")
        assert len(served) == 1 + len(img.blobs())  # type: ignore[attr-defined]
        for r in served:
            assert parse_qs(urlsplit(r.path).query) == {"ns": [upstream.host]}


def test_mirror_missing_a_blob_sends_just_that_blob_upstream(tmp_path: Path) -> None:
    with FakeRegistry() as upstream, FakeRegistry(hostname="localhost") as mirror:
        ref, img = _serve_image(upstream)
        _serve_image(mirror)
        missing = img.layers[1].descriptor.digest  # type: ignore[attr-defined]
        del mirror.blobs[missing]
        hosts_dir = _hosts_dir(tmp_path, upstream, [mirror.url])
        client = Client(tmp_path / "store", snapshotter="native", hosts_dir=hosts_dir)
        client.pull(ref)
        assert [r.path for r in upstream.requests_to("/blobs/")] == [f"/v2/mir/img/blobs/{missing}"]
        # A 404 is not a failure of the mirror: it stays in use.
        assert len(client.mirrors.hosts(Reference.parse(ref), "pull")) == 2


def test_mirrors_without_config_use_the_registry_only(tmp_path: Path) -> None:
    m = Mirrors([tmp_path / "nothing"], Transport())
    [only] = m.hosts(Reference.parse("127.0.0.1:5000/x/y:z"), "resolve")
    assert only.upstream
    assert only.url == "https://127.0.0.1:5000"  # TLS first; plain HTTP once seen
