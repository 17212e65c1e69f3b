"""Fuzz target: the layer applier (``_native.apply_layer`` and ``_native.LayerWriter``) on
arbitrary bytes, as plain tar, gzip and zstd, in both apply modes.

The property: whatever the bytes, the applier either succeeds or raises a ``FastdistError``
subclass (never a panic, a bare OSError or a hang), and nothing outside its destination root
changes: a sentinel tree beside the root is compared after every input, and the work directory
must hold nothing new. Run with ``make fuzz`` or
``python fuzz/python/fuzz_layer.py [libFuzzer flags] [corpus dirs]``; ``check`` is also what
tests/unit/test_fuzz_regressions.py replays.

Input layout: byte 0 picks the encoding, byte 1 the API, the apply mode and the write chunk
size for ``LayerWriter``; the rest is the payload.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from fastdist import _native, oci
from fastdist.errors import FastdistError
from fastdist.store import rmtree

# Tight limits keep each input fast; the limits themselves are part of what is fuzzed.
LIMITS = _native.Limits(
    max_entries=2000,
    max_layer_bytes=8 << 20,
    max_entry_bytes=4 << 20,
    max_header_bytes=64 << 10,
    max_path_len=1024,
    max_path_depth=32,
    max_ratio=200,
    ratio_grace_bytes=1 << 20,
    zstd_window_log_max=22,
)
# (media type, how the payload becomes the blob)
ENCODINGS = [
    (oci.OCI_LAYER, "raw"),  # the payload is the tar
    (oci.OCI_LAYER_GZIP, "gzip"),  # the payload is the tar, gzipped here
    (oci.OCI_LAYER_GZIP, "raw"),  # the payload is the gzip stream
    (oci.OCI_LAYER_ZSTD, "raw"),  # the payload is the zstd stream
    (oci.DOCKER_LAYER_GZIP, "gzip"),
]


class Workdir:
    """``<base>/sentinel`` (a file, a dir, symlinks pointing out and in) beside the roots."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="fastdist-fuzz-"))
        sentinel = self.base / "sentinel"
        sentinel.mkdir()
        (sentinel / "secret").write_bytes(b"host file\n")
        (sentinel / "dir").mkdir()
        (sentinel / "dir" / "f").write_bytes(b"inner\n")
        os.symlink("secret", sentinel / "link")
        os.symlink("/etc", sentinel / "etc")
        self.sentinel = sentinel
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        out: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.sentinel):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                data: object = None
                if os.path.islink(p):
                    data = os.readlink(p)
                elif os.path.isfile(p):
                    data = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                out[os.path.relpath(p, self.sentinel)] = (
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_nlink,
                    data,
                )
        return out


_WORK: Workdir | None = None


def _work() -> Workdir:
    global _WORK
    if _WORK is None:
        _WORK = Workdir()
    return _WORK


def _rmtree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        rmtree(path)  # the store's own: fixes modes (a layer may leave 0000 directories)


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    media_type, how = ENCODINGS[data[0] % len(ENCODINGS)]
    api = data[1] & 1
    mode = "flatten" if data[1] & 2 else "layer"
    chunk = 1 + (data[1] >> 2) * 97
    payload = data[2:]
    blob = gzip.compress(payload, compresslevel=1, mtime=0) if how == "gzip" else payload
    work = _work()
    root = work.base / "root"
    blob_path = work.base / "blob"
    tee = work.base / "tee"
    root.mkdir()
    try:
        try:
            if api == 0:
                blob_path.write_bytes(blob)
                _native.apply_layer(str(blob_path), media_type, str(root), mode=mode, limits=LIMITS)
            else:
                writer = _native.LayerWriter(
                    media_type, str(root), mode=mode, tee_path=str(tee), limits=LIMITS
                )
                try:
                    for i in range(0, len(blob), chunk):
                        writer.write(blob[i : i + chunk])
                    writer.finish()
                finally:
                    writer.abort()
        except FastdistError:
            pass
        after = work.snapshot()
        if after != work.before:
            raise AssertionError("the applier changed the sentinel tree beside its root")
        extra = set(os.listdir(work.base)) - {"sentinel", "root", "blob", "tee"}
        if extra:
            raise AssertionError(f"the applier created {sorted(extra)} beside its root")
    finally:
        _rmtree(root)
        for p in (blob_path, tee):
            if p.exists():
                p.unlink()


def seeds() -> list[bytes]:
    """Tars with the shapes the applier must handle: links, whiteouts, opaque dirs, devices."""
    from fastdist.testing.images import (
        Dir,
        Entry,
        File,
        Hardlink,
        Opaque,
        Symlink,
        Whiteout,
        compress,
        tar_entries,
    )

    plain = tar_entries(
        [
            Dir("etc"),
            File("etc/a", "x" * 100, mode=0o4755),
            Hardlink("etc/b", "etc/a"),
            Symlink("etc/c", "../../../sentinel/secret"),
            Symlink("abs", "/etc"),
            File("abs/through", "y"),
            Dir("d"),
            File("d/.wh..wh..opq"),
            Whiteout("etc/gone"),
            Opaque("etc"),
            Entry("fifo", "fifo", mode=0o600),
            File("x", "z", xattrs={"user.k": "v", "trusted.overlay.opaque": "y"}),
        ]
    )
    out = [bytes([0, m]) + plain for m in (0, 1, 2, 3)]
    out.append(bytes([1, 1]) + plain)
    out.append(bytes([2, 0]) + compress(plain, "gzip"))
    if shutil.which("zstd"):
        out.append(bytes([3, 1]) + compress(plain, "zstd"))
    return out


def main() -> None:
    import atheris

    corpus = os.path.join(os.path.dirname(__file__), "corpus", "layer")
    if not os.path.isdir(corpus) or not os.listdir(corpus):
        os.makedirs(corpus, exist_ok=True)
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
                f.write(seed)
    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    try:
        atheris.Fuzz()
    finally:
        if _WORK is not None:
            _rmtree(_WORK.base)


if __name__ == "__main__":
    main()
