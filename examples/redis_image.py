#!/usr/bin/env python3
"""Build a container image holding Debian's ``redis-server`` and push it with fastdist's client.

The image is made from this host's installed package (apt-get install redis-server): the
``redis-server`` binary, every shared library ``ldd`` says it needs and the dynamic loader, at the
paths the loader looks for them, plus a minimal /etc. Its config runs
``redis-server --port PORT --bind 127.0.0.1 --save "" --appendonly no`` (Entrypoint
``["redis-server"]``, the rest as Cmd): no persistence, and loopback only, because the demo runs it
with ``--net host``.

    python examples/redis_image.py 127.0.0.1:5000/demo/redis:latest --port 6399

pushes the image to that (loopback, so plain HTTP) registry and prints its digest. Used by
``examples/redis.sh`` and ``tests/e2e/test_redis_demo.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from fastdist.errors import FastdistError
from fastdist.testing.images import (
    BuiltImage,
    Dir,
    Entry,
    File,
    Symlink,
    build_image,
    build_layer,
    tar_entries,
)

REDIS_SERVER = "/usr/bin/redis-server"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def shared_libraries(binary: str) -> list[str]:
    """The absolute paths of every library (and the loader) ``binary`` loads, as ``ldd`` says."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise FastdistError(f"ldd {binary} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    libs = []
    for line in proc.stdout.splitlines():
        if "not found" in line:
            raise FastdistError(f"{binary} needs a library this host lacks: {line.strip()}")
        m = _LDD_LINE.match(line)
        if m:
            libs.append(m.group(1))
    if not libs:
        raise FastdistError(f"ldd {binary} listed no libraries; is it dynamically linked?")
    return libs


def _with_parents(paths: list[str]) -> list[Entry]:
    """Directory entries for every parent of ``paths`` (relative), parents first."""
    dirs: set[str] = set()
    for p in paths:
        parent = os.path.dirname(p)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return [Dir(d) for d in sorted(dirs)]


def redis_entries(binary: str = REDIS_SERVER) -> list[Entry]:
    """The image's files: redis-server as installed (Debian links it to redis-check-rdb, and
    redis picks its mode from argv[0]), its libraries, the loader and a minimal /etc."""
    if not os.path.exists(binary):
        raise FastdistError(f"{binary} not found", hint="apt-get install redis-server")
    files: dict[str, Entry] = {}
    real = os.path.realpath(binary)
    rel_real = real.lstrip("/")
    files[rel_real] = File(rel_real, Path(real).read_bytes(), mode=0o755)
    if real != binary:
        rel = binary.lstrip("/")
        target = os.path.relpath(real, os.path.dirname(binary))
        files[rel] = Symlink(rel, target)
    for lib in shared_libraries(binary):
        rel = lib.lstrip("/")
        # Read through symlinks (libfoo.so.1 -> libfoo.so.1.2.3): the image gets the contents
        # at the name the loader asks for.
        files.setdefault(rel, File(rel, Path(lib).read_bytes(), mode=0o755))
    etc = [
        File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nredis:x:999:999::/data:/bin/false\n"),
        File("etc/group", "root:x:0:\nredis:x:999:\n"),
        File("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
    ]
    extra_dirs = [Dir("data", uid=0, gid=0), Dir("tmp", mode=0o1777), Dir("root", mode=0o700)]
    entries = _with_parents([*files, "etc/passwd"])
    return [*entries, *sorted(files.values(), key=lambda e: e.path), *etc, *extra_dirs]


def redis_image(port: int, binary: str = REDIS_SERVER) -> BuiltImage:
    """A one-layer image running ``redis-server`` on ``port`` without persistence."""
    layer = build_layer(tar_entries(redis_entries(binary)))
    return build_image(
        [layer],
        entrypoint=["redis-server"],
        cmd=["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        env=[f"PATH={PATH}"],
        working_dir="/data",
        labels={"org.opencontainers.image.title": "redis-server from Debian, for fastdist"},
    )


def main(argv: list[str] | None = None) -> int:
    from fastdist.pusher import Pusher
    from fastdist.testing.images import push_image
    from fastdist.transport import Transport

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("ref", help="where to push, e.g. 127.0.0.1:5000/demo/redis:latest")
    p.add_argument("--port", type=int, default=6379, help="the port redis-server listens on")
    p.add_argument("--binary", default=REDIS_SERVER)
    args = p.parse_args(argv)
    try:
        digest = push_image(Pusher(Transport()), args.ref, redis_image(args.port, args.binary))
    except FastdistError as e:
        sys.stderr.write(f"error: {e.message}\n" + (f"hint: {e.hint}\n" if e.hint else ""))
        return type(e).exit_code
    sys.stdout.write(f"{digest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
