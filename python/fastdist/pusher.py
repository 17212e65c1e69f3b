"""Push blobs and manifests to a registry (used by the tests' image factory and the benchmarks).

distribution-spec ``#pushing-blobs``: HEAD the blob first and skip it when present; otherwise a
monolithic upload, ``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>?digest=<digest>``,
streaming a file from disk rather than loading it. ``#pushing-manifests``: ``PUT`` to the tag or
digest with the manifest's media type.
"""

from __future__ import annotations

import logging
import os
from typing import BinaryIO, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import DigestMismatchError, RegistryError
from .oci import Digest, parse_digest, sha256_digest
from .reference import Reference
from .transport import Body, Transport, checked_url, redact_url

log = logging.getLogger(__name__)

BlobData = Union[bytes, str, "os.PathLike[str]"]


def push_scope(ref: Reference) -> str:
    return f"repository:{ref.path}:pull,push"


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

    def push_blob(self, ref: Reference, digest: Digest, data: BlobData) -> None:
        """Upload one blob unless the registry already has it. ``data`` is bytes or a path."""
        digest = parse_digest(digest)
        if self.blob_exists(ref, digest):
            log.debug("%s: blob %s already present", ref.name, digest)
            return
        t = self.transport
        body: Body
        if isinstance(data, bytes):
            size = len(data)
            body = data
        else:
            path = os.fspath(data)
            size = os.stat(path).st_size

            def opener() -> BinaryIO:
                return open(path, "rb")

            body = opener
        start = t.request(
            "POST",
            t.url(ref.registry, f"/v2/{ref.path}/blobs/uploads/"),
            registry=ref.registry,
            scope=push_scope(ref),
        )
        start.close()
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
            scope=push_scope(ref),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            body=body,
        )
        resp.close()
        _check_digest_header(resp.headers.get("Docker-Content-Digest"), digest, upload_url)

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


__all__ = ["BlobData", "Pusher", "push_scope"]
