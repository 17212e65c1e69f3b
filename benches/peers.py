"""Drivers for the pullers the benchmark compares: fastdist, containerd's ctr, skopeo + umoci, and
the naive unverified ``curl | decompress | tar -x`` floor.

Every driver opens a *session* (a fresh store / daemon / target directory on tmpfs) and pulls into
it; ``Sample`` holds what one timed pull cost: wall time, CPU (user + sys of the whole process
tree, the containerd daemon and the decompressors it spawns included) and peak RSS.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fixtures import Fixture

CLK_TCK = os.sysconf("SC_CLK_TCK")
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")  # not the shell keyword


class BenchError(Exception):
    """A tool failed during the benchmark (the message carries its stderr tail)."""


@dataclass
class Sample:
    wall: float  # seconds
    user: float  # seconds, the command's process tree
    sys: float
    maxrss_kb: int  # ru_maxrss: the largest single process in the tree
    daemon_cpu: float = 0.0  # seconds, containerd daemon (+ its unpigz children)
    daemon_rss_kb: int = 0  # containerd's peak RSS during the pull (VmHWM, reset before)
    steps: list[str] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        return self.user + self.sys + self.daemon_cpu

    @property
    def rss_kb(self) -> int:
        return self.maxrss_kb + self.daemon_rss_kb

    def __add__(self, o: Sample) -> Sample:
        return Sample(
            self.wall + o.wall,
            self.user + o.user,
            self.sys + o.sys,
            max(self.maxrss_kb, o.maxrss_kb),
            self.daemon_cpu + o.daemon_cpu,
            max(self.daemon_rss_kb, o.daemon_rss_kb),
            self.steps + o.steps,
        )


def run_timed(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Sample:
    """Run ``cmd`` to completion: wall clock, CPU and peak RSS of its process tree.

    GNU time sits between us and the command because a child's ru_maxrss starts from its parent's
    high-water mark (Linux carries it across exec): measured straight from this Python process,
    every tool would seem to use at least this process's own RSS.
    """
    report = log.with_name(log.name + ".time")
    wrapped = list(cmd)
    if GNU_TIME:
        wrapped = [GNU_TIME, "-f", "%U %S %M", "-o", str(report), "--", *cmd]
    with open(log, "ab") as logf:
        logf.write(f"$ {shlex.join(cmd)}\n".encode())
        logf.flush()
        t0 = time.perf_counter()
        p = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise BenchError(f"{shlex.join(cmd)[:300]} exited {p.returncode}:\n{tail}")
    user, sys_, maxrss = ru.ru_utime, ru.ru_stime, ru.ru_maxrss
    if GNU_TIME:
        fields = report.read_text().split()[-3:]
        user, sys_, maxrss = float(fields[0]), float(fields[1]), int(fields[2])
    return Sample(wall, user, sys_, maxrss, steps=[Path(cmd[0]).name])


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, bytes) under ``root`` — a sanity check that a pull really unpacked."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                size += st.st_size
    return files, size


def _rm(path: Path) -> None:
    """Unmount anything left below ``path`` (containerd's snapshotter) and delete it."""
    if not path.exists():
        return
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp.startswith(str(path) + "/"):
                mounts.append(mp)
    for mp in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------


def fastdist_env(src: str | None = None) -> dict[str, str]:
    """The environment for fastdist subprocesses: this checkout's package (or ``src``, e.g. the
    ``--baseline`` checkout's) first on the path."""
    default = Path(__file__).resolve().parent.parent / "python"
    src = src or os.environ.get("BENCH_FASTDIST_PATH", str(default))
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{src}:{path}" if path else str(src)}


FASTDIST_SCRIPT = "from fastdist.cli.main import run; run()"


class FastdistSession:
    def __init__(self, workdir: Path, tool: Fastdist) -> None:
        self.root = workdir / "root"
        self.log = workdir / "log"
        self.tool = tool

    def pull(self, fx: Fixture, ref: str) -> Sample:
        # What the installed `fastdist` console script runs (`python -m` would add runpy's
        # imports, ~4 ms, which the command does not have).
        t = self.tool
        cmd = [t.python, "-c", FASTDIST_SCRIPT, "--root", str(self.root), "pull", "-q"]
        cmd += ["--snapshotter", t.snapshotter, *t.extra, ref]
        return run_timed(cmd, self.log, env=fastdist_env(t.path))

    def output(self) -> Path:
        return self.root


@dataclass
class Fastdist:
    """fastdist's CLI; ``python``/``path`` select another checkout (``--baseline``), ``extra``
    adds pull options (the far mode's ``--plain-http``, as ctr gets)."""

    snapshotter: str = "overlayfs"
    name: str = "fastdist"
    scenarios: tuple[str, ...] = ("cold", "warm", "base")
    python: str = sys.executable
    path: str | None = None  # PYTHONPATH entry holding the package; None = this checkout's
    extra: tuple[str, ...] = ()

    @contextmanager
    def session(self, workdir: Path) -> Iterator[FastdistSession]:
        workdir.mkdir(parents=True)
        try:
            yield FastdistSession(workdir, self)
        finally:
            _rm(workdir)


# ---------------------------------------------------------------------------------------------

_CONTAINERD_CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""


def _proc_cpu(pid: int) -> float:
    """utime+stime of ``pid`` plus its waited-for children (containerd's unpigz), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14..17.
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def _proc_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class CtrSession:
    def __init__(self, workdir: Path, proc: subprocess.Popen[bytes]) -> None:
        self.dir = workdir
        self.sock = str(workdir / "containerd.sock")
        self.proc = proc
        self.log = workdir / "log"

    def pull(self, fx: Fixture, ref: str) -> Sample:
        pid = self.proc.pid
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM so the peak is this pull's
        cpu0 = _proc_cpu(pid)
        cmd = ["ctr", "-a", self.sock, "-n", "bench", "images", "pull", "--plain-http"]
        cmd += ["--snapshotter", "overlayfs", ref]
        s = run_timed(cmd, self.log)
        s.daemon_cpu = _proc_cpu(pid) - cpu0
        s.daemon_rss_kb = _proc_hwm_kb(pid)
        return s

    def output(self) -> Path:
        return self.dir / "root"


@dataclass
class Ctr:
    name: str = "ctr"
    scenarios: tuple[str, ...] = ("cold", "warm", "base")

    @contextmanager
    def session(self, workdir: Path) -> Iterator[CtrSession]:
        workdir.mkdir(parents=True)
        cfg = workdir / "config.toml"
        cfg.write_text(_CONTAINERD_CONFIG.format(d=workdir))
        daemon_log = open(workdir / "containerd.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = subprocess.Popen(
            ["containerd", "--config", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=daemon_log,
            stderr=daemon_log,
            env=env,
        )
        daemon_log.close()
        try:
            sock = str(workdir / "containerd.sock")
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise BenchError(
                        "containerd exited: "
                        + (workdir / "containerd.log").read_text(errors="replace")[-1500:]
                    )
                if os.path.exists(sock):
                    r = subprocess.run(
                        ["ctr", "-a", sock, "version"], capture_output=True, check=False
                    )
                    if r.returncode == 0:
                        break
                if time.monotonic() > deadline:
                    raise BenchError("containerd did not come up in 30 s")
                time.sleep(0.05)  # polling a daemon we just started
            yield CtrSession(workdir, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _rm(workdir)


# ---------------------------------------------------------------------------------------------


class SkopeoUmociSession:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.log = workdir / "log"
        self.n = 0

    def pull(self, fx: Fixture, ref: str) -> Sample:
        self.n += 1
        layout = self.dir / "oci"
        bundle = self.dir / f"bundle{self.n}"
        copy = ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}"]
        copy.append(f"oci:{layout}:{fx.tag}")
        s = run_timed(copy, self.log)
        s += run_timed(["umoci", "unpack", "--image", f"{layout}:{fx.tag}", str(bundle)], self.log)
        return s

    def output(self) -> Path:
        return self.dir / f"bundle{self.n}"


@dataclass
class SkopeoUmoci:
    name: str = "skopeo+umoci"
    scenarios: tuple[str, ...] = ("cold",)
    compressions: tuple[str, ...] = ("gzip",)  # umoci 0.4.7 has no zstd

    @contextmanager
    def session(self, workdir: Path) -> Iterator[SkopeoUmociSession]:
        workdir.mkdir(parents=True)
        try:
            yield SkopeoUmociSession(workdir)
        finally:
            _rm(workdir)


# ---------------------------------------------------------------------------------------------


class NaiveSession:
    def __init__(self, workdir: Path, host: str) -> None:
        self.dir = workdir
        self.host = host
        self.log = workdir / "log"

    def pull(self, fx: Fixture, ref: str) -> Sample:
        # Layers in parallel, each into its own directory (what overlayfs allows); no digest is
        # checked, no whiteout handled, no metadata kept: the floor, not a puller.
        decomp = "unpigz" if fx.compression == "gzip" else "zstd -d -q"
        lines = ["set -eo pipefail", "pids=()"]
        for i, layer in enumerate(fx.layers):
            out = self.dir / f"layer{i}"
            url = f"http://{self.host}/v2/{fx.repo}/blobs/{layer.digest}"
            lines.append(
                f"mkdir -p {out} && (curl -sfL {url} | {decomp} | tar -x -C {out}) & pids+=($!)"
            )
        lines.append('for p in "${pids[@]}"; do wait "$p"; done')
        return run_timed(["bash", "-c", "\n".join(lines)], self.log)

    def output(self) -> Path:
        return self.dir


@dataclass
class Naive:
    host: str
    name: str = "curl|tar"
    scenarios: tuple[str, ...] = ("cold",)

    @contextmanager
    def session(self, workdir: Path) -> Iterator[NaiveSession]:
        workdir.mkdir(parents=True)
        try:
            yield NaiveSession(workdir, self.host)
        finally:
            _rm(workdir)
