"""What the after-pull dedup costs a pull: the usr-like two-tag case of ``deep_check.py`` (v1:
host files; v2: the same layer rebuilt with 20 files changed plus a small app layer). Per run,
a fresh store pulls v1, then v2, both with ``dedup=False`` or both with ``dedup=True``
(interleaved). Reported: the v1 pull's wall time (nothing to share: the pass only indexes), the
v2 pull's (most files shared) and the snapshots' physical bytes after it (``system df``).

    python benches/dedup_after_pull.py [--mb 200] [--runs 3] [--snapshotter overlayfs]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastdist.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from deep_check import images

from fakeregistry import FakeRegistry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="MB of host files in the layer")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--snapshotter", default=None, help="overlayfs or native (default: probe)")
    ap.add_argument("--dir", default=None, help="where the stores go (default: $TMPDIR)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    v1, v2 = images(args.mb)
    results: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    with FakeRegistry() as reg:
        for img, tag in ((v1, "v1"), (v2, "v2")):
            for digest, blob in img.blobs().items():
                reg.blobs[digest] = blob
            reg.add_manifest("bench/usr", img.manifest, img.descriptor.media_type, tag)
        for run in range(args.runs):
            for dedup in (False, True) if run % 2 == 0 else (True, False):
                tmp = Path(tempfile.mkdtemp(prefix="fastdist-dap-", dir=args.dir))
                try:
                    client = Client(tmp / "s", snapshotter=args.snapshotter, hosts_dir=tmp / "n")
                    t = time.perf_counter()
                    client.pull(f"{reg.host}/bench/usr:v1", dedup=dedup)
                    first = time.perf_counter() - t
                    t = time.perf_counter()
                    client.pull(f"{reg.host}/bench/usr:v2", dedup=dedup)
                    took = time.perf_counter() - t
                    results[dedup].append((first, took, client.disk_usage().physical))
                    print(f"run {run} dedup={dedup}: v1 {first:.2f}s, v2 {took:.2f}s", flush=True)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    for i, what in ((0, "v1 pull (nothing to share)"), (1, "v2 pull (most files shared)")):
        off = statistics.median(r[i] for r in results[False])
        on = statistics.median(r[i] for r in results[True])
        print(f"{what}: {off:.2f}s without the after-pull dedup, {on:.2f}s with ({on / off:.2f}x)")
    disk_off = statistics.median(r[2] for r in results[False])
    disk_on = statistics.median(r[2] for r in results[True])
    print(f"snapshots after v2: {disk_off / 1e6:.1f} MB without, {disk_on / 1e6:.1f} MB with")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
