"""The exception classes of fastdist: one tree, shared by Python and the Rust core.

Every error carries a one-line ``message`` (``<what failed>: <why>``, naming the digest, path or
redacted URL) and an optional ``hint`` telling the user what to do next. The CLI maps each class to
an exit code (``exit_code``) and prints ``error: …`` / ``hint: …``. The native module raises these
same classes (looked up by name from this module), so callers never see a Rust-specific type.
"""

from __future__ import annotations

from typing import ClassVar


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
    """A digest string is not ``sha256:`` followed by 64 lowercase hex digits."""


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
    """The computed digest (or diff_id) differs from the expected one."""


class SizeMismatchError(VerificationError):
    """The number of bytes differs from the descriptor's size."""


class ManifestError(VerificationError):
    """A manifest, index or config is malformed, ambiguous or over a limit."""


class LayerError(FastdistError):
    """A layer could not be applied."""

    exit_code = 6


class UnsafePathError(LayerError):
    """A layer entry would reach outside the root or misuse a link or whiteout."""


class CorruptLayerError(LayerError):
    """A layer's compressed stream or tar archive is malformed or truncated."""


class UnsupportedMediaTypeError(LayerError):
    """A media type (or digest algorithm) fastdist does not accept."""


class LimitExceededError(LayerError):
    """A configured resource limit (size, entries, ratio, depth…) was exceeded."""


class StoreError(FastdistError):
    """The local store (content, snapshots, metadata) failed or is inconsistent."""

    exit_code = 7


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
