"""build_spec and user resolution: docker's rules for image configs, on rootfs trees built here."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from fastdist import oci, rootfs
from fastdist.errors import ContainerNotFoundError, ContainerRunError, InUseError
from fastdist.runtime import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    MASKED_PATHS,
    READONLY_PATHS,
    InvalidRunOptionError,
    Mount,
    NoCommandError,
    PortMapping,
    ResolvedUser,
    RestartPolicy,
    RunOptions,
    Runtime,
    UnknownUserError,
    WorkdirError,
    _LogWriter,
    _PortForwarder,
    _UdpClients,
    build_spec,
    check_ports,
    host_devices,
    parse_cpus,
    parse_log_line,
    parse_log_max_size,
    parse_memory,
    parse_pids_limit,
    parse_publish,
    parse_restart,
    parse_security_opts,
    parse_signal,
    resolve_capabilities,
    resolve_user,
    thermal_throttle_paths,
)
from fastdist.seccomp import DEFAULT_PROFILE, SeccompProfileError

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment line is skipped
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:
app:x:1000:
audio:x:29:app,daemon
video:x:44:app
staff:x:50:
"""


def image(
    *,
    entrypoint: tuple[str, ...] | None = None,
    cmd: tuple[str, ...] | None = ("sh",),
    env: tuple[str, ...] = (),
    user: str = "",
    working_dir: str = "",
    volumes: tuple[str, ...] = (),
) -> oci.ImageConfig:
    return oci.ImageConfig(
        architecture="amd64",
        os="linux",
        diff_ids=(),
        config=oci.ContainerConfig(
            user=user,
            env=env,
            entrypoint=entrypoint,
            cmd=cmd,
            working_dir=working_dir,
            volumes=volumes,
        ),
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD)
    (r / "etc" / "group").write_text(GROUP)
    return r


def spec_for(root: Path, cfg: oci.ImageConfig | None = None, **opts: Any) -> dict[str, Any]:
    return build_spec(cfg or image(), RunOptions(id=opts.pop("id", "c1"), **opts), root)


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["process"]["env"])


def mount_at(spec: dict[str, Any], dst: str) -> dict[str, Any]:
    found = [m for m in spec["mounts"] if m["destination"] == dst]
    assert len(found) == 1, f"{dst}: {found}"
    return found[0]


# --- Entrypoint and Cmd ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entrypoint", "cmd", "opt_entrypoint", "opt_command", "expected"),
    [
        (None, ("sh",), None, None, ["sh"]),
        (("/init",), ("--serve",), None, None, ["/init", "--serve"]),
        (("/init",), ("--serve",), None, ("--debug", "x"), ["/init", "--debug", "x"]),
        (("/init",), None, None, None, ["/init"]),
        (None, ("sh",), None, ("echo", "hi"), ["echo", "hi"]),
        (None, ("sh",), None, (), ["sh"]),
        (("/init",), ("--serve",), "/bin/other", None, ["/bin/other"]),
        (("/init",), ("--serve",), "/bin/other", ("-v",), ["/bin/other", "-v"]),
        (("/init",), ("--serve",), "", ("ls", "/"), ["ls", "/"]),
    ],
)
def test_entrypoint_and_cmd_follow_docker_rules(
    root: Path,
    entrypoint: tuple[str, ...] | None,
    cmd: tuple[str, ...] | None,
    opt_entrypoint: str | None,
    opt_command: tuple[str, ...] | None,
    expected: list[str],
) -> None:
    spec = spec_for(
        root,
        image(entrypoint=entrypoint, cmd=cmd),
        entrypoint=opt_entrypoint,
        command=opt_command,
    )
    assert spec["process"]["args"] == expected


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "opt_entrypoint"),
    [(None, None, None), ((), (), None), (("/init",), ("--serve",), "")],
)
def test_nothing_to_run_is_a_clear_error(
    root: Path,
    entrypoint: tuple[str, ...] | None,
    cmd: tuple[str, ...] | None,
    opt_entrypoint: str | None,
) -> None:
    with pytest.raises(NoCommandError) as exc:
        spec_for(root, image(entrypoint=entrypoint, cmd=cmd), entrypoint=opt_entrypoint)
    assert isinstance(exc.value, ContainerRunError)
    assert exc.value.hint
    assert "command" in exc.value.hint


# --- Env ------------------------------------------------------------------------------------
def test_default_path_hostname_and_home_when_the_image_sets_none(root: Path) -> None:
    env = env_of(spec_for(root, id="web1"))
    assert env == {"PATH": DEFAULT_PATH, "HOSTNAME": "web1", "HOME": "/root"}


def test_image_path_is_kept_and_e_overrides_by_key_in_place(root: Path) -> None:
    cfg = image(env=("PATH=/opt/bin:/bin", "A=image", "B=image"))
    spec = spec_for(root, cfg, env=("B=cli", "C=cli"), env_file=("A=file", "B=file"))
    env = spec["process"]["env"]
    assert env.index("PATH=/opt/bin:/bin") < env.index("A=file") < env.index("B=cli")
    assert env_of(spec)["C"] == "cli"
    assert [e for e in env if e.startswith(("A=", "B="))] == ["A=file", "B=cli"]
    assert env.count("PATH=/opt/bin:/bin") == 1
    assert not any(e == f"PATH={DEFAULT_PATH}" for e in env)


def test_home_comes_from_passwd_and_is_not_overridden_when_set(root: Path) -> None:
    assert env_of(spec_for(root, user="app"))["HOME"] == "/home/app"
    assert env_of(spec_for(root, user="4242"))["HOME"] == "/"
    assert env_of(spec_for(root, user="app", env=("HOME=/x",)))["HOME"] == "/x"


def test_tty_sets_term_and_terminal(root: Path) -> None:
    spec = spec_for(root, tty=True)
    assert spec["process"]["terminal"] is True
    assert env_of(spec)["TERM"] == "xterm"
    assert "TERM" not in env_of(spec_for(root))


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value"])
def test_malformed_env_entry_is_refused(root: Path, bad: str) -> None:
    with pytest.raises(InvalidRunOptionError, match="KEY=VALUE"):
        spec_for(root, env=(bad,))


# --- User -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ResolvedUser(0, 0, (), "/root")),
        ("root", ResolvedUser(0, 0, (), "/root")),
        ("app", ResolvedUser(1000, 1000, (29, 44), "/home/app")),
        ("1000", ResolvedUser(1000, 1000, (29, 44), "/home/app")),
        ("daemon", ResolvedUser(1, 1, (29,), "/usr/sbin")),
        ("4242", ResolvedUser(4242, 0, (), None)),
        ("app:staff", ResolvedUser(1000, 50, (), "/home/app")),
        ("app:50", ResolvedUser(1000, 50, (), "/home/app")),
        ("1000:777", ResolvedUser(1000, 777, (), "/home/app")),
        ("4242:4343", ResolvedUser(4242, 4343, (), None)),
        ("4242:video", ResolvedUser(4242, 44, (), None)),
    ],
)
def test_user_forms_resolve_from_the_image_files(
    root: Path, user: str, expected: ResolvedUser
) -> None:
    assert resolve_user(root, user) == expected


def test_user_lands_in_the_spec_with_supplementary_groups(root: Path) -> None:
    spec = spec_for(root, image(user="app"))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [29, 44]}
    spec = spec_for(root, image(user="app"), user="0:0")
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


def test_numeric_user_works_without_account_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_user(empty, "123:456") == ResolvedUser(123, 456, (), None)
    assert resolve_user(empty, "") == ResolvedUser(0, 0, (), None)


@pytest.mark.parametrize(("user", "what"), [("nobody", "user"), ("app:wheel", "group")])
def test_unknown_user_or_group_is_a_clear_error(root: Path, user: str, what: str) -> None:
    with pytest.raises(UnknownUserError, match=f"unknown {what}") as exc:
        resolve_user(root, user)
    assert exc.value.hint


def test_out_of_range_uid_is_refused(root: Path) -> None:
    with pytest.raises(InvalidRunOptionError, match="at most"):
        resolve_user(root, str(1 << 32))


def test_absolute_passwd_symlink_resolves_inside_the_rootfs(tmp_path: Path) -> None:
    # A hostile image points /etc/passwd at an absolute path; the image's own file must be read.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "secret" / "pw").write_text("img:x:7:8:from image:/img:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/../../../secret/pw")
    (root / "etc" / "group").symlink_to("/etc/group-host-does-not-matter")
    assert resolve_user(root, "img") == ResolvedUser(7, 8, (), "/img")


def test_passwd_symlink_to_host_file_never_reads_the_host(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/shadow")  # absent inside the image
    with pytest.raises(UnknownUserError, match="unknown user 'daemon'"):
        resolve_user(root, "daemon")
    assert resolve_user(root, "") == ResolvedUser(0, 0, (), None)


def test_passwd_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")  # opening it would block; it must not be opened
    with pytest.raises(UnknownUserError, match="cannot read /etc/passwd"):
        resolve_user(root, "app")


def test_oversized_passwd_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(UnknownUserError, match="larger than"):
        resolve_user(root, "app")


# --- WorkingDir -----------------------------------------------------------------------------
def test_workdir_defaults_to_root_and_missing_dirs_are_created(root: Path) -> None:
    assert spec_for(root)["process"]["cwd"] == "/"
    assert spec_for(root, image(working_dir="/srv/app"))["process"]["cwd"] == "/srv/app"
    assert (root / "srv" / "app").is_dir()
    assert spec_for(root, workdir="/opt/x")["process"]["cwd"] == "/opt/x"


def test_workdir_through_escaping_symlink_is_created_inside_the_root(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "tmp" / "x"
    (root / "data").symlink_to("/../../tmp/x")
    cwd = spec_for(root, workdir="/data/sub")["process"]["cwd"]
    assert cwd == "/tmp/x/sub"
    assert (root / "tmp" / "x" / "sub").is_dir()
    assert not outside.exists()


def test_workdir_with_dotdot_stays_inside_the_root(root: Path) -> None:
    assert spec_for(root, workdir="/../../../w")["process"]["cwd"] == "/w"
    assert (root / "w").is_dir()


@pytest.mark.parametrize(
    ("workdir", "message"),
    [
        ("relative/dir", "absolute"),
        ("/etc/passwd", "Not a directory|not a directory"),
        ("/proc/self", "kernel filesystem"),
        ("/sys", "kernel filesystem"),
    ],
)
def test_unusable_workdir_is_a_clear_error(root: Path, workdir: str, message: str) -> None:
    with pytest.raises(WorkdirError, match=message):
        spec_for(root, workdir=workdir)


def test_workdir_symlink_to_proc_is_refused(root: Path) -> None:
    (root / "w").symlink_to("/proc/1/cwd")
    with pytest.raises(WorkdirError, match="kernel filesystem"):
        spec_for(root, workdir="/w")


def test_symlink_loop_in_workdir_is_an_error(root: Path) -> None:
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(WorkdirError):
        spec_for(root, workdir="/a")


# --- mounts, namespaces, security -----------------------------------------------------------
def test_default_mounts_match_docker(root: Path) -> None:
    spec = spec_for(root)
    dsts = [m["destination"] for m in spec["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"):
        assert d in dsts
    pts = mount_at(spec, "/dev/pts")["options"]
    assert {"newinstance", "ptmxmode=0666", "gid=5"} <= set(pts)
    assert "ro" in mount_at(spec, "/sys")["options"]
    assert "ro" in mount_at(spec, "/sys/fs/cgroup")["options"]


def test_net_none_gets_its_own_network_namespace(root: Path) -> None:
    spec = spec_for(root)
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert sorted(types) == ["ipc", "mount", "network", "pid", "uts"]
    assert "/etc/resolv.conf" not in [m["destination"] for m in spec["mounts"]]
    assert spec["hostname"] == "c1"


def test_net_host_shares_the_network_and_binds_resolv_conf_and_hosts(root: Path) -> None:
    spec = spec_for(root, net="host", hostname="h")
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert sorted(types) == ["ipc", "mount", "pid", "uts"]
    for f in ("/etc/resolv.conf", "/etc/hosts"):
        if os.path.isfile(f):
            m = mount_at(spec, f)
            assert m["source"] == f
            assert "ro" in m["options"]
            assert m["type"] == "bind"
    assert spec["hostname"] == "h"


def test_unknown_net_mode_is_refused(root: Path) -> None:
    with pytest.raises(InvalidRunOptionError, match="network mode"):
        spec_for(root, net="bridge")


def test_state_dir_adds_hostname_and_hosts_files(root: Path, tmp_path: Path) -> None:
    state = tmp_path / "bundle"
    state.mkdir()
    spec = build_spec(image(), RunOptions(id="c1"), root, state_dir=state)
    assert mount_at(spec, "/etc/hosts")["source"] == str(state / "hosts")
    assert mount_at(spec, "/etc/hostname")["source"] == str(state / "hostname")


def test_read_only_root_and_default_security(root: Path) -> None:
    spec = spec_for(root, read_only=True)
    assert spec["root"] == {"path": str(root), "readonly": True}
    assert spec_for(root)["root"]["readonly"] is False
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES) == caps["effective"] == caps["permitted"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert "inheritable" not in caps
    assert len(DEFAULT_CAPABILITIES) == 14
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    masked = spec["linux"]["maskedPaths"]
    assert masked[: len(MASKED_PATHS)] == list(MASKED_PATHS)
    assert masked[len(MASKED_PATHS) :] == thermal_throttle_paths()
    assert "/proc/kcore" in MASKED_PATHS
    assert "/sys/firmware" in MASKED_PATHS
    assert spec["linux"]["readonlyPaths"] == list(READONLY_PATHS)
    assert "/proc/sysrq-trigger" in READONLY_PATHS
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_user_mounts_are_binds_ordered_parent_first_and_replace_defaults(
    root: Path, tmp_path: Path
) -> None:
    src = tmp_path / "host"
    src.mkdir()
    spec = spec_for(
        root,
        mounts=(
            Mount(str(src), "/data/sub", readonly=True),
            Mount(str(src), "/data/"),
            Mount(str(src), "/dev/shm"),
        ),
    )
    dsts = [m["destination"] for m in spec["mounts"]]
    assert dsts.index("/data") < dsts.index("/data/sub")
    assert "ro" in mount_at(spec, "/data/sub")["options"]
    assert "ro" not in mount_at(spec, "/data")["options"]
    shm = mount_at(spec, "/dev/shm")
    assert shm["type"] == "bind"
    assert shm["source"] == str(src)


@pytest.mark.parametrize(
    ("src", "dst"), [("relative", "/x"), ("/nonexistent/src", "/x"), ("/", "relative"), ("/", "/")]
)
def test_bad_mounts_are_refused(root: Path, src: str, dst: str) -> None:
    with pytest.raises(InvalidRunOptionError):
        spec_for(root, mounts=(Mount(src, dst),))


def test_volumes_become_tmpfs_scratch_mounts_owned_like_the_image_dir(root: Path) -> None:
    (root / "data").mkdir(mode=0o750)
    os.chown(root / "data", 1000, 1000) if os.geteuid() == 0 else None
    spec = spec_for(root, image(volumes=("/data", "/cache")))
    data = mount_at(spec, "/data")
    assert data["type"] == "tmpfs"
    st = os.stat(root / "data")
    assert f"mode={st.st_mode & 0o7777:o}" in data["options"]
    assert f"uid={st.st_uid}" in data["options"]
    assert "mode=755" in mount_at(spec, "/cache")["options"]


def test_volumes_with_state_dir_are_fresh_directories_in_the_bundle(
    root: Path, tmp_path: Path
) -> None:
    state = tmp_path / "bundle"
    state.mkdir()
    (root / "data").mkdir(mode=0o700)
    (root / "data" / "image-file").write_text("x")
    spec = build_spec(image(volumes=("/data",)), RunOptions(id="c1"), root, state_dir=state)
    m = mount_at(spec, "/data")
    assert m["type"] == "bind"
    src = Path(m["source"])
    assert src.parent == state / "volumes"
    assert src.is_dir()
    assert list(src.iterdir()) == []
    assert os.stat(src).st_mode & 0o7777 == 0o700


def test_user_mount_wins_over_a_volume_at_the_same_place(root: Path, tmp_path: Path) -> None:
    spec = spec_for(root, image(volumes=("/data",)), mounts=(Mount(str(tmp_path), "/data"),))
    assert mount_at(spec, "/data")["source"] == str(tmp_path)


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "..", "x" * 129, "a b"])
def test_invalid_container_id_is_refused(root: Path, bad: str) -> None:
    with pytest.raises(InvalidRunOptionError, match="container id"):
        spec_for(root, id=bad)


# --- rootfs helpers -------------------------------------------------------------------------
def test_read_file_follows_relative_and_absolute_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("inside")
    (root / "rel").symlink_to("a/b/../b/f")
    (root / "abs").symlink_to("/a/./b/f")
    (root / "up").symlink_to("../../../../a/b/f")
    for name in ("rel", "abs", "up"):
        assert rootfs.read_file(root, name, 100) == b"inside"
    assert rootfs.read_file(root, "/missing", 100) is None
    assert rootfs.read_file(root, "/a/b/f/not-a-dir", 100) is None


def test_resolve_dir_reports_missing_without_creating(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(FileNotFoundError):
        rootfs.resolve_dir(root, "/nope")
    assert not (root / "nope").exists()


# --- Runtime preconditions ------------------------------------------------------------------
def test_missing_runc_is_a_clear_error_with_an_install_hint(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "store", runc="fastdist-no-such-runc")
    rt.prepare("c1")
    with pytest.raises(ContainerRunError, match="runc not found") as exc:
        rt.state("c1")
    assert exc.value.hint is not None
    assert "apt-get install runc" in exc.value.hint


def test_not_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(tmp_path / "store", runc=sys.executable)  # any existing binary
    rt.prepare("c1")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ContainerRunError, match="root") as exc:
        rt.kill("c1")
    assert exc.value.hint is not None
    assert "sudo" in exc.value.hint


def test_prepare_makes_private_bundle_and_refuses_a_taken_id(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "store")
    bundle = rt.prepare("web")
    assert bundle == rt.containers_dir / "web"
    assert rt.rootfs_dir("web").is_dir()
    assert os.stat(bundle).st_mode & 0o777 == 0o700
    assert os.stat(rt.root).st_mode & 0o777 == 0o700
    with pytest.raises(InUseError, match="already in use"):
        rt.prepare("web")
    with pytest.raises(InvalidRunOptionError):
        rt.prepare("../escape")
    assert rt.ids() == ["web"]


def test_unknown_container_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ContainerNotFoundError):
        Runtime(tmp_path / "store").state("nope")


# --- confinement: seccomp, capabilities, privileged -------------------------------------------
def test_the_default_seccomp_profile_is_in_every_spec(root: Path) -> None:
    sec = spec_for(root)["linux"]["seccomp"]
    assert sec["defaultAction"] == "SCMP_ACT_ERRNO"
    assert sec["defaultErrnoRet"] == 1
    assert any("read" in r["names"] for r in sec["syscalls"])
    assert "seccomp" not in spec_for(root, seccomp_profile=None)["linux"]


def test_seccomp_rules_follow_the_containers_capabilities(root: Path) -> None:
    def allowed(spec: dict[str, Any]) -> set[str]:
        sec = spec["linux"]["seccomp"]
        return {
            n
            for r in sec["syscalls"]
            if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
            for n in r["names"]
        }

    assert "mount" not in allowed(spec_for(root))
    assert "mount" in allowed(spec_for(root, cap_add=("SYS_ADMIN",)))
    assert "chroot" in allowed(spec_for(root))
    assert "chroot" not in allowed(spec_for(root, cap_drop=("sys_chroot",)))


def test_cap_add_and_cap_drop_follow_docker_rules() -> None:
    assert resolve_capabilities() == list(DEFAULT_CAPABILITIES)
    added = resolve_capabilities(["NET_ADMIN", "cap_sys_ptrace"], ["CHOWN", "MKNOD"])
    assert added[-2:] == ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
    assert "CAP_CHOWN" not in added
    assert "CAP_MKNOD" not in added
    assert resolve_capabilities(["KILL"], ["ALL"]) == ["CAP_KILL"]
    assert resolve_capabilities(["CHOWN"], ["CHOWN"]).count("CAP_CHOWN") == 1  # add wins
    every = resolve_capabilities(["ALL"])
    assert "CAP_SYS_ADMIN" in every
    assert resolve_capabilities(privileged=True) == every
    status = Path("/proc/self/status").read_text()
    bounding = int(next(x for x in status.splitlines() if x.startswith("CapBnd:")).split()[1], 16)
    assert len(every) == bin(bounding).count("1")


@pytest.mark.parametrize("bad", ["NOPE", "CAP_", "SYS ADMIN", ""])
def test_unknown_capabilities_are_usage_errors(bad: str) -> None:
    with pytest.raises(InvalidRunOptionError, match="unknown capability") as e:
        resolve_capabilities([bad])
    assert e.value.hint
    assert InvalidRunOptionError.exit_code == 2
    with pytest.raises(InvalidRunOptionError, match="unknown capability"):
        resolve_capabilities((), [bad])


def test_privileged_spec_has_every_capability_devices_and_no_filter_or_masks(root: Path) -> None:
    spec = spec_for(root, privileged=True)
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert linux["maskedPaths"] == []
    assert linux["readonlyPaths"] == []
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert linux["devices"] == host_devices()
    assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]
    sysfs = mount_at(spec, "/sys")
    assert "ro" not in sysfs["options"]


def test_host_devices_lists_device_nodes_and_skips_ptys(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    (dev / "sub").mkdir()
    os.mknod(dev / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(dev / "null", 0o666)  # past the umask
    os.mknod(dev / "sub" / "blk", 0o660 | 0o060000, os.makedev(7, 0))
    os.mknod(dev / "pts" / "0", 0o620 | 0o020000, os.makedev(136, 0))
    (dev / "plain").write_text("x")
    (dev / "link").symlink_to("null")
    got = host_devices(dev)
    assert [(d["path"], d["type"], d["major"], d["minor"]) for d in got] == [
        ("/dev/null", "c", 1, 3),
        ("/dev/sub/blk", "b", 7, 0),
    ]
    assert got[0]["fileMode"] == 0o666


def test_thermal_throttle_paths_are_the_hosts_per_cpu_ones(tmp_path: Path) -> None:
    cpus = tmp_path / "devices" / "system" / "cpu"
    for name in ("cpu0", "cpu1", "cpu10", "cpu2"):
        (cpus / name).mkdir(parents=True)
    for name in ("cpu0", "cpu10", "cpu2"):
        (cpus / name / "thermal_throttle").mkdir()
    (cpus / "cpufreq").mkdir()
    assert thermal_throttle_paths(tmp_path) == [
        f"/sys/devices/system/cpu/cpu{n}/thermal_throttle" for n in (0, 2, 10)
    ]
    assert thermal_throttle_paths(tmp_path / "missing") == []


def test_security_opts_parse_docker_spellings(tmp_path: Path) -> None:
    assert parse_security_opts([]).seccomp_profile is DEFAULT_PROFILE
    assert parse_security_opts([]).no_new_privileges is True
    assert parse_security_opts(["seccomp=unconfined"]).seccomp_profile is None
    assert parse_security_opts(["seccomp:unconfined"]).seccomp_profile is None
    assert parse_security_opts(["no-new-privileges=false"]).no_new_privileges is False
    assert parse_security_opts(["no-new-privileges"]).no_new_privileges is True
    (tmp_path / "p.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    custom = parse_security_opts([f"seccomp={tmp_path / 'p.json'}"]).seccomp_profile
    assert custom is not None
    assert custom.default_action == "SCMP_ACT_ALLOW"
    for bad in ("apparmor=unconfined", "seccomp=", "no-new-privileges=maybe", "label:disable"):
        with pytest.raises(InvalidRunOptionError, match="invalid --security-opt"):
            parse_security_opts([bad])
    (tmp_path / "bad.json").write_text("[")
    with pytest.raises(SeccompProfileError, match="not JSON"):
        parse_security_opts([f"seccomp={tmp_path / 'bad.json'}"])


def test_no_new_privileges_follows_the_option(root: Path) -> None:
    assert spec_for(root)["process"]["noNewPrivileges"] is True
    assert spec_for(root, no_new_privileges=False)["process"]["noNewPrivileges"] is False


# --- resources ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512m", 512 << 20),
        ("1g", 1 << 30),
        ("1.5G", 3 << 29),
        ("8192k", 8 << 20),
        ("64mb", 64 << 20),
        (str(7 << 20), 7 << 20),
        (7 << 20, 7 << 20),
    ],
)
def test_memory_sizes_follow_docker_units(text: str | int, value: int) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("bad", ["lots", "", "-1m", "5m", "1x", "m", "1e9"])
def test_bad_memory_sizes_are_usage_errors(bad: str) -> None:
    with pytest.raises(InvalidRunOptionError, match="invalid --memory") as e:
        parse_memory(bad)
    assert e.value.hint


def test_cpus_and_pids_limit_are_checked() -> None:
    assert parse_cpus("1.5") == 1.5
    assert parse_pids_limit("100") == 100
    assert parse_pids_limit("-1") == -1
    for bad in ("none", "0", "-2", "nan", "inf"):
        with pytest.raises(InvalidRunOptionError, match="invalid --cpus"):
            parse_cpus(bad)
    for bad in ("many", "-5", "1.5"):
        with pytest.raises(InvalidRunOptionError, match="invalid --pids-limit"):
            parse_pids_limit(bad)


def test_limits_become_cgroup_resources(root: Path) -> None:
    res = spec_for(root, memory=64 << 20, cpus=0.5, pids_limit=20)["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": 64 << 20}  # no swap beyond the limit
    assert res["cpu"] == {"quota": 50_000, "period": 100_000}
    assert res["pids"] == {"limit": 20}
    plain = spec_for(root, pids_limit=-1)["linux"]["resources"]
    assert set(plain) == {"devices"}


# --- the detached log ---------------------------------------------------------------------
def test_log_records_keep_streams_lines_and_bytes(tmp_path: Path) -> None:
    log = _LogWriter(tmp_path / "log")
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    readers = [log.follow(r1, "stdout"), log.follow(r2, "stderr")]
    os.write(w1, b"one\ntwo")
    os.write(w1, b" halves\n\xff\xfebinary\n" + b"x" * 40000)
    os.close(w1)
    os.write(w2, b"err\n")
    os.close(w2)
    for t in readers:
        t.join()
    log.close()
    entries = [parse_log_line(line) for line in (tmp_path / "log").read_bytes().splitlines()]
    out = [e.data for e in entries if e.stream == "stdout"]
    assert out[:3] == [b"one\n", b"two halves\n", b"\xff\xfebinary\n"]
    assert [len(d) for d in out[3:]] == [16384, 16384, 40000 - 32768]  # long lines in pieces
    assert [e.data for e in entries if e.stream == "stderr"] == [b"err\n"]
    assert all(e.time > 0 for e in entries)


def test_the_log_rotates_at_its_cap_and_reads_back_whole_across_both_files(
    tmp_path: Path,
) -> None:
    rt = Runtime(tmp_path / "store")
    b = rt.prepare("chatty")
    log = _LogWriter(b / "log", max_bytes=4096)
    lines = [f"line {i:05d}\n".encode() for i in range(2000)]
    for line in lines:
        log.write("stdout" if len(line) % 2 else "stderr", line)
    log.close()
    sizes = [(b / name).stat().st_size for name in ("log", "log.1")]
    assert all(0 < size <= 4096 for size in sizes), sizes  # each file within the cap
    assert sum(sizes) > 4096  # both kept: the newest output in log, the one before in log.1
    got = [e.data for e in rt.log_entries("chatty")]
    assert got == lines[-len(got) :]  # a contiguous suffix, ending with the last line written
    held = sum((b / name).read_bytes().count(b"\n") for name in ("log", "log.1"))
    assert len(got) == held  # every record both files hold, read once
    assert [e.data for e in rt.log_entries("chatty", tail=3)] == lines[-3:]
    tail_all = [e.data for e in rt.log_entries("chatty", tail=len(got) + 5)]
    assert tail_all == got  # tail reaches into log.1
    # a restarted container's new writer appends and keeps counting from the file's size
    again = _LogWriter(b / "log", max_bytes=4096)
    again.write("stdout", b"after restart\n")
    again.close()
    assert (b / "log").stat().st_size <= 4096
    assert [e.data for e in rt.log_entries("chatty", tail=1)] == [b"after restart\n"]


def test_logs_follow_a_rotation_to_the_new_file_without_losing_lines(tmp_path: Path) -> None:
    import fcntl

    rt = Runtime(tmp_path / "store")
    b = rt.prepare("chatty")
    log = _LogWriter(b / "log", max_bytes=4096)
    lock = os.open(b / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a live supervisor holds it: follow goes on at EOF
    lines = [f"line {i:05d}\n".encode() for i in range(90)]
    try:
        for line in lines[:10]:
            log.write("stdout", line)
        following = rt.log_entries("chatty", follow=True)
        assert [next(following).data for _ in range(10)] == lines[:10]
        for line in lines[10:]:  # ~65 records fit in 4 KiB: exactly one rotation
            log.write("stdout", line)
        assert (b / "log.1").exists()
        assert [next(following).data for _ in range(80)] == lines[10:]
    finally:
        log.close()
        fcntl.flock(lock, fcntl.LOCK_UN)  # the supervisor is gone: follow ends
        os.close(lock)
    assert list(following) == []


@pytest.mark.parametrize(("text", "size"), [("10m", 10 << 20), ("1k", 1024), (4096, 4096)])
def test_log_max_size_takes_docker_sizes(text: str | int, size: int) -> None:
    assert parse_log_max_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "10x", "100", "0", "-1m", 5, ""])
def test_bad_log_max_size_is_a_usage_error(bad: str | int) -> None:
    with pytest.raises(InvalidRunOptionError, match="invalid --log-max-size") as e:
        parse_log_max_size(bad)
    assert e.value.hint


def test_a_raw_log_line_reads_as_stdout() -> None:
    assert parse_log_line(b"plain text") == parse_log_line(b"plain text")
    entry = parse_log_line(b"plain text")
    assert (entry.stream, entry.data) == ("stdout", b"plain text")
    assert parse_log_line(b'{"s": "other"}').stream == "stdout"


# --- publish, restart, signals ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "mapping"),
    [
        ("8080:80", PortMapping("0.0.0.0", 8080, 80)),
        ("127.0.0.1:6379:6379/tcp", PortMapping("127.0.0.1", 6379, 6379)),
        ("[::1]:8443:443", PortMapping("::1", 8443, 443)),
        ("5353:53/udp", PortMapping("0.0.0.0", 5353, 53, "udp")),
        ("127.0.0.1:5353:53/UDP", PortMapping("127.0.0.1", 5353, 53, "udp")),
        ("[::1]:5353:53/udp", PortMapping("::1", 5353, 53, "udp")),
    ],
)
def test_publish_follows_docker_syntax(text: str, mapping: PortMapping) -> None:
    assert parse_publish(text) == mapping


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("99999:80", "port 99999 is not in 1-65535"),
        ("99999:80/udp", "port 99999 is not in 1-65535"),
        ("0:80", "port 0 is not in 1-65535"),
        ("80", "expected [IP:]HOST:CONTAINER"),
        ("a:b", "expected [IP:]HOST:CONTAINER"),
        ("1.2.3:80:80", "is not an IP address"),
        ("8080:80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("8080:80/", "protocol '' is not tcp or udp"),
        ("8080:80/udp/tcp", "protocol 'udp/tcp' is not tcp or udp"),
        ("", "expected [IP:]HOST:CONTAINER"),
    ],
)
def test_bad_publish_specs_are_usage_errors(bad: str, why: str) -> None:
    with pytest.raises(InvalidRunOptionError, match="invalid --publish") as e:
        parse_publish(bad)
    assert why in e.value.message
    assert e.value.hint


def test_published_ports_print_as_docker_ps_does() -> None:
    assert str(PortMapping("127.0.0.1", 8080, 80)) == "127.0.0.1:8080->80/tcp"
    assert str(PortMapping("::1", 5353, 53, "udp")) == "[::1]:5353->53/udp"


def test_check_ports_names_a_udp_port_in_use_and_keeps_tcp_and_udp_apart() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ContainerRunError, match=re.escape(f"port 127.0.0.1:{port}/udp: ")) as e:
            check_ports([PortMapping("127.0.0.1", port, 53, "udp")])
        assert e.value.hint
    with pytest.raises(
        InvalidRunOptionError, match=re.escape("127.0.0.1:1/udp is published twice")
    ):
        check_ports(
            [PortMapping("127.0.0.1", 1, 53, "udp"), PortMapping("127.0.0.1", 1, 54, "udp")]
        )
    # the same number over tcp and udp are two ports (docker publishes 53/tcp and 53/udp apart)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
    check_ports(
        [PortMapping("127.0.0.1", port, 53, "tcp"), PortMapping("127.0.0.1", port, 53, "udp")]
    )


def test_udp_clients_evict_the_least_recently_used_past_the_bound_and_expire_idle_ones() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        clients = _UdpClients(idle=90.0, max_clients=2)
        assert clients.next_expiry(0.0) is None
        assert clients.add(("10.0.0.1", 1), socks[0], 0.0) is None
        assert clients.add(("10.0.0.2", 2), socks[1], 1.0) is None
        assert clients.get(("10.0.0.1", 1), 2.0) is socks[0]  # now the most recently used
        assert clients.add(("10.0.0.3", 3), socks[2], 3.0) is socks[1]  # .2 was the oldest
        assert clients.get(("10.0.0.2", 2), 3.0) is None
        assert len(clients) == 2
        assert clients.touch(socks[2], 50.0) == ("10.0.0.3", 3)  # a reply keeps it alive
        assert clients.touch(socks[1], 50.0) is None  # an evicted socket maps to nobody
        assert clients.next_expiry(60.0) == pytest.approx(32.0)  # .1, last used at 2.0
        assert clients.expire(91.0) == []  # 89 s idle: kept
        assert clients.expire(92.0) == [socks[0]]
        assert clients.expire(139.0) == []
        assert clients.expire(140.0) == [socks[2]]
        assert len(clients) == 0
        assert clients.sockets() == []
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs CAP_SYS_ADMIN")
def test_udp_forwarder_relays_each_client_through_its_own_bounded_mapping() -> None:
    # The forwarder enters this process's own network namespace (setns needs root even so),
    # where a udp "container" server answers each datagram with the port it came from.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(30)
        mapping = PortMapping("127.0.0.1", 0, server.getsockname()[1], "udp")
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host.bind(("127.0.0.1", 0))
        host_port = host.getsockname()[1]
        forwarder = _PortForwarder([(mapping, host)], udp_max_clients=2)
        forwarder.enter(os.getpid())
        forwarder.start()
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]

        def round_trip(c: socket.socket) -> int:
            """The container-side port ``c``'s datagram came from; checks the reply."""
            c.sendto(b"ping", ("127.0.0.1", host_port))
            data, peer = server.recvfrom(100)
            assert data == b"ping"
            server.sendto(str(peer[1]).encode(), peer)
            assert c.recv(100) == str(peer[1]).encode()  # the reply found its client
            return int(peer[1])

        try:
            for c in clients:
                c.settimeout(30)
            first = [round_trip(c) for c in clients[:2]]
            assert first[0] != first[1]  # one container-side socket per client
            assert round_trip(clients[0]) == first[0]  # kept while in use; now .1 is newest
            third = round_trip(clients[2])  # past the bound: client 1, least recently used, goes
            assert third not in first
            assert round_trip(clients[0]) == first[0]  # client 0 kept its mapping
            assert round_trip(clients[1]) not in first  # client 1 got a new one
        finally:
            forwarder.close()
            for c in clients:
                c.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", host_port))  # close() released the host port


def test_restart_policies_follow_docker() -> None:
    assert parse_restart("no") == RestartPolicy()
    assert parse_restart("always") == RestartPolicy("always")
    assert parse_restart("unless-stopped") == RestartPolicy("always")
    on3 = parse_restart("on-failure:3")
    assert on3 == RestartPolicy("on-failure", 3)
    assert [on3.wants(1, n) for n in range(4)] == [True, True, True, False]
    assert not on3.wants(0, 0)
    assert parse_restart("on-failure").wants(1, 1000)
    assert RestartPolicy("always").wants(0, 1000)
    assert not RestartPolicy().wants(1, 0)
    for bad in ("sometimes", "on-failure:x", "always:2", "no:1", ""):
        with pytest.raises(InvalidRunOptionError, match="invalid --restart"):
            parse_restart(bad)


def test_signals_are_checked_before_runc_sees_them() -> None:
    assert parse_signal("kill") == "KILL"
    assert parse_signal("SIGTERM") == "TERM"
    assert parse_signal(9) == "9"
    assert parse_signal("15") == "15"
    for bad in ("BOGUS", "SIGBOGUS", "0", "999", "", "-1"):
        with pytest.raises(InvalidRunOptionError, match="unknown signal"):
            parse_signal(bad)
