"""The hostile corpus (issue 7, design.md §7, SECURITY.md): registries and images that try to
escape the store, get unverified bytes accepted, exhaust memory or disk, or leak credentials.

Every case pulls through the whole stack (``Client.pull``) from in-process fake registries that
record every request's headers, and asserts four things: the typed error, that nothing outside
the store changed (a sentinel tree beside the store root, compared byte for byte), that the store
holds no trace of the failed pull (no image, no blob that does not hash to its name, no snapshot
of a rejected layer, no staging left, ``Client.check()`` clean), and that credentials reached
only the host they belong to. The Rust applier's hostile-tar suite (rust/tests/hostile.rs) covers
tar entries one by one; here only a few travel the whole way.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fakeregistry import FakeRegistry, Fault, _RewriteAdapter, route_https
from fastdist import _native, oci
from fastdist.client import Client
from fastdist.errors import (
    AuthenticationError,
    DigestMismatchError,
    FastdistError,
    LimitExceededError,
    ManifestError,
    RegistryError,
    SizeMismatchError,
    StoreError,
    UnsafePathError,
    UnsupportedMediaTypeError,
)
from fastdist.oci import Descriptor
from fastdist.testing.images import (
    BuiltImage,
    BuiltLayer,
    Dir,
    File,
    Symlink,
    build_image,
    build_layer,
    tar_entries,
    tree_snapshot,
)
from fastdist.transport import TransportConfig

PASSWORD = "pw-Sekr1t-4242"
USER = "alice"


# --- a server that never stops talking -----------------------------------------------------------
@dataclass
class Served:
    path: str
    headers: dict[str, str]
    sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class EndlessServer:
    """Answers every GET with ``status`` and an endless (or ``total``-byte) body, counting what
    it managed to send before the client hung up. A hostile "registry" or "CDN" host."""

    def __init__(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        total: int | None = None,
        prefix: bytes = b"",
    ) -> None:
        self.status = status
        self.headers = dict(headers or {})
        self.total = total
        self.prefix = prefix
        self.served: list[Served] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rec = Served(self.path, {k.lower(): v for k, v in self.headers.items()})
                server.served.append(rec)
                try:
                    self.send_response(server.status)
                    for k, v in server.headers.items():
                        self.send_header(k, v)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    chunk = b"\0" * 65536
                    if server.prefix:
                        self.wfile.write(server.prefix)
                        rec.sent += len(server.prefix)
                    while server.total is None or rec.sent < server.total:
                        n = len(chunk) if server.total is None else server.total - rec.sent
                        self.wfile.write(chunk[: min(n, len(chunk))])
                        rec.sent += min(n, len(chunk))
                        if rec.sent > 1 << 30:  # a client that reads everything: give up
                            break
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    self.close_connection = True
                    rec.done.set()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> EndlessServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://localhost:{self._server.server_address[1]}"

    def sent_total(self) -> int:
        """Bytes sent, once every handler noticed the client hung up."""
        for rec in self.served:
            assert rec.done.wait(30), "the client kept the hostile connection open"
        return sum(r.sent for r in self.served)


# --- the harness ---------------------------------------------------------------------------------
class Store:
    """A store root beside a sentinel tree, and the checks every hostile case makes."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "store"
        self.sentinel = tmp_path / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "secret").write_text("host file\n")
        (self.sentinel / "dir").mkdir()
        (self.sentinel / "dir" / "inner").write_bytes(os.urandom(64))
        os.symlink("secret", self.sentinel / "link")
        self._before = tree_snapshot(self.sentinel)
        self.docker_config = tmp_path / "docker"
        self.docker_config.mkdir()

    def login(self, host: str, user: str = USER, password: str = PASSWORD) -> None:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        path = self.docker_config / "config.json"
        config = json.loads(path.read_text()) if path.exists() else {"auths": {}}
        config["auths"][host] = {"auth": auth}
        path.write_text(json.dumps(config))

    def client(self, **kw: Any) -> Client:
        kw.setdefault("transport_config", TransportConfig(max_retries=1, backoff_base=0.0))
        return Client(self.root, **kw)

    def assert_outside_untouched(self) -> None:
        assert tree_snapshot(self.sentinel) == self._before
        # Nothing new beside the store either (the tests' own work dirs aside).
        beside = set(os.listdir(self.sentinel.parent)) - {"store", "small", "unpacked"}
        assert beside == {"sentinel", "docker"}

    def assert_no_trace(
        self, client: Client, *, bad: tuple[str, ...] = (), snapshots: int = 0
    ) -> None:
        """No image; every blob hashes to its name and none of ``bad`` is stored (not even as
        an ingest); at most ``snapshots`` snapshots (verified layers of this pull); nothing
        staged; the store's own check finds no problem."""
        assert client.images() == []
        for digest in client.content.digests():
            data = client.content.blob_path(digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        for digest in bad:
            assert not client.content.exists(oci.Digest(digest))
            hexd = digest.split(":", 1)[1]
            ingest = client.content.ingest_dir / hexd / "data"
            assert not ingest.exists() or ingest.stat().st_size == 0
        assert len(client.snapshotter.list()) <= snapshots
        staged = [p for p in os.listdir(client.snapshotter.staging_dir) if not p.endswith(".lock")]
        assert staged == []
        check = getattr(client, "check", None)
        if check is not None:
            report = check()
            assert report.ok, report.problems
        self.assert_outside_untouched()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    s = Store(tmp_path)
    monkeypatch.setenv("DOCKER_CONFIG", str(s.docker_config))
    return s


@pytest.fixture
def reg() -> Iterator[FakeRegistry]:
    with FakeRegistry() as r:
        yield r


@pytest.fixture
def cdn() -> Iterator[FakeRegistry]:
    with FakeRegistry(hostname="localhost") as c:
        yield c


def _tar(*entries: Any) -> bytes:
    return tar_entries(entries or [File("etc/hello", "hi\n")])


def _layer(content: bytes | None = None, compression: str = "gzip") -> BuiltLayer:
    return build_layer(content if content is not None else _tar(), compression)  # type: ignore[arg-type]


def serve(reg: FakeRegistry, image: BuiltImage, repo: str = "app", tag: str = "v1") -> str:
    for blob in image.blobs().values():
        reg.add_blob(blob)
    reg.add_manifest(repo, image.manifest, image.descriptor.media_type, tag)
    return f"{reg.host}/{repo}:{tag}"


def serve_manifest(
    reg: FakeRegistry,
    manifest: dict[str, Any] | bytes,
    repo: str = "app",
    tag: str = "v1",
    media_type: str = oci.OCI_MANIFEST,
) -> str:
    data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    reg.add_manifest(repo, data, media_type, tag)
    return f"{reg.host}/{repo}:{tag}"


def manifest_json(image: BuiltImage) -> dict[str, Any]:
    return json.loads(image.manifest)  # type: ignore[no-any-return]


def config_json(image: BuiltImage) -> dict[str, Any]:
    return json.loads(image.config)  # type: ignore[no-any-return]


def with_config(reg: FakeRegistry, manifest: dict[str, Any], config: dict[str, Any]) -> None:
    data = json.dumps(config).encode()
    manifest["config"] = Descriptor(oci.OCI_CONFIG, reg_add(reg, data), len(data)).to_json()


def reg_add(reg: FakeRegistry, data: bytes) -> oci.Digest:
    return oci.Digest(reg.add_blob(data))


def blob_gets(reg: FakeRegistry) -> list[str]:
    return [r.path for r in reg.requests if "/blobs/" in r.path and r.method == "GET"]


# === protocol ===================================================================================
def test_manifest_declaring_a_gigabyte_is_refused_before_its_body_is_read(
    store: Store, reg: FakeRegistry
) -> None:
    ref = serve(reg, build_image([_layer()]))
    reg.add_fault(Fault(path_contains="/manifests/", headers={"Content-Length": str(1 << 30)}))
    client = store.client()
    with pytest.raises(ManifestError, match="over the 4194304-byte limit"):
        client.pull(ref)
    assert blob_gets(reg) == []
    store.assert_no_trace(client)


@pytest.mark.parametrize("declared", [False, True])
def test_endless_manifest_stream_is_cut_at_the_cap(
    store: Store, reg: FakeRegistry, declared: bool
) -> None:
    """The manifest GET goes to a host that streams forever (with or without a Content-Length
    that is too big): the read stops just past 4 MiB, not at the end of the stream."""
    headers = {"Content-Type": oci.OCI_MANIFEST}
    if declared:
        headers["Content-Length"] = str(1 << 40)
    with EndlessServer(headers=headers) as endless:
        reg.add_fault(Fault(path_contains="/manifests/", redirect_to=endless.url, times=-1))
        client = store.client()
        with pytest.raises(ManifestError, match="limit"):
            client.pull(f"{reg.host}/app:v1")
        assert endless.sent_total() < oci.MAX_MANIFEST_BYTES + (32 << 20)
    store.assert_no_trace(client)


def test_config_over_its_cap_is_refused_without_fetching_it(
    store: Store, reg: FakeRegistry
) -> None:
    image = build_image([_layer()])
    m = manifest_json(image)
    big = b"{" + b" " * (oci.MAX_CONFIG_BYTES + 1) + b"}"
    m["config"] = Descriptor(oci.OCI_CONFIG, reg_add(reg, big), len(big)).to_json()
    ref = serve_manifest(reg, m)
    client = store.client()
    with pytest.raises(ManifestError, match="over the 8388608-byte limit"):
        client.pull(ref)
    assert blob_gets(reg) == []
    store.assert_no_trace(client)


def test_config_stream_longer_than_its_descriptor_stops_one_byte_past_it(
    store: Store, reg: FakeRegistry
) -> None:
    image = build_image([_layer()])
    ref = serve(reg, image)
    with EndlessServer(prefix=image.config) as endless:
        reg.add_fault(Fault(path_contains=image.config_descriptor.digest, redirect_to=endless.url))
        client = store.client()
        with pytest.raises(SizeMismatchError, match="more than"):
            client.pull(ref)
        assert endless.sent_total() < 32 << 20
    store.assert_no_trace(client, bad=(image.config_descriptor.digest,))


def _nest(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = {"a": v}
    return v


@pytest.mark.parametrize(
    ("name", "doc", "error", "match"),
    [
        ("deep JSON", lambda m: {**m, "annotations": _nest(200)}, ManifestError, "nests deeper"),
        (
            "duplicate keys",
            lambda m: json.dumps(m)[:-1].encode() + b', "layers": []}',
            ManifestError,
            "duplicate key",
        ),
        (
            "both index and manifest",
            lambda m: {**m, "manifests": []},
            ManifestError,
            "both 'manifests' and 'layers'",
        ),
        (
            "mediaType says index",
            lambda m: {**m, "mediaType": oci.OCI_INDEX},
            ManifestError,
            "disagrees|not an index",
        ),
        (
            "schema 1",
            lambda m: {**m, "schemaVersion": 1},
            UnsupportedMediaTypeError,
            "schemaVersion",
        ),
        (
            "layer count differs from diff_ids",
            lambda m: {**m, "layers": m["layers"] * 2},
            ManifestError,
            "2 layers but the config lists 1",
        ),
        (
            "unknown layer media type",
            lambda m: {**m, "layers": [{**m["layers"][0], "mediaType": "application/x-evil"}]},
            UnsupportedMediaTypeError,
            "unsupported media type",
        ),
        (
            "unknown digest algorithm",
            lambda m: {**m, "layers": [{**m["layers"][0], "digest": "sha512:" + "ab" * 64}]},
            UnsupportedMediaTypeError,
            "digest algorithm",
        ),
    ],
)
def test_ambiguous_or_malformed_manifest_is_refused_before_any_layer_is_fetched(
    store: Store, reg: FakeRegistry, name: str, doc: Any, error: type[Exception], match: str
) -> None:
    image = build_image([_layer()])
    for blob in image.blobs().values():
        reg.add_blob(blob)
    body = doc(manifest_json(image))
    ref = serve_manifest(reg, body)
    client = store.client()
    with pytest.raises(error, match=match):
        client.pull(ref)
    assert [p for p in blob_gets(reg) if image.layers[0].descriptor.digest in p] == []
    store.assert_no_trace(client)


def test_content_type_disagreeing_with_the_documents_media_type_is_refused(
    store: Store, reg: FakeRegistry
) -> None:
    """CVE-2021-41190: the registry says index, the body says manifest."""
    ref = serve(reg, build_image([_layer()]))
    reg.add_fault(Fault(path_contains="/manifests/", content_type=oci.OCI_INDEX))
    client = store.client()
    with pytest.raises(ManifestError, match="disagrees"):
        client.pull(ref)
    assert blob_gets(reg) == []
    store.assert_no_trace(client)


def test_index_entry_media_type_disagreeing_with_the_manifest_is_refused(
    store: Store, reg: FakeRegistry
) -> None:
    image = build_image([_layer()])
    for blob in image.blobs().values():
        reg.add_blob(blob)
    # The manifest's bytes say Docker; the index entry pointing at them says OCI.
    m = manifest_json(image)
    m["mediaType"] = oci.DOCKER_MANIFEST
    data = json.dumps(m).encode()
    digest = reg.add_manifest("app", data, oci.DOCKER_MANIFEST)
    plat = oci.Platform.host()
    p = {"os": plat.os, "architecture": plat.architecture}
    if plat.variant:
        p["variant"] = plat.variant
    reg.add_index("app", [(digest, data, p)], tag="v1")
    client = store.client()
    with pytest.raises(ManifestError, match="disagrees"):
        client.pull(f"{reg.host}/app:v1")
    assert blob_gets(reg) == []
    store.assert_no_trace(client)


BAD_DIGESTS = [
    "sha256:" + "A" * 64,  # uppercase
    "sha256:../../../sentinel/secret",
    "sha256:" + "ab" * 31,  # short
    "sha256:" + "ab" * 32 + "\n",
    "md5:x/../y",
    "",
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
@pytest.mark.parametrize("where", ["layer", "config", "index entry", "diff_id"])
def test_bad_digest_string_in_any_position_is_refused_before_it_is_used(
    store: Store, reg: FakeRegistry, where: str, bad: str
) -> None:
    image = build_image([_layer()])
    for blob in image.blobs().values():
        reg.add_blob(blob)
    m = manifest_json(image)
    if where == "layer":
        m["layers"][0]["digest"] = bad
    elif where == "config":
        m["config"]["digest"] = bad
    elif where == "diff_id":
        cfg = config_json(image)
        cfg["rootfs"]["diff_ids"] = [bad]
        with_config(reg, m, cfg)
    if where == "index entry":
        index = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": bad,
                    "size": len(image.manifest),
                    "platform": {"os": "linux", "architecture": oci.Platform.host().architecture},
                }
            ],
        }
        ref = serve_manifest(reg, index, media_type=oci.OCI_INDEX)
    else:
        ref = serve_manifest(reg, m)
    client = store.client()
    # Bad content from the registry, never a bad reference (exit 5 or 6, not 2).
    with pytest.raises((UnsupportedMediaTypeError, ManifestError)):
        client.pull(ref)
    # Nothing was requested by the bad digest: it never became a URL or a path.
    assert all("sentinel" not in r.path and "/../" not in r.path for r in reg.requests)
    # Only a diff_id is found after the (valid) config was fetched; nothing else fetches a blob.
    fetched = blob_gets(reg)
    assert fetched == ([f"/v2/app/blobs/{_config_digest(reg, ref)}"] if where == "diff_id" else [])
    store.assert_no_trace(client)


def test_a_bad_digest_inside_a_manifest_exits_5_on_the_command_line_not_2(
    store: Store, reg: FakeRegistry
) -> None:
    # The reference the user typed is fine; the registry's manifest is not: a verification
    # failure (exit 5) with error:/hint:, never "invalid reference" (exit 2).
    image = build_image([_layer()])
    for blob in image.blobs().values():
        reg.add_blob(blob)
    m = manifest_json(image)
    m["layers"][0]["digest"] = "sha256:" + "A" * 64
    ref = serve_manifest(reg, m)
    out = subprocess.run(
        [sys.executable, "-m", "fastdist", "--root", str(store.root), "pull", ref],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 5, out.stderr
    assert "error: " in out.stderr
    assert "layers[0].digest" in out.stderr
    assert "hint: " in out.stderr
    assert "Traceback" not in out.stderr


def _config_digest(reg: FakeRegistry, ref: str) -> str:
    data, _ = reg.manifests[("app", ref.rsplit(":", 1)[1])]
    return str(json.loads(data)["config"]["digest"])


def test_docker_content_digest_header_is_ignored_in_favour_of_the_body(
    store: Store, reg: FakeRegistry
) -> None:
    image = build_image([_layer()])
    ref = serve(reg, image)
    lie = "sha256:" + "0" * 64
    reg.add_fault(Fault(path_contains="/manifests/", headers={"Docker-Content-Digest": lie}))
    client = store.client()
    img = client.pull(ref)
    assert img.target.digest == image.descriptor.digest
    assert not client.content.exists(oci.Digest(lie))


def test_manifest_body_not_hashing_to_the_requested_digest_is_refused(
    store: Store, reg: FakeRegistry
) -> None:
    good = build_image([_layer()])
    other = build_image([_layer(_tar(File("etc/evil", "x")))])
    serve(reg, good)
    serve(reg, other, tag="other")
    # Asked for good's digest, the registry serves other's manifest and claims good's digest.
    reg.add_fault(
        Fault(
            path_contains=f"/manifests/{good.descriptor.digest}",
            body=other.manifest,
            headers={"Docker-Content-Digest": good.descriptor.digest},
        )
    )
    client = store.client()
    with pytest.raises(DigestMismatchError, match="hashes to"):
        client.pull(f"{reg.host}/app@{good.descriptor.digest}")
    assert blob_gets(reg) == []
    store.assert_no_trace(client, bad=(good.descriptor.digest, other.descriptor.digest))


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_blob_with_wrong_bytes_fails_the_pull_and_leaves_nothing_visible(
    store: Store, reg: FakeRegistry, snapshotter: str
) -> None:
    if snapshotter == "overlayfs" and os.geteuid() != 0:
        pytest.skip("overlayfs needs root")
    layer = _layer(_tar(File("etc/hello", "good\n")))
    evil = _layer(_tar(File("etc/hello", "evil\n")))
    assert len(evil.blob) == len(layer.blob)
    image = build_image([layer])
    ref = serve(reg, image)
    reg.add_fault(Fault(path_contains=layer.descriptor.digest, body=evil.blob, times=-1))
    client = store.client(snapshotter=snapshotter)
    with pytest.raises(DigestMismatchError):
        client.pull(ref)
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def test_blob_longer_than_its_descriptor_stops_one_byte_past_it(
    store: Store, reg: FakeRegistry
) -> None:
    layer = _layer()
    image = build_image([layer])
    ref = serve(reg, image)
    with EndlessServer(prefix=layer.blob) as endless:
        reg.add_fault(Fault(path_contains=layer.descriptor.digest, redirect_to=endless.url))
        client = store.client()
        with pytest.raises(SizeMismatchError, match="more than"):
            client.pull(ref)
        assert endless.sent_total() < 32 << 20
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def test_blob_announcing_more_bytes_than_its_descriptor_is_refused_unread(
    store: Store, reg: FakeRegistry
) -> None:
    layer = _layer()
    ref = serve(reg, build_image([layer]))
    headers = {"Content-Length": str(1 << 40)}
    with EndlessServer(headers=headers, prefix=layer.blob) as endless:
        reg.add_fault(Fault(path_contains=layer.descriptor.digest, redirect_to=endless.url))
        client = store.client()
        with pytest.raises(SizeMismatchError, match="announces"):
            client.pull(ref)
        assert endless.sent_total() < 32 << 20
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def _raw_tar(*members: tuple[str, bytes, bytes]) -> bytes:
    """A tar with names no well-behaved builder writes: (name, type, data or link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            if kind == tarfile.REGTYPE:
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
            else:
                ti.linkname = payload.decode()
                tf.addfile(ti)
    return buf.getvalue()


def test_layer_entry_climbing_out_of_the_root_is_clamped_inside_it(
    store: Store, reg: FakeRegistry, tmp_path: Path
) -> None:
    """``../../sentinel/secret`` resolves as ``/sentinel/secret`` of the image (RESOLVE_IN_ROOT
    semantics, as the applier's own suite pins): inside the snapshot, never beside the store."""
    layer = _layer(_raw_tar(("../../sentinel/secret", tarfile.REGTYPE, b"pwned\n")))
    ref = serve(reg, build_image([layer]))
    client = store.client(snapshotter="native")
    client.pull(ref)
    out = client.unpack(ref, tmp_path / "unpacked")
    assert (out / "sentinel/secret").read_text() == "pwned\n"
    store.assert_outside_untouched()


def test_hardlink_to_a_host_file_is_refused(store: Store, reg: FakeRegistry) -> None:
    target = str(store.sentinel / "secret")
    layer = _layer(
        _raw_tar(
            ("h", tarfile.LNKTYPE, b"../../sentinel/secret"),
            ("h2", tarfile.LNKTYPE, target.encode()),
        )
    )
    ref = serve(reg, build_image([layer]))
    client = store.client()
    with pytest.raises(UnsafePathError):
        client.pull(ref)
    assert os.stat(target).st_nlink == 1
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def test_writes_through_an_absolute_symlink_land_inside_the_root(
    store: Store, reg: FakeRegistry, tmp_path: Path
) -> None:
    """``escape -> <the sentinel's absolute path>`` then ``escape/secret``: legal, and it
    resolves inside the snapshot, never on the host."""
    lower = _layer(_tar(Symlink("escape", str(store.sentinel))))
    upper = _layer(_tar(File("escape/secret", "pwned\n")))
    ref = serve(reg, build_image([lower, upper]))
    client = store.client(snapshotter="native")
    client.pull(ref)
    out = client.unpack(ref, tmp_path / "unpacked")
    assert (out / str(store.sentinel).lstrip("/") / "secret").read_text() == "pwned\n"
    store.assert_outside_untouched()


# === credentials ================================================================================
def test_basic_credentials_never_follow_a_blob_redirect_to_another_host(
    store: Store, cdn: FakeRegistry
) -> None:
    with FakeRegistry(auth="basic", users={USER: PASSWORD}) as reg:
        store.login(reg.host)
        image = build_image([_layer()])
        ref = serve(reg, image)
        for blob in image.blobs().values():
            cdn.add_blob(blob)
        reg.add_fault(Fault(path_contains="/blobs/", redirect_to=cdn.url, times=-1))
        client = store.client()
        img = client.pull(ref)
        assert img.target.digest == image.descriptor.digest
        assert any(r.authorization and r.authorization.startswith("Basic ") for r in reg.requests)
        assert len(cdn.requests) == 2  # config and layer
        assert all(r.authorization is None for r in cdn.requests)
        assert all(PASSWORD not in json.dumps(r.headers) for r in cdn.requests)


def test_plain_http_token_realm_is_refused_for_an_https_registry(
    store: Store, cdn: FakeRegistry
) -> None:
    """A non-loopback registry (https) whose Bearer realm is plain http on another host: no
    request reaches the realm, so the credentials for the registry cannot leak there."""
    host = "registry.example.test"
    with FakeRegistry(auth="token", realm=f"{cdn.url}/token", token_issuer=cdn) as reg:
        store.login(host)
        image = build_image([_layer()])
        for blob in image.blobs().values():
            reg.add_blob(blob)
        reg.add_manifest("app", image.manifest, oci.OCI_MANIFEST, "v1")
        client = store.client()
        route_https(client.transport.session, host, reg)
        with pytest.raises(AuthenticationError, match="plain http"):
            client.pull(f"{host}/app:v1")
        assert cdn.token_requests == []
        assert cdn.requests == []
        assert len(reg.requests) == 1
        assert reg.requests[0].authorization is None
        store.assert_no_trace(client)


def test_non_loopback_registry_never_falls_back_to_plain_http(
    store: Store, reg: FakeRegistry
) -> None:
    """https to the registry fails (nothing listens); the pull fails instead of trying http,
    which would reach the fake."""
    host = "registry.example.test"
    serve(reg, build_image([_layer()]))
    client = store.client()
    session = client.transport.session
    # https://host reaches a port nothing listens on; http://host would reach the fake.
    session.mount(f"https://{host}", _RewriteAdapter(f"https://{host}", "http://127.0.0.1:1"))
    session.mount(f"http://{host}", _RewriteAdapter(f"http://{host}", reg.url))
    with pytest.raises(RegistryError):
        client.pull(f"{host}/app:v1")
    assert reg.requests == []
    store.assert_no_trace(client)


def _foreign_image(reg: FakeRegistry, foreign: FakeRegistry) -> tuple[BuiltImage, str, str]:
    layer = _layer()
    url = f"{foreign.url}/v2/elsewhere/blobs/{layer.descriptor.digest}"
    desc = Descriptor(
        oci.OCI_LAYER_ND_GZIP, layer.descriptor.digest, layer.descriptor.size, urls=(url,)
    )
    nd = BuiltLayer(desc, layer.diff_id, layer.blob)
    image = build_image([nd])
    foreign.add_blob(layer.blob)
    return image, serve(reg, image), layer.descriptor.digest


def test_foreign_layer_urls_are_not_fetched_unless_allowed(store: Store, cdn: FakeRegistry) -> None:
    with FakeRegistry(auth="basic", users={USER: PASSWORD}) as reg:
        store.login(reg.host)
        _, ref, digest = _foreign_image(reg, cdn)
        client = store.client()
        client.pull(ref)
        assert cdn.requests == []
        assert any(digest in p for p in blob_gets(reg))


def test_allowed_foreign_layer_urls_are_fetched_without_credentials(
    store: Store, cdn: FakeRegistry
) -> None:
    with FakeRegistry(auth="basic", users={USER: PASSWORD}) as reg:
        store.login(reg.host)
        store.login(cdn.host)  # even a login for the foreign host is not used
        _, ref, digest = _foreign_image(reg, cdn)
        cfg = TransportConfig(allow_foreign_urls=True, max_retries=1, backoff_base=0.0)
        client = store.client(transport_config=cfg)
        client.pull(ref)
        assert [r.path for r in cdn.requests] == [f"/v2/elsewhere/blobs/{digest}"]
        assert cdn.requests[0].authorization is None
        assert not any(digest in p for p in blob_gets(reg))


def _no_secret_anywhere(
    err: BaseException, records: list[logging.LogRecord], *secrets: str
) -> None:
    texts = [str(err), repr(err), getattr(err, "hint", "") or "", getattr(err, "url", "") or ""]
    texts += [r.getMessage() for r in records]
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


def test_signed_cdn_url_and_password_stay_out_of_errors_and_logs(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    signature = "SIGNATURE-d3adb33f"
    caplog.set_level(logging.DEBUG)
    with (
        FakeRegistry(auth="basic", users={USER: PASSWORD}) as reg,
        EndlessServer(
            status=403,
            headers={"Content-Type": "application/json"},
            total=10 << 20,
            prefix=b'{"errors":[{"code":"DENIED","message":"' + signature.encode() + b'"',
        ) as endless,
    ):
        store.login(reg.host)
        layer = _layer()
        ref = serve(reg, build_image([layer]))
        reg.add_fault(
            Fault(
                path_contains=layer.descriptor.digest,
                redirect_to=f"{endless.url}/blob?X-Amz-Signature={signature}&x=",
            )
        )
        client = store.client()
        with pytest.raises(RegistryError) as info:
            client.pull(ref)
        assert len(str(info.value)) < 600  # a 10 MiB error body, capped
        assert endless.served[0].path.endswith(
            signature + "&x=/v2/app/blobs/" + layer.descriptor.digest
        )
        assert endless.served[0].headers.get("authorization") is None
        _no_secret_anywhere(info.value, caplog.records, signature, PASSWORD)
    store.assert_no_trace(client)


def test_registry_echoing_credentials_in_its_error_message_is_redacted(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with FakeRegistry(auth="basic", users={USER: PASSWORD}) as reg:
        store.login(reg.host)
        image = build_image([_layer()])
        ref = serve(reg, image)
        echo = f"DENIED you sent Basic {basic} password={PASSWORD} {PASSWORD}"
        reg.add_fault(Fault(path_contains="/blobs/", status=403, code=echo))
        client = store.client()
        with pytest.raises(AuthenticationError) as info:
            client.pull(ref)
        _no_secret_anywhere(info.value, caplog.records, PASSWORD, basic)
    store.assert_no_trace(client)


def test_bearer_token_stays_out_of_errors_and_logs(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeRegistry(auth="token") as reg:
        image = build_image([_layer()])
        ref = serve(reg, image)
        reg.add_fault(Fault(path_contains="/blobs/", status=500, code="token-is-echoed", times=-1))
        client = store.client()
        with pytest.raises(RegistryError) as info:
            client.pull(ref)
        tokens = list(reg.issued_tokens)
        assert tokens
        _no_secret_anywhere(info.value, caplog.records, *tokens)
    store.assert_no_trace(client)


# === resources ==================================================================================
def _zeros_tar(n: int, name: str = "zeros") -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = n
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(b"\0" * n))
    return buf.getvalue()


def _limits(**kw: int) -> _native.Limits:
    return _native.Limits(**kw)


@pytest.mark.parametrize(
    ("name", "content", "limits", "match"),
    [
        ("bytes per layer", lambda: _zeros_tar(2 << 20), {"max_layer_bytes": 1 << 20}, "layer"),
        (
            "entries",
            lambda: tar_entries([File(f"f{i}", "x") for i in range(50)]),
            {"max_entries": 10},
            "entr",
        ),
        (
            "path depth",
            lambda: tar_entries([File("/".join(["d"] * 40) + "/f", "x")]),
            {"max_path_depth": 16},
            "depth|component",
        ),
        (
            "path length",
            lambda: tar_entries([File("n" * 200, "x")]),
            {"max_path_len": 100},
            "path|len",
        ),
        (
            "decompression ratio",
            lambda: _zeros_tar(16 << 20),
            {"max_ratio": 100, "ratio_grace_bytes": 1 << 20},
            "ratio",
        ),
    ],
)
def test_layer_over_a_configured_limit_fails_with_a_typed_error_and_no_trace(
    store: Store, reg: FakeRegistry, name: str, content: Any, limits: dict[str, int], match: str
) -> None:
    layer = _layer(content())
    ref = serve(reg, build_image([layer]))
    client = store.client(limits=_limits(**limits))
    with pytest.raises(LimitExceededError, match=f"(?i){match}"):
        client.pull(ref)
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def _zstd_stream(tar_header_and_zeros: int, *args: str) -> bytes:
    """A zstd frame of a tar holding ``n`` zero bytes, compressed as a stream (unknown size)."""
    header = _zeros_tar(0)[:512]
    ti = tarfile.TarInfo("zeros")
    ti.size = tar_header_and_zeros
    header = ti.tobuf(format=tarfile.PAX_FORMAT)
    proc = subprocess.Popen(
        ["zstd", "-q", "-c", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    assert proc.stdin is not None
    proc.stdin.write(header)
    chunk = b"\0" * (1 << 20)
    left = tar_header_and_zeros
    while left > 0:
        proc.stdin.write(chunk[: min(left, len(chunk))])
        left -= min(left, len(chunk))
    pad = (-tar_header_and_zeros) % 512
    proc.stdin.write(b"\0" * (pad + 1024))
    proc.stdin.close()
    reader.join()
    assert proc.wait() == 0
    return out[0]


def _zstd_layer(blob: bytes, tar_len_diff_id: str) -> BuiltLayer:
    desc = Descriptor(oci.OCI_LAYER_ZSTD, oci.sha256_digest(blob), len(blob))
    return BuiltLayer(desc, oci.Digest(tar_len_diff_id), blob)


@pytest.mark.slow
def test_zstd_bomb_is_stopped_by_the_default_ratio_limit(store: Store, reg: FakeRegistry) -> None:
    """300 MiB of zeros in a few KiB: the default 1000:1 ratio (after 256 MiB) stops it."""
    blob = _zstd_stream(300 << 20, "-19")
    assert len(blob) < 300 << 10
    layer = _zstd_layer(blob, "sha256:" + "1" * 64)
    ref = serve(reg, build_image([layer]))
    client = store.client()
    with pytest.raises(LimitExceededError, match=r"(?i)ratio"):
        client.pull(ref)
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def test_zstd_frame_asking_for_a_huge_window_is_refused(store: Store, reg: FakeRegistry) -> None:
    blob = _zstd_stream(1 << 20, "--long=30")
    layer = _zstd_layer(blob, "sha256:" + "1" * 64)
    ref = serve(reg, build_image([layer]))
    client = store.client()
    with pytest.raises(LimitExceededError, match=r"(?i)window"):
        client.pull(ref)
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


def test_pull_whose_blobs_exceed_the_per_pull_limit_fetches_no_layer(
    store: Store, reg: FakeRegistry
) -> None:
    layers = [_layer(tar_entries([File("r", os.urandom(40_000))])) for _ in range(2)]
    ref = serve(reg, build_image(layers))
    client = store.client(max_pull_bytes=60_000)
    with pytest.raises(LimitExceededError, match="per-pull limit"):
        client.pull(ref)
    assert not any(x.descriptor.digest in p for x in layers for p in blob_gets(reg))
    store.assert_no_trace(client)


def test_pull_unpacking_more_than_the_per_pull_limit_fails(store: Store, reg: FakeRegistry) -> None:
    """Two layers of 600 KiB of zeros each (a few hundred bytes compressed), 1 MiB per pull:
    each layer fits, both do not. At most the first verified layer may stay as cache."""
    layers = [_layer(_zeros_tar(600 << 10, f"z{i}")) for i in range(2)]
    ref = serve(reg, build_image(layers))
    client = store.client(max_pull_bytes=1 << 20)
    with pytest.raises(LimitExceededError, match="per-pull limit"):
        client.pull(ref)
    store.assert_no_trace(client, snapshots=1)


def test_single_layer_over_the_per_pull_limit_fails_while_unpacking(
    store: Store, reg: FakeRegistry
) -> None:
    layer = _layer(_zeros_tar(2 << 20))
    ref = serve(reg, build_image([layer]))
    client = store.client(max_pull_bytes=1 << 20)
    with pytest.raises(LimitExceededError):
        client.pull(ref)
    store.assert_no_trace(client, bad=(layer.descriptor.digest,))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_pull_into_a_full_filesystem_is_refused_before_downloading(
    store: Store, reg: FakeRegistry, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        layer = _layer(tar_entries([File("big", os.urandom(2 << 20))]))
        ref = serve(reg, build_image([layer]))
        client = Client(small / "store", transport_config=TransportConfig(max_retries=0))
        with pytest.raises(StoreError, match="not enough free space") as info:
            client.pull(ref)
        assert "prune" in (info.value.hint or "")
        assert not any(layer.descriptor.digest in p for p in blob_gets(reg))
        assert client.images() == []
        assert client.snapshotter.list() == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    store.assert_outside_untouched()


# === run ========================================================================================
def test_store_and_snapshot_directories_are_private_after_a_pull(
    store: Store, reg: FakeRegistry
) -> None:
    setuid = tar_entries([File("bin/su", b"\x7fELF", mode=0o4755), Dir("dev")])
    ref = serve(reg, build_image([_layer(setuid)]))
    client = store.client()
    img = client.pull(ref)
    snap = client.snapshotter
    private = [
        client.root,
        client.root / "content",
        client.content.blobs_dir,
        client.content.ingest_dir,
        snap.root,
        snap.layers_dir,
        snap.staging_dir,
        snap.active_dir,
        *(snap.layer_dir(c) for c in img.record.chain_ids),
    ]
    for d in private:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    # The setuid binary exists, but only behind 0700 directories.
    fs = snap.fs_path(img.record.chain_ids[-1])
    assert stat.S_IMODE(os.stat(fs / "bin/su").st_mode) & 0o4000


def test_failed_pull_does_not_raise_anything_but_fastdist_errors(
    store: Store, reg: FakeRegistry
) -> None:
    """A garbage layer (not gzip at all) surfaces as a fastdist error, not a library one."""
    garbage = os.urandom(4096)
    desc = Descriptor(oci.OCI_LAYER_GZIP, oci.sha256_digest(garbage), len(garbage))
    layer = BuiltLayer(desc, oci.sha256_digest(gzip.compress(b"")), garbage)
    ref = serve(reg, build_image([layer]))
    client = store.client()
    with pytest.raises(FastdistError):
        client.pull(ref)
    store.assert_no_trace(client, bad=(desc.digest,))
