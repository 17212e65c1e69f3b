"""Push blobs and manifests to a registry (``fastdist push``, the tests' image factory, benches).

distribution-spec ``#pushing-blobs``: HEAD the blob first and skip it when present; then, when
the blob is in another repository of the same registry, a cross-repository mount
(``#mounting-a-blob-from-another-repository``: ``POST …/blobs/uploads/?mount=<digest>&from=<repo>``,
201 = mounted; a 202 is an ordinary upload session, used as such); otherwise a monolithic
upload, ``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>?digest=<digest>``, streaming a
file from disk rather than loading it. ``#pushing-manifests``: ``PUT`` to the tag or digest with
the manifest's media type, the bytes exactly as stored (never re-serialised).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import BinaryIO, Literal, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import DigestMismatchError, RegistryError
from .oci import Digest, parse_digest, sha256_digest
from .reference import Reference
from .transport import Body, Transport, checked_url, redact_url

log = logging.getLogger(__name__)

BlobData = Union[bytes, str, "os.PathLike[str]"]


#: What ``push_blob`` did: the registry had it, mounted it from the source repository, or got it.
Outcome = Literal["exists", "mounted", "uploaded"]


def push_scope(ref: Reference, mount_from: Reference | None = None) -> str:
    scope = ref.scope("pull,push")
    if mount_from is not None:
        scope += " " + mount_from.scope()  # a mount reads the source repository
    return scope


class Pusher:
    """Uploads blobs and manifests."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        t = self.transport
        resp = t.request(
            "HEAD",
            t.url(ref.registry, f"/v2/{ref.path}/blobs/{parse_digest(digest)}"),
            registry=ref.registry,
            scope=push_scope(ref),
            accept_status=(404,),
        )
        resp.close()
        return resp.status_code == 200

    def push_blob(
        self,
        ref: Reference,
        digest: Digest,
        data: BlobData,
        *,
        mount_from: Reference | None = None,
        on_read: Callable[[int], None] | None = None,
    ) -> Outcome:
        """Upload one blob unless the registry already has it. ``data`` is bytes or a path.

        ``mount_from``: a repository on the same registry that holds the blob, tried as a
        cross-repository mount first. ``on_read(n)``: called as bytes of a file are sent."""
        digest = parse_digest(digest)
        if self.blob_exists(ref, digest):
            log.debug("%s: blob %s already present", ref.name, digest)
            return "exists"
        t = self.transport
        body: Body
        if isinstance(data, bytes):
            size = len(data)
            body = data
        else:
            path = os.fspath(data)
            size = os.stat(path).st_size

            def opener() -> BinaryIO:
                f = open(path, "rb")  # noqa: SIM115 - the transport closes it
                return _CountingReader(f, on_read) if on_read is not None else f  # type: ignore[return-value]

            body = opener
        scope = push_scope(ref, mount_from)
        url = t.url(ref.registry, f"/v2/{ref.path}/blobs/uploads/")
        if mount_from is not None and mount_from.registry == ref.registry:
            url = _with_query(url, mount=digest, **{"from": mount_from.path})
        start = t.request("POST", url, registry=ref.registry, scope=scope)
        start.close()
        if start.status_code == 201 and mount_from is not None:
            log.debug("%s: blob %s mounted from %s", ref.name, digest, mount_from.name)
            return "mounted"
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(
                f"POST {redact_url(start.url)}: upload started without a Location header",
                url=redact_url(start.url),
                status=start.status_code,
            )
        upload_url = _with_query(
            checked_url(location, start.url, what=f"POST {redact_url(start.url)}: upload location"),
            digest=digest,
        )
        resp = t.request(
            "PUT",
            upload_url,
            registry=ref.registry,
            scope=scope,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            body=body,
        )
        resp.close()
        _check_digest_header(resp.headers.get("Docker-Content-Digest"), digest, upload_url)
        return "uploaded"

    def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> Digest:
        """PUT a manifest or index at ``ref.object`` (its tag, or its digest); returns the
        digest computed locally from ``data``."""
        digest = sha256_digest(data)
        if ref.digest is not None and ref.digest != digest:
            raise DigestMismatchError(
                f"manifest for {ref}: data hashes to {digest}, not the reference's digest"
            )
        t = self.transport
        obj = ref.tag if ref.tag is not None and ref.digest is None else ref.object
        url = t.url(ref.registry, f"/v2/{ref.path}/manifests/{obj}")
        resp = t.request(
            "PUT",
            url,
            registry=ref.registry,
            scope=push_scope(ref),
            headers={"Content-Type": media_type},
            body=data,
        )
        resp.close()
        _check_digest_header(resp.headers.get("Docker-Content-Digest"), digest, url)
        return digest


class _CountingReader:
    """A file whose reads are reported (upload progress)."""

    mode = "rb"  # http.client and requests look at it to tell bytes from text

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._f = f
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._on_read(len(data))
        return data

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _check_digest_header(header: str | None, digest: Digest, url: str) -> None:
    if header and header.strip() != digest:
        raise DigestMismatchError(
            f"{redact_url(url)}: registry stored {header.strip()[:80]!r}, we sent {digest}"
        )


__all__ = ["BlobData", "Outcome", "Pusher", "push_scope"]
