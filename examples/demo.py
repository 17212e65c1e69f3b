#!/usr/bin/env python3
"""fastdist end to end on this machine, no internet needed (what `make demo` runs).

1. starts Debian's docker-registry on a free loopback port with a temporary storage directory;
2. builds a small demo image from the host's busybox-static (two gzip layers, one whiteout, an
   image config with Entrypoint/Cmd/Env/WorkingDir) and pushes it there with fastdist's client;
3. `fastdist pull` with the live display, `fastdist images`, and `fastdist run --rm` of it.

The store is a temporary directory unless FASTDIST_ROOT is set. Needs root for the run step
(overlayfs and runc); without root it pulls with the native snapshotter and skips the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fastdist.pusher import Pusher
from fastdist.testing.images import (
    Dir,
    File,
    Symlink,
    Whiteout,
    build_image,
    build_index,
    build_layer,
    push_image,
    tar_entries,
)
from fastdist.testing.registry import LocalRegistry
from fastdist.transport import Transport

APPLETS = ("sh", "echo", "cat", "ls", "id", "env", "uname", "hostname", "pwd", "sleep", "true")

HELLO = """#!/bin/sh
echo "hello from a fastdist container"
echo "  kernel:   $(uname -sr)"
echo "  hostname: $(hostname)"
echo "  user:     $(id)"
echo "  cwd:      $(pwd)"
echo "  greeting: $GREETING"
[ -e /etc/removed-by-layer-2 ] && echo "  whiteout: NOT applied" || echo "  whiteout: applied"
"""


def demo_image() -> object:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        sys.exit("error: /bin/busybox not found\nhint: apt-get install busybox-static")
    base = [
        Dir("bin"),
        File("bin/busybox", busybox.read_bytes(), mode=0o755),
        *(Symlink(f"bin/{a}", "busybox") for a in APPLETS),
        Dir("etc"),
        File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"),
        File("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        File("etc/removed-by-layer-2", "this file is whited out by the next layer\n"),
        Dir("tmp", mode=0o1777),
        Dir("root", mode=0o700),
    ]
    app = [Whiteout("etc/removed-by-layer-2"), Dir("app"), File("app/hello.sh", HELLO, 0o755)]
    image = build_image(
        [build_layer(tar_entries(base)), build_layer(tar_entries(app))],
        cmd=["/app/hello.sh"],
        env=["PATH=/bin", "GREETING=pulled, verified and unpacked by fastdist"],
        working_dir="/app",
    )
    return build_index([image])


def main() -> int:
    fastdist = shutil.which("fastdist") or f"{sys.executable} -m fastdist"
    root_env = os.environ.get("FASTDIST_ROOT")
    tmp = None if root_env else tempfile.mkdtemp(prefix="fastdist-demo-")
    root = root_env or str(Path(tmp or ".") / "store")
    is_root = os.geteuid() == 0
    with LocalRegistry() as registry:
        ref = f"{registry.host}/demo/hello:latest"
        print(f"demo: registry {registry.host} (Debian's docker-registry), store {root}")
        digest = push_image(Pusher(Transport()), ref, demo_image())  # type: ignore[arg-type]
        print(f"demo: pushed {ref} ({digest})\n")
        base = [*fastdist.split(), "--root", root]
        snap = [] if is_root else ["--snapshotter", "native"]
        steps = [
            ["pull", *snap, ref],
            ["images"],
        ]
        if is_root and shutil.which("runc"):
            steps.append(["run", "--rm", ref])
        else:
            print("demo: not root (or no runc): `fastdist run` is skipped\n")
        for step in steps:
            print("$ fastdist " + " ".join(step), flush=True)
            rc = subprocess.run([*base, *step]).returncode
            print(flush=True)
            if rc != 0:
                print(f"demo: `fastdist {step[0]}` failed with exit status {rc}", file=sys.stderr)
                return rc
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print("demo: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
