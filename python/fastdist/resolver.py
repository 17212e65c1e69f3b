"""Resolve a reference to its target (index or manifest) and the platform's image manifest.

distribution-spec ``#pulling-manifests``: ``GET /v2/<name>/manifests/<reference>`` with an Accept
of every type we understand. Every document is verified locally (design.md §7): the digest is
computed from the body, never taken from ``Docker-Content-Digest``; a digest reference must match
it; the size is capped while reading, before parsing; the Content-Type must agree with the
document's ``mediaType``; an index's entry must match the bytes it points at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import (
    DigestMismatchError,
    ManifestError,
    PlatformNotFoundError,
    SizeMismatchError,
)
from .mirrors import MIRROR_RETRIES, Mirrors, RegistryHost
from .oci import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Document,
    Index,
    Manifest,
    Platform,
    parse_document,
    sha256_digest,
)
from .progress import Phase, Progress, ProgressEvent, no_progress
from .reference import Reference
from .sizes import over_limit
from .transport import Transport

log = logging.getLogger(__name__)

# An index may point at another index; bound how deep we follow.
MAX_INDEX_DEPTH = 4


@dataclass(frozen=True)
class Resolved:
    """What a reference points at, verified: the target and the platform's manifest."""

    reference: Reference
    target: Descriptor
    target_bytes: bytes
    manifest_descriptor: Descriptor
    manifest: Manifest
    manifest_bytes: bytes


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class Resolver:
    """Turns a :class:`Reference` into a :class:`Resolved` (one registry round trip per
    document)."""

    def __init__(self, transport: Transport, mirrors: Mirrors | None = None) -> None:
        self.transport = transport
        self.mirrors = mirrors

    def resolve(
        self,
        ref: Reference,
        platform: Platform | None = None,
        progress: Progress = no_progress,
        *,
        any_platform: bool = False,
    ) -> Resolved:
        """``any_platform``: an index without an entry for ``platform`` (this host's when
        None) gives its first entry instead of PlatformNotFoundError."""
        want = (platform or Platform.host()).normalized()
        progress(ProgressEvent(Phase.RESOLVING, message=str(ref)))
        body, content_type = self._get(ref, ref.object)
        digest = sha256_digest(body)
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatchError(
                f"manifest for {ref}: body hashes to {digest}, expected {ref.digest}",
                hint="the registry served different content than the digest names",
            )
        ct = _base_type(content_type)
        declared = ct if ct in MANIFEST_TYPES | INDEX_TYPES else None
        if declared is None:
            log.debug("%s: content type %r is not a manifest type; using mediaType", ref, ct)
        doc = parse_document(body, declared)
        target = Descriptor(doc.media_type, digest, len(body))
        progress(ProgressEvent(Phase.RESOLVED, digest, doc.media_type, len(body), len(body)))

        desc, doc_bytes = target, body
        depth = 0
        while isinstance(doc, Index):
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise ManifestError(f"{ref}: indexes nest deeper than {MAX_INDEX_DEPTH} levels")
            desc = select_platform(doc, want, ref, any_platform=any_platform)
            doc_bytes, doc = self._get_by_descriptor(ref, desc)
            progress(
                ProgressEvent(Phase.RESOLVED, desc.digest, desc.media_type, desc.size, desc.size)
            )
        return Resolved(
            reference=ref,
            target=target,
            target_bytes=body,
            manifest_descriptor=desc,
            manifest=doc,
            manifest_bytes=doc_bytes,
        )

    def _get(self, ref: Reference, obj: str) -> tuple[bytes, str | None]:
        t = self.transport
        path = f"/v2/{ref.path}/manifests/{obj}"
        what = f"manifest {ref.name}@{obj}" if obj.startswith("sha256:") else f"manifest {ref}"
        accept = {"Accept": ", ".join(MANIFEST_ACCEPT)}
        if self.mirrors is None:
            body, headers = t.get_bytes(
                t.url(ref.registry, path),
                registry=ref.registry,
                scope=ref.scope(),
                limit=MAX_MANIFEST_BYTES,
                what=what,
                headers=accept,
            )
            return body, headers.get("Content-Type")
        # A tag is resolved only by hosts allowed to ("resolve"); by digest, any "pull" host
        # will do: the body is verified against the digest below either way.
        capability = "pull" if obj.startswith("sha256:") else "resolve"

        def attempt(host: RegistryHost) -> tuple[bytes, str | None]:
            body, headers = t.get_bytes(
                host.api_url(path, ns=ref.domain),
                registry=host.netloc,
                scope=ref.scope(),
                limit=MAX_MANIFEST_BYTES,
                what=what,
                headers={**host.header_map(), **accept},
                max_retries=None if host.upstream else MIRROR_RETRIES,
            )
            return body, headers.get("Content-Type")

        return self.mirrors.first_success(ref, capability, attempt)

    def _get_by_descriptor(self, ref: Reference, desc: Descriptor) -> tuple[bytes, Document]:
        if desc.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            raise ManifestError(
                f"index entry {desc.digest} has media type {desc.media_type!r}, "
                "not a manifest or index"
            )
        if desc.size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"manifest {desc.digest} is {over_limit(desc.size, MAX_MANIFEST_BYTES)}"
            )
        body, content_type = self._get(ref, desc.digest)
        digest = sha256_digest(body)
        if digest != desc.digest:
            raise DigestMismatchError(
                f"manifest {ref.name}@{desc.digest}: body hashes to {digest}",
            )
        if len(body) != desc.size:
            raise SizeMismatchError(
                f"manifest {ref.name}@{desc.digest}: {len(body)} bytes, index says {desc.size}"
            )
        ct = _base_type(content_type)
        if ct in MANIFEST_TYPES | INDEX_TYPES and ct != desc.media_type:
            raise ManifestError(
                f"manifest {desc.digest}: Content-Type {ct!r} disagrees with the index's "
                f"{desc.media_type!r}"
            )
        return body, parse_document(body, desc.media_type)


def select_platform(
    index: Index, want: Platform, ref: Reference | None = None, *, any_platform: bool = False
) -> Descriptor:
    """The first index entry whose platform matches (image-index.md: entries are in order of
    preference). Entries without a platform, or not of a manifest/index type, are skipped.
    ``any_platform``: with no match, the first such entry."""
    offered: list[str] = []
    first: Descriptor | None = None
    for entry in index.manifests:
        if entry.platform is None:
            continue
        if entry.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            continue
        if want.matches(entry.platform):
            return entry
        p = str(entry.platform.normalized())
        if p != "unknown/unknown":  # attestation manifests (buildkit) are no image
            first = first or entry
            if p not in offered:
                offered.append(p)
    if any_platform and first is not None:
        return first
    where = f" for {ref}" if ref is not None else ""
    raise PlatformNotFoundError(
        f"no manifest for platform {want}{where}; the index offers: "
        + (", ".join(offered) if offered else "nothing"),
        hint="choose one of the offered platforms with --platform" if offered else None,
    )
