"""build_spec and the run options: docker's rules for image configs, on rootfs trees built here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from runkit import image, make_rootfs

from fastdist import oci
from fastdist.errors import (
    ContainerRunError,
    InvalidRunOptionError,
    NoCommandError,
    WorkdirError,
)
from fastdist.seccomp import DEFAULT_PROFILE, SeccompProfileError
from fastdist.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    MASKED_PATHS,
    READONLY_PATHS,
    Mount,
    RestartPolicy,
    RunOptions,
    build_spec,
    check_options,
    host_devices,
    parse_cpus,
    parse_log_max_size,
    parse_memory,
    parse_pids_limit,
    parse_restart,
    parse_security_opts,
    resolve_capabilities,
    thermal_throttle_paths,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path)


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


def test_user_lands_in_the_spec_with_supplementary_groups(root: Path) -> None:
    spec = spec_for(root, image(user="app"))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [29, 44]}
    spec = spec_for(root, image(user="app"), user="0:0")
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


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


@pytest.mark.parametrize(("text", "size"), [("10m", 10 << 20), ("1k", 1024), (4096, 4096)])
def test_log_max_size_takes_docker_sizes(text: str | int, size: int) -> None:
    assert parse_log_max_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "10x", "100", "0", "-1m", 5, ""])
def test_bad_log_max_size_is_a_usage_error(bad: str | int) -> None:
    with pytest.raises(InvalidRunOptionError, match="invalid --log-max-size") as e:
        parse_log_max_size(bad)
    assert e.value.hint


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


# --- check_options: what cannot run is refused before anything is pulled or created -----------
@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (RunOptions(memory=1 << 20), "--memory"),
        (RunOptions(cpus=0.0), "--cpus"),
        (RunOptions(pids_limit=-5), "--pids-limit"),
        (RunOptions(log_max_size=10), "--log-max-size"),
        (RunOptions(restart=RestartPolicy("always")), "needs a detached container"),
        (RunOptions(restart=RestartPolicy("always"), detach=True, rm=True), "without --rm"),
        (RunOptions(cap_add=("CAP_NOPE",)), "NOPE"),
    ],
)
def test_check_options_refuses_what_cannot_run(opts: RunOptions, message: str) -> None:
    with pytest.raises(InvalidRunOptionError, match=message):
        check_options(opts)


def test_check_options_accepts_the_defaults_and_a_detached_restart() -> None:
    check_options(RunOptions())
    check_options(RunOptions(restart=RestartPolicy("on-failure", 3), detach=True, memory=6 << 20))
