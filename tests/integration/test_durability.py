"""The order of a pull's syncs and renames, as the kernel sees it (``strace -f``): every blob and
snapshot is made durable before the rename that makes it visible, and every rename is made
durable (an fsync of its directory) before the image that relies on it is recorded. A power
loss cannot be staged here; this is the order that makes one safe (SECURITY.md, promise 3)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pullkit import SNAPSHOTTERS, image, serve, small_layer

from clikit import cli_argv, cli_env
from fakeregistry import FakeRegistry

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

# strace -f -y -ttt lines: "PID TIME syscall(args...) = ret" or split "<unfinished ...>" /
# "<... syscall resumed>..." halves. A call counts from its first half, a sync ends at its last.
_LINE = re.compile(r"^(\d+)\s+([\d.]+)\s+(.*)$")


def _events(trace: str) -> list[tuple[str, str]]:
    """(kind, detail) in order: ``sync-start``/``sync-end`` for syncfs/fsync (detail: a call id
    and the fd's path), ``rename`` (detail: the call), ``sealed`` (info.json written into a
    staging dir; detail: that dir), ``record`` (a write to meta.db's WAL)."""
    out: list[tuple[str, str]] = []
    pending: dict[str, str] = {}
    for n, raw in enumerate(trace.splitlines()):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = m.group(1), m.group(3)
        if rest.startswith("<..."):
            name = pending.pop(pid, "")
            if name:
                out.append(("sync-end", name))
            continue
        call = re.match(r"(\w+)\((.*)", rest)
        if not call:
            continue
        sc, args = call.group(1), call.group(2)
        fd_path = re.match(r"\d+<([^>]*)>", args)
        if sc in ("syncfs", "fsync", "fdatasync"):
            name = f"{n} {fd_path.group(1) if fd_path else ''}"
            out.append(("sync-start", name))
            if "<unfinished" in rest:
                pending[pid] = name
            else:
                out.append(("sync-end", name))
        elif sc in ("rename", "renameat", "renameat2"):
            out.append(("rename", args))
        elif sc in ("pwrite64", "write") and fd_path:
            if fd_path.group(1).endswith("meta.db-wal"):
                out.append(("record", fd_path.group(1)))
            elif fd_path.group(1).endswith("/info.json") and "/staging/" in fd_path.group(1):
                out.append(("sealed", fd_path.group(1).removesuffix("/info.json")))
    return out


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_a_pull_syncs_each_layer_before_its_rename_and_every_rename_before_the_record(
    tmp_path: Path, snapshotter: str
) -> None:
    img = image(*[small_layer(i) for i in range(6)])
    root = tmp_path / "store"
    trace = tmp_path / "trace"
    with FakeRegistry() as reg:
        ref = serve(reg, "durable/order", img)
        argv = ["strace", "-f", "-y", "-ttt", "-o", str(trace)]
        argv += ["-e", "trace=syncfs,fsync,fdatasync,rename,renameat,renameat2,pwrite64,write"]
        out = subprocess.run(
            [*argv, *cli_argv(root, "pull", "--snapshotter", snapshotter, "-q", ref)],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode == 0, out.stderr
    events = _events(trace.read_text())
    syncfs_ended: list[int] = [i for i, (k, d) in enumerate(events) if k == "sync-end"]
    layer_renames = [
        i for i, (k, d) in enumerate(events) if k == "rename" and "/layers/" in d.split(",")[-1]
    ]
    blob_renames = [
        i
        for i, (k, d) in enumerate(events)
        if k == "rename" and re.search(r"/content/ingest/[0-9a-f]{64}/data\"", d)
    ]
    assert len(layer_renames) == 6
    assert len(blob_renames) == 6
    staged: dict[str, int] = {}
    for i in layer_renames:
        src = re.search(r'"([^"]*/staging/[^"/]+)"', events[i][1])
        assert src, events[i]
        staged[src.group(1)] = i
    for i in (*layer_renames, *blob_renames):
        # A sync that ended before the rename (the seal's syncfs, or the blob's own fsync).
        assert any(j < i for j in syncfs_ended), events[i]
    for src, i in staged.items():
        # Its seal: one syncfs (its own, or one shared with layers sealing at the same time)
        # that *began* after its info.json was written and ended before its rename.
        sealed = max(j for j, (k, d) in enumerate(events) if k == "sealed" and d == src)
        began = {d for k, d in events[sealed:i] if k == "sync-start"}
        ended = {d for k, d in events[sealed:i] if k == "sync-end"}
        assert began & ended, f"{src}: no sync between its last write and its rename"
    record = next(i for i, (k, _) in enumerate(events) if k == "record" and i > layer_renames[-1])
    flushed = {
        d.split(" ", 1)[1]
        for k, d in events[layer_renames[-1] : record]
        if k == "sync-end" and (d.endswith("/layers") or d.endswith("/blobs/sha256"))
    }
    assert any(d.endswith(f"snapshots/{snapshotter}/layers") for d in flushed), flushed
    assert any(d.endswith("content/blobs/sha256") for d in flushed), flushed
