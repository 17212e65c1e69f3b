"""TLS on loopback (issue 17 bug 9): Debian's docker-registry serving TLS on 127.0.0.1 with a CA
made here, pulled through the real CLI (a subprocess) and the API.

A loopback registry is tried over TLS first; plain HTTP is used only when the server answers in
plain HTTP, never after a certificate error (containerd's HTTPFallback, docker's localhost rule).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fastdist.client import Client
from fastdist.errors import RegistryError
from fastdist.pusher import Pusher
from fastdist.testing.images import File, build_image, build_layer, push_image, tar_entries
from fastdist.testing.registry import LocalRegistry
from fastdist.transport import Transport, TransportConfig

if TYPE_CHECKING:
    from conftest import FastdistCLI

pytestmark = pytest.mark.registry


@dataclass(frozen=True)
class TLSRegistry:
    host: str
    ref: str
    ca: Path  # the test CA that signed the registry's certificate
    other_ca: Path  # a CA that did not


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=fastdist test {name}", cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRegistry]:
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca")
    _make_ca(d, "other")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d,
    )  # fmt: skip
    (d / "ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext", cwd=d,
    )  # fmt: skip
    with LocalRegistry(tls=(d / "server.pem", d / "server.key")) as reg:
        ref = f"{reg.host}/tls/hello:v1"
        image = build_image([build_layer(tar_entries([File("hello", b"over TLS\n")]))])
        cfg = TransportConfig(host_ca_files={reg.host: str(d / "ca.pem")})
        push_image(Pusher(Transport(cfg)), ref, image)
        yield TLSRegistry(reg.host, ref, d / "ca.pem", d / "other.pem")


def test_cli_pulls_from_a_tls_loopback_registry_with_ca_file(
    fastdist: FastdistCLI, tls_registry: TLSRegistry
) -> None:
    r = fastdist("pull", "--ca-file", str(tls_registry.ca), tls_registry.ref)
    assert r.rc == 0, r.stderr
    assert f"{tls_registry.ref}: sha256:" in r.stdout
    assert "tls/hello" in fastdist("images").stdout


@pytest.mark.parametrize("ca", [None, "other"], ids=["system-cas", "wrong-ca"])
def test_cli_refuses_an_untrusted_certificate_with_a_hint_and_no_fallback(
    fastdist: FastdistCLI, tls_registry: TLSRegistry, ca: str | None
) -> None:
    args = ["--ca-file", str(tls_registry.other_ca)] if ca else []
    r = fastdist("pull", *args, tls_registry.ref)
    assert r.rc == RegistryError.exit_code
    assert r.stderr.startswith("error: ")
    assert "TLS certificate not trusted" in r.stderr
    assert "hint: " in r.stderr
    assert "--ca-file" in r.stderr
    assert "Traceback" not in r.stderr
    # A fallback to plain HTTP would have met the TLS port's "400 Bad Request".
    assert "400" not in r.stderr


def test_cli_plain_http_to_a_tls_registry_hints_to_drop_the_flag(
    fastdist: FastdistCLI, tls_registry: TLSRegistry
) -> None:
    r = fastdist("pull", "--plain-http", tls_registry.ref)
    assert r.rc == RegistryError.exit_code
    assert ": 400" in r.stderr
    assert "hint: if this registry speaks TLS, drop --plain-http" in r.stderr


def test_cli_tls_verify_false_pulls_without_the_ca(
    fastdist: FastdistCLI, tls_registry: TLSRegistry
) -> None:
    r = fastdist("pull", "--tls-verify=false", tls_registry.ref)
    assert r.rc == 0, r.stderr


def test_api_trusts_a_ca_per_host_or_for_all_hosts(
    tmp_path: Path, tls_registry: TLSRegistry
) -> None:
    for i, cfg in enumerate(
        [
            TransportConfig(host_ca_files={tls_registry.host: str(tls_registry.ca)}),
            TransportConfig(host_ca_files={"127.0.0.1": str(tls_registry.ca)}),
            TransportConfig(ca_file=str(tls_registry.ca)),
        ]
    ):
        client = Client(tmp_path / f"s{i}", transport_config=cfg, credentials=None)
        assert client.pull(tls_registry.ref).name == tls_registry.ref
        # TLS worked, so nothing was learned about plain HTTP for this host.
        assert client.transport.base_url(tls_registry.host).startswith("https://")


def test_api_certificate_error_never_falls_back(tmp_path: Path, tls_registry: TLSRegistry) -> None:
    client = Client(tmp_path / "s", transport_config=TransportConfig(max_retries=0))
    with pytest.raises(RegistryError, match="TLS certificate not trusted") as info:
        client.pull(tls_registry.ref)
    assert info.value.url is not None
    assert info.value.url.startswith("https://")
    assert client.transport.base_url(tls_registry.host).startswith("https://")


def test_plain_http_loopback_registry_is_found_without_flags(
    fastdist: FastdistCLI, busybox: Any, registry: Any
) -> None:
    # Debian's registry in plain HTTP: TLS fails with a plain-HTTP answer, then http://.
    r = fastdist("pull", busybox.ref)
    assert r.rc == 0, r.stderr
    client = Client(fastdist.root, credentials=None)
    assert client.transport.base_url(registry.host).startswith("https://")
    client.pull(busybox.ref)
    assert client.transport.base_url(registry.host) == f"http://{registry.host}"


def test_pre_opened_connections_are_verified_as_a_request_s_are(
    tls_registry: TLSRegistry,
) -> None:
    """``Transport.preconnect`` opens connections a later request reuses without a handshake
    of its own: each is verified when opened, so an untrusted certificate still fails the
    request, and a trusted one serves it."""
    url = f"https://{tls_registry.host}/v2/"
    for cfg, trusted in (
        (TransportConfig(max_retries=0), False),
        (TransportConfig(max_retries=0, ca_file=str(tls_registry.other_ca)), False),
        (TransportConfig(max_retries=0, ca_file=str(tls_registry.ca)), True),
    ):
        t = Transport(cfg)
        opening = t.preconnect(url, 3)
        assert len(opening) == 3
        for th in opening:
            th.join()
        if trusted:
            resp = t.request("GET", url, registry=tls_registry.host, accept_status=(401,))
            resp.close()
            assert resp.status_code in (200, 401)
        else:
            with pytest.raises(RegistryError, match="TLS certificate not trusted"):
                t.request("GET", url, registry=tls_registry.host)
        assert t.base_url(tls_registry.host).startswith("https://")
