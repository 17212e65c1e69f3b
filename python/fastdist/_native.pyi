"""Type stub of fastdist._native, the bindings (rust/py) of the Rust core (rust/src). Checked
against the built module by ``python -m mypy.stubtest fastdist._native``.

Errors are raised as the classes in fastdist.errors (built by ``errors.from_native``), with the
Rust error's fields as attributes, so no caller parses a message:

* InvalidDigestError: ``digest``
* UnsupportedMediaTypeError: ``media_type`` (a layer type) or ``digest`` (an unknown algorithm)
* DigestMismatchError: ``what`` (``"digest"`` or ``"diff_id"``), ``expected``, ``actual``
* SizeMismatchError: ``expected``, ``actual`` (bytes)
* UnsafePathError: ``path`` (the entry in the layer), ``reason``
* CorruptLayerError: ``reason``, ``entry`` (the tar entry, or None)
* LimitExceededError: ``limit`` (its name), ``maximum`` (the configured value), ``actual``
* StoreError (I/O on the destination or a local file): ``op``, ``path``, ``errno`` (or None)
"""

from typing import Literal, final

from typing_extensions import Buffer, Self

ApplyMode = Literal["layer", "flatten"]

# Media types the applier accepts (OCI and Docker layer types, gzip/zstd/uncompressed).
LAYER_MEDIA_TYPES: list[str]

def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:`` + 64 lowercase hex, else raise InvalidDigestError
    (UnsupportedMediaTypeError for a well-formed but unknown algorithm such as sha512)."""

def sha256_file(path: str) -> tuple[str, int]:
    """Hash a whole file with the GIL released; returns (``sha256:<hex>``, size)."""

@final
class Sha256:
    """Streaming sha256 (SHA-NI where the CPU has it); releases the GIL for large updates."""

    def __new__(cls) -> Self: ...
    def update(self, data: Buffer) -> None: ...
    def digest(self) -> str:
        """``sha256:<hex>`` of everything so far (does not reset)."""
    @property
    def size(self) -> int: ...

@final
class Limits:
    """Resource limits for one layer (and ``max_volumes`` for one image config). Every breach
    raises LimitExceededError naming the limit."""

    def __new__(
        cls,
        *,
        max_entries: int = 1_000_000,
        max_layer_bytes: int = 64 << 30,
        max_entry_bytes: int = 32 << 30,
        max_header_bytes: int = 1 << 20,
        max_path_len: int = 4096,
        max_path_depth: int = 128,
        max_ratio: int = 1000,
        ratio_grace_bytes: int = 256 << 20,
        zstd_window_log_max: int = 27,
        max_volumes: int = 1024,
    ) -> Self: ...
    max_entries: int
    max_layer_bytes: int
    max_entry_bytes: int
    max_header_bytes: int
    max_path_len: int
    max_path_depth: int
    max_ratio: int
    ratio_grace_bytes: int
    zstd_window_log_max: int
    max_volumes: int

@final
class LayerResult:
    digest: str
    diff_id: str
    compressed_size: int
    uncompressed_size: int
    entries: int
    # The layer's file manifest with xxh3-128 fingerprints (text; rust/src/manifest.rs).
    manifest: bytes

@final
class LayerWriter:
    """The single streaming pass of one layer (design.md §6).

    Python ``write``s compressed chunks as they arrive from the network (or, ranged, ``write_at``s
    them at their offsets and ``advance``s the contiguous prefix). With a ``tee_path`` (the
    ingest file, which becomes the blob) the bytes go into it first and a feeder thread reads the
    prefix back in spans of 1 MiB as it grows. On its own threads, with the GIL released, the
    writer hashes them in order (digest), decompresses by ``media_type`` (magic bytes
    double-checked), hashes the tar (diff_id) and applies it under ``dest`` in ``mode``:

    * ``"layer"``: ``dest`` is an empty overlay layer directory; ``.wh.NAME`` becomes a 0/0 char
      device and ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory.
    * ``"flatten"``: ``dest`` is a full tree; whiteouts delete inside it, an opaque marker removes
      the lower contents of its directory but keeps this layer's entries.

    If ``tee_path`` already holds bytes (a partial download; the caller made sure they are the
    blob's contiguous prefix, see ``content.Ingest``), they are fed through the pipeline first
    without being written again, and ``offset`` starts at their length: the caller continues the
    download from there with a Range request.

    ``write`` raises as soon as the pipeline has failed. ``finish`` waits for the worker, checks
    the expected digest/size/diff_id and returns the result; on any error the caller throws
    ``dest`` away (nothing outside it was touched) and may keep or discard ``tee_path``.
    ``preserve_owner=None`` means "chown only when running as root".
    """

    def __new__(
        cls,
        media_type: str,
        dest: str,
        *,
        mode: ApplyMode = "layer",
        expected_digest: str | None = None,
        expected_size: int | None = None,
        expected_diff_id: str | None = None,
        tee_path: str | None = None,
        limits: Limits | None = None,
        preserve_owner: bool | None = None,
    ) -> Self: ...
    def write(self, data: Buffer) -> None:
        """Append ``data`` (with a tee: written to it, read back by the pipeline in big spans;
        blocks while the pipeline is 8 MiB behind)."""
    def write_at(self, offset: int, data: Buffer) -> None:
        """Write ``data`` into the tee at ``offset``, at or past ``offset`` (the contiguous
        prefix; below it is refused, as is past ``expected_size``). Any thread, no lock on
        the writer, the GIL released; the pipeline reads it once ``advance`` passes it."""
    def advance(self, to: int) -> None:
        """Declare ``[0, to)`` of the tee written: the pipeline consumes up to there."""
    @property
    def offset(self) -> int:
        """Compressed bytes accepted in order so far (including a resumed tee prefix)."""
    def finish(self) -> LayerResult: ...
    def abort(self) -> None:
        """Stop the worker and release files; idempotent. ``finish`` after abort raises."""

def apply_layer(
    blob_path: str,
    media_type: str,
    dest: str,
    *,
    mode: ApplyMode = "layer",
    expected_digest: str | None = None,
    expected_size: int | None = None,
    expected_diff_id: str | None = None,
    limits: Limits | None = None,
    preserve_owner: bool | None = None,
) -> LayerResult:
    """The one-call form for a blob already on disk (GIL released throughout)."""

def layer_diff_id(
    blob_path: str,
    media_type: str,
    *,
    expected_digest: str | None = None,
    limits: Limits | None = None,
) -> tuple[str, int]:
    """Decompress a layer blob on disk without applying it; returns (diff_id, uncompressed size).
    Same checks as ``apply_layer`` (media type, magic, limits, digest); GIL released."""
