"""Push blobs and manifests to a registry (``fastdist push``, the tests' image factory, benches).

distribution-spec ``#pushing-blobs``: HEAD the blob first and skip it when present; then, when
the blob is in another repository of the same registry, a cross-repository mount
(``#mounting-a-blob-from-another-repository``: ``POST …/blobs/uploads/?mount=<digest>&from=<repo>``,
201 = mounted; a 202 is an ordinary upload session, used as such); otherwise a monolithic
upload, ``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>?digest=<digest>``, streaming a
file from disk rather than loading it. A blob larger than ``chunk_size`` goes in chunks instead
(``#pushing-a-blob-in-chunks``): ``PATCH <location>`` with ``Content-Range: <start>-<end>`` per
chunk, each answer's ``Location`` used for the next, then a body-less ``PUT ?digest=``; a chunk
cut or refused (a 416 range mismatch) is resumed from what the registry says it holds
(``GET <location>`` → 204 with ``Range: 0-<end>``), under the transport's retry policy, so a cut
costs at most one chunk, not the blob. ``#pushing-manifests``: ``PUT`` to the tag or digest with
the manifest's media type, the bytes exactly as stored (never re-serialised).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Literal, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import oci
from .errors import DigestMismatchError, IncompleteImageError, RegistryError, StoreError
from .oci import Descriptor, Digest, parse_digest, sha256_digest
from .reference import Reference
from .transport import Body, Transport, checked_url, redact_url

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

BlobData = Union[bytes, str, "os.PathLike[str]"]


#: Blobs larger than this go in chunks of this size (PATCH with Content-Range); smaller ones in
#: one monolithic PUT, which every registry takes and costs one request.
CHUNK_SIZE = 64 << 20
#: The largest chunk a registry's ``OCI-Chunk-Min-Length`` may ask for (more would be one
#: monolithic request in all but name).
MAX_CHUNK_SIZE = 1 << 30

_RANGE_RE = re.compile(r"^(?:bytes=)?0-(\d{1,19})$")

#: What ``push_blob`` did: the registry had it, mounted it from the source repository, or got it.
Outcome = Literal["exists", "mounted", "uploaded"]


@dataclasses.dataclass(frozen=True)
class PushDocument:
    """One manifest to push, as stored, with the blobs it needs pushed before it."""

    digest: Digest
    media_type: str
    data: bytes
    blobs: tuple[Descriptor, ...]


@dataclasses.dataclass(frozen=True)
class PushPlan:
    """What ``fastdist push`` sends: ``children`` (each manifest after its blobs), then ``top``
    at the tag: the index when every platform it lists is present, else the one manifest.
    ``missing``: the index's platforms that are not present (so not pushed)."""

    children: tuple[PushDocument, ...]
    top: PushDocument
    missing: tuple[str, ...]


def plan_push(
    read: Callable[[Digest], bytes | None],
    has: Callable[[Digest], bool],
    target: Descriptor,
    manifest_digest: Digest,
    *,
    name: str,
    whole: bool = False,
) -> PushPlan:
    """The plan for the image ``name``, which points at ``target`` (a manifest, or an index of
    which ``manifest_digest`` was pulled). ``read(digest)``: a stored document's bytes, or
    None when the store lacks it; ``has(digest)``: whether a blob is stored. An index is pushed
    whole when each child manifest and all of its blobs are present (other platforms pulled
    under the same name, or an archive loaded); otherwise only the present platform's
    manifest, the others in ``missing`` (as ``skopeo copy`` without ``--all``), or, with
    ``whole``, IncompleteImageError naming them (as ``skopeo copy --all``)."""
    data = read(manifest_digest)
    own = _document(manifest_digest, data, None) if data is not None else None
    if own is None:
        raise StoreError(f"image {name}: its manifest {manifest_digest} is not in the store")
    if target.digest == manifest_digest:
        return PushPlan((), own, ())
    index_bytes = read(target.digest)
    index = oci.parse_document(index_bytes, target.media_type) if index_bytes else None
    if index_bytes is None or not isinstance(index, oci.Index):
        raise StoreError(f"image {name}: its index {target.digest} is not in the store")
    children: list[PushDocument] = []
    missing: list[str] = []
    for desc in index.manifests:
        if desc.digest == manifest_digest:
            children.append(own)
            continue
        child = read(desc.digest)
        doc = _document(desc.digest, child, desc.media_type) if child is not None else None
        if doc is not None and all(has(b.digest) for b in doc.blobs):
            children.append(doc)
        else:
            missing.append(str(desc.platform) if desc.platform is not None else desc.digest)
    if not missing:
        top = PushDocument(target.digest, target.media_type, index_bytes, ())
        return PushPlan(tuple(children), top, ())
    if whole:
        raise IncompleteImageError(
            f"image {name}: {len(missing)} of the {len(index.manifests)} platforms of its index "
            f"are not present: {', '.join(missing)}",
            hint="pull each of them (fastdist pull --platform P "
            f"{name}), then push again; without --all the present platform alone is pushed",
            missing=tuple(missing),
        )
    return PushPlan((), own, tuple(missing))


def _document(digest: Digest, data: bytes, media_type: str | None) -> PushDocument | None:
    """A stored manifest as a PushDocument; None for a nested index (not pushed)."""
    doc = oci.parse_document(data, media_type)
    if not isinstance(doc, oci.Manifest):
        return None
    return PushDocument(digest, doc.media_type, data, (doc.config, *doc.layers))


def push_scope(ref: Reference, mount_from: Reference | None = None) -> str:
    scope = ref.scope("pull,push")
    if mount_from is not None:
        scope += " " + mount_from.scope()  # a mount reads the source repository
    return scope


class Pusher:
    """Uploads blobs and manifests."""

    def __init__(self, transport: Transport, *, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.transport = transport
        self.chunk_size = chunk_size

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
        upload_url = checked_url(
            location, start.url, what=f"POST {redact_url(start.url)}: upload location"
        )
        if isinstance(data, bytes) or size <= self.chunk_size:
            resp = t.request(
                "PUT",
                _with_query(upload_url, digest=digest),
                registry=ref.registry,
                scope=scope,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=body,
            )
        else:
            chunk = _chunk_size(self.chunk_size, start.headers.get("OCI-Chunk-Min-Length"))
            upload_url = self._send_chunks(ref, scope, upload_url, path, size, chunk, on_read)
            resp = t.request(
                "PUT",
                _with_query(upload_url, digest=digest),
                registry=ref.registry,
                scope=scope,
                headers={"Content-Length": "0"},
                body=b"",
            )
        resp.close()
        _check_digest_header(resp.headers.get("Docker-Content-Digest"), digest, resp.url)
        return "uploaded"

    def _send_chunks(
        self,
        ref: Reference,
        scope: str,
        url: str,
        path: str,
        size: int,
        chunk: int,
        on_read: Callable[[int], None] | None,
    ) -> str:
        """PATCH ``path`` to the upload session at ``url`` in ``chunk``-byte pieces; returns
        the session's last location (for the closing PUT). A chunk that fails with a temporary
        error (a cut connection, a 5xx), is refused with 416 (the registry holds another
        offset) or is acknowledged without progress is resumed from the registry's own
        account of the session; each resume is one attempt of the transport's retry policy,
        whose budget starts again only when the session holds more than it ever did (so a
        registry that keeps losing what it acknowledged cannot loop the upload forever)."""
        t = self.transport
        offset = high = 0  # high: the most the session ever held (a budget reset needs more)
        attempt = 0
        while offset < size:
            n = min(chunk, size - offset)
            err: RegistryError
            try:
                resp = t.request(
                    "PATCH",
                    url,
                    registry=ref.registry,
                    scope=scope,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + n - 1}",
                        "Content-Length": str(n),
                    },
                    body=_region_opener(path, offset, n, on_read),
                    accept_status=(416,),
                    max_retries=0,  # a resend must start where the registry is, found below
                )
            except RegistryError as e:
                if not e.temporary:
                    raise
                err = e
            else:
                resp.close()
                held = offset
                if resp.status_code != 416:
                    url = _next_location(resp, url, "PATCH")
                    held = _range_end(resp, url, "PATCH", size)
                    log.debug("%s: chunk sent; the upload session holds %d bytes", ref.name, held)
                if held > offset:
                    offset = held
                    if offset > high:  # new ground: the retry budget starts again
                        high, attempt = offset, 0
                    continue
                err = RegistryError(
                    f"PATCH {redact_url(url)}: the registry took none of bytes {offset}-"
                    f"{offset + n - 1} ({resp.status_code}"
                    + (": it holds another offset)" if resp.status_code == 416 else ")"),
                    url=redact_url(url),
                    status=resp.status_code,
                    temporary=True,
                )
            attempt += 1
            delay = t.retry_delay(err, attempt)
            if delay is None:
                raise err
            log.info("%s: chunk at %d failed (%s); resuming in %.2fs", ref.name, offset, err, delay)
            t.sleep(delay)
            status = t.request("GET", url, registry=ref.registry, scope=scope)
            status.close()
            url = _next_location(status, url, "GET")
            offset = _range_end(status, url, "GET", size)
            log.debug("%s: upload session holds %d of %d bytes", ref.name, offset, size)
        return url

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


class _RegionReader:
    """``n`` bytes of a file from ``offset``: one chunk's body. It has a length and no
    ``fileno``/``tell``, so requests sends exactly ``n`` bytes with that Content-Length."""

    mode = "rb"

    def __init__(
        self, path: str, offset: int, n: int, on_read: Callable[[int], None] | None
    ) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close() (the transport calls it)
        self._f.seek(offset)
        self._left = n
        self._on_read = on_read

    def __len__(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        data = self._f.read(want) if want > 0 else b""
        self._left -= len(data)
        if data and self._on_read is not None:
            self._on_read(len(data))
        return data

    def close(self) -> None:
        self._f.close()


def _region_opener(
    path: str, offset: int, n: int, on_read: Callable[[int], None] | None
) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        return _RegionReader(path, offset, n, on_read)  # type: ignore[return-value]

    return opener


def _chunk_size(ours: int, min_length: str | None) -> int:
    """Our chunk size, raised to the registry's ``OCI-Chunk-Min-Length`` (bounded) if any."""
    if min_length is None or not min_length.strip().isdigit() or len(min_length.strip()) > 19:
        return ours
    return max(ours, min(int(min_length.strip()), MAX_CHUNK_SIZE))


def _next_location(resp: requests.Response, current: str, method: str) -> str:
    """The upload session's location after ``resp`` (it may move; the spec says to use the
    latest), checked as every Location is."""
    location = resp.headers.get("Location")
    if not location:
        return current
    return checked_url(
        location, resp.url or current, what=f"{method} {redact_url(current)}: location"
    )


def _range_end(resp: requests.Response, url: str, method: str, size: int) -> int:
    """How many bytes the upload session holds, from ``Range: 0-<end>`` (``0-0`` and no
    header: none; distribution writes ``0-0`` for an empty session)."""
    header = (resp.headers.get("Range") or "").strip()
    if not header:
        return 0
    m = _RANGE_RE.match(header)
    end = int(m.group(1)) if m else -1
    if end < 0 or end >= size:
        raise RegistryError(
            f"{method} {redact_url(url)}: upload session reports Range {header[:80]!r}, "
            f"not within the blob's {size} bytes",
            url=redact_url(url),
            status=resp.status_code,
            hint="the registry's chunked upload is broken; report it to its operator",
        )
    return 0 if end == 0 else end + 1


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


__all__ = [
    "CHUNK_SIZE",
    "BlobData",
    "Outcome",
    "PushDocument",
    "PushPlan",
    "Pusher",
    "plan_push",
    "push_scope",
]
