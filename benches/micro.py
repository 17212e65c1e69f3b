"""Micro-benchmarks of the native core against the system tools, on tmpfs, in one run.

sha256 vs ``openssl dgst -sha256``; gzip/zstd decompression vs ``gzip -d``, ``pigz -d`` and
``zstd -d``; tar apply (20k small files, a few big files) vs ``tar -x``; and the single pass
(hash + inflate + hash + apply) vs ``unpigz | tar -x``. Runs are interleaved, medians of
``--runs`` reported with the ratio to each peer, and the table is written into
benches/README.md ("Native core micro-benchmarks").

    python benches/micro.py [--runs 3] [--tree /usr/bin --tree /usr/share] [--no-readme] [--boost]

On a machine shared with other sessions' builds, ``--boost`` (root) runs the benchmark in a
scheduler autogroup of its own at nice -15: Linux shares the CPU equally between autogroups
(sessions), so without it a busy neighbour halves our cores and the peers' alike, and wall times
turn into a measure of the neighbours. Ours and the peers run in the same group.
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastdist._native import LayerWriter, apply_layer, layer_diff_id, sha256_file

log = logging.getLogger("bench.micro")

TAR = "application/vnd.oci.image.layer.v1.tar"
TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TZST = "application/vnd.oci.image.layer.v1.tar+zstd"
README = Path(__file__).with_name("README.md")
SECTION = "## Native core micro-benchmarks"
MiB = 1 << 20


@dataclass(frozen=True)
class Row:
    case: str
    ours: float  # median seconds
    peer_name: str
    peer: float
    size: int  # bytes processed (MB/s basis)
    files: int = 0
    ours_cpu: float = 0.0  # median CPU seconds (user + sys, all threads)
    peer_cpu: float = 0.0

    def ratio(self) -> float:
        return self.peer / self.ours


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def timed(fn: Callable[[], object], who: int) -> tuple[float, float]:
    """Wall and CPU seconds of fn; CPU of this process (ours) or of its children (peers)."""
    r0 = resource.getrusage(who)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(who)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


@dataclass(frozen=True)
class Timing:
    ours: float
    peer: float
    ours_cpu: float
    peer_cpu: float


def compare(
    runs: int,
    ours: Callable[[], object],
    peer: Callable[[], object],
    reset: Callable[[], object] = lambda: None,
) -> Timing:
    """Interleave ours/peer `runs` times (after one warm-up each); medians in seconds."""
    a: list[tuple[float, float]] = []
    b: list[tuple[float, float]] = []
    for i in range(runs + 1):
        reset()
        ta = timed(ours, resource.RUSAGE_SELF)
        reset()
        tb = timed(peer, resource.RUSAGE_CHILDREN)
        if i:  # the first round warms the page cache and the allocator
            a.append(ta)
            b.append(tb)
    med = statistics.median
    return Timing(
        med(t[0] for t in a), med(t[0] for t in b), med(t[1] for t in a), med(t[1] for t in b)
    )


def row(case: str, t: Timing, peer_name: str, size: int, files: int = 0) -> Row:
    return Row(case, t.ours, peer_name, t.peer, size, files, t.ours_cpu, t.peer_cpu)


def small_files_tar(path: Path, count: int) -> int:
    rnd = random.Random(42)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(count // 100):
            info = tarfile.TarInfo(f"d{d:03}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
            for f in range(100):
                data = rnd.randbytes(rnd.randint(64, 8192))
                info = tarfile.TarInfo(f"d{d:03}/f{f:03}.txt")
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return count + count // 100


def big_files_tar(path: Path, total: int, n: int) -> int:
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            # Half random, half repetitive: realistic for binaries, and compressible.
            part = os.urandom(total // n // 2)
            data = part + bytes(range(256)) * (total // n // 2 // 256)
            info = tarfile.TarInfo(f"big{i}.bin")
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return n


def realistic_tar(path: Path, trees: list[str]) -> int:
    sh(
        f"tar -C / -cf {path} --numeric-owner "
        + " ".join(t.lstrip("/") for t in trees)
        + " 2>/dev/null || test -s "
        + str(path)
    )
    with tarfile.open(path) as tf:
        return sum(1 for _ in tf)


def stream_layer(blob: Path, media_type: str, dest: Path) -> None:
    """The pull path: Python hands 1 MiB chunks (as from the network) to a LayerWriter."""
    w = LayerWriter(media_type, str(dest))
    with open(blob, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            w.write(chunk)
    w.finish()


def run(work: Path, runs: int, trees: list[str]) -> list[Row]:
    rows: list[Row] = []
    dest = work / "dest"

    log.info("sha256: 1 GiB of random data")
    blob = work / "random.bin"
    with open(blob, "wb") as f:
        for _ in range(1024 // 64):
            f.write(os.urandom(64 * MiB))
    size = blob.stat().st_size
    t = compare(
        runs,
        lambda: sha256_file(str(blob)),
        lambda: sh(f"openssl dgst -sha256 {blob} >/dev/null"),
    )
    rows.append(row("sha256 (1 GiB)", t, "openssl dgst -sha256", size))
    blob.unlink()

    log.info("realistic tree tar of %s", " ".join(trees))
    real = work / "real.tar"
    real_entries = realistic_tar(real, trees)
    real_size = real.stat().st_size
    sh(f"pigz -6 -k -c {real} > {real}.gz")
    sh(f"zstd -q -3 -T0 -c {real} > {real}.zst")
    gz, zst = Path(f"{real}.gz"), Path(f"{real}.zst")

    log.info("gzip decompression (%d MiB tar)", real_size // MiB)
    t = compare(
        runs,
        lambda: layer_diff_id(str(gz), TGZ),
        lambda: sh(f"gzip -d -c {gz} >/dev/null"),
    )
    rows.append(row("gunzip + 2x sha256", t, "gzip -d", real_size))
    t = compare(
        runs,
        lambda: layer_diff_id(str(gz), TGZ),
        lambda: sh(f"pigz -d -c {gz} >/dev/null"),
    )
    rows.append(row("gunzip + 2x sha256", t, "pigz -d", real_size))
    log.info("zstd decompression")
    t = compare(
        runs,
        lambda: layer_diff_id(str(zst), TZST),
        lambda: sh(f"zstd -q -d -c {zst} >/dev/null"),
    )
    rows.append(row("unzstd + 2x sha256", t, "zstd -d", real_size))

    log.info("apply: 20k small files")
    small = work / "small.tar"
    n = small_files_tar(small, 20_000)
    t = compare(
        runs,
        lambda: apply_layer(str(small), TAR, str(dest)),
        lambda: sh(f"tar -xf {small} -C {dest}"),
        lambda: fresh(dest),
    )
    rows.append(row("apply 20k small files", t, "tar -x", small.stat().st_size, n))
    small.unlink()

    log.info("apply: 500 MB in 5 files")
    big = work / "big.tar"
    n = big_files_tar(big, 500 * 1000 * 1000, 5)
    t = compare(
        runs,
        lambda: apply_layer(str(big), TAR, str(dest)),
        lambda: sh(f"tar -xf {big} -C {dest}"),
        lambda: fresh(dest),
    )
    rows.append(row("apply 500 MB / 5 files", t, "tar -x", big.stat().st_size, n))
    big.unlink()

    log.info("single pass: gzip layer, LayerWriter fed 1 MiB chunks from Python")
    t = compare(
        runs,
        lambda: stream_layer(gz, TGZ, dest),
        lambda: sh(f"unpigz -c {gz} | tar -x -C {dest}"),
        lambda: fresh(dest),
    )
    rows.append(row("LayerWriter gzip", t, "unpigz | tar -x", real_size, real_entries))
    t = compare(
        runs,
        lambda: apply_layer(str(gz), TGZ, str(dest)),
        lambda: sh(f"unpigz -c {gz} | tar -x -C {dest}"),
        lambda: fresh(dest),
    )
    rows.append(row("apply_layer gzip", t, "unpigz | tar -x", real_size, real_entries))
    t = compare(
        runs,
        lambda: stream_layer(zst, TZST, dest),
        lambda: sh(f"zstd -q -d -c {zst} | tar -x -C {dest}"),
        lambda: fresh(dest),
    )
    rows.append(row("LayerWriter zstd", t, "zstd -d | tar -x", real_size, real_entries))
    return rows


def boost() -> str:
    """Move this process into a new session (a new autogroup) and raise that group's share."""
    try:
        os.setsid()
        Path("/proc/self/autogroup").write_text("-15\n")
        os.nice(-15)
    except OSError as e:
        log.warning("--boost: could not raise the priority (%s)", e)
        return "not boosted"
    return "own autogroup at nice -15 (--boost)"


def table(rows: list[Row], runs: int, trees: list[str], notes: str) -> str:
    out = [
        "| case | fastdist | CPU | MB/s | files/s | peer | peer time | peer CPU | peer MB/s "
        "| speed-up |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        files = f"{r.files / r.ours:,.0f}" if r.files else ""
        peer = r.peer_name.replace("|", "\\|")  # a pipe inside a table cell
        out.append(
            f"| {r.case} | {r.ours:.3f} s | {r.ours_cpu:.2f} s | {r.size / r.ours / 1e6:,.0f} | "
            f"{files} | `{peer}` | {r.peer:.3f} s | {r.peer_cpu:.2f} s | "
            f"{r.size / r.peer / 1e6:,.0f} | {r.ratio():.2f}x |"
        )
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out.append("")
    out.append(
        f"Medians of {runs} interleaved runs after a warm-up, on tmpfs, {os.cpu_count()} cores "
        f"({cpu}). MB/s = uncompressed tar bytes (sha256: file bytes) per second; CPU = user + "
        f"sys seconds over all threads/processes. "
        f'Realistic layer: tar of {" ".join(trees)}. fastdist always hashes: "2x sha256" is '
        f"the blob's digest and the tar's diff_id (the peers verify nothing); an uncompressed "
        f"layer is hashed once (its digest is its diff_id). The apply rows run the whole "
        f"native applier (rust/src/apply.rs, safe in-root resolution, chown as root). "
        f"{notes}"
    )
    return "\n".join(out)


def write_readme(text: str, command: str) -> None:
    """Replace the section's generated part (the command and the table), up to its first
    ``###`` subsection or the next section: the written reading of a run below it stays."""
    body = (
        f"{SECTION}\n\n"
        f"`{command}` (benches/micro.py): the native core against the system tools.\n\n"
        f"{text}\n"
    )
    old = README.read_text() if README.exists() else "# fastdist benchmarks\n"
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        ends = [i for i in (rest.find("\n## "), rest.find("\n### ")) if i >= 0]
        tail = rest[min(ends) + 1 :] if ends else ""
        new = head + body + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    README.write_text(new)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", action="append", help="directories for the realistic layer")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--tmp", default="/dev/shm", help="a tmpfs directory")
    ap.add_argument("--boost", action="store_true", help="own autogroup at nice -15 (root)")
    args = ap.parse_args()
    priority = boost() if args.boost else "default priority"
    load0 = os.getloadavg()[0]
    trees = args.tree or ["/usr/bin", "/usr/lib/python3.11"]
    for tool in ("openssl", "gzip", "pigz", "unpigz", "zstd", "tar"):
        if shutil.which(tool) is None:
            log.error("%s is not installed", tool)
            return 2
    work = Path(tempfile.mkdtemp(prefix="fastdist-micro-", dir=args.tmp))
    try:
        rows = run(work, args.runs, trees)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()[0]
    notes = (
        f"Run {datetime.date.today().isoformat()}, {priority}; 1-minute load average "
        f"{load0:.1f} at the start, {load1:.1f} at the end."
    )
    text = table(rows, args.runs, trees, notes)
    sys.stdout.write(text + "\n")
    if not args.no_readme:
        write_readme(text, "python " + " ".join(["benches/micro.py", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
