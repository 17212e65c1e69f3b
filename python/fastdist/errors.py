"""The exception classes of fastdist: one tree, shared by Python and the Rust core.

Every error carries a one-line ``message`` (``<what failed>: <why>``, naming the digest, path or
redacted URL) and an optional ``hint`` telling the user what to do next. The CLI maps each class to
an exit code (``exit_code``) and prints ``error: …`` / ``hint: …``. The native module raises these
same classes, built by ``from_native`` from the Rust error's kind and fields (digest, path, expected
and actual values, the limit), so callers never see a Rust-specific type and never parse a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar


class FastdistError(Exception):
    """Base class of every error fastdist raises on purpose."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidReferenceError(FastdistError):
    """An image reference (or a digest inside one) does not parse."""

    exit_code = 2


class InvalidDigestError(InvalidReferenceError):
    """A digest string is not ``sha256:`` followed by 64 lowercase hex digits; ``digest`` is the
    string (when known)."""

    def __init__(self, message: str, *, hint: str | None = None, digest: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digest = digest


class InvalidArgumentError(FastdistError, ValueError):
    """An option or argument value is malformed (``--platform garbage``, a negative limit).

    Also a ``ValueError``, so API callers that catch that keep working."""

    exit_code = 2


class InvalidPlatformError(InvalidArgumentError):
    """A platform string is not ``os/arch[/variant]`` (or ``any``)."""


class RegistryError(FastdistError):
    """The registry answered with an error, or could not be reached.

    ``temporary`` says whether retrying the same request may succeed (connection errors, 5xx, 429);
    only the transport acts on it. ``url`` is always redacted (no credentials, no query tokens).
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        code: str | None = None,
        url: str | None = None,
        temporary: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.url = url
        self.temporary = temporary


class AuthenticationError(RegistryError):
    """The registry refused our credentials, or the token flow failed."""


class NotFoundError(RegistryError):
    """The registry does not have the repository, tag, manifest or blob."""


class PlatformNotFoundError(FastdistError):
    """An index offers no manifest for the wanted platform."""

    exit_code = 4


class VerificationError(FastdistError):
    """Content did not match what its descriptor promised."""

    exit_code = 5


class DigestMismatchError(VerificationError):
    """The computed digest (or diff_id) differs from the expected one. From the native core,
    ``what`` is ``"digest"`` or ``"diff_id"`` and ``expected``/``actual`` the two digests."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        what: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.what = what
        self.expected = expected
        self.actual = actual


class SizeMismatchError(VerificationError):
    """The number of bytes differs from the descriptor's size (``expected``/``actual`` bytes, when
    known)."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.expected = expected
        self.actual = actual


class ManifestError(VerificationError):
    """A manifest, index or config is malformed, ambiguous or over a limit."""


class LayerError(FastdistError):
    """A layer could not be applied."""

    exit_code = 6


class UnsafePathError(LayerError):
    """A layer entry would reach outside the root or misuse a link or whiteout: ``path`` is the
    entry's path in the layer, ``reason`` what is wrong with it."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        path: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.reason = reason


class CorruptLayerError(LayerError):
    """A layer's compressed stream or tar archive is malformed or truncated: ``reason``, and
    ``entry``, the tar entry it happened in (None when not inside one)."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        reason: str | None = None,
        entry: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.entry = entry


class UnsupportedMediaTypeError(LayerError):
    """A media type (or digest algorithm) fastdist does not accept: ``media_type`` or ``digest``
    is the refused value."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        media_type: str | None = None,
        digest: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.media_type = media_type
        self.digest = digest


class LimitExceededError(LayerError):
    """A configured resource limit (size, entries, ratio, depth…) was exceeded: ``limit`` names
    it, ``maximum`` is its configured value and ``actual`` what the input reached."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        limit: str | None = None,
        maximum: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.limit = limit
        self.maximum = maximum
        self.actual = actual


class StoreError(FastdistError):
    """The local store (content, snapshots, metadata) failed or is inconsistent.

    From the native core's I/O: ``op`` (``"open"``, ``"write"``…), ``path`` and ``errno`` (None
    when the failure was not an OS error)."""

    exit_code = 7

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        op: str | None = None,
        path: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.op = op
        self.path = path
        self.errno = errno


class ImageNotFoundError(StoreError):
    """No local image has that reference."""


class AmbiguousImageError(StoreError):
    """A short ID (or digest prefix) matches more than one local image; ``candidates`` are their
    names."""

    def __init__(
        self, message: str, *, hint: str | None = None, candidates: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.candidates = candidates


class IncompleteImageError(StoreError):
    """An image's index lists platforms whose manifest or blobs are not in the store, and the
    operation needs them all (``push --all``); ``missing`` names them."""

    def __init__(
        self, message: str, *, hint: str | None = None, missing: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.missing = missing


class ContainerNotFoundError(StoreError):
    """No container has that id."""


class InUseError(StoreError):
    """The object is still used (an image by a container, an id already taken)."""


class ContainerRunError(FastdistError):
    """runc failed to create or run a container (not the container's own non-zero exit)."""

    exit_code = 8

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.stderr_tail = stderr_tail


# Container-run errors are all ContainerRunError, so the CLI maps them to one exit code.
class NoCommandError(ContainerRunError):
    """The image has neither Entrypoint nor Cmd and no command was given."""


class UnknownUserError(ContainerRunError):
    """A user or group name is not in the image's /etc/passwd or /etc/group."""


class WorkdirError(ContainerRunError):
    """The working directory cannot be used (not absolute, not a directory, a kernel fs)."""


class InvalidRunOptionError(ContainerRunError):
    """A run option is malformed (env entry, mount, network mode, container id, capability)."""

    exit_code = 2  # a usage error, like argparse's: nothing was created


# Configuration the user gave that cannot be used: a usage error, exit 2 like a bad argument.
class HostsConfigError(FastdistError):
    """A hosts.toml file that cannot be used."""

    exit_code = 2


class SeccompProfileError(FastdistError):
    """A seccomp profile given by the user cannot be used (not JSON, wrong shape)."""

    exit_code = 2


class ServeError(FastdistError):
    """``fastdist serve`` cannot start: a bad listen address, TLS files or auth file."""

    exit_code = 2


class PullAbortedError(FastdistError):
    """A layer stopped because another layer of the same pull failed (pulling.py); the
    dispatcher raises that failure instead, so users see this only if nothing else failed."""


# The native core's error kinds (rust/src/error.rs, one per variant; rust/py/src/lib.rs sends the
# variant's fields as keyword arguments) and the class each becomes.
_NATIVE_KINDS: Mapping[str, Callable[..., FastdistError]] = {
    "invalid_digest": InvalidDigestError,
    "unsupported_algorithm": UnsupportedMediaTypeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "digest_mismatch": DigestMismatchError,
    "size_mismatch": SizeMismatchError,
    "unsafe_path": UnsafePathError,
    "corrupt": CorruptLayerError,
    "limit": LimitExceededError,
    "io": StoreError,
    "state": FastdistError,
}


def from_native(kind: str, message: str, fields: Mapping[str, Any]) -> FastdistError:
    """The exception for a native-core error: its class by ``kind``, its attributes from
    ``fields``. Called by the native module only; an unknown kind (a newer core) is a plain
    ``FastdistError`` with the message."""
    make = _NATIVE_KINDS.get(kind)
    if make is None:
        return FastdistError(message)
    return make(message, **fields)
