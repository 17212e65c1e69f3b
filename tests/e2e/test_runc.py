"""The runtime with real runc on a busybox-static rootfs built here: foreground, detached."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fastdist
from fastdist import oci
from fastdist.errors import ContainerRunError, InUseError
from fastdist.runc import Runtime
from fastdist.spec import Mount, RunOptions

BUSYBOX = Path("/bin/busybox")

pytestmark = [
    pytest.mark.root,
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="needs busybox-static"),
]

TRAP_TERM = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done"


@pytest.fixture(scope="session")
def busybox_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal image tree: /bin/busybox, its applets as symlinks, passwd and group."""
    tree = tmp_path_factory.mktemp("busybox") / "rootfs"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in applets:
        if name != "busybox":
            (tree / "bin" / name).symlink_to("busybox")
    (tree / "etc").mkdir()
    (tree / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (tree / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    (tree / "tmp").mkdir(mode=0o1777)
    return tree


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(tmp_path / "store")
    yield rt
    for cid in rt.ids():
        rt.delete(cid, force=True)
        rt.remove(cid)
    runc_state = rt.state_root
    assert not runc_state.exists() or list(runc_state.iterdir()) == []


@pytest.fixture
def make(runtime: Runtime, busybox_tree: Path, tmp_path: Path) -> Any:
    counter = iter(range(1000))

    def _make(
        cmd: tuple[str, ...] | None = None,
        *,
        entrypoint: tuple[str, ...] | None = None,
        image_env: tuple[str, ...] = (),
        image_user: str = "",
        working_dir: str = "",
        entrypoint_opt: str | None = None,
        **opts: Any,
    ) -> str:
        cid = opts.pop("id", f"c{next(counter)}")
        rootfs = tmp_path / f"rootfs-{cid}"
        shutil.copytree(busybox_tree, rootfs, symlinks=True)
        config = oci.ImageConfig(
            architecture="amd64",
            os="linux",
            diff_ids=(),
            config=oci.ContainerConfig(
                cmd=cmd,
                entrypoint=entrypoint,
                env=image_env,
                user=image_user,
                working_dir=working_dir,
            ),
        )
        runtime.prepare(cid)
        options = RunOptions(id=cid, entrypoint=entrypoint_opt, **opts)
        runtime.create(config, options, rootfs_path=rootfs)
        return cid

    return _make


def run(runtime: Runtime, cid: str, tmp_path: Path) -> tuple[int, str, str]:
    out, err = tmp_path / f"{cid}.out", tmp_path / f"{cid}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        code = runtime.run(cid, stdout=o, stderr=e)
    return code, out.read_text(), err.read_text()


def foreground(runtime: Runtime, cid: str) -> subprocess.Popen[bytes]:
    """``Runtime.run`` in a separate process (as the CLI would), its stdout a pipe to us."""
    helper = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from fastdist.runc import Runtime
        sys.exit(Runtime(Path({str(runtime.root)!r})).run({cid!r}))
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(fastdist.__file__).parent.parent)
    return subprocess.Popen(
        [sys.executable, "-c", helper], stdout=subprocess.PIPE, env=env, close_fds=True
    )


def test_exit_code_and_stdio_propagate(runtime: Runtime, make: Any, tmp_path: Path) -> None:
    cid = make(("sh", "-c", "echo to-out; echo to-err >&2; exit 7"))
    code, out, err = run(runtime, cid, tmp_path)
    assert (code, out, err) == (7, "to-out\n", "to-err\n")
    state = runtime.state(cid)
    assert (state.status, state.exit_code, state.pid) == ("stopped", 7, None)


def test_foreground_container_killed_by_signal_exits_128_plus_signal(
    runtime: Runtime, make: Any
) -> None:
    cid = make(("sh", "-c", "echo ready; exec sleep 1000"))
    proc = foreground(runtime, cid)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    runtime.kill(cid, "KILL")
    assert proc.wait() == 137
    assert runtime.state(cid).exit_code == 137


def test_entrypoint_and_cmd_combine_as_docker_does(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    image: dict[str, Any] = {"entrypoint": ("echo", "entry"), "cmd": ("image-cmd",)}
    assert run(runtime, make(**image), tmp_path)[1] == "entry image-cmd\n"
    assert run(runtime, make(**image, command=("cli",)), tmp_path)[1] == "entry cli\n"
    assert run(runtime, make(**image, entrypoint_opt="echo"), tmp_path)[1] == "\n"
    assert run(runtime, make(("echo", "only-cmd")), tmp_path)[1] == "only-cmd\n"


def test_env_is_visible_with_defaults_and_overrides(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    cid = make(("env",), image_env=("FROM_IMAGE=1", "SHARED=image"), env=("SHARED=cli",), id="envc")
    _, out, _ = run(runtime, cid, tmp_path)
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env["FROM_IMAGE"] == "1"
    assert env["SHARED"] == "cli"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["HOSTNAME"] == "envc"
    assert env["HOME"] == "/root"


def test_user_and_supplementary_groups_from_the_image(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    _, out, _ = run(runtime, make(("id",), image_user="app"), tmp_path)
    assert out.strip() == "uid=1000(app) gid=1000(app) groups=2000(extra)"
    _, out, _ = run(runtime, make(("id",), image_user="app", user="4242:4343"), tmp_path)
    assert out.strip() == "uid=4242 gid=4343"  # no groups: none leak in from the host


def test_workdir_is_created_and_used(runtime: Runtime, make: Any, tmp_path: Path) -> None:
    assert run(runtime, make(("pwd",), working_dir="/srv/app"), tmp_path)[1] == "/srv/app\n"
    assert run(runtime, make(("pwd",), workdir="/elsewhere"), tmp_path)[1] == "/elsewhere\n"


def test_read_only_root_refuses_writes_but_shm_is_writable(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    cid = make(
        ("sh", "-c", "touch /x || echo refused; touch /dev/shm/y && echo shm-ok"), read_only=True
    )
    _, out, _ = run(runtime, cid, tmp_path)
    assert out == "refused\nshm-ok\n"
    cid = make(("sh", "-c", "touch /x && echo written"))
    assert run(runtime, cid, tmp_path)[1] == "written\n"


def test_net_none_has_only_loopback_and_hostname_is_set(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    cid = make(("sh", "-c", "ls /sys/class/net; hostname"), hostname="box")
    _, out, _ = run(runtime, cid, tmp_path)
    assert out.split() == ["lo", "box"]


def test_bind_mounts_read_only_and_read_write(runtime: Runtime, make: Any, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "in").write_text("from host")
    script = "cat /ro/in; echo; touch /ro/new || echo ro-refused; echo hi > /rw/out"
    cid = make(
        ("sh", "-c", script),
        mounts=(Mount(str(host), "/ro", readonly=True), Mount(str(host), "/rw")),
    )
    _, out, _ = run(runtime, cid, tmp_path)
    assert out == "from host\nro-refused\n"
    assert (host / "out").read_text() == "hi\n"


def test_no_fastdist_fd_leaks_into_the_container(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    leak = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(leak, True)  # even an inheritable fd of ours must not get in
    try:
        _, out, _ = run(runtime, make(("ls", "/proc/self/fd")), tmp_path)
    finally:
        os.close(leak)
    assert set(out.split()) <= {"0", "1", "2", "3"}  # 3: ls's own directory fd


def test_missing_command_is_a_runc_error_and_leaves_no_state(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    cid = make(("no-such-command",))
    with pytest.raises(ContainerRunError, match="no-such-command") as exc:
        run(runtime, cid, tmp_path)
    assert exc.value.stderr_tail
    assert exc.value.hint
    assert list(runtime.state_root.iterdir()) == []


def test_detached_lifecycle_state_logs_kill_delete(runtime: Runtime, make: Any) -> None:
    cid = make(("sh", "-c", TRAP_TERM))
    state = runtime.start(cid)
    assert state.status == "running"
    assert state.pid is not None
    assert state.exit_code is None
    seen = b""
    for chunk in runtime.logs(cid, follow=True):
        seen += chunk
        if b"ready" in seen:
            break  # the trap is installed; the container is waiting for the signal
    with pytest.raises(InUseError):
        runtime.delete(cid)
    runtime.kill(cid, "TERM")
    assert runtime.wait(cid) == 42
    assert b"".join(runtime.logs(cid)) == b"ready\ngot TERM\n"
    state = runtime.state(cid)
    assert (state.status, state.exit_code) == ("stopped", 42)
    runtime.delete(cid)
    runtime.remove(cid)
    assert cid not in runtime.ids()
    assert not (runtime.containers_dir / cid).exists()
    assert list(runtime.state_root.iterdir()) == []


def test_detached_container_killed_with_sigkill_exits_137(runtime: Runtime, make: Any) -> None:
    cid = make(("sleep", "1000"))
    runtime.start(cid)
    runtime.kill(cid, signal.SIGKILL)
    assert runtime.wait(cid) == 137
    assert runtime.state(cid).status == "stopped"


def test_force_delete_stops_a_running_container(runtime: Runtime, make: Any) -> None:
    cid = make(("sleep", "1000"))
    runtime.start(cid)
    runtime.delete(cid, force=True)
    assert runtime.state(cid).exit_code == 137
    runtime.remove(cid)
    assert list(runtime.state_root.iterdir()) == []


def test_logs_follow_ends_when_the_container_exits(runtime: Runtime, make: Any) -> None:
    cid = make(("sh", "-c", "echo one; echo two >&2; echo three"))
    runtime.start(cid)
    entries = list(runtime.log_entries(cid, follow=True))
    # Each stream keeps its order; between the two, the order is the one they were read in
    # (two pipes, as in docker).
    assert [e.data for e in entries if e.stream == "stdout"] == [b"one\n", b"three\n"]
    assert [e.data for e in entries if e.stream == "stderr"] == [b"two\n"]
    assert sorted(runtime.logs(cid)) == [b"one\n", b"three\n", b"two\n"]
    assert runtime.wait(cid) == 0


def test_detached_start_failure_is_reported(runtime: Runtime, make: Any) -> None:
    cid = make(("no-such-command",))
    with pytest.raises(ContainerRunError, match="no-such-command"):
        runtime.start(cid)
    assert list(runtime.state_root.iterdir()) == []


def test_sigterm_to_foreground_fastdist_reaches_the_container(runtime: Runtime, make: Any) -> None:
    cid = make(("sh", "-c", TRAP_TERM))
    proc = foreground(runtime, cid)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # the trap is installed
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait() == 42
    assert rest == b"got TERM\n"
    assert runtime.state(cid).exit_code == 42


def test_id_in_use_is_refused(runtime: Runtime, make: Any) -> None:
    cid = make(("true",))
    with pytest.raises(InUseError, match="already in use"):
        runtime.prepare(cid)


def test_tty_gives_the_container_a_terminal(runtime: Runtime, make: Any) -> None:
    cid = make(("sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; echo TERM=$TERM"), tty=True)
    master, slave = pty.openpty()
    try:
        code = runtime.run(cid, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO once the last writer is gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert code == 0
    assert out.replace(b"\r\n", b"\n") == b"is-a-tty\nTERM=xterm\n"


def test_tty_without_a_terminal_is_refused(runtime: Runtime, make: Any, tmp_path: Path) -> None:
    cid = make(("true",), tty=True)
    with pytest.raises(ContainerRunError, match="TTY"):
        run(runtime, cid, tmp_path)
    with pytest.raises(ContainerRunError, match="terminal"):
        runtime.start(cid)


def test_net_host_shares_the_network_and_the_hosts_resolver_files(
    runtime: Runtime, make: Any, tmp_path: Path
) -> None:
    cid = make(("sh", "-c", "cat /etc/hosts; echo ---; ls /sys/class/net"), net="host")
    _, out, _ = run(runtime, cid, tmp_path)
    hosts, _, links = out.partition("---\n")
    assert hosts == Path("/etc/hosts").read_text()
    assert sorted(links.split()) == sorted(os.listdir("/sys/class/net"))


def test_volumes_are_writable_scratch_space_even_with_a_read_only_root(
    runtime: Runtime, busybox_tree: Path, tmp_path: Path
) -> None:
    rootfs = tmp_path / "r"
    shutil.copytree(busybox_tree, rootfs, symlinks=True)
    config = oci.ImageConfig(
        "amd64",
        "linux",
        (),
        oci.ContainerConfig(
            cmd=("sh", "-c", "echo kept > /data/f && cat /data/f"), volumes=("/data",)
        ),
    )
    runtime.prepare("vol")
    runtime.create(config, RunOptions(id="vol", read_only=True), rootfs_path=rootfs)
    assert run(runtime, "vol", tmp_path) == (0, "kept\n", "")
    assert not (rootfs / "data" / "f").exists()  # the image's tree is untouched
    runtime.delete("vol")
    runtime.remove("vol")
    assert not (runtime.containers_dir / "vol").exists()
