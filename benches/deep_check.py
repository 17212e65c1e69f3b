"""Issue 16's benchmarks: what the applier's xxh3 fingerprints cost, ``check --deep``
throughput against ``sha256sum`` and ``xxhsum``, and disk used by two tags with and without
``fastdist dedup`` against ``podman pull`` of the same tags in gzip and zstd:chunked.

    python benches/deep_check.py [--mb 300] [--runs 5] [--update-readme]
    python benches/deep_check.py --only fingerprints --fingerprint-runs 15

Fingerprints (``--only fingerprints``): ``rust/examples/fingerprint_cost.rs`` applies the same
uncompressed layer (in memory, onto tmpfs, as root keeping owners) with the fingerprinting
hasher on and off (``apply::bench_set_fingerprints``, not reachable from Python), interleaved;
two layers: usr-like (tar of /usr/bin and /usr/lib/python3.11, as benches/micro.py) and
small-files (20,000 files of 64 B-8 KiB, as micro.py). Reported: median ms each way and the
cost in % with a 95% bootstrap interval (benches/stats.py).

Deep (``--only deep``): one image of host files (/usr/lib, /usr/share: many small files, some
big libraries), pulled from Debian's docker-registry on loopback into a temporary store; then,
interleaved per run, ``check --deep`` (xxh3-128 of every file with the Python ``xxhash``
package, plus lstat/xattrs of every entry against the manifest), ``sha256sum`` and ``xxhsum
-H2`` (XXH128, the same algorithm in C) over the same files, each cold (the tree's pages evicted
first) then warm. Cold evicts only the tree's files (``posix_fadvise(DONTNEED)`` per file, after
a ``sync``; ``fincore`` confirms nothing stayed resident), so neighbours' caches are left alone
and dentries/inodes stay cached; ``--drop-caches`` writes 3 to /proc/sys/vm/drop_caches instead
(the whole machine's caches, for a quiet machine). Reported: medians of file bytes per second
over each command's wall time.

Disk (``--only disk``): tag v1 is that layer; tag v2 is the layer rebuilt (a new digest: a few
files changed, most unchanged, as a base image rebuilt for one package update) plus a small app
layer on top, both gzip. fastdist pulls both (``du`` of the store and ``system df``'s physical
bytes of the snapshots), then ``dedup`` runs. podman pulls the same two tags into a private
storage (``CONTAINERS_STORAGE_CONF``: graphroot/runroot in a temporary directory, the overlay
driver podman uses as root on this host); then, for zstd:chunked, podman pushes both from that
storage with ``--compression-format zstd:chunked`` to a second, empty docker-registry (podman
4.3 reuses a gzip blob the destination already has instead of recompressing), and a fresh
storage pulls them with partial pulls on (``pull_options = {enable_partial_images = "true"}``),
once without and once with ``use_hard_links = "true"`` (without it, podman copies a file it
finds in another layer, reflinking where the filesystem can). Evidence of partial pulls is
podman's own debug log ("Retrieved partial blob") and the count of files with more than one
link in its layers.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(HERE))

from micro import boost, realistic_tar, small_files_tar  # noqa: E402
from stats import dist, ratio  # noqa: E402

from fastdist.client import Client  # noqa: E402
from fastdist.pusher import Pusher  # noqa: E402
from fastdist.testing.images import build_image, build_layer, push_image  # noqa: E402
from fastdist.testing.registry import LocalRegistry  # noqa: E402
from fastdist.transport import Transport  # noqa: E402

MiB = 1 << 20
CHANGED = 20  # files rebuilt in v2's base layer
README = HERE / "README.md"
BEGIN, END = "<!-- deep-bench:begin -->\n", "<!-- deep-bench:end -->"
EXAMPLE = REPO / "target" / "release" / "examples" / "fingerprint_cost"
ZSTD_CHUNKED = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_PUSH = ("--compression-format", "zstd:chunked")
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


def du(path: Path) -> int:
    """``du -sx --block-size=1``: allocated bytes, each hardlinked inode counted once."""
    out = subprocess.run(
        ["du", "-sx", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[0])


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- fingerprints on and off ---------------------------------------------------------------


def fingerprints(args: argparse.Namespace) -> dict[str, Any]:
    log.info("fingerprints: building rust/examples/fingerprint_cost.rs")
    subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "-q",
            "-p",
            "fastdist-core",
            "--example",
            "fingerprint_cost",
        ],
        cwd=REPO,
        check=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="fastdist-fp-", dir=args.tmpfs))
    try:
        tars = {"usr-like": tmp / "usr.tar", "small-files": tmp / "small.tar"}
        files = {
            "usr-like": realistic_tar(tars["usr-like"], ["/usr/bin", "/usr/lib/python3.11"]),
            "small-files": small_files_tar(tars["small-files"], 20_000),
        }
        dest = tmp / "dest"
        dest.mkdir()
        log.info("fingerprints: %d interleaved runs per layer", args.fingerprint_runs)
        out = subprocess.run(
            [str(EXAMPLE), str(dest), str(args.fingerprint_runs), *map(str, tars.values())],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        keys = ("on", "off", "cpu_on", "cpu_off")
        secs: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in tars}
        by_path = {str(p): n for n, p in tars.items()}
        for line in out.splitlines():
            path, onoff, wall, cpu = line.split("\t")
            secs[by_path[path]][onoff].append(float(wall))
            secs[by_path[path]][f"cpu_{onoff}"].append(float(cpu))
        res = {}
        for name, s in secs.items():
            res[name] = {
                "bytes": tars[name].stat().st_size,
                "files": files[name],
                **{k: dist(s[k]).to_json() for k in keys},
                "ratio": ratio(s["on"], s["off"]).to_json(),
                "cpu_ratio": ratio(s["cpu_on"], s["cpu_off"]).to_json(),
                "runs": s,
            }
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- check --deep against sha256sum and xxhsum ---------------------------------------------


def tree_files(fs: Path) -> list[str]:
    return sorted(str(p) for p in fs.rglob("*") if p.is_file() and not p.is_symlink())


def run_batched(cmd: list[str], files: list[str]) -> None:
    for i in range(0, len(files), 2000):
        subprocess.run([*cmd, "--", *files[i : i + 2000]], stdout=subprocess.DEVNULL, check=True)


def evict(files: list[str], drop_caches: bool) -> int:
    """Drop the tree's pages from the page cache; returns the bytes ``fincore`` still finds
    resident (0 when the eviction worked)."""
    os.sync()
    if drop_caches:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    else:
        for f in files:
            fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    resident = 0
    for i in range(0, len(files), 2000):
        out = subprocess.run(
            ["fincore", "-b", "-n", "-o", "RES", "--", *files[i : i + 2000]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        resident += sum(int(x) for x in out.split())
    return resident


def deep(client: Client, fs: Path, args: argparse.Namespace) -> dict[str, Any]:
    files = tree_files(fs)
    size = sum(os.lstat(f).st_size for f in files)

    def check_deep() -> None:
        rep = client.check(verify_blobs=False, deep=True)
        if not rep.ok or rep.deep is None:
            raise SystemExit(f"check --deep failed: {rep.problems}")

    tools: dict[str, Callable[[], object]] = {
        "fastdist check --deep": check_deep,
        "sha256sum": lambda: run_batched(["sha256sum"], files),
    }
    if shutil.which("xxhsum"):
        tools["xxhsum -H2"] = lambda: run_batched(["xxhsum", "-H2"], files)
    else:
        log.warning("xxhsum not installed (Debian package xxhash): its row is left out")
    rep = client.check(verify_blobs=False, deep=True)  # also warms the page cache
    assert rep.deep is not None
    hashed = rep.deep.bytes_hashed
    bps: dict[str, dict[str, list[float]]] = {t: {"cold": [], "warm": []} for t in tools}
    resident = 0
    for run in range(args.runs):
        log.info("deep: run %d of %d", run + 1, args.runs)
        for name, fn in tools.items():
            resident = max(resident, evict(files, args.drop_caches))
            n = hashed if name.startswith("fastdist") else size
            bps[name]["cold"].append(n / timed(fn))
            bps[name]["warm"].append(n / timed(fn))
    return {
        "files": len(files),
        "bytes": size,
        "bytes_hashed": hashed,
        "resident_after_evict": resident,
        "evict": "drop_caches" if args.drop_caches else "fadvise",
        "bps": bps,
    }


# --- disk: fastdist with and without dedup, podman gzip and zstd:chunked --------------------


def images(mb: int) -> tuple[Any, Any]:
    """v1: ``mb`` MB of host files in one layer; v2: that layer rebuilt with CHANGED files
    changed (a new digest) plus a small app layer."""
    base = host_tar(mb * MiB)
    rebuilt = host_tar(mb * MiB, changed=CHANGED)
    app = io.BytesIO()
    with tarfile.open(fileobj=app, mode="w") as tf:
        ti = tarfile.TarInfo("srv/app.py")
        body = b"print('app')\n" * 1000
        ti.size = len(body)
        tf.addfile(ti, io.BytesIO(body))
    v1 = build_image([build_layer(base)], cmd=["/bin/sh"])
    v2 = build_image([build_layer(rebuilt), build_layer(app.getvalue())], cmd=["/bin/sh"])
    return v1, v2


class Podman:
    """podman with a storage of its own (a storage.conf in ``root``, through
    ``CONTAINERS_STORAGE_CONF``)."""

    def __init__(self, root: Path, partial: bool, hard_links: bool) -> None:
        self.root = root
        self.graphroot = root / "graph"
        root.mkdir()
        opts = (
            f'pull_options = {{enable_partial_images = "{str(partial).lower()}", '
            f'use_hard_links = "{str(hard_links).lower()}"}}\n'
        )
        (root / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{self.graphroot}"\nrunroot = "{root / "run"}"\n'
            f"[storage.options]\n{opts}"
        )
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(root / "storage.conf"))

    def run(self, *args: str) -> str:
        p = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, check=False
        )
        if p.returncode:
            raise SystemExit(f"podman {' '.join(args)} failed: {p.stderr[-2000:]}")
        return p.stderr

    def driver(self) -> str:
        p = subprocess.run(
            ["podman", "info", "--format", "{{.Store.GraphDriverName}}"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return p.stdout.strip()

    def pull(self, ref: str) -> tuple[float, list[str]]:
        """Seconds, and podman's debug lines about partial pulls (retrieved or failed)."""
        t = time.perf_counter()
        err = self.run("--log-level=debug", "pull", "-q", "--tls-verify=false", ref)
        took = time.perf_counter() - t
        return took, [x for x in err.splitlines() if "partial blob" in x]

    def linked_files(self) -> tuple[int, int]:
        """Regular files in podman's layers, and how many of them have more than one link."""
        total = linked = 0
        for diff in (self.graphroot / "overlay").glob("*/diff"):
            for dirpath, _, names in os.walk(diff):
                for n in names:
                    st = os.lstat(os.path.join(dirpath, n))
                    if stat.S_ISREG(st.st_mode):
                        total += 1
                        linked += st.st_nlink > 1
        return total, linked

    def close(self) -> None:
        subprocess.run(["podman", "rmi", "-af"], env=self.env, capture_output=True, check=False)
        subprocess.run(
            ["podman", "system", "reset", "-f"], env=self.env, capture_output=True, check=False
        )
        shutil.rmtree(self.root, ignore_errors=True)


def podman_case(
    name: str, tmp: Path, refs: list[str], partial: bool, hard_links: bool
) -> tuple[dict[str, Any], Podman]:
    pm = Podman(tmp / name.replace(" ", "-").replace(":", "-"), partial, hard_links)
    times, lines = [], []
    for ref in refs:
        t, said = pm.pull(ref)
        times.append(t)
        lines += said
    total, linked = pm.linked_files()
    return {
        "pull_s": times,
        "store": du(pm.graphroot),
        "layers": du(pm.graphroot / "overlay"),
        "partial_blobs": sum("Retrieved partial blob" in x for x in lines),
        "partial_log": lines,
        "files": total,
        "linked": linked,
        "driver": pm.driver(),
    }, pm


def no_dedup(client: Client) -> dict[str, bool]:
    """The pull keyword that skips dedup after the pull, if pulls have one (issue 16's
    dedup after pull): "without dedup" must measure the store as pulled."""
    return {"dedup": False} if "dedup" in inspect.signature(client.pull).parameters else {}


def disk(client: Client, reg: LocalRegistry, tmp: Path, pulls: list[float]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    store = client.root
    t = time.perf_counter()
    client.pull(f"{reg.host}/bench/usr:v2", **no_dedup(client))
    pulls.append(time.perf_counter() - t)
    before = client.disk_usage()
    if before.shared:
        raise SystemExit(
            "the pulls already shared files (dedup after pull?): make no_dedup() pass the "
            "option that turns it off, so 'without dedup' is measured"
        )
    res["fastdist without dedup"] = {
        "pull_s": list(pulls),
        "store": du(store),
        "layers": before.physical,
        "blobs": before.blobs,
        "logical": before.logical,
    }
    t = time.perf_counter()
    dd = client.dedup()
    took = time.perf_counter() - t
    after = client.disk_usage()
    res["fastdist with dedup"] = {
        "store": du(store),
        "layers": after.physical,
        "blobs": after.blobs,
        "logical": after.logical,
        "linked": dd.linked,
        "dedup_s": took,
    }
    if ARGS.no_podman or shutil.which("podman") is None:
        log.warning("podman left out (--no-podman or not installed)")
        return res
    gz = [f"{reg.host}/bench/usr:v1", f"{reg.host}/bench/usr:v2"]
    log.info("disk: podman pull, gzip")
    res["podman gzip"], pm = podman_case("podman gzip", tmp, gz, partial=True, hard_links=True)
    try:
        with LocalRegistry() as reg2:
            log.info("disk: podman push --compression-format zstd:chunked")
            zs = [f"{reg2.host}/bench/usrz:v1", f"{reg2.host}/bench/usrz:v2"]
            for src, dst in zip(gz, zs, strict=True):
                pm.run("push", "-q", "--tls-verify=false", *ZSTD_PUSH, src, dst)
            check_zstd_chunked(reg2.host)
            for label, links in (
                ("podman zstd:chunked, partial pulls", False),
                ("podman zstd:chunked, partial pulls + use_hard_links", True),
            ):
                log.info("disk: %s", label)
                res[label], pz = podman_case(label, tmp, zs, partial=True, hard_links=links)
                pz.close()
    finally:
        pm.close()
    return res


def check_zstd_chunked(host: str) -> None:
    """The pushed layers are zstd:chunked (podman 4.3 may instead reuse a gzip blob)."""
    import requests

    for tag in ("v1", "v2"):
        m = requests.get(
            f"http://{host}/v2/bench/usrz/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            timeout=30,
        ).json()
        for layer in m["layers"]:
            if not layer["mediaType"].endswith("+zstd") or ZSTD_CHUNKED not in layer.get(
                "annotations", {}
            ):
                raise SystemExit(f"podman pushed a layer that is not zstd:chunked: {layer}")


# --- report ----------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    lb = ", ".join(f"{x:.1f}" for x in res["load_before"])
    la = ", ".join(f"{x:.1f}" for x in res["load_after"])
    out = [
        f"{res['when']} at {res['commit']}: {res['cpus']} CPUs, load average {lb} before and "
        f"{la} after; {res['priority']}.",
        "",
    ]
    if "fingerprints" in res:
        fp = res["fingerprints"]
        n = min(v["ratio"]["n"] for v in fp.values())
        out += [
            f"Fingerprints (xxh3-128 in the applier), on and off: `apply_tar` of an uncompressed "
            f"layer from memory onto tmpfs, medians of {n} interleaved runs; cost = on ÷ off - 1 "
            "[95% bootstrap interval]:",
            "",
            "| layer | size | files | CPU on / off (ms) | cost, CPU | wall on / off (ms) "
            "| cost, wall |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]

        def pct(r: dict[str, float]) -> str:
            return (
                f"{(r['value'] - 1) * 100:+.1f}% "
                f"[{(r['lo'] - 1) * 100:+.1f}% to {(r['hi'] - 1) * 100:+.1f}%]"
            )

        for name, v in fp.items():
            out.append(
                f"| {name} | {v['bytes'] / 1e6:.0f} MB | {v['files']:,} | "
                f"{v['cpu_on']['median'] * 1e3:.0f} / {v['cpu_off']['median'] * 1e3:.0f} | "
                f"{pct(v['cpu_ratio'])} | "
                f"{v['on']['median'] * 1e3:.0f} / {v['off']['median'] * 1e3:.0f} | "
                f"{pct(v['ratio'])} |"
            )
        out.append("")
    if "deep" in res:
        d = res["deep"]
        how = (
            "/proc/sys/vm/drop_caches"
            if d["evict"] == "drop_caches"
            else "the tree's pages evicted with posix_fadvise(DONTNEED)"
        )
        out += [
            f"check --deep against the peers: {d['bytes'] / 1e6:.0f} MB in {d['files']:,} files "
            f"(snapshotter {res['snapshotter']}); cold = {how} before each command "
            f"({d['resident_after_evict']:,} bytes still resident after it, by `fincore`), "
            f"warm = the same command again at once; medians of {res['runs']} interleaved runs, "
            "GB/s of file bytes over the wall time:",
            "",
            "| command | cold GB/s | warm GB/s | warm vs `sha256sum` |",
            "|---|---:|---:|---:|",
        ]
        sha = d["bps"]["sha256sum"]["warm"]
        for name, v in d["bps"].items():
            r = ratio(v["warm"], sha)
            out.append(
                f"| `{name}` | {statistics.median(v['cold']) / 1e9:.2f} | "
                f"{statistics.median(v['warm']) / 1e9:.2f} | {r.cell()} |"
            )
        out.append("")
    if "disk" in res:
        k = res["disk"]
        out += [
            f"Two tags: v1 = {res['mb']} MB of host files in one layer; v2 = that layer rebuilt "
            f"with {CHANGED} files changed (a new digest) + a small app layer. `store` = "
            "`du -sx --block-size=1` of the whole store (fastdist: snapshots, blobs, metadata; "
            "podman: graphroot), `layers` = the unpacked layers alone (fastdist: `system df` "
            "physical; podman: `du` of graphroot/overlay); hardlinked inodes counted once.",
            "",
            "| | store MB | layers MB | pull v1 + v2 (s) | notes |",
            "|---|---:|---:|---:|---|",
        ]
        for name, v in k.items():
            pull = f"{sum(v['pull_s']):.1f}" if "pull_s" in v else ""
            if name == "fastdist without dedup":
                note = f"blobs kept: {v['blobs'] / 1e6:.1f} MB"
            elif name == "fastdist with dedup":
                note = f"`fastdist dedup`: {v['linked']:,} files linked in {v['dedup_s']:.1f} s"
            else:
                note = (
                    f"{v['driver']} driver; {v['partial_blobs']} blobs retrieved partially; "
                    f"{v['linked']:,} of {v['files']:,} files hardlinked"
                )
            out.append(
                f"| {name} | {v['store'] / 1e6:.1f} | {v['layers'] / 1e6:.1f} | {pull} | {note} |"
            )
    return "\n".join(out) + "\n"


def update_readme(block: str) -> None:
    text = README.read_text()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:a] + block + text[b:])


def commit() -> str:
    p = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return p.stdout.strip() or "?"


ARGS: argparse.Namespace


def main() -> int:
    global ARGS
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="MB of host files in the layer")
    ap.add_argument("--runs", type=int, default=5, help="runs of check --deep and its peers")
    ap.add_argument("--fingerprint-runs", type=int, default=15, help="runs each way")
    ap.add_argument("--only", action="append", choices=["fingerprints", "deep", "disk"])
    ap.add_argument("--snapshotter", default=None, help="overlayfs or native (default: probe)")
    ap.add_argument("--dir", default=None, help="where the stores go (default: $TMPDIR)")
    ap.add_argument("--tmpfs", default="/dev/shm", help="tmpfs for the fingerprint layers")
    ap.add_argument("--drop-caches", action="store_true", help="cold = drop the whole cache")
    ap.add_argument("--no-podman", action="store_true")
    ap.add_argument("--boost", action="store_true", help="own autogroup at nice -15 (root)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--update-readme", action="store_true", help="rewrite the README block")
    ARGS = args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    only = set(args.only or ["fingerprints", "deep", "disk"])
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
        "cpus": os.cpu_count(),
        "priority": boost() if args.boost else "default priority",
        "load_before": os.getloadavg(),
        "runs": args.runs,
        "mb": args.mb,
    }
    if "fingerprints" in only:
        res["fingerprints"] = fingerprints(args)
    if only & {"deep", "disk"}:
        tmp = Path(tempfile.mkdtemp(prefix="fastdist-deep-", dir=args.dir))
        try:
            v1, v2 = images(ARGS.mb)
            with LocalRegistry() as reg:
                for img, tag in ((v1, "v1"), (v2, "v2")):
                    push_image(Pusher(Transport()), f"{reg.host}/bench/usr:{tag}", img)
                del v1, v2
                client = Client(tmp / "store", snapshotter=args.snapshotter, hosts_dir=tmp / "no")
                res["snapshotter"] = client.snapshotter.name
                t = time.perf_counter()
                one = client.pull(f"{reg.host}/bench/usr:v1", **no_dedup(client))
                pulls = [time.perf_counter() - t]
                if "deep" in only:
                    fs = client.snapshotter.fs_path(one.record.chain_ids[-1])
                    res["deep"] = deep(client, fs, args)
                if "disk" in only:
                    res["disk"] = disk(client, reg, tmp, pulls)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = os.getloadavg()
    table = markdown(res)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.update_readme:
        update_readme(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
