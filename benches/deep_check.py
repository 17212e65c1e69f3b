"""``check --deep`` throughput against ``sha256sum``, and disk used by two tags with and
without ``fastdist dedup``, on images built from host files.

    python benches/deep_check.py [--mb 300] [--runs 5] [--snapshotter overlayfs]

Deep: one image of host files (/usr/lib, /usr/share: many small files, some big libraries),
pulled from an in-process registry into a temporary store; then, interleaved, ``check --deep``
(xxh3-128 of every file with the Python ``xxhash`` package, plus lstat/xattrs of every entry
against the manifest) and ``sha256sum`` over the same files, page cache warm. Reported: medians
of file bytes per second.

Dedup: tag v1 is that layer; tag v2 is the layer rebuilt (a new digest: a few files changed,
most unchanged, as a base image rebuilt for one package update) plus a small app layer on top.
Reported: physical bytes of the snapshots (``system df``) after pulling both, after ``dedup``,
and the dedup's wall time.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from fastdist.client import Client
from fastdist.testing.images import build_image, build_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakeregistry import FakeRegistry

MiB = 1 << 20
log = logging.getLogger("bench.deep")


def host_tar(cap: int, changed: int = 0) -> bytes:
    """A tar of host files under /usr/lib then /usr/share up to ``cap`` bytes; the first
    ``changed`` regular files get one byte appended (a rebuilt layer)."""
    buf = io.BytesIO()
    total = 0
    edited = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for root in ("/usr/lib", "/usr/share"):
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for fn in sorted(filenames):
                    if total >= cap:
                        break
                    p = os.path.join(dirpath, fn)
                    try:
                        st = os.lstat(p)
                        if not stat.S_ISREG(st.st_mode) or st.st_size > 8 * MiB:
                            continue
                        data = Path(p).read_bytes()
                    except OSError:
                        continue
                    if edited < changed:
                        data += b"\n"
                        edited += 1
                    ti = tarfile.TarInfo(os.path.relpath(p, "/"))
                    ti.size, ti.mode, ti.mtime = len(data), st.st_mode & 0o7777, int(st.st_mtime)
                    tf.addfile(ti, io.BytesIO(data))
                    total += len(data)
    return buf.getvalue()


def sha256sum_seconds(fs: Path) -> float:
    files = [str(p) for p in fs.rglob("*") if p.is_file() and not p.is_symlink()]
    t = time.perf_counter()
    for i in range(0, len(files), 2000):
        subprocess.run(
            ["sha256sum", "--", *files[i : i + 2000]], stdout=subprocess.DEVNULL, check=True
        )
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="MB of host files in the layer")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--snapshotter", default=None, help="overlayfs or native (default: probe)")
    ap.add_argument("--dir", default=None, help="where the store goes (default: $TMPDIR)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = host_tar(args.mb * MiB)
    rebuilt = host_tar(args.mb * MiB, changed=20)
    app = io.BytesIO()
    with tarfile.open(fileobj=app, mode="w") as tf:
        ti = tarfile.TarInfo("srv/app.py")
        body = b"print('app')\n" * 1000
        ti.size = len(body)
        tf.addfile(ti, io.BytesIO(body))
    tmp = Path(tempfile.mkdtemp(prefix="fastdist-deep-", dir=args.dir))
    try:
        v1 = build_image([build_layer(base)], cmd=["/bin/sh"])
        v2 = build_image([build_layer(rebuilt), build_layer(app.getvalue())], cmd=["/bin/sh"])
        with FakeRegistry() as reg:
            for img, tag in ((v1, "v1"), (v2, "v2")):
                for digest, blob in img.blobs().items():
                    reg.blobs[digest] = blob
                reg.add_manifest("bench/usr", img.manifest, img.descriptor.media_type, tag)
            client = Client(tmp / "store", snapshotter=args.snapshotter, hosts_dir=tmp / "none")
            one = client.pull(f"{reg.host}/bench/usr:v1")
            fs = client.snapshotter.fs_path(one.record.chain_ids[-1])
            deep, peer = [], []
            sha256sum_seconds(fs)  # warm the page cache
            for _ in range(args.runs):
                rep = client.check(verify_blobs=False, deep=True)
                assert rep.ok, rep.problems
                assert rep.deep is not None
                deep.append(rep.deep.bytes_hashed / rep.deep.seconds)
                peer.append(rep.deep.bytes_hashed / sha256sum_seconds(fs))
            d, p = statistics.median(deep), statistics.median(peer)
            mb = rep.deep.bytes_hashed / 1e6
            print(f"snapshotter: {client.snapshotter.name}; tree: {mb:.0f} MB")
            print(f"check --deep: {d / 1e9:.2f} GB/s; sha256sum: {p / 1e9:.2f} GB/s ({d / p:.2f}x)")
            runs_d = [round(x / 1e9, 2) for x in deep]
            runs_p = [round(x / 1e9, 2) for x in peer]
            print(f"  runs (GB/s): deep {runs_d}, sha256sum {runs_p}")

            client.pull(f"{reg.host}/bench/usr:v2")
            before = client.disk_usage()
            t = time.perf_counter()
            dd = client.dedup()
            took = time.perf_counter() - t
            after = client.disk_usage()
            print(
                "two tags (v1: usr; v2: usr rebuilt, 20 files changed, + app): snapshots "
                f"{before.physical / 1e6:.1f} MB on disk without dedup, "
                f"{after.physical / 1e6:.1f} MB with ({after.physical / before.physical:.2f}x); "
                f"{dd.linked} files linked in {took:.2f}s"
            )
            print(f"  logical {after.logical / 1e6:.1f} MB; shared {after.shared / 1e6:.1f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
