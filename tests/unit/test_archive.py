"""archive.py's tar reader and writer on their own: long names in both extensions, the writer's
output read back by Python's tarfile, and names that would escape."""

from __future__ import annotations

import io
import tarfile

import pytest

from fastdist import archive
from fastdist.errors import LimitExceededError, ManifestError, UnsafePathError


def _members(data: bytes) -> list[tuple[str, bytes]]:
    reader = archive._TarReader(io.BytesIO(data))
    out = []
    while (m := reader.next()) is not None:
        if m.directory or m.link:
            continue
        body = b""
        while chunk := reader.read(1 << 20):
            body += chunk
        out.append((m.name, body))
    return out


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_reader_takes_long_names_from_pax_and_gnu_headers(fmt: int) -> None:
    long = "d/" + "x" * 150 + "/layer.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in ((long, b"payload"), ("./short", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    assert _members(buf.getvalue()) == [(long, b"payload"), ("short", b"")]


def test_writer_output_is_a_tar_python_reads_back() -> None:
    buf = io.BytesIO()
    w = archive._TarWriter(buf)
    w.directory("blobs")
    w.data("blobs/a", b"x" * 1000)
    w.data("empty", b"")
    w.close()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        got = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == {"blobs/a": b"x" * 1000, "empty": b""}
    assert _members(buf.getvalue()) == [("blobs/a", b"x" * 1000), ("empty", b"")]


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/\0b"])
def test_member_names_that_escape_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError):
        archive.clean_member_name(name)


def test_a_huge_extended_header_is_refused_before_it_is_read() -> None:
    hdr = bytearray(archive._tar_header("x", archive.MAX_HEADER_BYTES + 1))
    hdr[156:157] = b"x"
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    with pytest.raises(LimitExceededError):
        _members(bytes(hdr))  # no data follows: the limit, not a truncation, stops it


def test_a_corrupt_header_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError):
        _members(b"\x01" * 512)
