"""Parse and normalise image references the way docker does (distribution/reference).

``redis`` → ``docker.io/library/redis:latest``; ``index.docker.io/x`` → ``docker.io/x``;
``localhost:5000/a`` keeps its domain. The grammar follows distribution's ``reference.go``:
a domain is recognised only when the first component contains ``.`` or ``:`` or is
``localhost``; path components are lowercase; a tag is ``[\\w][\\w.-]{0,127}``; the digest is
validated by :func:`fastdist.oci.parse_digest` (sha256 only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import InvalidReferenceError
from .oci import Digest, parse_digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_LEGACY_HUB = "index.docker.io"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")


# An image ID (docker's IMAGE ID: the config digest) or a manifest/index digest, whole or a
# unique prefix, with or without "sha256:".
_ID_RE = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")

_FORMS = "references look like redis, redis:7, ghcr.io/org/app:tag or name@sha256:<hex>"


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: where an image lives and which version of it."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``[domain/]path[:tag][@digest]`` with docker's normalisation."""
        if not isinstance(text, str) or not text:
            raise InvalidReferenceError("invalid reference: empty string", hint=_FORMS)
        scheme = text.split("://", 1)[0].lower() if "://" in text else None
        if scheme is not None:
            rest = text.split("://", 1)[1]
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: a reference names a registry host, "
                f"not a {scheme}:// URL",
                hint=f"drop the scheme: {rest[:100]}; for a registry that speaks plain HTTP "
                "add --plain-http (loopback registries are found either way)",
            )
        if text != text.strip() or any(c.isspace() for c in text):
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: contains whitespace", hint=_FORMS
            )

        if names_only_an_id(text):
            # distribution: "cannot specify 64-byte hexadecimal strings" as a repository; and
            # sha256:<hex> is a digest, not the repository "sha256" with a hex tag.
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: an image ID or digest names no repository",
                hint="pull NAME@sha256:<hex>; local commands (inspect, rmi, run) also take an "
                "image ID or digest",
            )
        rest = text
        digest: Digest | None = None
        if "@" in rest:
            rest, _, raw_digest = rest.partition("@")
            try:
                digest = parse_digest(raw_digest)
            except InvalidReferenceError as e:
                raise InvalidReferenceError(
                    f"invalid reference {text[:100]!r}: {e.message}",
                    hint="a digest looks like sha256:<64 lowercase hex digits>",
                ) from None

        # A tag follows the last ':' only when no '/' comes after it (else it is a port).
        tag: str | None = None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.fullmatch(tag):
                raise InvalidReferenceError(
                    f"invalid reference {text[:100]!r}: bad tag {tag[:130]!r}",
                    hint="a tag is up to 128 letters, digits, '_', '.' or '-', "
                    "not starting with '.' or '-'",
                )

        domain, path = _split_domain(rest)
        if not _DOMAIN_RE.fullmatch(domain):
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: bad domain {domain[:100]!r}",
                hint="a registry is a host name or IP address with an optional numeric :port",
            )
        if not path:
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: empty repository", hint=_FORMS
            )
        for component in path.split("/"):
            if _PATH_COMPONENT_RE.fullmatch(component):
                continue
            if _PATH_COMPONENT_RE.fullmatch(component.lower()):
                raise InvalidReferenceError(
                    f"invalid reference {text[:100]!r}: repository name must be lowercase",
                    hint=f"try {text.lower()!r}",
                )
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: bad repository component {component[:60]!r}",
                hint="repository components are lowercase letters and digits separated by "
                "'.', '_', '__' or '-'",
            )
        if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
            raise InvalidReferenceError(
                f"invalid reference {text[:100]!r}: repository name longer than "
                f"{NAME_TOTAL_LENGTH_MAX} characters",
                hint="registry and repository together are at most "
                f"{NAME_TOTAL_LENGTH_MAX} characters",
            )
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(domain=domain, path=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """The fully qualified repository name: ``docker.io/library/redis``."""
        return f"{self.domain}/{self.path}"

    @property
    def registry(self) -> str:
        """The registry API host (``registry-1.docker.io`` for Docker Hub)."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def object(self) -> str:
        """What goes into ``/v2/<path>/manifests/<object>``: the digest if set, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or DEFAULT_TAG

    def scope(self, actions: str = "pull") -> str:
        """The token scope for ``actions`` on this repository (docker's token auth, the
        ``scope`` parameter: ``repository:<path>:pull`` or ``…:pull,push``)."""
        return f"repository:{self.path}:{actions}"

    def with_digest(self, d: Digest) -> Reference:
        return replace(self, digest=parse_digest(d))

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse_image_id(text: str) -> str | None:
    """The lowercase hex of ``text`` if it has the form of an image ID or digest, whole or a
    prefix (``sha256:3fa2…``, ``3fa2b1``), else None. A short bare hex string is also a valid
    repository name (``cafe``): callers try it as a name first, as docker does."""
    if not isinstance(text, str) or not _ID_RE.fullmatch(text):
        return None
    return text.removeprefix("sha256:")


def names_only_an_id(text: str) -> bool:
    """Whether ``text`` can only be an image ID or digest, never a name: ``sha256:<hex>``, or
    64 hex digits (which distribution refuses as a repository)."""
    hex_id = parse_image_id(text)
    return hex_id is not None and (text.startswith("sha256:") or len(hex_id) == 64)


def _split_domain(name: str) -> tuple[str, str]:
    """distribution's ``splitDockerDomain``."""
    first, sep, remainder = name.partition("/")
    # The first component is a domain only if it has '.' or ':' or is localhost, or is not
    # lowercase (docker's rule: an uppercase first component can never be a repository).
    looks_like_domain = (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not sep or not looks_like_domain:
        domain, remainder = DOCKER_HUB, name
    else:
        domain = first
    if domain == _LEGACY_HUB:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    return domain, remainder
