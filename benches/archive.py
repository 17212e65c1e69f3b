#!/usr/bin/env python3
"""``fastdist save`` and ``fastdist load`` of a ~1 GB image, next to ``skopeo copy`` and
``podman load`` of the same archive (issue 14).

The image (``--layers`` incompressible layers, ``--size-mb`` MB in all, stored uncompressed
so the figures are about moving and verifying bytes, not gzip) is pushed to Debian's
docker-registry on loopback and pulled into a fastdist store. Then, per run:

- ``fastdist save -o image.tar`` (docker-archive, an OCI layout inside) from that store;
- ``fastdist load -i image.tar`` into a fresh store (every blob and diff_id verified, layers
  unpacked into snapshots, as a pull);
- ``skopeo copy docker-archive:image.tar oci:DIR`` (skopeo reading the same archive);
- ``podman load -i image.tar`` into a private podman root (removed after).

Each figure is the median of ``--runs`` runs, MB/s over the image's bytes. The load average is
recorded: a loaded machine makes every figure noisy.

    python benches/archive.py                        # 1000 MB, 3 runs (about 8 minutes)
    python benches/archive.py --size-mb 64 --runs 1  # smoke run
    python benches/archive.py --update-readme        # also rewrite its block in README.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(HERE))

from serve import MB, env, fastdist_cmd, update_readme  # noqa: E402

from fastdist.client import Client  # noqa: E402
from fastdist.pusher import Pusher  # noqa: E402
from fastdist.testing.images import File, build_image, build_layer, push_image, tar_entries  # noqa: E402
from fastdist.testing.registry import LocalRegistry  # noqa: E402
from fastdist.transport import Transport  # noqa: E402


def timed(cmd: list[str], **kw: Any) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, **kw)
    return time.monotonic() - t0


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    per = args.size_mb * MB // args.layers
    layers = [
        build_layer(tar_entries([File(f"data/{i}", os.urandom(per))]), "none")
        for i in range(args.layers)
    ]
    image = build_image(layers, cmd=["/bin/sh"])
    total = sum(len(b) for b in image.blobs().values()) + len(image.manifest)
    del layers
    times: dict[str, list[float]] = {}
    with LocalRegistry() as reg:
        ref = f"{reg.host}/bench/archive:v1"
        push_image(Pusher(Transport()), ref, image)
        store = tmp / "store"
        Client(store, snapshotter="native").pull(ref)
        del image
        for i in range(args.runs):
            tar = tmp / "image.tar"
            tar.unlink(missing_ok=True)
            times.setdefault("fastdist save", []).append(
                timed(fastdist_cmd(store, "save", "-o", str(tar), ref), env=env())
            )
            fresh = tmp / f"load-{i}"
            times.setdefault("fastdist load", []).append(
                timed(fastdist_cmd(fresh, "load", "-i", str(tar)), env=env())
            )
            shutil.rmtree(fresh)
            oci = tmp / f"oci-{i}"
            times.setdefault("skopeo copy docker-archive: to oci:", []).append(
                timed(["skopeo", "copy", "-q", f"docker-archive:{tar}", f"oci:{oci}:x"])
            )
            shutil.rmtree(oci)
            proot, prun = tmp / f"podman-{i}", tmp / f"podman-run-{i}"
            podman = ["podman", "--root", str(proot), "--runroot", str(prun)]
            times.setdefault("podman load", []).append(
                timed([*podman, "load", "-q", "-i", str(tar)])
            )
            subprocess.run([*podman, "rmi", "-af"], capture_output=True, check=False)
            subprocess.run([*podman, "system", "reset", "-f"], capture_output=True, check=False)
            shutil.rmtree(proot, ignore_errors=True)
            shutil.rmtree(prun, ignore_errors=True)
    return {
        "bytes": total,
        "layers": args.layers,
        "runs": args.runs,
        "load_before": args.load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
    }


def markdown(res: dict[str, Any]) -> str:
    lb = ", ".join(f"{x:.1f}" for x in res["load_before"])
    la = ", ".join(f"{x:.1f}" for x in res["load_after"])
    out = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: a {res['bytes'] / MB:.0f} MB "
        f"image ({res['layers']} uncompressed layers), median of {res['runs']} run(s), "
        f"{res['cpus']} CPUs, load average {lb} before and {la} after.",
        "",
        "| | seconds | MB/s |",
        "|---|---:|---:|",
    ]
    for name, s in res["median_s"].items():
        out.append(f"| `{name}` | {s:.2f} | {res['bytes'] / MB / s:.0f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=1000, help="image size (default: 1000)")
    p.add_argument("--layers", type=int, default=4, help="number of layers (default: 4)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default: 3)")
    p.add_argument("--tmp", default=None, help="where the archives go (default: $TMPDIR)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--update-readme", action="store_true", help="rewrite the README block")
    args = p.parse_args(argv)
    for tool in ("skopeo", "podman"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (apt-get install {tool})")
    args.load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fastdist-bench-archive-", dir=args.tmp) as tmp:
        res = run(args, Path(tmp))
    table = markdown(res)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.update_readme:
        update_readme(table, "archive-results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
