"""fastdist._native: digests, sha256, and the single streaming pass of a layer (LayerWriter,
apply_layer) on gzip, zstd and plain tar layers built here with tarfile."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastdist import errors, oci
from fastdist._native import (
    LAYER_MEDIA_TYPES,
    LayerResult,
    LayerWriter,
    Limits,
    Sha256,
    apply_layer,
    layer_diff_id,
    sha256_file,
    validate_digest,
)

TAR = "application/vnd.oci.image.layer.v1.tar"
TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TZST = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_TGZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes]) -> bytes:
    """A ustar archive: a directory, the given files, and a relative symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        d = tarfile.TarInfo("etc")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("etc/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "hostname"
        tf.addfile(link)
    return buf.getvalue()


def zstd_compress(data: bytes, *extra: str) -> bytes:
    if shutil.which("zstd") is None:
        pytest.skip("zstd CLI not installed (apt-get install zstd)")
    return subprocess.run(
        ["zstd", "-q", "-c", *extra], input=data, stdout=subprocess.PIPE, check=True
    ).stdout


def compress(media_type: str, tar: bytes) -> bytes:
    if media_type.endswith("zstd"):
        return zstd_compress(tar)
    if media_type.endswith("gzip"):
        return gzip.compress(tar, compresslevel=6)
    return tar


@dataclass(frozen=True)
class Layer:
    media_type: str
    tar: bytes
    blob: bytes
    files: dict[str, bytes]
    entries: int


FILES = {
    "etc/hostname": b"fastdist\n",
    "etc/big.bin": bytes(range(256)) * 4096 + os.urandom(300_000),
    "etc/empty": b"",
}


def layer(media_type: str, files: dict[str, bytes] = FILES) -> Layer:
    tar = make_tar(files)
    return Layer(media_type, tar, compress(media_type, tar), files, len(files) + 2)


def assert_applied(result: LayerResult, lay: Layer, dest: Path) -> None:
    assert result.digest == sha256(lay.blob)
    assert result.diff_id == sha256(lay.tar)
    assert result.compressed_size == len(lay.blob)
    assert result.uncompressed_size == len(lay.tar)
    assert result.entries == lay.entries
    for name, data in lay.files.items():
        assert (dest / name).read_bytes() == data
    assert os.readlink(dest / "etc/link") == "hostname"


def chunked(data: bytes, size: int, kind: Callable[[bytes], object]) -> Iterator[object]:
    for i in range(0, len(data), size):
        yield kind(data[i : i + size])


def memview_of(data: bytes) -> object:
    # A slice of a larger buffer, not starting at 0: the view's offset must be honoured.
    backing = bytearray(b"x" * 3 + data + b"y" * 5)
    return memoryview(backing)[3 : 3 + len(data)]


# --- digests --------------------------------------------------------------------------------

GOOD = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("digest", "error"),
    [
        (GOOD, None),
        (EMPTY_SHA256, None),
        ("sha256:" + "0123456789ABCDEF" * 4, errors.InvalidDigestError),
        ("sha256:" + "a" * 63, errors.InvalidDigestError),
        ("sha256:" + "a" * 65, errors.InvalidDigestError),
        ("sha256:" + "g" * 64, errors.InvalidDigestError),
        ("sha256" + "a" * 64, errors.InvalidDigestError),
        ("", errors.InvalidDigestError),
        ("SHA256:" + "a" * 64, errors.InvalidDigestError),
        (" sha256:" + "a" * 64, errors.InvalidDigestError),
        ("sha512:" + "a" * 128, errors.UnsupportedMediaTypeError),
        ("blake3:" + "a" * 64, errors.UnsupportedMediaTypeError),
        ("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdB", errors.UnsupportedMediaTypeError),
    ],
)
def test_validate_digest_accepts_only_lowercase_sha256(
    digest: str, error: type[Exception] | None
) -> None:
    if error is None:
        assert validate_digest(digest) == digest
    else:
        with pytest.raises(error) as info:
            validate_digest(digest)
        assert isinstance(info.value, errors.FastdistError)
        assert repr(digest) in str(info.value) or digest in str(info.value)


def test_sha256_matches_hashlib_for_every_buffer_kind() -> None:
    data = os.urandom(3 << 20)
    h = Sha256()
    assert h.digest() == EMPTY_SHA256
    h.update(data[:10])
    h.update(bytearray(data[10:1000]))
    h.update(memview_of(data[1000 : 2 << 20]))
    h.update(data[2 << 20 :])
    assert h.digest() == sha256(data)
    assert h.digest() == sha256(data)  # digest() does not reset
    assert h.size == len(data)


def test_sha256_rejects_non_buffers() -> None:
    with pytest.raises(TypeError):
        Sha256().update(5)  # type: ignore[arg-type]


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 3 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(str(path)) == (sha256(data), len(data))
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(str(tmp_path / "empty")) == (EMPTY_SHA256, 0)


def test_sha256_file_missing_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(errors.StoreError, match="missing"):
        sha256_file(str(tmp_path / "missing"))


def test_layer_media_types_cover_oci_and_docker() -> None:
    assert {TAR, TGZ, TZST, DOCKER_TGZ} <= set(LAYER_MEDIA_TYPES)
    assert "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" in LAYER_MEDIA_TYPES
    assert "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" in LAYER_MEDIA_TYPES


def test_python_accepts_exactly_the_layer_media_types_rust_can_unpack() -> None:
    # oci.LAYER_TYPES validates manifests; the Rust core picks the codec: one list, two languages.
    assert set(LAYER_MEDIA_TYPES) == oci.LAYER_TYPES


def test_limits_defaults_and_overrides() -> None:
    lim = Limits(max_ratio=10)
    assert lim.max_ratio == 10
    assert lim.max_entries == 1_000_000
    assert lim.zstd_window_log_max == 27
    lim.max_entries = 5
    assert lim.max_entries == 5
    with pytest.raises(ValueError, match="zstd_window_log_max"):
        Limits(zstd_window_log_max=40)


# --- the streaming pass -----------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [TGZ, TZST, TAR, DOCKER_TGZ])
@pytest.mark.parametrize(
    ("chunk", "kind"),
    [(1, bytes), (4097, bytearray), (65536 + 3, memview_of), (5 << 20, bytes)],
)
def test_layer_writer_hashes_and_applies_in_one_pass(
    tmp_path: Path, media_type: str, chunk: int, kind: Callable[[bytes], object]
) -> None:
    lay = layer(media_type)
    blob = lay.blob
    dest = tmp_path / "dest"
    dest.mkdir()
    w = LayerWriter(
        media_type,
        str(dest),
        expected_digest=sha256(lay.blob),
        expected_size=len(lay.blob),
        expected_diff_id=sha256(lay.tar),
        preserve_owner=False,
    )
    if chunk == 1:
        # Byte-at-a-time over the whole blob is slow in Python; do it for the head only.
        for piece in chunked(blob[:4096], 1, kind):
            w.write(piece)  # type: ignore[arg-type]
        w.write(blob[4096:])
    else:
        for piece in chunked(blob, chunk, kind):
            w.write(piece)  # type: ignore[arg-type]
    assert w.offset == len(lay.blob)
    assert_applied(w.finish(), lay, dest)


@pytest.mark.parametrize("media_type", [TGZ, TZST, TAR])
def test_apply_layer_from_disk_equals_streaming(tmp_path: Path, media_type: str) -> None:
    lay = layer(media_type)
    blob = tmp_path / "blob"
    blob.write_bytes(lay.blob)
    dest = tmp_path / "dest"
    dest.mkdir()
    res = apply_layer(
        str(blob), media_type, str(dest), expected_digest=sha256(lay.blob), preserve_owner=False
    )
    assert_applied(res, lay, dest)


@pytest.mark.parametrize("media_type", [TGZ, TZST, TAR])
def test_layer_diff_id_decompresses_without_applying(tmp_path: Path, media_type: str) -> None:
    lay = layer(media_type)
    blob = tmp_path / "blob"
    blob.write_bytes(lay.blob)
    assert layer_diff_id(str(blob), media_type) == (sha256(lay.tar), len(lay.tar))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]
    with pytest.raises(errors.DigestMismatchError):
        layer_diff_id(str(blob), media_type, expected_digest=GOOD)


def test_gzip_multi_member_layer_is_one_stream(tmp_path: Path) -> None:
    lay = layer(TAR)
    half = len(lay.tar) // 2
    blob = gzip.compress(lay.tar[:half]) + gzip.compress(lay.tar[half:])
    dest = tmp_path / "dest"
    dest.mkdir()
    w = LayerWriter(TGZ, str(dest), preserve_owner=False)
    w.write(blob)
    res = w.finish()
    assert res.diff_id == sha256(lay.tar)
    assert res.digest == sha256(blob)


def _run(
    tmp_path: Path, media_type: str, blob: bytes, chunk: int = 1 << 16, **kw: object
) -> LayerResult:
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    w = LayerWriter(media_type, str(dest), preserve_owner=False, **kw)  # type: ignore[arg-type]
    try:
        for i in range(0, len(blob), chunk):
            w.write(blob[i : i + chunk])
    except errors.FastdistError:
        # write raised: finish must raise too (the same class), checked by the callers.
        pass
    return w.finish()


def test_expected_digest_mismatch_raises(tmp_path: Path) -> None:
    lay = layer(TGZ)
    with pytest.raises(errors.DigestMismatchError, match="digest mismatch") as info:
        _run(tmp_path, TGZ, lay.blob, expected_digest=GOOD)
    assert GOOD in str(info.value)
    assert sha256(lay.blob) in str(info.value)


def test_expected_diff_id_mismatch_raises(tmp_path: Path) -> None:
    lay = layer(TZST)
    with pytest.raises(errors.DigestMismatchError, match="diff_id mismatch"):
        _run(tmp_path, TZST, lay.blob, expected_diff_id=GOOD)


@pytest.mark.parametrize("delta", [-1, 1])
def test_expected_size_mismatch_raises(tmp_path: Path, delta: int) -> None:
    lay = layer(TGZ)
    with pytest.raises(errors.SizeMismatchError, match=str(len(lay.blob) + delta)):
        _run(tmp_path, TGZ, lay.blob, expected_size=len(lay.blob) + delta)


def test_oversized_write_fails_at_once_and_finish_repeats_it(tmp_path: Path) -> None:
    lay = layer(TGZ)
    dest = tmp_path / "d"
    dest.mkdir()
    w = LayerWriter(TGZ, str(dest), expected_size=100, preserve_owner=False)
    with pytest.raises(errors.SizeMismatchError):
        w.write(lay.blob[:101])
    with pytest.raises(errors.SizeMismatchError):
        w.write(b"x")
    with pytest.raises(errors.SizeMismatchError):
        w.finish()


@pytest.mark.parametrize(
    ("media_type", "blob_of", "error", "match"),
    [
        (TAR, lambda t: gzip.compress(t), errors.CorruptLayerError, "data is gzip"),
        (TAR, lambda t: zstd_compress(t), errors.CorruptLayerError, "data is zstd"),
        (TGZ, lambda t: zstd_compress(t), errors.CorruptLayerError, "says gzip"),
        (TZST, lambda t: gzip.compress(t), errors.CorruptLayerError, "says zstd"),
        (TGZ, lambda t: t, errors.CorruptLayerError, "not the gzip magic"),
        (TGZ, lambda t: b"", errors.CorruptLayerError, "empty"),
    ],
)
def test_media_type_must_match_magic_bytes(
    tmp_path: Path,
    media_type: str,
    blob_of: Callable[[bytes], bytes],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        _run(tmp_path, media_type, blob_of(make_tar(FILES)))


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.oci.image.layer.v1.tar+bzip2", "application/octet-stream", ""],
)
def test_unknown_media_type_is_refused_up_front(tmp_path: Path, media_type: str) -> None:
    with pytest.raises(errors.UnsupportedMediaTypeError):
        LayerWriter(media_type, str(tmp_path))
    with pytest.raises(errors.UnsupportedMediaTypeError):
        apply_layer(str(tmp_path / "nope"), media_type, str(tmp_path))


def test_invalid_expected_digest_and_mode_are_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidDigestError):
        LayerWriter(TGZ, str(tmp_path), expected_digest="sha256:abc")
    with pytest.raises(ValueError, match="mode"):
        LayerWriter(TGZ, str(tmp_path), mode="merge")  # type: ignore[arg-type]


def test_gzip_bomb_hits_the_ratio_limit(tmp_path: Path) -> None:
    tar = make_tar({"etc/zeros": bytes(48 << 20)})
    blob = gzip.compress(tar, compresslevel=9)
    limits = Limits(max_ratio=50, ratio_grace_bytes=1 << 20)
    with pytest.raises(errors.LimitExceededError, match="decompression ratio"):
        _run(tmp_path, TGZ, blob, limits=limits)


def test_layer_size_limit_applies_to_the_uncompressed_stream(tmp_path: Path) -> None:
    lay = layer(TZST)
    with pytest.raises(errors.LimitExceededError, match="uncompressed layer size"):
        _run(tmp_path, TZST, lay.blob, limits=Limits(max_layer_bytes=len(lay.tar) - 1))


def test_zstd_window_over_the_limit_is_refused(tmp_path: Path) -> None:
    tar = make_tar({"etc/data": os.urandom(1 << 16)})
    blob = zstd_compress(tar, "--long=25")
    with pytest.raises(errors.LimitExceededError, match="zstd window"):
        _run(tmp_path, TZST, blob, limits=Limits(zstd_window_log_max=20))


@pytest.mark.parametrize("media_type", [TGZ, TZST])
def test_truncated_stream_is_corrupt(tmp_path: Path, media_type: str) -> None:
    lay = layer(media_type)
    with pytest.raises(errors.CorruptLayerError):
        _run(tmp_path, media_type, lay.blob[: len(lay.blob) * 2 // 3])


@pytest.mark.parametrize("media_type", [TGZ, TZST])
def test_trailing_garbage_after_the_stream_is_corrupt(tmp_path: Path, media_type: str) -> None:
    lay = layer(media_type)
    with pytest.raises(errors.CorruptLayerError):
        _run(tmp_path, media_type, lay.blob + b"garbage!")


def test_corrupt_stream_fails_a_later_write_and_finish(tmp_path: Path) -> None:
    lay = layer(TGZ, {"etc/noise": os.urandom(8 << 20)})
    blob = bytearray(lay.blob)
    blob[20:2000] = b"\xff" * 1980
    dest = tmp_path / "d"
    dest.mkdir()
    w = LayerWriter(TGZ, str(dest), preserve_owner=False)

    def write_all() -> None:
        # The worker fails on the first chunks; some later write must report it.
        for i in range(0, len(blob), 1 << 16):
            w.write(blob[i : i + (1 << 16)])

    with pytest.raises(errors.CorruptLayerError):
        write_all()
    with pytest.raises(errors.CorruptLayerError):
        w.finish()


def test_abort_is_idempotent_and_finish_after_abort_raises(tmp_path: Path) -> None:
    lay = layer(TGZ)
    w = LayerWriter(TGZ, str(tmp_path), preserve_owner=False)
    w.write(lay.blob[:1000])
    w.abort()
    w.abort()
    with pytest.raises(errors.FastdistError, match="abort"):
        w.finish()
    with pytest.raises(errors.FastdistError):
        w.write(b"more")


@pytest.mark.parametrize("media_type", [TGZ, TZST])
@pytest.mark.parametrize("cut", [0.0, 0.01, 0.5, 1.0])
def test_resume_from_a_partial_tee_file(tmp_path: Path, media_type: str, cut: float) -> None:
    lay = layer(media_type)
    tee = tmp_path / "ingest"
    prefix = int(len(lay.blob) * cut)
    if prefix:
        tee.write_bytes(lay.blob[:prefix])
    dest = tmp_path / "dest"
    dest.mkdir()
    w = LayerWriter(
        media_type,
        str(dest),
        tee_path=str(tee),
        expected_digest=sha256(lay.blob),
        expected_size=len(lay.blob),
        expected_diff_id=sha256(lay.tar),
        preserve_owner=False,
    )
    assert w.offset == prefix
    rest = lay.blob[w.offset :]
    for i in range(0, len(rest), 10_000):
        w.write(rest[i : i + 10_000])
    assert_applied(w.finish(), lay, dest)
    assert tee.read_bytes() == lay.blob


def test_tee_prefix_longer_than_expected_size_is_refused(tmp_path: Path) -> None:
    tee = tmp_path / "ingest"
    tee.write_bytes(b"x" * 10)
    with pytest.raises(errors.SizeMismatchError):
        LayerWriter(TGZ, str(tmp_path), tee_path=str(tee), expected_size=5)


# --- the GIL is released ----------------------------------------------------------------------
# Each test feeds a native call through a FIFO from a Python thread: the native call can only
# complete if it released the GIL so that thread could run. Holding it would deadlock (and the
# per-test timeout turns that into a failure), so there is no timing to flake on.


def _feed_fifo(path: Path, data: bytes) -> threading.Thread:
    def run() -> None:
        with open(path, "wb") as f:  # blocks until the native side opens it for reading
            for i in range(0, len(data), 1 << 16):
                f.write(data[i : i + (1 << 16)])

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(120, method="thread")
def test_sha256_file_releases_the_gil(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = os.urandom(8 << 20)
    feeder = _feed_fifo(fifo, data)
    assert sha256_file(str(fifo)) == (sha256(data), len(data))
    feeder.join()


@pytest.mark.timeout(120, method="thread")
def test_apply_layer_releases_the_gil(tmp_path: Path) -> None:
    lay = layer(TGZ)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    dest = tmp_path / "dest"
    dest.mkdir()
    feeder = _feed_fifo(fifo, lay.blob)
    assert_applied(apply_layer(str(fifo), TGZ, str(dest), preserve_owner=False), lay, dest)
    feeder.join()


def test_a_fifo_tee_is_refused(tmp_path: Path) -> None:
    # The tee is written at offsets and read back by the pipeline: only a regular file will do.
    fifo = tmp_path / "tee"
    os.mkfifo(fifo)
    with pytest.raises(errors.StoreError, match="regular file"):
        LayerWriter(TZST, str(tmp_path), tee_path=str(fifo), preserve_owner=False)


@pytest.mark.parametrize("media_type", [TGZ, TZST])
def test_chunks_written_out_of_order_from_threads_make_the_same_blob_and_tree(
    tmp_path: Path, media_type: str
) -> None:
    # Ranged writers: chunks at their offsets, last first, from several threads at once (no
    # lock on the writer: `write` would refuse a second thread); the prefix moves in order.
    lay = layer(media_type, {**FILES, "etc/noise": os.urandom(3 << 20)})
    tee = tmp_path / "ingest"
    dest = tmp_path / "dest"
    dest.mkdir()
    w = LayerWriter(
        media_type,
        str(dest),
        tee_path=str(tee),
        expected_digest=sha256(lay.blob),
        expected_size=len(lay.blob),
        expected_diff_id=sha256(lay.tar),
        preserve_owner=False,
    )
    head = 1000
    w.write(lay.blob[:head])  # the head stream
    chunk = 256 << 10
    starts = list(range(head, len(lay.blob), chunk))[::-1]

    def put(begins: list[int]) -> None:
        for b in begins:
            e = min(b + chunk, len(lay.blob))
            for p in range(b, e, 10_000):
                w.write_at(p, lay.blob[p : min(p + 10_000, e)])

    threads = [threading.Thread(target=put, args=(starts[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(errors.FastdistError, match="below the contiguous prefix"):
        w.write_at(head - 1, b"x")  # what the pipeline may already have hashed stays
    assert w.offset == head
    w.advance(len(lay.blob))
    assert w.offset == len(lay.blob)
    assert_applied(w.finish(), lay, dest)
    assert tee.read_bytes() == lay.blob  # the ingest file is the blob


def test_write_at_outside_the_blob_is_refused(tmp_path: Path) -> None:
    w = LayerWriter(TGZ, str(tmp_path), tee_path=str(tmp_path / "ingest"), expected_size=100)
    with pytest.raises(errors.SizeMismatchError):
        w.write_at(90, b"x" * 11)
    with pytest.raises(OverflowError):
        w.write_at(-1, b"x")
    w.abort()
    no_tee = LayerWriter(TGZ, str(tmp_path))
    with pytest.raises(RuntimeError, match="tee_path"):
        no_tee.write_at(0, b"x")
    no_tee.abort()


# --- structured errors: the Rust error's fields reach Python as attributes -----------------


def test_digest_mismatch_carries_what_expected_and_actual(tmp_path: Path) -> None:
    lay = layer(TGZ)
    with pytest.raises(errors.DigestMismatchError) as info:
        _run(tmp_path, TGZ, lay.blob, expected_digest=GOOD)
    assert (info.value.what, info.value.expected, info.value.actual) == (
        "digest",
        GOOD,
        sha256(lay.blob),
    )
    with pytest.raises(errors.DigestMismatchError) as info:
        _run(tmp_path, TGZ, lay.blob, expected_diff_id=GOOD)
    assert (info.value.what, info.value.expected, info.value.actual) == (
        "diff_id",
        GOOD,
        sha256(lay.tar),
    )


def test_size_mismatch_carries_expected_and_actual_bytes(tmp_path: Path) -> None:
    lay = layer(TGZ)
    with pytest.raises(errors.SizeMismatchError) as info:
        _run(tmp_path, TGZ, lay.blob, expected_size=len(lay.blob) + 1)
    assert (info.value.expected, info.value.actual) == (len(lay.blob) + 1, len(lay.blob))


def test_limit_exceeded_carries_the_limit_its_maximum_and_the_value(tmp_path: Path) -> None:
    lay = layer(TZST)
    cap = len(lay.tar) - 1
    with pytest.raises(errors.LimitExceededError) as info:
        _run(tmp_path, TZST, lay.blob, limits=Limits(max_layer_bytes=cap))
    assert info.value.limit == "uncompressed layer size"
    assert info.value.maximum == cap
    assert info.value.actual is not None
    assert info.value.actual > cap


def test_unsafe_path_carries_the_entry_path_and_the_reason(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        link = tarfile.TarInfo("etc/escape")
        link.type = tarfile.LNKTYPE
        link.linkname = "../../outside"
        tf.addfile(link)
    with pytest.raises(errors.UnsafePathError) as info:
        _run(tmp_path, TAR, buf.getvalue())
    assert info.value.path == "etc/escape"
    assert info.value.reason
    assert info.value.reason in info.value.message


def test_corrupt_layer_carries_the_reason(tmp_path: Path) -> None:
    lay = layer(TGZ)
    with pytest.raises(errors.CorruptLayerError) as info:
        _run(tmp_path, TGZ, lay.blob[: len(lay.blob) // 2])
    assert info.value.reason
    assert info.value.reason in info.value.message


def test_io_error_carries_the_operation_path_and_errno(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(errors.StoreError) as info:
        sha256_file(str(missing))
    assert (info.value.op, info.value.path, info.value.errno) == ("open", str(missing), 2)


def test_refused_values_are_attributes(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidDigestError) as bad:
        validate_digest("sha256:abc")
    assert bad.value.digest == "sha256:abc"
    with pytest.raises(errors.UnsupportedMediaTypeError) as algo:
        validate_digest("sha512:" + "a" * 128)
    assert algo.value.digest == "sha512:" + "a" * 128
    with pytest.raises(errors.UnsupportedMediaTypeError) as media:
        LayerWriter("application/octet-stream", str(tmp_path))
    assert media.value.media_type == "application/octet-stream"


def test_an_unknown_native_kind_is_a_plain_fastdist_error() -> None:
    err = errors.from_native("a-kind-of-a-newer-core", "what failed: why", {"x": 1})
    assert type(err) is errors.FastdistError
    assert err.message == "what failed: why"
