"""``fastdist serve``: the store as a read-only registry, against real HTTP clients (requests,
raw sockets, skopeo + umoci, fastdist's own puller through a hosts.toml mirror).

Modelled on the distribution-spec conformance "pull" category: status codes, headers, HEAD
bodies, Range cases, unknown names and digests; then hostile requests, each checked for the
right status and no effect on the store."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
import requests

from fastdist import oci
from fastdist.client import Client
from fastdist.errors import ServeError
from fastdist.serve import RegistryServer, ServeConfig
from fastdist.testing.images import (
    BuiltImage,
    BuiltIndex,
    Dir,
    File,
    Symlink,
    build_image,
    build_index,
    build_layer,
    push_image,
    tar_entries,
    tree_snapshot,
)

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry

BIG = os.urandom(3 << 20)  # incompressible: a layer blob of a few MiB


@dataclass
class Served:
    client: Client
    server: RegistryServer
    upstream: str  # the registry host the image was pulled from
    path: str  # repository path
    index: BuiltIndex
    image: BuiltImage

    @property
    def url(self) -> str:
        return self.server.url

    def store_files(self) -> dict[str, bytes]:
        d = self.client.root / "content" / "blobs" / "sha256"
        return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _image(tag_text: str) -> BuiltImage:
    return build_image(
        [
            build_layer(tar_entries([Dir("etc"), File("etc/hello", f"hello {tag_text}\n")])),
            build_layer(
                tar_entries([Dir("data"), File("data/big", BIG), Symlink("data/rel", "big")])
            ),
        ],
        cmd=["/bin/sh"],
    )


def _client(root: Path, hosts_dir: Path | None = None) -> Client:
    return Client(root, snapshotter="native", hosts_dir=hosts_dir or root.parent / "no-mirrors")


def _start(client: Client, **kw: object) -> RegistryServer:
    cfg = ServeConfig(listen="127.0.0.1:0", **kw)  # type: ignore[arg-type]
    return client.serve(cfg).start()


@pytest.fixture
def served(registry: LocalRegistry, pusher: Pusher, tmp_path: Path) -> Iterator[Served]:
    upstream = registry.host
    path = f"serve/app{os.urandom(3).hex()}"
    image = _image(path)
    index = build_index([image])
    push_image(pusher, f"{upstream}/{path}:v1", index)
    client = _client(tmp_path / "store")
    client.pull(f"{upstream}/{path}:v1")
    server = _start(client, head_timeout=2.0)
    try:
        yield Served(client, server, upstream, path, index, image)
    finally:
        server.stop()


def _raw(server: RegistryServer, data: bytes, *, shut: bool = True) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _code(resp: requests.Response) -> str:
    return str(resp.json()["errors"][0]["code"])


# --- conformance: pull ------------------------------------------------------------------------
def test_base_endpoint_answers_200_with_the_api_version_header(served: Served) -> None:
    r = requests.get(f"{served.url}/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert requests.head(f"{served.url}/v2/").status_code == 200


def test_manifest_by_tag_is_the_stored_index_byte_for_byte(served: Served) -> None:
    url = f"{served.url}/v2/{served.path}/manifests/v1"
    accept = ", ".join(oci.MANIFEST_ACCEPT)
    r = requests.get(url, headers={"Accept": accept})
    assert r.status_code == 200
    assert r.content == served.index.index
    assert r.headers["Docker-Content-Digest"] == served.index.descriptor.digest
    assert r.headers["Content-Type"] == oci.OCI_INDEX
    assert int(r.headers["Content-Length"]) == len(served.index.index)
    h = requests.head(url, headers={"Accept": accept})
    assert h.status_code == 200
    assert h.content == b""
    assert h.headers["Docker-Content-Digest"] == served.index.descriptor.digest
    assert int(h.headers["Content-Length"]) == len(served.index.index)


def test_client_that_takes_no_index_gets_the_platform_manifest(served: Served) -> None:
    r = requests.get(
        f"{served.url}/v2/{served.path}/manifests/v1", headers={"Accept": oci.OCI_MANIFEST}
    )
    assert r.status_code == 200
    assert r.content == served.image.manifest
    assert r.headers["Docker-Content-Digest"] == served.image.descriptor.digest
    assert r.headers["Content-Type"] == oci.OCI_MANIFEST


def test_manifest_in_no_accepted_media_type_is_manifest_unknown(served: Served) -> None:
    r = requests.get(
        f"{served.url}/v2/{served.path}/manifests/v1", headers={"Accept": oci.DOCKER_MANIFEST}
    )
    assert r.status_code == 404
    assert _code(r) == "MANIFEST_UNKNOWN"


def test_manifest_by_digest_is_served_under_any_valid_name(served: Served) -> None:
    d = served.image.descriptor.digest
    r = requests.get(f"{served.url}/v2/some/other/name/manifests/{d}")
    assert r.status_code == 200
    assert r.content == served.image.manifest
    assert r.headers["Content-Type"] == oci.OCI_MANIFEST
    assert hashlib.sha256(r.content).hexdigest() == d.split(":")[1]


def test_blob_get_head_and_ranges(served: Served) -> None:
    layer = served.image.layers[1]
    url = f"{served.url}/v2/{served.path}/blobs/{layer.descriptor.digest}"
    size = len(layer.blob)
    r = requests.get(url)
    assert r.status_code == 200
    assert r.content == layer.blob
    assert r.headers["Docker-Content-Digest"] == layer.descriptor.digest
    assert r.headers["Accept-Ranges"] == "bytes"
    h = requests.head(url)
    assert h.status_code == 200
    assert h.content == b""
    assert int(h.headers["Content-Length"]) == size
    cases = [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, size - 1),
        ("bytes=-5", size - 5, size - 1),
        (f"bytes=10-{size + 1000}", 10, size - 1),
    ]
    for header, first, last in cases:
        p = requests.get(url, headers={"Range": header})
        assert p.status_code == 206, header
        assert p.content == layer.blob[first : last + 1], header
        assert p.headers["Content-Range"] == f"bytes {first}-{last}/{size}", header
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        p = requests.get(url, headers={"Range": header})
        assert p.status_code == 416, header
        assert p.headers["Content-Range"] == f"bytes */{size}", header
    # A malformed or multi-range header may be ignored (RFC 9110 §14.2): the whole blob.
    for header in ("bytes=5-2", "items=0-1", "bytes=0-1,5-6"):
        p = requests.get(url, headers={"Range": header})
        assert (p.status_code, p.content) == (200, layer.blob), header


def test_unknown_names_tags_and_digests_are_spec_errors(served: Served) -> None:
    missing = "sha256:" + "0" * 64
    cases = [
        (f"/v2/{served.path}/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/{served.path}/manifests/{missing}", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/{served.path}/blobs/{missing}", 404, "BLOB_UNKNOWN"),
        # "manifests" and "blobs" are legal repository components.
        (f"/v2/a/manifests/b/blobs/{missing}", 404, "BLOB_UNKNOWN"),
        ("/v2/a/blobs/b/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v2/no/such/repo/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v2/no/such/repo/tags/list", 404, "NAME_UNKNOWN"),
        # A config is a blob, not a manifest: not served as one.
        (
            f"/v2/{served.path}/manifests/{served.image.config_descriptor.digest}",
            404,
            "MANIFEST_UNKNOWN",
        ),
    ]
    for path, status, code in cases:
        r = requests.get(served.url + path)
        assert (r.status_code, _code(r)) == (status, code), path
        assert r.headers["Content-Type"] == "application/json"


def test_tags_list_names_the_repository_tags(served: Served, pusher: Pusher) -> None:
    r = requests.get(f"{served.url}/v2/{served.path}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": served.path, "tags": ["v1"]}
    assert requests.get(f"{served.url}/v2/{served.path}/tags/list?n=0").json()["tags"] == []


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_write_methods_are_unsupported_and_change_nothing(served: Served, method: str) -> None:
    before = served.store_files()
    images = [i.name for i in served.client.images()]
    for path in (
        f"/v2/{served.path}/manifests/v1",
        f"/v2/{served.path}/blobs/uploads/",
        f"/v2/{served.path}/blobs/{served.image.layers[0].descriptor.digest}",
    ):
        r = requests.request(method, served.url + path, data=b"{}")
        assert (r.status_code, _code(r)) == (405, "UNSUPPORTED"), path
    assert served.store_files() == before
    assert [i.name for i in served.client.images()] == images


# --- mirror semantics -------------------------------------------------------------------------
def test_ns_selects_the_registry_the_image_was_pulled_from(served: Served) -> None:
    base = f"{served.url}/v2/{served.path}/manifests/v1"
    r = requests.get(base, params={"ns": served.upstream})
    assert r.status_code == 200
    assert r.content == served.index.index
    r = requests.get(base, params={"ns": "quay.io"})
    assert r.status_code == 404
    assert _code(r) == "NAME_UNKNOWN"
    # Without ns: the path under the one registry that holds it; the full name works too.
    assert requests.get(base).content == served.index.index
    r = requests.get(f"{served.url}/v2/{served.path}/tags/list", params={"ns": served.upstream})
    assert r.json()["tags"] == ["v1"]


def test_docker_hub_names_map_like_docker(tmp_path: Path, served: Served) -> None:
    # A record named as docker.io would name it (no network: the record points at stored blobs).
    from dataclasses import replace

    rec = served.client.metadata.images.list()[0]
    served.client.metadata.images.put(replace(rec, name="docker.io/library/redis:7"))
    want = served.index.index
    for path, params in (
        ("library/redis", {"ns": "docker.io"}),
        ("library/redis", {"ns": "registry-1.docker.io"}),
        ("library/redis", {}),
        ("redis", {}),
    ):
        r = requests.get(f"{served.url}/v2/{path}/manifests/7", params=params)
        assert (r.status_code, r.content) == (200, want), (path, params)


# --- blobs under concurrent change ------------------------------------------------------------
def test_blob_removed_while_being_served_arrives_whole_then_404(served: Served) -> None:
    layer = served.image.layers[1]
    url = f"{served.url}/v2/{served.path}/blobs/{layer.descriptor.digest}"
    with requests.get(url, stream=True) as r:
        assert r.status_code == 200
        it = r.iter_content(65536)
        first = next(it)
        served.client.content.delete(layer.descriptor.digest)  # as prune would
        body = first + b"".join(it)
    assert body == layer.blob
    r = requests.get(url)
    assert r.status_code == 404
    assert _code(r) == "BLOB_UNKNOWN"


def test_many_concurrent_clients_get_identical_bytes(served: Served) -> None:
    layer = served.image.layers[1]
    url = f"{served.url}/v2/{served.path}/blobs/{layer.descriptor.digest}"
    results: list[bytes] = []
    lock = threading.Lock()

    def fetch() -> None:
        with requests.Session() as s:
            for _ in range(3):
                data = s.get(url).content
                with lock:
                    results.append(data)

    threads = [threading.Thread(target=fetch) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 36
    assert all(d == layer.blob for d in results)


# --- hostile requests -------------------------------------------------------------------------
HOSTILE = [
    (b"GET /v2/../../etc/passwd HTTP/1.1\r\n\r\n", 404),
    (b"GET /v2/a/../../blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\n\r\n", 400),
    # "blobs/sha256:../…" is no route (an object has no '/'): 404, no path is ever formed.
    (b"GET /v2/a/blobs/sha256:../../../../etc/passwd HTTP/1.1\r\n\r\n", 404),
    (b"GET /v2/a/blobs/sha256:..%2f..%2fetc%2fpasswd HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/%2e%2e/%2e%2e/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/a/blobs/sha256:" + b"A" * 64 + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/a/blobs/sha512:" + b"0" * 128 + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/a/blobs/" + b"0" * 64 + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/A/manifests/v1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/a//b/manifests/v1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/a/manifests/.hidden HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/a/manifests/v1?ns=../../x HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/" + b"a/" * 200 + b"a/manifests/v1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /v2/ HTTP/1.1\r\nX: " + b"y" * 40000 + b"\r\n\r\n", 431),
    (b"GET /v2/" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /v2/ HTTP/2.0\r\n\r\n", 505),
    (b"GET /v2/\x1b[31m HTTP/1.1\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v2/ HTTP/1.1\r\n folded: header\r\n\r\n", 400),
    (b"GET /v2/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
]


@pytest.mark.parametrize(("raw", "status"), HOSTILE, ids=[f"h{i}" for i in range(len(HOSTILE))])
def test_hostile_requests_get_the_right_status_and_leave_the_store_alone(
    served: Served, raw: bytes, status: int
) -> None:
    before = served.store_files()
    out = _raw(served.server, raw)
    assert _status(out) == status
    assert b"Traceback" not in out
    assert b"/etc/passwd" not in out.split(b"\r\n\r\n", 1)[1]
    assert served.store_files() == before


def test_symlinked_blob_is_not_followed(served: Served) -> None:
    target = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path("/etc/passwd")
    data = target.read_bytes()
    d = served.client.root / "content" / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
    d.symlink_to(target)
    r = requests.get(f"{served.url}/v2/{served.path}/blobs/sha256:{d.name}")
    assert r.status_code == 500
    assert data not in r.content
    assert "Traceback" not in r.text
    assert str(served.client.root) not in r.text


def test_slow_client_is_cut_off_by_the_head_timeout(served: Served) -> None:
    # Half a request head, then silence: the server answers 408 and closes (bounded by its
    # 2 s head timeout; the test waits for the server's answer, never on a clock).
    out = _raw(served.server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n", shut=False)
    assert _status(out) == 408


def test_silent_connection_is_closed(served: Served) -> None:
    assert _raw(served.server, b"", shut=False) == b""


def test_a_tls_handshake_on_the_plain_port_is_answered_400_at_once(served: Served) -> None:
    # The head timeout is long: waiting for a head that never comes would fail on _raw's own
    # 30 s socket timeout. A client trying https first (fastdist on loopback) falls back now.
    server = _start(served.client, head_timeout=600.0)
    try:
        hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(32)
        out = _raw(server, hello, shut=False)
        assert _status(out) == 400
        assert b"plain-HTTP" in out
    finally:
        server.stop()


def test_a_client_that_stops_reading_a_blob_is_cut_off_after_io_timeout(served: Served) -> None:
    """The blob goes out by sendfile in one blocking call; SO_SNDTIMEO ends it when the client
    takes nothing for io_timeout, and the connection is closed short (never hung forever)."""
    done = threading.Event()

    class _Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "/blobs/" in record.getMessage():
                done.set()

    access = logging.getLogger("fastdist.serve.access")
    handler, level = _Seen(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    server = _start(served.client, io_timeout=1.0)
    try:
        digest = served.image.layers[1].descriptor.digest
        host, port = server.address.rsplit(":", 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window the blob overflows
        s.connect((host, int(port)))
        s.settimeout(60)
        with s:
            s.sendall(f"GET /v2/{served.path}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert done.wait(120)  # the server gave up on the write (the access log says so)
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    got += len(chunk)
        assert got < len(BIG)  # cut short, then closed: recv reached EOF
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
        server.stop()


def test_connections_over_the_cap_get_503(served: Served) -> None:
    server = _start(served.client, max_connections=2, head_timeout=60.0)
    try:
        host, port = server.address.rsplit(":", 1)
        held = [socket.create_connection((host, int(port))) for _ in range(2)]
        try:
            out = _raw(server, b"", shut=False)
            assert _status(out) == 503
            assert b"TOOMANYREQUESTS" in out
        finally:
            for s in held:
                s.close()
    finally:
        server.stop()


def _open_sockets() -> dict[str, str]:
    """This process's open sockets by fd (other fds come and go with the rest of the test
    process: an earlier test's epoll, a log file)."""
    out = {}
    for n in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[n] = os.readlink(f"/proc/self/fd/{n}")
    return {n: t for n, t in out.items() if t.startswith("socket:")}


def _get_v2(s: socket.socket) -> bytes:
    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    out = b""
    while b"\r\n\r\n" not in out or not out.endswith(b"{}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_a_thousand_connections_over_a_small_cap_get_503_and_leak_nothing(
    served: Served,
) -> None:
    """1,000 connections opened at once, none read until all are open, against a cap of 4:
    each gets its 503 (none hangs: the accept queue holds the burst, so no handshake is
    dropped), the admitted clients are answered during the flood, and every socket and
    thread is gone after."""
    import resource

    # 1,000 client sockets and the server's side of each live in this one process: a fresh
    # host's soft limit (1024) would end the test in EMFILE, not in the server's answer.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4096
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    threads_before = threading.active_count()
    sockets_before = _open_sockets()
    # Held connections stay held however long the flood takes (no idle or head cut-off).
    server = _start(served.client, max_connections=4, head_timeout=600.0, idle_timeout=600.0)
    host, port = server.address.rsplit(":", 1)
    held: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        held = [socket.create_connection((host, int(port)), timeout=120) for _ in range(4)]
        for s in held:  # each admitted (its thread answers) before the flood starts
            assert _get_v2(s).startswith(b"HTTP/1.1 200")
        for _ in range(1000):  # all open at once before any is read
            flood.append(socket.create_connection((host, int(port)), timeout=120))
        for s in held:  # the legitimate clients are served while the flood is pending
            assert _get_v2(s).startswith(b"HTTP/1.1 200")
        statuses = []
        for s in flood:
            out = b""
            while chunk := s.recv(65536):  # the server closes each; the timeout fails a hang
                out += chunk
            statuses.append(_status(out))
            s.close()
        assert statuses == [503] * 1000
        for s in held:  # and after it
            assert _get_v2(s).startswith(b"HTTP/1.1 200")
    finally:
        for s in held + flood:
            s.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Nothing the flood opened stays open (what earlier tests left may close meanwhile).
    assert set(_open_sockets().items()) <= set(sockets_before.items())
    assert threading.active_count() <= threads_before


def test_pipelined_keep_alive_requests_are_answered_in_order(served: Served) -> None:
    req = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _raw(served.server, req + req + b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 3


def test_access_log_escapes_client_strings(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastdist.serve.access")
    _raw(served.server, b"GET /v2/a/manifests/\x1b]0;pwned\x07 HTTP/1.1\r\n\r\n")
    _raw(served.server, b"GET /v2/x/manifests/ok?q=\xff\x1b[2J HTTP/1.1\r\n\r\n")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\xff" not in text


# --- options ----------------------------------------------------------------------------------
def test_basic_auth_from_htpasswd_sha_and_bearer_token(served: Served, tmp_path: Path) -> None:
    pw = tmp_path / "htpasswd"
    sha = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    pw.write_text(f"alice:{{SHA}}{sha}\n")
    server = _start(served.client, htpasswd=str(pw), token="tok-123")
    try:
        url = f"{server.url}/v2/{served.path}/manifests/v1"
        r = requests.get(url)
        assert r.status_code == 401
        assert _code(r) == "UNAUTHORIZED"
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
        assert requests.get(url, auth=("alice", "wrong")).status_code == 401
        assert requests.get(url, auth=("bob", "s3cret")).status_code == 401
        assert requests.get(url, auth=("alice", "s3cret")).status_code == 200
        assert requests.get(url, headers={"Authorization": "Bearer tok-123"}).status_code == 200
        assert requests.get(url, headers={"Authorization": "Bearer tok-12"}).status_code == 401
    finally:
        server.stop()


@pytest.mark.parametrize(
    "line", ["alice:$apr1$abc$def", "alice:plain", "no-colon", "alice:$1$md5crypt"]
)
def test_htpasswd_with_weak_or_unknown_hashes_is_refused_at_start(
    served: Served, tmp_path: Path, line: str
) -> None:
    pw = tmp_path / "htpasswd"
    pw.write_text(line + "\n")
    with pytest.raises(ServeError) as e:
        served.client.serve(ServeConfig(listen="127.0.0.1:0", htpasswd=str(pw)))
    assert e.value.hint or "line" in e.value.message


def test_tls_serves_https(served: Served, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = _start(served.client, tls_cert=str(cert), tls_key=str(key))
    try:
        assert server.url.startswith("https://")
        r = requests.get(
            f"{server.url}/v2/{served.path}/blobs/{served.image.layers[1].descriptor.digest}",
            verify=str(cert),
        )
        assert r.status_code == 200
        assert r.content == served.image.layers[1].blob
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{server.address}/v2/", timeout=30)
    finally:
        server.stop()


def test_bad_tls_files_and_listen_addresses_are_serve_errors(
    served: Served, tmp_path: Path
) -> None:
    with pytest.raises(ServeError):
        served.client.serve(ServeConfig(tls_cert=str(tmp_path / "missing.pem")))
    with pytest.raises(ServeError):
        served.client.serve(ServeConfig(listen="nope")).start()


# --- real clients -----------------------------------------------------------------------------
def _hosts_toml(dir_: Path, upstream: str, mirror: str) -> Path:
    d = dir_ / upstream
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        f'server = "http://{upstream}"\n\n[host."{mirror}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return dir_


def test_fastdist_pulls_through_fastdist_serve_as_a_hosts_toml_mirror(
    served: Served, pusher: Pusher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastdist.serve.access")
    hosts = _hosts_toml(tmp_path / "certs.d", served.upstream, served.url)
    other = _client(tmp_path / "other", hosts_dir=hosts)
    img = other.pull(f"{served.upstream}/{served.path}:v1")
    assert img.target.digest == served.index.descriptor.digest
    served_lines = [r.getMessage() for r in caplog.records]
    ns = "ns=" + quote(served.upstream, safe="")
    assert any(ns in m and " 200 " in m and "/manifests/v1" in m for m in served_lines)
    for layer in served.image.layers:
        assert any(f"/blobs/{layer.descriptor.digest}" in m and " 200 " in m for m in served_lines)
    a, b = tmp_path / "a", tmp_path / "b"
    served.client.unpack(f"{served.upstream}/{served.path}:v1", a)
    other.unpack(f"{served.upstream}/{served.path}:v1", b)
    assert tree_snapshot(a) == tree_snapshot(b)
    # An image the mirror lacks: a 404 there, then the upstream.
    fresh = _image("fresh")
    push_image(pusher, f"{served.upstream}/{served.path}:v2", fresh)
    caplog.clear()
    img2 = other.pull(f"{served.upstream}/{served.path}:v2")
    assert img2.target.digest == fresh.descriptor.digest
    assert any(
        "/manifests/v2" in r.getMessage() and " 404 " in r.getMessage() for r in caplog.records
    )


def test_skopeo_copy_and_umoci_unpack_give_the_same_blobs_and_tree(
    served: Served, tmp_path: Path
) -> None:
    if shutil.which("skopeo") is None or shutil.which("umoci") is None:
        if os.environ.get("CI"):
            pytest.fail("skopeo and umoci are needed (scripts/setup.sh installs them)")
        pytest.skip("skopeo or umoci not installed")
    layout = tmp_path / "layout"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--all",
            f"docker://{served.server.address}/{served.path}:v1",
            f"oci:{layout}:v1",
        ],
        check=True,
        capture_output=True,
    )
    copied = {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
    stored = served.store_files()
    assert copied == stored  # byte-identical: index, manifest, config and layers
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True, capture_output=True
    )
    mine = tmp_path / "mine"
    served.client.unpack(f"{served.upstream}/{served.path}:v1", mine)
    assert tree_snapshot(bundle / "rootfs") == tree_snapshot(mine)


def test_index_bytes_decode_to_what_was_pushed(served: Served) -> None:
    r = requests.get(f"{served.url}/v2/{served.path}/manifests/v1")
    assert json.loads(r.content)["manifests"][0]["digest"] == served.image.descriptor.digest


def test_serving_goes_on_while_the_store_pulls_removes_and_prunes(
    served: Served, pusher: Pusher, tmp_path: Path
) -> None:
    wanted = {layer.descriptor.digest: layer.blob for layer in served.image.layers}
    wanted[served.image.config_descriptor.digest] = served.image.config
    done = threading.Event()
    seen: list[tuple[int, bool]] = []

    def fetch() -> None:
        with requests.Session() as s:
            while True:
                last = done.is_set()
                for digest, blob in wanted.items():
                    r = s.get(f"{served.url}/v2/{served.path}/blobs/{digest}")
                    seen.append((r.status_code, r.status_code != 200 or r.content == blob))
                if last:
                    return

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        other = _client(served.client.root)  # another client on the same root, as a 2nd process
        push_image(pusher, f"{served.upstream}/{served.path}:v3", _image("v3"))
        other.pull(f"{served.upstream}/{served.path}:v3")
        other.remove(f"{served.upstream}/{served.path}:v1")
        other.prune()
    finally:
        done.set()
        for t in threads:
            t.join()
    assert all(whole for _, whole in seen)
    assert {status for status, _ in seen} <= {200, 404}
    # The shared BIG layer is still used by :v3; the small layers of :v1 were pruned.
    assert (404, True) in seen


def test_stop_lets_an_in_flight_download_finish(served: Served) -> None:
    server = _start(served.client)
    layer = served.image.layers[1]
    with requests.get(
        f"{server.url}/v2/{served.path}/blobs/{layer.descriptor.digest}", stream=True
    ) as r:
        first = next(r.iter_content(4096))
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        body = first + b"".join(r.iter_content(65536))
    stopper.join()
    assert body == layer.blob
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{server.url}/v2/", timeout=30)


@dataclass
class Containerd:
    address: str
    proc: subprocess.Popen[bytes]
    dir: Path

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", self.address, "-n", "fastdist-test", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """Debian's containerd with its own root, state and socket (no CRI), for ``ctr``."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        if os.environ.get("CI"):
            pytest.fail("containerd is needed (scripts/setup.sh installs it)")
        pytest.skip("containerd not installed")
    import tempfile
    import time

    d = Path(tempfile.mkdtemp(prefix="fd-ctr-"))  # short: a unix socket path has 108 bytes
    cfg = d / "config.toml"
    cfg.write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{d}/c.sock"\n[ttrpc]\n  address = "{d}/t.sock"\n'
    )
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
    c = Containerd(str(d / "c.sock"), proc, d)
    try:
        deadline = time.monotonic() + 60
        while c.ctr("version").returncode != 0:
            assert proc.poll() is None, (d / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)  # polling a process we just started, not synchronising a test
        yield c
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-R", str(d / "root")], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)


def _ctr_blobs(c: Containerd, digests: list[str]) -> dict[str, bytes]:
    out = {}
    for d in digests:
        r = subprocess.run(
            ["ctr", "--address", c.address, "-n", "fastdist-test", "content", "get", d],
            capture_output=True,
            timeout=120,
            check=True,
        )
        out[d] = r.stdout
    return out


def test_ctr_pulls_from_fastdist_serve_plain_and_as_a_hosts_toml_mirror(
    served: Served, containerd: Containerd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastdist.serve.access")
    blobs = {served.index.descriptor.digest: served.index.index}
    blobs[served.image.descriptor.digest] = served.image.manifest
    blobs.update(served.image.blobs())
    # 1. Straight at the server, by the repository path (no ns): ctr images pull --plain-http.
    direct = f"{served.server.address}/{served.path}:v1"
    r = containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", direct)
    assert r.returncode == 0, r.stderr
    assert _ctr_blobs(containerd, list(blobs)) == blobs
    # 2. As the mirror of the upstream in hosts.toml: requests carry ?ns=<upstream>.
    hosts = _hosts_toml(tmp_path / "certs.d", served.upstream, served.url)
    caplog.clear()
    ref = f"{served.upstream}/{served.path}:v1"
    r = containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native", ref)
    assert r.returncode == 0, r.stderr
    ns = "ns=" + quote(served.upstream, safe="")
    lines = [rec.getMessage() for rec in caplog.records]
    assert any(ns in m and "/manifests/v1" in m and " 200 " in m for m in lines), lines
    r = containerd.ctr("images", "check")
    assert r.returncode == 0, r.stderr
    assert "complete" in r.stdout, r.stdout
    # The tree containerd unpacked equals fastdist's own unpack of the source image.
    mnt, mine = tmp_path / "mnt", tmp_path / "mine"
    mnt.mkdir()
    r = containerd.ctr("images", "mount", "--snapshotter", "native", ref, str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        served.client.unpack(ref, mine)
        assert tree_snapshot(mnt) == tree_snapshot(mine)
    finally:
        containerd.ctr("images", "unmount", "--rm", str(mnt))


# --- the same pull conformance cases against Debian's docker-registry, as the reference ------
@pytest.mark.parametrize("target", ["fastdist-serve", "docker-registry"])
def test_pull_conformance_matches_the_reference_registry(served: Served, target: str) -> None:
    base = served.url if target == "fastdist-serve" else f"http://{served.upstream}"
    accept = {"Accept": ", ".join(oci.MANIFEST_ACCEPT)}
    m = requests.get(f"{base}/v2/{served.path}/manifests/v1", headers=accept)
    assert m.status_code == 200
    assert m.content == served.index.index
    assert m.headers["Docker-Content-Digest"] == served.index.descriptor.digest
    assert m.headers["Content-Type"] == oci.OCI_INDEX
    h = requests.head(f"{base}/v2/{served.path}/manifests/v1", headers=accept)
    assert (h.status_code, h.content) == (200, b"")
    assert int(h.headers["Content-Length"]) == len(served.index.index)
    layer = served.image.layers[1]
    url = f"{base}/v2/{served.path}/blobs/{layer.descriptor.digest}"
    size = len(layer.blob)
    b = requests.head(url)
    assert (b.status_code, b.content, int(b.headers["Content-Length"])) == (200, b"", size)
    assert b.headers["Docker-Content-Digest"] == layer.descriptor.digest
    for header, first, last in (
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, size - 1),
        ("bytes=-5", size - 5, size - 1),
        (f"bytes=10-{size + 1000}", 10, size - 1),
    ):
        p = requests.get(url, headers={"Range": header})
        assert (p.status_code, p.headers["Content-Range"]) == (
            206,
            f"bytes {first}-{last}/{size}",
        ), header
        assert p.content == layer.blob[first : last + 1], header
    # Headers only: docker-registry 2.8 sends its 416 with the blob's Content-Length and a
    # short body (a reader of the body gets IncompleteRead); fastdist serve sends its JSON.
    with requests.get(url, headers={"Range": f"bytes={size}-"}, stream=True) as p:
        assert (p.status_code, p.headers["Content-Range"]) == (416, f"bytes */{size}")
        if target == "fastdist-serve":
            assert int(p.headers["Content-Length"]) == len(p.content)
    missing = "sha256:" + "0" * 64
    for path, code in (
        (f"/v2/{served.path}/blobs/{missing}", "BLOB_UNKNOWN"),
        (f"/v2/{served.path}/manifests/nope", "MANIFEST_UNKNOWN"),
        (f"/v2/{served.path}/manifests/{missing}", "MANIFEST_UNKNOWN"),
        # The spec's NAME_UNKNOWN; docker-registry says MANIFEST_UNKNOWN (both are 404s).
        ("/v2/no/such/repo/manifests/v1", "NAME_UNKNOWN|MANIFEST_UNKNOWN"),
    ):
        r = requests.get(base + path)
        assert r.status_code == 404, (target, path)
        assert _code(r) in code.split("|"), (target, path)
    t = requests.get(f"{base}/v2/{served.path}/tags/list")
    assert t.json() == {"name": served.path, "tags": ["v1"]}


# --- podman --------------------------------------------------------------------------------------
def test_podman_pulls_from_fastdist_serve_with_the_same_tree(
    served: Served, tmp_path: Path
) -> None:
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is needed (scripts/setup.sh installs it)")
        pytest.skip("podman not installed")
    if os.geteuid() != 0:
        pytest.skip("podman's private store here needs root")
    root = tmp_path / "podman-root"
    runroot = Path(tempfile.mkdtemp(prefix="fd-podman-"))  # podman wants it under 50 chars
    base = ["podman", "--root", str(root), "--runroot", str(runroot), "--storage-driver", "vfs"]

    def podman(*args: str) -> str:
        out = subprocess.run(
            [*base, *args], capture_output=True, text=True, check=False, timeout=300
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    ref = f"{served.server.address}/{served.path}:v1"
    try:
        podman("pull", "-q", "--tls-verify=false", f"docker://{ref}")
        mount = Path(podman("image", "mount", ref).strip())
        theirs = tree_snapshot(mount)
        ours = tree_snapshot(
            served.client.unpack(f"{served.upstream}/{served.path}:v1", tmp_path / "ours")
        )
        theirs.pop(".", None)
        ours.pop(".", None)
        assert {k: v[:6] for k, v in ours.items()} == {k: v[:6] for k, v in theirs.items()}
    finally:
        subprocess.run(
            [*base, "image", "unmount", "--all"], capture_output=True, check=False, timeout=120
        )
        shutil.rmtree(runroot, ignore_errors=True)
