"""Container confinement through the real CLI and runc: the default seccomp profile, its options
(``--security-opt``, ``--cap-add/--cap-drop``, ``--privileged``) and bad input for them.

A static probe (``syscall_probe.c``, built here) makes one syscall per name and prints the errno,
so each test tells the filter's EPERM from the kernel's own answer: the same probe under
``seccomp=unconfined`` must get something else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fastdist.testing.images import BuiltLayer, File, build_image, build_layer, tar_entries

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

pytestmark = [
    pytest.mark.registry,
    pytest.mark.root,
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the syscall probe"),
]

PROBE_SRC = Path(__file__).with_name("syscall_probe.c")
CLEAN = {"mounts": [], "snapshots": [], "bundles": [], "runc": []}
# What the default profile refuses (EPERM from the filter), and what the kernel answers without it.
CLOSED = (
    "unshare-user",
    "keyctl",
    "add_key",
    "mount",
    "io_uring_setup",
    "personality-read-implies-exec",
    "clone-newuser",
    "socket-vsock",
    "socket-vsock-highbits",
    "socket-alg",
    "userfaultfd",
    "bpf",
)
OPEN = ("getpid", "clone-plain", "socket-inet", "personality-query", "chroot")


@pytest.fixture(scope="session")
def probe_image(
    push: Any, busybox_layer: BuiltLayer, tmp_path_factory: pytest.TempPathFactory
) -> PushedImage:
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(PROBE_SRC)], check=True)
    layer = build_layer(tar_entries([File("bin/probe", out.read_bytes(), mode=0o755)]))
    pushed: PushedImage = push("probe:1", build_image([busybox_layer, layer], cmd=["sh"]))
    return pushed


@pytest.fixture
def probe(fastdist: FastdistCLI, probe_image: PushedImage) -> Any:
    """``probe(*run_flags, names=…)`` → {name: result} from one ``run --rm`` of the probe."""
    assert fastdist("pull", "-q", probe_image.ref).rc == 0

    def _probe(*flags: str, names: tuple[str, ...] = CLOSED + OPEN) -> dict[str, str]:
        r = fastdist("run", "--rm", *flags, probe_image.ref, "probe", *names)
        assert r.rc == 0, r.stderr
        got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        assert set(got) == set(names), r.stdout
        return got

    return _probe


def _seccomp_mode(fastdist: FastdistCLI, ref: str, *flags: str) -> str:
    r = fastdist("run", "--rm", *flags, ref, "grep", "^Seccomp:", "/proc/self/status")
    assert r.rc == 0, r.stderr
    return r.stdout.split()[1]


def test_default_profile_refuses_escape_syscalls_with_eperm_and_allows_ordinary_ones(
    fastdist: FastdistCLI, probe: Any, probe_image: PushedImage
) -> None:
    assert _seccomp_mode(fastdist, probe_image.ref) == "2"  # a filter is installed
    confined = probe()
    unconfined = probe("--security-opt", "seccomp=unconfined")
    for name in CLOSED:
        assert confined[name] == "EPERM", name
        # The kernel itself answers otherwise: the EPERM above is the filter's.
        assert unconfined[name] != "EPERM", (name, unconfined[name])
    for name in OPEN:
        assert confined[name] == "ok", name
    # clone3 answers ENOSYS, so libcs fall back to clone (which the filter can inspect).
    assert probe(names=("clone3",)) == {"clone3": "ENOSYS"}
    assert _seccomp_mode(fastdist, probe_image.ref, "--security-opt", "seccomp=unconfined") == "0"


def test_ordinary_work_passes_under_the_default_profile(
    fastdist: FastdistCLI, probe_image: PushedImage
) -> None:
    script = (
        "set -e; mkdir -p /var/lib/x && cd /var/lib/x; echo data > f; cp f g; mv g h; "
        "ln -s h l; chmod 600 h; chown 1000:1000 h; tar cf /tmp/a.tar . ; "
        "mkdir /tmp/y && tar xf /tmp/a.tar -C /tmp/y; gzip /tmp/a.tar; ls /tmp/y; "
        "sh -c 'echo child' & wait; seq 3 | sort -r | head -1; id -u; "
        "(nc -l -p 8080 -s 127.0.0.1 > /tmp/got &) ; sleep 0.2; echo hi | nc 127.0.0.1 8080 || :"
    )
    r = fastdist("run", "--rm", probe_image.ref, "sh", "-c", script)
    assert r.rc == 0, r.stderr
    assert r.stdout.split() == ["f", "h", "l", "child", "3", "0"]


def test_cap_add_sys_admin_opens_exactly_what_the_profile_ties_to_it(probe: Any) -> None:
    got = probe("--cap-add", "SYS_ADMIN")
    # The filter lets these through now; the kernel answers (mount: no such target).
    assert got["mount"] == "ENOENT"
    assert got["unshare-user"] == "ok"
    assert got["clone-newuser"] == "ok"
    # What no capability opens stays closed.
    for name in (
        "keyctl",
        "add_key",
        "io_uring_setup",
        "personality-read-implies-exec",
        "socket-vsock",
        "userfaultfd",
    ):
        assert got[name] == "EPERM", name
    assert probe("--cap-add", "SYS_ADMIN", names=("clone3",))["clone3"] != "ENOSYS"


def test_cap_drop_removes_a_capability_and_the_syscalls_the_profile_ties_to_it(
    probe: Any,
) -> None:
    assert probe("--cap-drop", "SYS_CHROOT", names=("chroot",)) == {"chroot": "EPERM"}
    assert probe("--cap-drop", "ALL", names=("chroot", "getpid")) == {
        "chroot": "EPERM",
        "getpid": "ok",
    }


def test_privileged_has_every_capability_no_filter_and_the_host_devices(
    fastdist: FastdistCLI, probe: Any, probe_image: PushedImage
) -> None:
    got = probe("--privileged")
    for name in ("unshare-user", "keyctl", "io_uring_setup", "personality-read-implies-exec"):
        assert got[name] == "ok", name
    assert got["mount"] == "ENOENT"
    assert _seccomp_mode(fastdist, probe_image.ref, "--privileged") == "0"
    r = fastdist(
        "run",
        "--rm",
        "--privileged",
        probe_image.ref,
        "sh",
        "-c",
        "grep ^CapEff /proc/self/status; ls /dev; mount | grep ' /sys '",
    )
    assert r.rc == 0, r.stderr
    cap_eff = int(r.stdout.split()[1], 16)
    ours = Path("/proc/self/status").read_text().split("CapBnd:")[1].split()[0]
    assert cap_eff == int(ours, 16)  # every capability fastdist has
    assert cap_eff >> 21 & 1  # CAP_SYS_ADMIN
    host_block = [d for d in os.listdir("/dev") if Path("/dev", d).is_block_device()]
    for dev in host_block[:5]:
        assert dev in r.stdout.split()
    assert "(rw," in r.stdout  # /sys is writable for a privileged container


def test_no_new_privileges_is_on_by_default_and_can_be_turned_off(
    fastdist: FastdistCLI, probe_image: PushedImage
) -> None:
    def nnp(*flags: str) -> str:
        r = fastdist(
            "run", "--rm", *flags, probe_image.ref, "grep", "^NoNewPrivs:", "/proc/self/status"
        )
        assert r.rc == 0, r.stderr
        return r.stdout.split()[1]

    assert nnp() == "1"
    assert nnp("--security-opt", "no-new-privileges") == "1"
    assert nnp("--security-opt", "no-new-privileges=false") == "0"


def test_a_profile_file_replaces_the_default(
    fastdist: FastdistCLI, probe: Any, tmp_path: Path
) -> None:
    # docker's form: allow everything but keyctl, which answers EACCES (13).
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    got = probe("--security-opt", f"seccomp={path}", names=("keyctl", "unshare-user", "getpid"))
    assert got == {"keyctl": "EACCES", "unshare-user": "ok", "getpid": "ok"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--cap-add", "NOPE"), "error: unknown capability 'NOPE'"),
        (("--cap-drop", "CAP_BOGUS"), "error: unknown capability 'CAP_BOGUS'"),
        (("--security-opt", "seccomp=/no/such/profile.json"), "error: cannot read seccomp profile"),
        (("--security-opt", "apparmor=x"), "error: invalid --security-opt 'apparmor=x'"),
        (("--security-opt", "seccomp=NOTJSON"), "is not JSON"),
        (("--security-opt", "seccomp=BADSHAPE"), "error: invalid seccomp profile"),
    ],
)
def test_bad_security_options_exit_2_with_a_hint_before_anything_is_created(
    fastdist: FastdistCLI,
    probe_image: PushedImage,
    tmp_path: Path,
    flags: tuple[str, ...],
    message: str,
) -> None:
    (tmp_path / "not.json").write_text("{not json")
    (tmp_path / "shape.json").write_text('{"defaultAction": "SCMP_ACT_NOPE"}')
    flags = tuple(
        f.replace("NOTJSON", str(tmp_path / "not.json")).replace(
            "BADSHAPE", str(tmp_path / "shape.json")
        )
        for f in flags
    )
    r = fastdist("run", "--rm", *flags, probe_image.ref, "true")
    assert r.rc == 2, r.stderr
    assert message in r.stderr
    assert "\nhint: " in r.stderr
    assert "Traceback" not in r.stderr
    assert fastdist.leftovers() == CLEAN
    assert fastdist("images").stdout.count("\n") <= 1  # it was not even pulled
