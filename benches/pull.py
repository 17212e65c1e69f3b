#!/usr/bin/env python3
"""Side-by-side pull benchmark: fastdist against containerd's ctr, skopeo + umoci and the naive
unverified ``curl | decompress | tar -x`` floor (design.md §9, issue 5).

One command builds the fixture images (once; cached under benches/work/), starts Debian's registry
on loopback, times cold pulls interleaved across tools on tmpfs, then the warm case and the pull of
an image whose base layer is already present, and writes benches/results/latest.json, a markdown
table, benches/pull.png and (with --update-readme) the results block of benches/README.md.

    make bench                                  # everything, 5 runs
    python benches/pull.py --runs 3 --images usr,small-files --tools fastdist,ctr

Far-link mode (``--link``; ``make bench-far`` = ``--link far``): the same cold pulls through
benches/linkem.py's emulated links, reported against each link's floor, with the requests made
per blob (benches/README.md, "Far-link pulls"). ``--baseline PATH`` adds the fastdist of another
checkout as ``fastdist@base``, in either mode. Every ratio has a bootstrap interval (stats.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SNAPSHOT = HERE / "work" / "fastdist-snapshot"


def _snapshot_fastdist() -> None:
    """Benchmark a private copy of this checkout's package (extension included): other people
    rebuild ``_native.abi3.so`` in place while they work, which crashes every process that has it
    mapped and would change the code under test half-way through a run."""
    src = REPO / "python" / "fastdist"
    if not src.is_dir():
        return  # an installed fastdist is benchmarked as it is
    shutil.rmtree(SNAPSHOT, ignore_errors=True)
    shutil.copytree(src, SNAPSHOT / "fastdist", ignore=shutil.ignore_patterns("__pycache__"))
    # Byte-compile it as an install would: with PYTHONDONTWRITEBYTECODE set (as in our shells),
    # every timed fastdist process otherwise compiled all of its modules from source (~0.2 s).
    import compileall

    compileall.compile_dir(str(SNAPSHOT), quiet=1)
    os.environ["BENCH_FASTDIST_PATH"] = str(SNAPSHOT)
    sys.path.insert(0, str(SNAPSHOT))


sys.path.insert(0, str(HERE))
_snapshot_fastdist()

import linkem  # noqa: E402
from fixtures import Fixture, ensure_fixtures  # noqa: E402
from peers import (  # noqa: E402
    FASTDIST_SCRIPT,
    BenchError,
    Ctr,
    Fastdist,
    Naive,
    Sample,
    SkopeoUmoci,
    fastdist_env,
    tree_stats,
)
from stats import dist, ratio  # noqa: E402

from fastdist.testing.registry import LocalRegistry  # noqa: E402

log = logging.getLogger("bench")

IMAGES = ["usr", "small-files", "big-files", "whiteouts", "many-layers"]
TOOLS = ["fastdist", "fastdist@base", "ctr", "skopeo+umoci", "curl|tar"]
README_BEGIN = "<!-- pull-bench:results:begin -->"
README_END = "<!-- pull-bench:results:end -->"
FAR_BEGIN = "<!-- pull-bench:far:begin -->"
FAR_END = "<!-- pull-bench:far:end -->"

# The far sweep (--link): images, tools and the default subset that fits in ~25 minutes.
FAR_IMAGES = ["usr", "big-files", "small-files", "many-layers"]
FAR_TOOLS = ["fastdist", "ctr", "curl|tar"]
# The default sweep's images per per-connection cap (--full: every image everywhere);
# big-files (1 GiB, ~70 s a run for the three tools) only at 100 MB/s and 20 ms.
FAR_DEFAULT = {
    100: {"usr", "many-layers"},
    30: {"usr", "many-layers"},
    10: {"small-files", "many-layers"},
}
FAR_BIG = ("big-files", 100, 20)  # image, per-connection MB/s, RTT ms
# Round trips a cold pull needs at least: the TCP handshake, the manifest by tag, then every
# blob (config and layers) at once. The floor charges them once each.
ROUND_TRIPS = 3


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / (1 << 20):.1f} GiB"

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "missing"

    commit = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "python", "rust"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if dirty:
        commit += " (+ uncommitted changes in python/ or rust/)"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory": mem,
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "fastdist_commit": commit,
        "containerd": version(["containerd", "--version"]),
        "skopeo": version(["skopeo", "--version"]),
        "umoci": version(["umoci", "--version"]),
        "pigz": version(["pigz", "--version"]),
        "zstd": version(["zstd", "--version"]),
        "python": platform.python_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A private tmpfs for target directories; falls back to /dev/shm if mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if r.returncode == 0:
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    log.warning("cannot mount tmpfs (%s); using /dev/shm", r.stderr.decode().strip())
    alt = Path("/dev/shm") / f"fastdist-bench-{os.getpid()}"
    alt.mkdir()
    try:
        yield alt
    finally:
        shutil.rmtree(alt, ignore_errors=True)


def fastdist_ready() -> str | None:
    """None if fastdist can be benchmarked, else why not."""
    r = subprocess.run(
        [sys.executable, "-c", "import fastdist.client, fastdist._native, fastdist.cli.main"],
        env=fastdist_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    return None if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


def snapshot_baseline(checkout: Path) -> tuple[str, str]:
    """(python, PYTHONPATH entry) for ``--baseline``: a private copy of the checkout's package,
    byte-compiled, run by the checkout's own ``.venv`` Python (this one if it has none)."""
    src = checkout / "python" / "fastdist"
    if not (src / "__init__.py").is_file():
        raise SystemExit(f"--baseline {checkout}: no python/fastdist package there")
    py = checkout / ".venv" / "bin" / "python"
    python = str(py) if py.exists() else sys.executable
    dst = HERE / "work" / "fastdist-base-snapshot"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst / "fastdist", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "compileall", "-q", str(dst)], check=True)
    r = subprocess.run(
        [python, "-c", "import fastdist._native, fastdist.cli.main"],
        env=fastdist_env(str(dst)),
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode:
        raise SystemExit(f"--baseline {checkout}: fastdist does not import: {r.stderr[-500:]}")
    return python, str(dst)


def fastdist_budget() -> tuple[int, str]:
    """fastdist's default connection budget per registry host, and where it was read from
    (``max_connections`` of Client or TransportConfig); 1 if fastdist has none."""
    import inspect

    try:
        from fastdist.client import Client
        from fastdist.transport import TransportConfig
    except ImportError:
        return 1, "fastdist not importable: 1"
    p = inspect.signature(Client).parameters.get("max_connections")
    if p is not None and isinstance(p.default, int):
        return p.default, "Client(max_connections)"
    fields = (
        dataclasses.fields(TransportConfig) if dataclasses.is_dataclass(TransportConfig) else ()
    )
    for f in fields:
        if f.name == "max_connections" and isinstance(f.default, int):
            return f.default, "TransportConfig.max_connections"
    return 1, "no max_connections in fastdist: 1"


class Bench:
    def __init__(self, args: argparse.Namespace, host: str, tmp: Path) -> None:
        self.args = args
        self.host = host
        self.tmp = tmp
        self.results: list[dict[str, Any]] = []
        self.partial: Path | None = args.out / "partial.json"
        self.seq = 0
        self.link = "loopback"
        self.em: linkem.LinkEmulator | None = None
        extra = ("--plain-http",) if args.link else ()  # as ctr gets --plain-http
        tools: dict[str, Any] = {
            "fastdist": Fastdist(args.fastdist_snapshotter, extra=extra),
            "ctr": Ctr(),
            "skopeo+umoci": SkopeoUmoci(),
            "curl|tar": Naive(host),
        }
        if args.baseline:
            python, path = snapshot_baseline(args.baseline)
            tools["fastdist@base"] = Fastdist(
                args.fastdist_snapshotter, "fastdist@base", python=python, path=path, extra=extra
            )
        self.tools = {k: v for k, v in tools.items() if k in args.tools}

    def set_link(self, name: str, host: str, em: linkem.LinkEmulator | None) -> None:
        """Pull through ``host`` (an emulator's address, or the registry's) from now on."""
        self.link, self.host, self.em = name, host, em
        if "curl|tar" in self.tools:
            self.tools["curl|tar"].host = host

    def ref(self, fx: Fixture) -> str:
        return f"{self.host}/{fx.repo}:{fx.tag}"

    def _workdir(self, tool: str) -> Path:
        self.seq += 1
        return self.tmp / f"{self.seq:04d}-{tool.replace('|', '-').replace('+', '-')}"

    def _record(
        self, scenario: str, fx: Fixture, tool: str, run: int, s: Sample | None, err: str = ""
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "scenario": scenario,
            "link": self.link,
            "image": fx.name,
            "tool": tool,
            "run": run,
        }
        if s is not None:
            row.update(
                wall=s.wall,
                user=s.user,
                sys=s.sys,
                daemon_cpu=s.daemon_cpu,
                cpu=s.cpu,
                maxrss_kb=s.maxrss_kb,
                daemon_rss_kb=s.daemon_rss_kb,
                rss_kb=s.rss_kb,
            )
        if err:
            row["error"] = err
        self.results.append(row)
        if self.partial is not None:  # so a crash half-way keeps what was measured
            self.partial.write_text(json.dumps(self.results, indent=1))
        return row

    def supports(self, tool: str, fx: Fixture, scenario: str) -> bool:
        t = self.tools[tool]
        return scenario in t.scenarios and fx.compression in getattr(
            t, "compressions", ("gzip", "zstd")
        )

    def cold(self, fixtures: list[Fixture]) -> None:
        failed: set[tuple[str, str]] = set()
        names = list(self.tools)
        for fx in fixtures:
            for run in range(self.args.runs):
                order = names[run % len(names) :] + names[: run % len(names)]  # interleave
                for tool in order:
                    if not self.supports(tool, fx, "cold") or (tool, fx.name) in failed:
                        continue
                    try:
                        with self.tools[tool].session(self._workdir(tool)) as sess:
                            if self.em is not None:
                                self.em.reset_stats()
                            cpu0 = time.process_time()  # this process = the emulator's threads
                            s = sess.pull(fx, self.ref(fx))
                            row = self._record("cold", fx, tool, run, s)
                            if self.em is not None:
                                row["proxy_cpu"] = time.process_time() - cpu0
                                row["requests"] = linkem.requests_per_blob(
                                    self.em.stats()["requests"]
                                )
                            if run == 0:
                                row["files"], row["bytes"] = tree_stats(sess.output())
                    except BenchError as e:
                        log.error("%s cold %s failed: %s", tool, fx.name, e)
                        failed.add((tool, fx.name))
                        self._record("cold", fx, tool, run, None, str(e)[-600:])
                        continue
                    log.info(
                        "cold %s %-18s %-13s run %d: %6.2f s wall %6.2f s cpu %5.0f MB",
                        self.link,
                        fx.name,
                        tool,
                        run,
                        s.wall,
                        s.cpu,
                        s.rss_kb / 1024,
                    )

    def warm(self, jobs: list[tuple[str, Fixture, Fixture]]) -> None:
        """(scenario, image, first): pull ``first`` untimed, then time the pull of ``image``.
        warm: first is the image itself; base: first is an image sharing its bottom layer."""
        for scenario, fx, first in jobs:
            for run in range(self.args.warm_runs):
                for tool in self.tools:
                    if not self.supports(tool, fx, scenario):
                        continue
                    try:
                        with self.tools[tool].session(self._workdir(tool)) as sess:
                            sess.pull(first, self.ref(first))
                            s = sess.pull(fx, self.ref(fx))
                    except BenchError as e:
                        log.error("%s %s %s failed: %s", tool, scenario, fx.name, e)
                        self._record(scenario, fx, tool, run, None, str(e)[-600:])
                        continue
                    self._record(scenario, fx, tool, run, s)
                    log.info(
                        "%s %-18s %-13s run %d: %6.3f s wall %6.3f s cpu %5.0f MB",
                        scenario,
                        fx.name,
                        tool,
                        run,
                        s.wall,
                        s.cpu,
                        s.rss_kb / 1024,
                    )


# ---------------------------------------------------------------------------------------------
# Reporting.


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["scenario"], r["image"], r["tool"]), []).append(r)
    out = []
    for (scenario, image, tool), rows in groups.items():
        ok = [r for r in rows if "error" not in r]
        s: dict[str, Any] = {"scenario": scenario, "image": image, "tool": tool, "runs": len(ok)}
        if ok:
            for k in ("wall", "cpu", "user", "sys", "daemon_cpu", "rss_kb"):
                s[k] = statistics.median(r[k] for r in ok)
            s["wall_min"] = min(r["wall"] for r in ok)
            s["wall_max"] = max(r["wall"] for r in ok)
            s["rss_kb_max"] = max(r["rss_kb"] for r in ok)
            s["walls"] = [r["wall"] for r in ok]
            s["wall_dist"] = dist(s["walls"]).to_json()  # percentiles, CI of the median
            first = next((r for r in ok if "files" in r), None)
            if first:
                s["files"], s["bytes"] = first["files"], first["bytes"]
        errs = [r["error"] for r in rows if "error" in r]
        if errs:
            s["error"] = errs[0].strip().splitlines()[-1][:200] if errs[0].strip() else "failed"
        out.append(s)
    return out


def _ratio_cell(a: dict[str, Any], b: dict[str, Any]) -> str:
    """median(a) / median(b) of the runs' wall times, with its bootstrap interval."""
    if not a.get("walls") or not b.get("walls"):
        return "-"
    return ratio(a["walls"], b["walls"]).cell()


def _md(name: str) -> str:
    return name.replace("|", "\\|")


def _wall_cell(s: dict[str, Any] | None) -> str:
    """``1.00 (0.95-1.10)``: the median wall time and the runs' 10th-90th percentiles."""
    if s is None or "wall_dist" not in s:
        return _cell(s, "wall", "{:.2f}")
    d = s["wall_dist"]
    return f"{d['median']:.2f} ({d['p10']:.2f}-{d['p90']:.2f})"


def _cell(s: dict[str, Any] | None, key: str, fmt: str) -> str:
    if s is None:
        return "-"
    if key not in s:
        return "fail" if "error" in s else "-"
    return fmt.format(s[key])


def markdown(
    summary: list[dict[str, Any]], fixtures: dict[str, Fixture], meta: dict[str, Any]
) -> str:
    by = {(s["scenario"], s["image"], s["tool"]): s for s in summary}
    tools = [t for t in TOOLS if any(s["tool"] == t for s in summary)]
    peers = [t for t in tools if t != "fastdist"]
    images = [
        n for n in fixtures if any(s["image"] == n and s["scenario"] == "cold" for s in summary)
    ]
    lines = [
        f"Measured {meta['date']} on {meta['machine']['cpu']}, {meta['machine']['nproc']} cores, "
        f"{meta['machine']['memory']}, Linux {meta['machine']['kernel']}; fastdist "
        f"{meta['machine']['fastdist_commit']}, {meta['machine']['containerd']}, "
        f"{meta['machine']['skopeo']}, umoci {meta['machine']['umoci']}. "
        f"{meta['runs']} cold runs per tool and image (medians), "
        f"{meta['warm_runs']} for warm/base. Load average at start / end: "
        f"{meta['loadavg_start']} / {meta['machine']['loadavg']} (other work shared the machine "
        "when the load is above ~0.5).",
        "",
        f"Command: `{meta['command']}`",
        "",
        "**Cold pull, median wall time (s) (10th-90th percentile of the runs)** — ratio = "
        "fastdist / peer (< 1: fastdist faster) [95% bootstrap interval] (benches/stats.py)",
        "",
        "| image | compressed → raw MB | "
        + " | ".join(map(_md, tools))
        + " | "
        + " | ".join(f"÷ {_md(p)}" for p in peers)
        + " |",
        "|---|---|" + "---:|" * (len(tools) + len(peers)),
    ]
    for name in images:
        fx = fixtures[name]
        size = f"{sum(x.size for x in fx.layers) / 2**20:.0f} → {fx.uncompressed / 2**20:.0f}"
        row = [name, size]
        row += [_wall_cell(by.get(("cold", name, t))) for t in tools]
        fd = by.get(("cold", name, "fastdist"), {})
        for p in peers:
            ps = by.get(("cold", name, p), {})
            row.append(_ratio_cell(fd, ps))
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "**Cold pull, median CPU time (s, user+sys; ctr includes the containerd daemon and its "
        "unpigz) / peak RSS (MB)**",
        "",
        "| image | " + " | ".join(map(_md, tools)) + " |",
        "|---|" + "---:|" * len(tools),
    ]
    for name in images:
        row = [name]
        for t in tools:
            s = by.get(("cold", name, t))
            if s is None or "cpu" not in s:
                row.append(_cell(s, "cpu", ""))
            else:
                row.append(f"{s['cpu']:.2f} / {s['rss_kb'] / 1024:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    warm = [s for s in summary if s["scenario"] in ("warm", "base")]
    if warm:
        wt = [t for t in tools if any(s["tool"] == t for s in warm)]
        wp = [t for t in wt if t != "fastdist" and "fastdist" in wt]
        lines += [
            "",
            "**Warm (image already present) and base (bottom layer already present), median wall "
            "time (s)**",
            "",
            "| scenario | image | "
            + " | ".join(map(_md, wt))
            + "".join(f" | ÷ {_md(p)}" for p in wp)
            + " |",
            "|---|---|" + "---:|" * (len(wt) + len(wp)),
        ]
        keys = sorted(
            {(s["scenario"], s["image"]) for s in warm}, key=lambda k: (k[0] != "warm", k[1])
        )
        for sc, name in keys:
            row = [sc, name] + [_cell(by.get((sc, name, t)), "wall", "{:.3f}") for t in wt]
            fd = by.get((sc, name, "fastdist"), {})
            row += [_ratio_cell(fd, by.get((sc, name, p), {})) for p in wp]
            lines.append("| " + " | ".join(row) + " |")
    failures = [s for s in summary if "error" in s]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {s['scenario']} {s['image']} {s['tool']}: `{s['error']}`" for s in failures]
    return "\n".join(lines) + "\n"


COLORS = {
    "fastdist": "#d62728",
    "fastdist@base": "#ff9896",
    "ctr": "#1f77b4",
    "skopeo+umoci": "#9467bd",
    "curl|tar": "#7f7f7f",
}


def chart(summary: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing (benches/setup.sh installs it): no chart")
        return False
    cold = [s for s in summary if s["scenario"] == "cold" and "wall" in s]
    images = list(dict.fromkeys(s["image"] for s in cold))
    tools = [t for t in TOOLS if any(s["tool"] == t for s in cold)]
    by = {(s["image"], s["tool"]): s for s in cold}
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(images) + 1.8), sharey=True)
    width = 0.8 / max(1, len(tools))
    for ax, key, label in (
        (axes[0], "wall", "median wall time (s)"),
        (axes[1], "cpu", "median CPU time (s)"),
    ):
        for i, t in enumerate(tools):
            ys = [j + i * width for j in range(len(images))]
            vals = [by[(im, t)][key] if (im, t) in by else 0 for im in images]
            ax.barh(ys, vals, height=width, label=t, color=COLORS.get(t))
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks([j + width * (len(tools) - 1) / 2 for j in range(len(images))])
    axes[0].set_yticklabels(images)
    axes[0].invert_yaxis()
    if tools:
        axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Cold pull from a loopback registry (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def update_readme(table: str, begin: str = README_BEGIN, end: str = README_END) -> None:
    """Replace only one results block of benches/README.md (others own the rest)."""
    readme = HERE / "README.md"
    text = readme.read_text()
    if begin not in text or end not in text:
        log.warning("benches/README.md has no %s markers; not updated", begin)
        return
    a = text.index(begin) + len(begin)
    b = text.index(end)
    readme.write_text(text[:a] + "\n" + table + text[b:])
    log.info("updated %s", readme)


# ---------------------------------------------------------------------------------------------
# The far-link sweep (--link): reporting.


def far_plan(
    prof: linkem.Profile, images: list[str], compressions: list[str], full: bool
) -> tuple[list[str], list[str]]:
    """(images, compressions) pulled through ``prof``. --full: all of them. By default, so the
    sweep fits in ~25 minutes: the 100 MB/s profiles pull usr and many-layers in both
    compressions (and big-files at 20 ms); the 30 MB/s ones usr and many-layers, the 10 MB/s
    ones small-files and many-layers, in gzip only (on a link-bound profile the compressions
    differ in CPU, which the 100 MB/s and loopback runs show). Profiles off the grid pull
    everything."""
    caps = [c for c in sorted(FAR_DEFAULT) if prof.conn_rate and prof.conn_rate <= c * linkem.MB]
    if full or not caps or prof.conn_rate != caps[0] * linkem.MB:
        return images, compressions
    keep = set(FAR_DEFAULT[caps[0]])
    big, big_cap, big_rtt = FAR_BIG
    if caps[0] == big_cap and round(prof.rtt * 1000) == big_rtt:
        keep.add(big)
    comps = compressions
    if caps[0] < 100 and "gzip" in compressions:
        comps = ["gzip"]
    return [i for i in images if i in keep], comps


def floor_seconds(prof: linkem.Profile, fx: Fixture, budget: int) -> float | None:
    """compressed bytes ÷ min(aggregate cap, per-connection cap x connection budget)
    + ROUND_TRIPS x RTT; None on an uncapped link."""
    caps = [r for r in (prof.agg_rate, prof.conn_rate * budget) if r]
    if not caps:
        return None
    return sum(x.size for x in fx.layers) / min(caps) + ROUND_TRIPS * prof.rtt


def far_summary(
    results: list[dict[str, Any]],
    fixtures: dict[str, Fixture],
    profiles: dict[str, linkem.Profile],
    budget: int,
) -> list[dict[str, Any]]:
    """Per (link, image, tool): the runs' distribution, CPU, RSS, requests, and the ratios."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["link"], r["image"], r["tool"]), []).append(r)
    out: list[dict[str, Any]] = []
    for (link, image, tool), rows in groups.items():
        ok = [r for r in rows if "error" not in r]
        s: dict[str, Any] = {"link": link, "image": image, "tool": tool, "runs": len(ok)}
        fl = floor_seconds(profiles[link], fixtures[image], budget)
        s["floor"] = fl
        if ok:
            s["walls"] = [r["wall"] for r in ok]
            s["wall_dist"] = dist(s["walls"]).to_json()
            s["wall"] = s["wall_dist"]["median"]
            for k in ("cpu", "rss_kb", "proxy_cpu"):
                s[k] = statistics.median(r.get(k, 0.0) for r in ok)
            reqs = [r["requests"] for r in ok if "requests" in r]
            if reqs:
                s["requests"] = {
                    k: statistics.median(q[k] for q in reqs) for k in reqs[0] if k != "blobs"
                }
                s["requests"]["blobs"] = reqs[0]["blobs"]
            if fl:
                s["vs_floor"] = ratio(s["walls"], fl).to_json()
        errs = [r["error"] for r in rows if "error" in r]
        if errs:
            s["error"] = errs[0].strip().splitlines()[-1][:200] if errs[0].strip() else "failed"
        out.append(s)
    by = {(s["link"], s["image"], s["tool"]): s for s in out}
    for s in out:
        if s["tool"] != "fastdist" or "walls" not in s:
            continue
        s["vs"] = {}
        for (link, image, tool), p in by.items():
            if (link, image) == (s["link"], s["image"]) and tool != "fastdist" and "walls" in p:
                s["vs"][tool] = ratio(s["walls"], p["walls"]).to_json()
    return out


def _r(d: dict[str, float] | None) -> str:
    if not d:
        return "-"
    if d.get("n", 2) < 2:
        return f"{d['value']:.2f}x (1 run)"
    return f"{d['value']:.2f}x [{d['lo']:.2f}-{d['hi']:.2f}]"


def far_markdown(
    summary: list[dict[str, Any]],
    fixtures: dict[str, Fixture],
    profiles: dict[str, linkem.Profile],
    meta: dict[str, Any],
) -> str:
    by = {(s["link"], s["image"], s["tool"]): s for s in summary}
    tools = [t for t in TOOLS if any(s["tool"] == t for s in summary)]
    peers = [t for t in tools if t != "fastdist"]
    keys = list(dict.fromkeys((s["link"], s["image"]) for s in summary))
    m = meta["machine"]
    lines = [
        f"Measured {meta['date']} on {m['cpu']}, {m['nproc']} cores, {m['memory']}, Linux "
        f"{m['kernel']}; fastdist {m['fastdist_commit']}, {m['containerd']}. "
        f"{meta['runs']} cold runs per tool, image and link (interleaved), "
        f"{meta['duration_s'] / 60:.0f} min in all. fastdist's connection budget: "
        f"{meta['budget']} ({meta['budget_source']}). Load average at start / end: "
        f"{meta['loadavg_start']} / {m['loadavg']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "Links (`benches/linkem.py`; far-C-R = C MB/s per connection, R ms RTT): "
        + "; ".join(profiles[n].describe() for n in dict.fromkeys(k[0] for k in keys))
        + ".",
        "",
        "**Far-link cold pull, median wall time (s) (10th-90th percentile of the runs)**; "
        "floor = compressed bytes ÷ min(aggregate "
        f"cap, per-connection cap x {meta['budget']}) + {ROUND_TRIPS} RTT; ratios = fastdist ÷ "
        "floor / peer, [95% bootstrap interval]",
        "",
        "| link | image | MB | floor | "
        + " | ".join(map(_md, tools))
        + " | ÷ floor | "
        + " | ".join(f"÷ {_md(p)}" for p in peers)
        + " |",
        "|---|---|---:|---:|" + "---:|" * (len(tools) + 1 + len(peers)),
    ]
    for link, image in keys:
        fx = fixtures[image]
        fd = by.get((link, image, "fastdist"), {})
        fl = next((s["floor"] for t in tools if (s := by.get((link, image, t)))), None)
        row = [link, image, f"{sum(x.size for x in fx.layers) / 2**20:.0f}"]
        row.append(f"{fl:.2f}" if fl else "-")
        row += [_wall_cell(by.get((link, image, t))) for t in tools]
        row.append(_r(fd.get("vs_floor")))
        row += [_r(fd.get("vs", {}).get(p)) for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "**Far-link cold pull: median CPU s (user+sys; ctr with its daemon) / peak RSS MB / "
        "blob GETs per blob (ranged GETs) / connections**; linkem = the emulator's own CPU s "
        "during fastdist's pull",
        "",
        "| link | image | blobs | " + " | ".join(map(_md, tools)) + " | linkem |",
        "|---|---|---:|" + "---:|" * (len(tools) + 1),
    ]
    for link, image in keys:
        blobs = next(
            (
                s["requests"]["blobs"]
                for t in tools
                if (s := by.get((link, image, t))) and "requests" in s
            ),
            0,
        )
        row = [link, image, str(blobs)]
        for t in tools:
            s = by.get((link, image, t))
            if s is None or "cpu" not in s:
                row.append(_cell(s, "cpu", ""))
                continue
            q = s.get("requests", {})
            per = q.get("blob_gets", 0) / q["blobs"] if q.get("blobs") else 0.0
            ranged = q.get("ranged_gets", 0)
            row.append(
                f"{s['cpu']:.2f} / {s['rss_kb'] / 1024:.0f} / {per:.1f} ({ranged:.0f})"
                f" / {q.get('connections', 0):.0f}"
            )
        fd = by.get((link, image, "fastdist"), {})
        row.append(f"{fd['proxy_cpu']:.2f}" if "proxy_cpu" in fd else "-")
        lines.append("| " + " | ".join(row) + " |")
    failures = [s for s in summary if "error" in s]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {s['link']} {s['image']} {s['tool']}: `{s['error']}`" for s in failures]
    return "\n".join(lines) + "\n"


def far_chart(summary: list[dict[str, Any]], path: Path) -> bool:
    """One panel per image: each tool's median wall time ÷ the link's floor, per link."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing (benches/setup.sh installs it): no chart")
        return False
    rows = [s for s in summary if "wall" in s and s.get("floor")]
    images = list(dict.fromkeys(s["image"] for s in rows))
    links = list(dict.fromkeys(s["link"] for s in rows))
    tools = [t for t in TOOLS if any(s["tool"] == t for s in rows)]
    if not rows:
        return False
    by = {(s["link"], s["image"], s["tool"]): s for s in rows}
    fig, axes = plt.subplots(
        len(images), 1, figsize=(max(8, 0.9 * len(links) + 2), 2.6 * len(images)), squeeze=False
    )
    width = 0.8 / max(1, len(tools))
    for ax, image in zip(axes[:, 0], images, strict=True):
        for i, t in enumerate(tools):
            xs, ys, err = [], [], [[], []]
            for j, link in enumerate(links):
                s = by.get((link, image, t))
                if s is None:
                    continue
                d = s["wall_dist"]
                xs.append(j + i * width)
                ys.append(d["median"] / s["floor"])
                err[0].append((d["median"] - d["lo"]) / s["floor"])
                err[1].append((d["hi"] - d["median"]) / s["floor"])
            ax.bar(xs, ys, width=width, label=t, color=COLORS.get(t), yerr=err, capsize=2)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(1.3, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel(f"{image}\n÷ floor")
        ax.set_xticks([j + width * (len(tools) - 1) / 2 for j in range(len(links))])
        ax.set_xticklabels(links, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(tools))
    fig.suptitle("Cold pull through the link emulator, median ÷ floor (lower is better; -- 1.3x)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# Profiling (--profile): where fastdist's time goes on one cold pull.


def profile(fx: Fixture, host: str, tmp: Path, out: Path) -> None:
    ref = f"{host}/{fx.repo}:{fx.tag}"
    root = tmp / "profile-root"
    cmd = [sys.executable, "-c", FASTDIST_SCRIPT, "--root", str(root), "pull", "-q", ref]
    if shutil.which("py-spy"):
        raw = out / f"profile-{fx.name}.pyspy.txt"
        subprocess.run(
            [
                "py-spy",
                "record",
                "--native",
                "--subprocesses",
                "-r",
                "200",
                "--format",
                "raw",
                "-o",
                str(raw),
                "--",
                *cmd,
            ],
            check=False,
            capture_output=True,
            env=fastdist_env(),
        )
        shutil.rmtree(root, ignore_errors=True)
        if raw.exists():
            log.info("py-spy (collapsed stacks) → %s\n%s", raw, top_frames(raw))
    if shutil.which("perf"):
        data = tmp / "perf.data"
        subprocess.run(
            ["perf", "record", "-F", "499", "-g", "-o", str(data), "--", *cmd],
            check=False,
            capture_output=True,
            env=fastdist_env(),
        )
        rep = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                str(data),
                "--stdio",
                "--no-children",
                "--sort",
                "comm,dso,sym",
                "--percent-limit",
                "1.5",
                "-g",
                "none",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        (out / f"profile-{fx.name}.perf.txt").write_text(rep.stdout)
        log.info(
            "perf report → %s\n%s",
            out / f"profile-{fx.name}.perf.txt",
            "\n".join(x for x in rep.stdout.splitlines() if x and not x.startswith("#"))[:4000],
        )
        shutil.rmtree(root, ignore_errors=True)


def top_frames(raw: Path, n: int = 25) -> str:
    """Self-time leaders from py-spy's collapsed stacks."""
    leaf: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        total += c
        frame = stack.split(";")[-1]
        leaf[frame] = leaf.get(frame, 0) + c
    top = sorted(leaf.items(), key=lambda kv: -kv[1])[:n]
    return "\n".join(f"{100 * c / max(total, 1):5.1f}%  {f}" for f, c in top)


# ---------------------------------------------------------------------------------------------


def far_report(
    args: argparse.Namespace,
    bench: Bench,
    fxs: list[Fixture],
    links: list[linkem.Profile],
    budget: int,
    budget_source: str,
    command: str,
    t0: float,
    load_start: str,
) -> int:
    fixtures = {f.name: f for f in fxs}
    profiles = {p.name: p for p in links}
    summary = far_summary(bench.results, fixtures, profiles, budget)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        "runs": args.runs,
        "tools": args.tools,
        "scale": args.scale,
        "duration_s": round(time.monotonic() - t0),
        "loadavg_start": load_start,
        "budget": budget,
        "budget_source": budget_source,
        "round_trips": ROUND_TRIPS,
        "links": {p.name: dataclasses.asdict(p) for p in links},
    }
    table = far_markdown(summary, fixtures, profiles, meta)
    (args.out / "far-latest.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "runs": bench.results,
                "fixtures": {f.name: f.to_json() for f in fxs},
            },
            indent=1,
        )
    )
    (args.out / "far-latest.md").write_text(table)
    chart_path = args.chart.with_name("pull-far.png")
    if far_chart(summary, chart_path):
        table += f"\n![far-link cold pulls ÷ floor]({chart_path.name})\n"
    if args.update_readme:
        update_readme(table, FAR_BEGIN, FAR_END)
    sys.stdout.write(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--runs", type=int, help="cold runs per tool and image (default 5; far sweep 3, --full 5)"
    )
    ap.add_argument("--warm-runs", type=int, default=3, help="runs of the warm/base cases")
    ap.add_argument(
        "--images",
        help="comma list of " + ",".join(IMAGES) + " (far: " + ",".join(FAR_IMAGES) + ")",
    )
    ap.add_argument("--compressions", default="gzip,zstd")
    ap.add_argument(
        "--tools",
        help="comma list of "
        + ",".join(t for t in TOOLS if t != "fastdist@base")
        + " (far: "
        + ",".join(FAR_TOOLS)
        + "); --baseline adds fastdist@base",
    )
    ap.add_argument(
        "--link",
        metavar="PROFILE[,...]",
        help="far-link sweep through benches/linkem.py: profile names ("
        + ", ".join(linkem.PROFILES)
        + ", custom:CONN_MB/RTT_MS[/AGG_MB]) or 'far' for the 9 far-C-R profiles; cold pulls only",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="far sweep: every image on every profile, 5 runs (default: a subset, ~25 min)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="PATH",
        help="also run the fastdist of the checkout at PATH (its own .venv) as fastdist@base",
    )
    ap.add_argument("--scenarios", default="cold,warm,base", help="comma list of cold,warm,base")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink fixtures (smoke runs)")
    ap.add_argument("--work", type=Path, default=HERE / "work", help="fixture cache + tmpfs")
    ap.add_argument("--tmpfs-size", default="10g")
    ap.add_argument("--fastdist-snapshotter", default="overlayfs", choices=("overlayfs", "native"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--chart", type=Path, default=HERE / "pull.png")
    ap.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--profile", metavar="IMAGE", help="profile one fastdist pull (py-spy, perf)")
    ap.add_argument("--no-setup", action="store_true", help="skip benches/setup.sh")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(message)s",
        datefmt="%H:%M:%S",
    )
    links: list[linkem.Profile] = []
    if args.link:
        try:
            for spec in args.link.split(","):
                if spec == "far":
                    links += list(linkem.far_profiles().values())
                elif spec:
                    links.append(linkem.parse_profile(spec))
        except ValueError as e:
            ap.error(str(e))
        args.scenarios = "cold"
    far = bool(links)
    if args.runs is None:
        args.runs = 3 if far and not args.full else 5
    args.images = [
        x for x in (args.images or ",".join(FAR_IMAGES if far else IMAGES)).split(",") if x
    ]
    args.compressions = [x for x in args.compressions.split(",") if x]
    default_tools = FAR_TOOLS if far else [t for t in TOOLS if t != "fastdist@base"]
    args.tools = [x for x in (args.tools or ",".join(default_tools)).split(",") if x]
    if args.baseline and "fastdist@base" not in args.tools:
        args.tools.insert(
            args.tools.index("fastdist") + 1 if "fastdist" in args.tools else 0, "fastdist@base"
        )
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        ap.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "fastdist@base" in args.tools and not args.baseline:
        ap.error("fastdist@base needs --baseline PATH")
    if unknown_images := set(args.images) - set(IMAGES):
        ap.error(f"unknown images: {', '.join(sorted(unknown_images))}")
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so daemons stop and tmpfs is unmounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        ap.error("run as root (containerd, umoci and overlay mounts need it)")
    if not args.no_setup:
        subprocess.run([str(HERE / "setup.sh"), sys.executable], check=True)
    if "fastdist" in args.tools and (why := fastdist_ready()):
        log.warning("fastdist not benchmarkable yet (%s): skipping it", why)
        args.tools.remove("fastdist")

    command = "python benches/pull.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with (
        LocalRegistry(storage=args.work / "registry") as reg,
        tmpfs(args.work / "tmp", args.tmpfs_size) as tmp,
    ):
        names = list(args.images)
        if "base" in args.scenarios and "usr" in names:
            names.append("usr-app")
        fixtures = ensure_fixtures(names, args.compressions, args.work, reg.host, args.scale)
        log.info("fixtures ready in %.0f s", time.monotonic() - t0)
        if args.profile:
            for comp in args.compressions:
                profile(fixtures[f"{args.profile}-{comp}"], reg.host, tmp, args.out)
            return 0
        main_fx = [fixtures[f"{n}-{c}"] for n in args.images for c in args.compressions]
        bench = Bench(args, reg.host, tmp)
        if far:
            budget, budget_source = fastdist_budget()
            log.info("fastdist's connection budget: %d (%s)", budget, budget_source)
            for prof in links:
                imgs, comps = far_plan(prof, args.images, args.compressions, args.full)
                fxs = [fx for fx in main_fx if fx.name in {f"{i}-{c}" for i in imgs for c in comps}]
                if not prof.delay and not prof.conn_rate and not prof.agg_rate:
                    bench.set_link(prof.name, reg.host, None)
                    bench.cold(fxs)
                    continue
                with linkem.LinkEmulator(reg.host, prof) as em:
                    log.info("link %s via %s", prof.describe(), em.host)
                    bench.set_link(prof.name, em.host, em)
                    bench.cold(fxs)
            return far_report(
                args, bench, main_fx, links, budget, budget_source, command, t0, load_start
            )
        if "cold" in args.scenarios:
            bench.cold(main_fx)
        jobs: list[tuple[str, Fixture, Fixture]] = []
        if "warm" in args.scenarios:
            jobs += [("warm", fx, fx) for fx in main_fx]
        base_fx = [
            fixtures[f"usr-app-{c}"] for c in args.compressions if f"usr-app-{c}" in fixtures
        ]
        if "base" in args.scenarios:
            jobs += [("base", fx, fixtures[fx.name.replace("usr-app", "usr")]) for fx in base_fx]
        bench.warm(jobs)

    summary = summarise(bench.results)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        "runs": args.runs,
        "warm_runs": args.warm_runs,
        "tools": args.tools,
        "scale": args.scale,
        "duration_s": round(time.monotonic() - t0),
        "loadavg_start": load_start,
    }
    table = markdown(summary, {f.name: f for f in main_fx + base_fx}, meta)
    (args.out / "latest.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "runs": bench.results,
                "fixtures": {f.name: f.to_json() for f in main_fx + base_fx},
            },
            indent=1,
        )
    )
    (args.out / "latest.md").write_text(table)
    if chart(summary, args.chart):
        table += f"\n![cold pull medians]({args.chart.name})\n"
    if args.update_readme:
        update_readme(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
