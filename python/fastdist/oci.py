"""OCI and Docker image model: media types, descriptors, manifests, indexes, configs, platforms.

Pure values, no I/O (like go-containerregistry's ``pkg/v1``). Parsing is strict because every
document comes from an untrusted registry (design.md §7): sizes are capped before parsing, JSON
depth is bounded, duplicate keys are rejected, every digest is validated before it can become a
path, URL or database key, and a document whose ``mediaType`` disagrees with the descriptor that
pointed at it, or that looks like both an index and a manifest, is refused (CVE-2021-41190).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, Union

from .errors import (
    InvalidDigestError,
    InvalidPlatformError,
    LimitExceededError,
    ManifestError,
    UnsupportedMediaTypeError,
)
from .sizes import over_limit

# --- media types (image-spec media-types.md, Docker manifest v2 schema 2) -----------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_ND,
        OCI_LAYER_ND_GZIP,
        OCI_LAYER_ND_ZSTD,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_FOREIGN_GZIP,
    }
)
# Layers whose blobs may live outside the registry (descriptor ``urls``); never fetched from
# those URLs unless the user allows it (image-spec layer.md#non-distributable-layers).
NONDISTRIBUTABLE_TYPES = frozenset(
    {OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_LAYER_FOREIGN_GZIP}
)
# What we send in Accept when resolving a tag or digest.
MANIFEST_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)

# Caps on documents before they are parsed (containerd uses 4 MiB for manifests).
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
MAX_JSON_DEPTH = 64

Digest = NewType("Digest", str)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ALGO_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def is_digest(value: str) -> bool:
    """Whether ``value`` is a digest as ``parse_digest`` accepts it (the one digest grammar)."""
    return _DIGEST_RE.fullmatch(value) is not None


def parse_digest(value: object) -> Digest:
    """Validate a digest string at the boundary: ``sha256:`` + 64 lowercase hex digits.

    A well-formed digest of another algorithm (``sha512:…``) is refused as unsupported rather
    than invalid, so the message tells the user what is actually wrong.
    """
    if isinstance(value, str) and is_digest(value):
        return Digest(value)
    if isinstance(value, str) and _ALGO_RE.fullmatch(value) and not value.startswith("sha256:"):
        raise UnsupportedMediaTypeError(
            f"unsupported digest algorithm in {value[:80]!r}: only sha256 is accepted",
            hint="name the content by its sha256 digest (sha256:<64 lowercase hex digits>)",
        )
    raise InvalidDigestError(
        f"invalid digest {str(value)[:80]!r}: "
        "expected 'sha256:' followed by 64 lowercase hex digits"
    )


def _document_digest(value: object, where: str) -> Digest:
    """A digest inside a manifest, index or config: a malformed one makes the document bad
    (ManifestError, a verification failure, exit 5), not the user's reference (exit 2)."""
    try:
        return parse_digest(value)
    except InvalidDigestError as e:
        raise ManifestError(
            f"{where}: {e.message}", hint="the image is malformed; ask its publisher to rebuild it"
        ) from e


def sha256_digest(data: bytes) -> Digest:
    """The digest of an in-memory document (manifests and configs; layers go through _native)."""
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def chain_ids(diff_ids: Iterable[str]) -> list[Digest]:
    """ChainIDs of a layer stack (image-spec config.md#layer-chainid): the snapshot keys."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        d = parse_digest(diff_id)
        out.append(d if not out else sha256_digest(f"{out[-1]} {d}".encode()))
    return out


# --- platforms --------------------------------------------------------------------------------
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


#: ``--platform any``: pull a single-platform image whatever platform it is built for (an index
#: still gives this host's entry).
ANY_PLATFORM = "any"
# containerd's platforms.Parse: each component is letters, digits, '_' or '-'.
_PLATFORM_PART_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Platform:
    """An image platform (image-spec image-index.md#platform)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as docker's ``--platform`` takes it."""
        parts = text.strip().split("/") if isinstance(text, str) else []
        if len(parts) not in (2, 3) or not all(_PLATFORM_PART_RE.fullmatch(p) for p in parts):
            raise InvalidPlatformError(
                f"invalid platform {str(text)[:100]!r}: expected os/arch[/variant]",
                hint="e.g. linux/amd64, linux/arm64 or linux/arm/v7; "
                f"{ANY_PLATFORM!r} accepts a single-platform image whatever its platform",
            )
        variant = parts[2] if len(parts) == 3 else None
        return cls(
            os=parts[0].lower(), architecture=_ARCH_ALIASES.get(parts[1], parts[1]), variant=variant
        ).normalized()

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine (linux/amd64, linux/arm64/v8, linux/arm/v7, …)."""
        machine = os.uname().machine.lower()
        arch = _ARCH_ALIASES.get(machine, machine)
        variant = None
        if arch == "arm64":
            variant = "v8"
        elif arch == "arm":
            variant = "v6" if machine.startswith("armv6") else "v7"
        return cls(os="linux", architecture=arch, variant=variant)

    def normalized(self) -> Platform:
        """containerd's normalisation: arm64's default variant is v8, arm's is v7."""
        variant = self.variant
        if self.architecture == "arm64" and variant in (None, "8", "v8"):
            variant = "v8"
        elif self.architecture == "arm" and variant in (None, "7"):
            variant = "v7"
        return Platform(self.os, self.architecture, variant, self.os_version)

    def matches(self, other: Platform) -> bool:
        """Whether an index entry's ``other`` platform can run where ``self`` is wanted."""
        a, b = self.normalized(), other.normalized()
        return a.os == b.os and a.architecture == b.architecture and a.variant == b.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- descriptors and documents ----------------------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    """A content descriptor (image-spec descriptor.md): what to fetch and how to verify it."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            p: dict[str, str] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            out["platform"] = p
        return out

    @classmethod
    def from_json(cls, obj: object, where: str) -> Descriptor:
        d = _obj(obj, where)
        media_type = _str(d.get("mediaType"), f"{where}.mediaType")
        digest = _document_digest(d.get("digest"), f"{where}.digest")
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: size must be a non-negative integer, got {size!r}")
        urls_raw = d.get("urls", [])
        if not isinstance(urls_raw, list) or not all(isinstance(u, str) for u in urls_raw):
            raise ManifestError(f"{where}.urls must be a list of strings")
        ann = _str_map(d.get("annotations"), f"{where}.annotations")
        plat = None
        if "platform" in d:
            p = _obj(d["platform"], f"{where}.platform")
            plat = Platform(
                os=_str(p.get("os"), f"{where}.platform.os"),
                architecture=_str(p.get("architecture"), f"{where}.platform.architecture"),
                variant=_opt_str(p.get("variant"), f"{where}.platform.variant"),
                os_version=_opt_str(p.get("os.version"), f"{where}.platform.os.version"),
            )
        return cls(media_type, digest, size, tuple(urls_raw), ann, plat)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    """An image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerConfig:
    """The ``config`` section of an image config: what ``fastdist run`` starts."""

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    volumes: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""


@dataclass(frozen=True)
class ImageConfig:
    """An image configuration (image-spec config.md)."""

    architecture: str
    os: str
    diff_ids: tuple[Digest, ...]
    config: ContainerConfig = ContainerConfig()
    variant: str | None = None
    created: str | None = None

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


Document = Union[Manifest, Index]


def parse_document(data: bytes, media_type: str | None = None) -> Document:
    """Parse a manifest or index fetched from a registry.

    ``media_type`` is what the referring descriptor (or the registry's Content-Type, for a tag)
    claimed; the document's own ``mediaType`` must agree with it, and a document must not carry
    both ``manifests`` and ``layers``/``config`` (CVE-2021-41190).
    """
    obj = _obj(parse_json(data, MAX_MANIFEST_BYTES, "manifest"), "manifest")
    if obj.get("schemaVersion") != 2:
        raise UnsupportedMediaTypeError(
            f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}: only 2 is supported",
            hint="schema 1 manifests are deprecated; push the image again with a current tool",
        )
    declared = _opt_str(obj.get("mediaType"), "manifest.mediaType")
    has_index = "manifests" in obj
    has_manifest = "layers" in obj or "config" in obj
    if has_index and has_manifest:
        raise ManifestError("ambiguous document: it has both 'manifests' and 'layers'/'config'")
    if declared and media_type and declared != media_type:
        raise ManifestError(
            f"manifest mediaType {declared!r} disagrees with the descriptor's {media_type!r}"
        )
    kind = declared or media_type
    if kind is None:
        kind = OCI_INDEX if has_index else OCI_MANIFEST
    if kind in INDEX_TYPES:
        if has_manifest or not has_index:
            raise ManifestError(f"document declared {kind} is not an index")
        raw = obj["manifests"]
        if not isinstance(raw, list):
            raise ManifestError("index.manifests must be a list")
        entries = tuple(Descriptor.from_json(m, f"manifests[{i}]") for i, m in enumerate(raw))
        return Index(kind, entries, _str_map(obj.get("annotations"), "index.annotations"))
    if kind in MANIFEST_TYPES:
        if has_index or "config" not in obj:
            raise ManifestError(f"document declared {kind} is not an image manifest")
        config = Descriptor.from_json(obj["config"], "config")
        layers_raw = obj.get("layers", [])
        if not isinstance(layers_raw, list):
            raise ManifestError("manifest.layers must be a list")
        layers = tuple(Descriptor.from_json(x, f"layers[{i}]") for i, x in enumerate(layers_raw))
        return Manifest(kind, config, layers, _str_map(obj.get("annotations"), "annotations"))
    raise UnsupportedMediaTypeError(f"unsupported manifest media type {kind!r}")


def parse_config(data: bytes, *, max_volumes: int | None = None) -> ImageConfig:
    """Parse an image config; ``rootfs.diff_ids`` are validated digests. More than
    ``max_volumes`` Volumes (default: ``Limits().max_volumes``) is a LimitExceededError: each
    becomes a mount of every container (20,000 of them took 20 s to set up)."""
    obj = _obj(parse_json(data, MAX_CONFIG_BYTES, "config"), "config")
    rootfs = _obj(obj.get("rootfs"), "config.rootfs")
    if rootfs.get("type") != "layers":
        raise ManifestError(f"config.rootfs.type must be 'layers', got {rootfs.get('type')!r}")
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise ManifestError("config.rootfs.diff_ids must be a list")
    cc = obj.get("config") or {}
    c = _obj(cc, "config.config")
    volumes = _obj(c.get("Volumes") or {}, "Volumes")
    if max_volumes is None:
        from . import _native  # the limits' one home (rust/src/limits.rs)

        max_volumes = _native.Limits().max_volumes
    if len(volumes) > max_volumes:
        raise LimitExceededError(
            f"image config declares {len(volumes)} Volumes, over the limit of {max_volumes} "
            "(max_volumes)",
            hint="raise Limits(max_volumes=...) only if you trust this image",
        )
    cfg = ContainerConfig(
        user=_opt_str(c.get("User"), "User") or "",
        env=_str_list(c.get("Env"), "Env") or (),
        entrypoint=_str_list(c.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(c.get("Cmd"), "Cmd"),
        working_dir=_opt_str(c.get("WorkingDir"), "WorkingDir") or "",
        volumes=tuple(sorted(volumes)),
        exposed_ports=tuple(sorted(_obj(c.get("ExposedPorts") or {}, "ExposedPorts"))),
        labels=_str_map(c.get("Labels"), "Labels"),
        stop_signal=_opt_str(c.get("StopSignal"), "StopSignal") or "",
    )
    return ImageConfig(
        architecture=_str(obj.get("architecture"), "config.architecture"),
        os=_str(obj.get("os"), "config.os"),
        variant=_opt_str(obj.get("variant"), "config.variant"),
        created=_opt_str(obj.get("created"), "config.created"),
        diff_ids=tuple(
            _document_digest(x, f"config.rootfs.diff_ids[{i}]") for i, x in enumerate(ids)
        ),
        config=cfg,
    )


def parse_json(data: bytes, limit: int, what: str) -> Any:
    """Decode untrusted JSON: size-capped, depth-bounded, duplicate keys refused."""
    if len(data) > limit:
        raise ManifestError(f"{what} is {over_limit(len(data), limit)}")
    _check_depth(data, MAX_JSON_DEPTH, what)

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ManifestError(f"{what} has duplicate key {k!r}")
            out[k] = v
        return out

    try:
        return json.loads(data, object_pairs_hook=no_dupes)
    except (ValueError, RecursionError) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"{what} is not valid JSON: {e}") from None


def _check_depth(data: bytes, max_depth: int, what: str) -> None:
    # A cheap scan before json.loads so a deeply nested document cannot exhaust the stack.
    depth = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                raise ManifestError(f"{what} nests deeper than {max_depth} levels")
        elif b in (0x5D, 0x7D):
            depth -= 1


def _obj(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ManifestError(f"{where} must be an object")
    return v


def _str(v: object, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ManifestError(f"{where} must be a non-empty string")
    return v


def _opt_str(v: object, where: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ManifestError(f"{where} must be a string")
    return v


def _str_list(v: object, where: str) -> tuple[str, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ManifestError(f"{where} must be a list of strings")
    return tuple(v)


def _str_map(v: object, where: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ManifestError(f"{where} must be a map of strings")
    return dict(v)


def wanted_platform(platform: object) -> tuple[Platform | None, bool]:
    """``pull``'s and ``run``'s platform argument as (the platform asked for, or None for this
    host's; whether any platform will do)."""
    if platform is None:
        return None, False
    if isinstance(platform, Platform):
        return platform.normalized(), False
    if isinstance(platform, str) and platform.strip().lower() == ANY_PLATFORM:
        return None, True
    if not isinstance(platform, str):
        raise InvalidPlatformError(
            f"invalid platform {platform!r}: expected a string or a Platform",
            hint="e.g. 'linux/amd64'",
        )
    return Platform.parse(platform), False
