#!/usr/bin/env python3
"""``fastdist serve`` against Debian's docker-registry serving the same image (issue 15).

One image (a single incompressible layer of ``--size-mb`` MB, stored uncompressed so neither
side spends time in gzip) is pushed to a docker-registry on loopback and pulled into a fastdist
store, which ``fastdist serve`` then serves from another process. Both servers are measured the
same way, by clients that cost little next to the server (curl):

- blob throughput: 1 and 8 parallel ``curl`` GETs of the layer blob, MB/s over the wall time;
- manifest requests/s: 8 ``curl`` processes, each ``--manifests`` GETs of the manifest by tag
  on one kept-alive connection;
- a cold ``fastdist pull`` (fresh store) from each.

Each figure is the median of ``--runs`` runs, the servers interleaved per run. The machine's
load average is recorded (a loaded machine makes every figure noisy).

    python benches/serve.py                        # 256 MB layer, 3 runs (about a minute)
    python benches/serve.py --size-mb 32 --runs 1  # smoke run
    python benches/serve.py --update-readme        # also rewrite its block in benches/README.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))

from fastdist.client import Client  # noqa: E402
from fastdist.oci import Descriptor  # noqa: E402
from fastdist.pusher import Pusher  # noqa: E402
from fastdist.testing.images import File, build_image, build_layer, push_image, tar_entries  # noqa: E402
from fastdist.testing.registry import LocalRegistry, free_port  # noqa: E402
from fastdist.transport import Transport  # noqa: E402

MB = 1_000_000
ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,"
    "application/vnd.docker.distribution.manifest.v2+json"
)


def fastdist_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fastdist", "--root", str(root), *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO / "python"), e.get("PYTHONPATH")) if x)
    return e


@contextlib.contextmanager
def fastdist_serve(root: Path) -> Iterator[str]:
    """``fastdist serve`` of ``root`` in its own process; yields its host:port."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        fastdist_cmd(root, "serve", "--listen", host),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://{host}/v2/", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fastdist serve did not come up on {host}")
            time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(30)


def blob_mbps(url: str, size: int, clients: int) -> float:
    """``clients`` parallel curl GETs of the blob at ``url``: MB/s over the wall time."""
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    got = [int(p.communicate()[0] or 0) for p in procs]
    wall = time.monotonic() - t0
    if any(p.returncode for p in procs) or got != [size] * clients:
        raise SystemExit(f"blob GET {url} failed: got {got} bytes, want {size} each")
    return clients * size / MB / wall


def manifest_rps(url: str, per_client: int, clients: int, tmp: Path) -> float:
    """``clients`` curl processes, each ``per_client`` GETs on one kept-alive connection."""
    cfg = tmp / "curl-manifests.cfg"
    cfg.write_text(
        f'header = "Accept: {ACCEPT}"\n'
        + "".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(per_client))
    )
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-sf", "-K", str(cfg), "-w", "%{http_code}\\n"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    codes = [p.communicate()[0].split() for p in procs]
    wall = time.monotonic() - t0
    if any(c != ["200"] * per_client for c in codes):
        raise SystemExit(f"manifest GET {url} failed")
    return clients * per_client / wall


def pull_seconds(ref: str, tmp: Path) -> float:
    root = tmp / f"pull-{os.urandom(4).hex()}"
    t0 = time.monotonic()
    subprocess.run(
        fastdist_cmd(root, "pull", "-q", ref),
        env=env(),
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - t0
    subprocess.run(["rm", "-rf", str(root)], check=True)
    return wall


def measure(host: str, blob: Descriptor, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """One run of every figure against the server at ``host``."""
    blob_url = f"http://{host}/v2/bench/serve/blobs/{blob.digest}"
    manifest_url = f"http://{host}/v2/bench/serve/manifests/v1"
    return {
        "blob_1": blob_mbps(blob_url, blob.size, 1),
        "blob_8": blob_mbps(blob_url, blob.size, 8),
        "manifest_rps": manifest_rps(manifest_url, args.manifests, 8, tmp),
        "pull_s": pull_seconds(f"{host}/bench/serve:v1", tmp),
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size = args.size_mb * MB
    layer = build_layer(tar_entries([File("data/big", os.urandom(size))]), "none")
    image = build_image([layer], cmd=["/bin/sh"])
    results: dict[str, dict[str, list[float]]] = {"docker-registry": {}, "fastdist serve": {}}
    with LocalRegistry() as reg:
        ref = f"{reg.host}/bench/serve:v1"
        push_image(Pusher(Transport()), ref, image)
        store = tmp / "store"
        Client(store, snapshotter="native").pull(ref)
        with fastdist_serve(store) as served:
            hosts = {"docker-registry": reg.host, "fastdist serve": served}
            for _ in range(args.runs):
                for server, host in hosts.items():
                    for key, value in measure(host, layer.descriptor, args, tmp).items():
                        results[server].setdefault(key, []).append(value)
    return {
        "size_mb": args.size_mb,
        "runs": args.runs,
        "load_before": args.load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "median": {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()},
    }


def markdown(res: dict[str, Any]) -> str:
    m = res["median"]
    lb = ", ".join(f"{x:.1f}" for x in res["load_before"])
    la = ", ".join(f"{x:.1f}" for x in res["load_after"])
    rows = [
        ("blob GET, 1 client (MB/s)", "blob_1", "{:.0f}"),
        ("blob GET, 8 parallel clients (MB/s, total)", "blob_8", "{:.0f}"),
        ("manifest GET by tag, 8 clients (requests/s)", "manifest_rps", "{:.0f}"),
        (f"cold `fastdist pull` of the {res['size_mb']} MB image (s)", "pull_s", "{:.2f}"),
    ]
    out = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: one {res['size_mb']} MB "
        f"uncompressed layer, median of {res['runs']} run(s), {res['cpus']} CPUs, load average "
        f"{lb} before and {la} after.",
        "",
        "| | docker-registry | fastdist serve |",
        "|---|---:|---:|",
    ]
    for label, key, fmt in rows:
        out.append(
            f"| {label} | {fmt.format(m['docker-registry'][key])} | "
            f"{fmt.format(m['fastdist serve'][key])} |"
        )
    return "\n".join(out) + "\n"


def update_readme(block: str, marker: str) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
    a, b = text.index(start) + len(start), text.index(end)
    readme.write_text(text[:a] + block + text[b:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=256, help="layer size (default: 256)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default: 3)")
    p.add_argument("--manifests", type=int, default=500, help="manifest GETs per client")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--update-readme", action="store_true", help="rewrite the README block")
    args = p.parse_args(argv)
    args.load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fastdist-bench-serve-") as tmp:
        res = run(args, Path(tmp))
    table = markdown(res)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.update_readme:
        update_readme(table, "serve-results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
