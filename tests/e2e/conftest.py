"""Shared e2e fixtures: busybox-static images pushed to the session registry, and ``fastdist``,
which runs the real CLI (``python -m fastdist --root <tmp> …``) as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from clikit import CLI_TIMEOUT, cli_argv, cli_env
from fastdist.oci import Digest
from fastdist.testing.images import (
    BuiltImage,
    BuiltLayer,
    Dir,
    Entry,
    File,
    Symlink,
    build_image,
    build_layer,
    push_image,
    tar_entries,
)

BUSYBOX = Path("/bin/busybox")

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
# app's primary group is 1000; it is listed as a member of "audio" and "extra".
GROUP = "root:x:0:\naudio:x:29:app\napp:x:1000:\nextra:x:2000:nobody,app\nnogroup:x:65534:\n"
IMAGE_ENV = ("PATH=/usr/bin:/bin", "GREETING=from-image", "KEEP=image-value")


class Result(NamedTuple):
    """What one ``fastdist`` invocation did."""

    rc: int
    stdout: str
    stderr: str


@dataclass
class _CLI:
    root: Path

    def __call__(
        self, *args: str, timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None
    ) -> Result:
        proc = subprocess.run(
            cli_argv(self.root, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_env(**(env or {})),
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        """Start ``fastdist`` without waiting (stdout/stderr piped, text)."""
        return subprocess.Popen(
            cli_argv(self.root, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            **kw,
        )

    def mounts(self) -> list[str]:
        """Mount points inside the store (there must be none once containers are gone)."""
        return mounts_under(self.root)

    def active_snapshots(self) -> list[str]:
        """Writable container snapshots in the store, as ``<snapshotter>/<key>``."""
        return active_snapshots(self.root)

    def bundles(self) -> list[str]:
        """Container bundle directories in the store."""
        d = self.root / "containers"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def leftovers(self) -> dict[str, list[str]]:
        """Everything a removed container could leave behind, by kind (all lists empty: clean)."""
        runc_state = self.root / "runc"
        return {
            "mounts": self.mounts(),
            "snapshots": self.active_snapshots(),
            "bundles": self.bundles(),
            "runc": sorted(os.listdir(runc_state)) if runc_state.is_dir() else [],
        }


# The name test modules use in annotations (imported under TYPE_CHECKING only: conftest modules
# are not importable by name when several exist).
FastdistCLI = _CLI


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo, field 5)."""
    prefix = str(path)
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                out.append(point)
    return out


def active_snapshots(root: Path) -> list[str]:
    """Names of every container's writable snapshot, across snapshotters."""
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return []
    return sorted(
        f"{d.name}/{a.name}"
        for d in snaps.iterdir()
        if (d / "active").is_dir()
        for a in (d / "active").iterdir()
    )


@pytest.fixture
def fastdist(tmp_path: Path) -> Iterator[_CLI]:
    """The CLI on a fresh store; afterwards every container is force-removed and nothing of the
    store may stay mounted (a leaked mount would fail the next test's cleanup too)."""
    cli = _CLI(tmp_path / "store")
    yield cli
    if not cli.root.exists():
        return
    if (cli.root / "meta.db").exists():
        ps = cli("ps", "-a")
        for line in ps.stdout.splitlines()[1:]:
            cli("rm", "-f", line.split()[0])
    for point in reversed(mounts_under(cli.root)):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if os.geteuid() == 0 and shutil.which("runc"):
        state = cli.root / "runc"
        if state.is_dir():
            for cid in os.listdir(state):
                subprocess.run(
                    ["runc", "--root", str(state), "delete", "--force", cid],
                    capture_output=True,
                    check=False,
                )


# --- images ----------------------------------------------------------------------------------
def busybox_entries() -> list[Entry]:
    """A tiny root filesystem: busybox-static, every applet as a symlink, passwd and group."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        Dir("bin"),
        File("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *(Symlink(f"bin/{a}", "busybox") for a in sorted(set(applets)) if a != "busybox"),
        Dir("etc"),
        File("etc/passwd", PASSWD),
        File("etc/group", GROUP),
        File("etc/hostname", "image\n"),
        Dir("home"),
        Dir("home/app", uid=1000, gid=1000),
        Dir("root", mode=0o700),
        Dir("tmp", mode=0o1777),
        Dir("usr"),
        Dir("usr/bin"),
    ]


@dataclass(frozen=True)
class PushedImage:
    """An image in the session registry: its reference, top-level digest and what it holds."""

    ref: str
    digest: Digest
    image: BuiltImage

    @property
    def size(self) -> int:
        """Bytes of the whole image: manifest, config and compressed layers."""
        return (
            self.image.descriptor.size
            + self.image.config_descriptor.size
            + sum(x.descriptor.size for x in self.image.layers)
        )


@pytest.fixture(scope="session")
def busybox_layer() -> BuiltLayer:
    if not BUSYBOX.exists():
        pytest.skip("needs busybox-static (apt-get install busybox-static)")
    return build_layer(tar_entries(busybox_entries()))


@pytest.fixture(scope="session")
def push(registry: Any, pusher: Any) -> Any:
    """``push(name, image)``: push a built image as ``<registry>/e2e/<name>``."""

    def _push(name: str, image: BuiltImage) -> PushedImage:
        ref = f"{registry.host}/e2e/{name}"
        return PushedImage(ref, push_image(pusher, ref, image), image)

    return _push


@pytest.fixture(scope="session")
def busybox(push: Any, busybox_layer: BuiltLayer) -> PushedImage:
    """busybox-static plus an app layer; Cmd ``sh``, an image Env and a WorkingDir."""
    app = build_layer(tar_entries([Dir("srv"), File("srv/motd", "hello from the app layer\n")]))
    image = build_image([busybox_layer, app], cmd=["sh"], env=IMAGE_ENV, working_dir="/srv")
    pushed: PushedImage = push("busybox:1", image)
    return pushed
