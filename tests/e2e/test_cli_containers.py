"""The container commands docker users type (``exec``, ``stop``, ``kill``, ``wait``, ``inspect``,
``ps -q``/``--format json``, ``--name``) and their bad input, through the real CLI and runc."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clikit import cli_argv, cli_env

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

pytestmark = [
    pytest.mark.registry,
    pytest.mark.root,
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
]

CLEAN = {"mounts": [], "snapshots": [], "bundles": [], "runc": []}
# PID 1 is a shell that ignores TERM and INT (a shell as PID 1 does by default for TERM).
IGNORES_TERM = "trap '' TERM INT; echo ready; while :; do sleep 0.05; done"


@pytest.fixture
def img(fastdist: FastdistCLI, busybox: PushedImage) -> str:
    r = fastdist("pull", "-q", busybox.ref)
    assert r.rc == 0, r.stderr
    return busybox.ref


def _detach(fastdist: FastdistCLI, img: str, name: str, script: str) -> None:
    r = fastdist("run", "-d", "--name", name, img, "sh", "-c", script)
    assert r.rc == 0, r.stderr
    assert r.stdout == f"{name}\n"


def _ready(fastdist: FastdistCLI, name: str) -> None:
    """Wait for the container's first line, ``ready`` (logs -f returns only at exit: read it)."""
    proc = fastdist.popen("logs", "-f", name)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.kill()
        proc.wait()


def test_kill_defaults_to_kill_so_a_shell_ignoring_term_dies(
    fastdist: FastdistCLI, img: str
) -> None:
    _detach(fastdist, img, "stubborn", IGNORES_TERM)
    _ready(fastdist, "stubborn")
    r = fastdist("kill", "stubborn")
    assert r.rc == 0, r.stderr
    w = fastdist("wait", "stubborn")
    assert w.rc == 0, w.stderr
    assert w.stdout == "137\n"  # 128 + SIGKILL


def test_stop_sends_term_and_kills_after_the_timeout(fastdist: FastdistCLI, img: str) -> None:
    _detach(fastdist, img, "stubborn", IGNORES_TERM)
    _detach(
        fastdist,
        img,
        "polite",
        "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    )
    _ready(fastdist, "stubborn")
    _ready(fastdist, "polite")
    r = fastdist("stop", "-t", "1", "stubborn", "polite")
    assert r.rc == 0, r.stderr
    assert r.stdout == "stubborn\npolite\n"
    assert fastdist("wait", "stubborn", "polite").stdout == "137\n42\n"
    assert "got TERM" in fastdist("logs", "polite").stdout
    ps = json.loads(fastdist("ps", "-a", "--format", "json").stdout.splitlines()[0])
    assert ps["Status"] == "stopped"
    bad = fastdist("stop", "-t", "soon", "polite")
    assert bad.rc == 2
    assert "invalid number of seconds" in bad.stderr


def test_exec_runs_in_the_container_with_env_user_and_workdir(
    fastdist: FastdistCLI, img: str
) -> None:
    _detach(fastdist, img, "box", "echo hi > /tmp/mark; echo ready; exec sleep 300")
    _ready(fastdist, "box")
    r = fastdist("exec", "box", "cat", "/tmp/mark")
    assert (r.rc, r.stdout) == (0, "hi\n"), r.stderr
    r = fastdist(
        "exec",
        "-e",
        "GREETING=exec",
        "-u",
        "app",
        "-w",
        "/tmp",
        "box",
        "sh",
        "-c",
        "echo $GREETING $(id -u):$(id -g) $(pwd) $KEEP; exit 3",
    )
    assert r.rc == 3, r.stderr
    assert r.stdout == "exec 1000:1000 /tmp image-value\n"
    # The exec'd process is confined like PID 1: same seccomp filter, same capabilities.
    r = fastdist("exec", "box", "sh", "-c", "grep -E '^(Seccomp|CapBnd):' /proc/self/status")
    pid1 = fastdist("exec", "box", "sh", "-c", "grep -E '^(Seccomp|CapBnd):' /proc/1/status")
    assert r.stdout == pid1.stdout
    assert "Seccomp:\t2" in r.stdout
    missing = fastdist("exec", "box", "/no/such/cmd")
    assert missing.rc == 8
    assert "error: runc could not exec" in missing.stderr
    assert "hint: check the command" in missing.stderr
    nothing = fastdist("exec", "box")
    assert nothing.rc == 2
    assert "error: nothing to exec" in nothing.stderr
    assert fastdist("rm", "-f", "box").rc == 0
    assert fastdist.leftovers() == CLEAN


def test_exec_of_a_stopped_or_unknown_container_is_a_clear_error(
    fastdist: FastdistCLI, img: str
) -> None:
    assert fastdist("run", "--name", "done", img, "true").rc == 0
    r = fastdist("exec", "done", "true")
    assert r.rc == 8
    assert "error: cannot exec in container done: it is stopped" in r.stderr
    r = fastdist("exec", "ghost", "true")
    assert r.rc == 7
    assert "no such container: ghost" in r.stderr


def test_exec_it_gets_a_terminal(fastdist: FastdistCLI, img: str) -> None:
    _detach(fastdist, img, "tty", "echo ready; exec sleep 300")
    _ready(fastdist, "tty")

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cli_argv(  # the same CLI command line, on a pty
            fastdist.root,
            "exec",
            "-it",
            "tty",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty; read x; echo got $x",
        ),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(),
        close_fds=True,
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"is-a-tty" not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                out += os.read(master, 4096)
        os.write(master, b"typed\n")
        while proc.poll() is None or select.select([master], [], [], 0)[0]:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if time.monotonic() > deadline:
                break
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"is-a-tty" in out
    assert b"got typed" in out


def test_inspect_shows_state_spec_mounts_and_exit_code(
    fastdist: FastdistCLI, img: str, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    r = fastdist(
        "run",
        "--name",
        "web",
        "--mount",
        f"{tmp_path / 'data'}:/data:ro",
        "-e",
        "A=1",
        img,
        "sh",
        "-c",
        "exit 7",
    )
    assert r.rc == 7
    got = json.loads(fastdist("inspect", "web").stdout)
    assert got["Id"] == got["Name"] == "web"
    assert got["State"]["Status"] == "stopped"
    assert got["State"]["Running"] is False
    assert got["State"]["ExitCode"] == 7
    assert got["State"]["FinishedAt"].endswith("Z")
    assert got["Created"].endswith("Z")
    assert got["Config"]["Cmd"] == ["sh", "-c", "exit 7"]
    assert "A=1" in got["Config"]["Env"]
    assert got["Config"]["WorkingDir"] == "/srv"
    assert got["HostConfig"]["Seccomp"] == "default"
    assert got["HostConfig"]["NetworkMode"] == "none"
    assert "CAP_SYS_ADMIN" not in got["HostConfig"]["Capabilities"]
    assert {
        "Type": "bind",
        "Source": str(tmp_path / "data"),
        "Destination": "/data",
        "RW": False,
    } in got["Mounts"]
    assert got["Ports"] == {}
    # An image reference still inspects the image.
    image = json.loads(fastdist("inspect", img).stdout)
    assert "manifest" in json.dumps(image)


def test_ps_quiet_and_json_and_name_alias(fastdist: FastdistCLI, img: str) -> None:
    assert fastdist("run", "--name", "one", img, "true").rc == 0
    assert fastdist("run", "--id", "two", img, "sh", "-c", "exit 2").rc == 2
    assert sorted(fastdist("ps", "-aq").stdout.split()) == ["one", "two"]
    assert fastdist("ps", "-q").stdout == ""  # none is running
    rows = [
        json.loads(line) for line in fastdist("ps", "-a", "--format", "json").stdout.splitlines()
    ]
    by_id = {r["ID"]: r for r in rows}
    assert by_id["two"]["ExitCode"] == 2
    assert by_id["two"]["Command"] == ["sh", "-c", "exit 2"]
    assert by_id["one"]["Status"] == "stopped"
    assert isinstance(by_id["one"]["Created"], float)


@pytest.mark.parametrize(
    ("args", "rc", "error", "hint"),
    [
        (("kill", "-s", "BOGUS", "x"), 2, "error: unknown signal 'BOGUS'", "hint: use a name like"),
        (("kill", "-s", "999", "x"), 2, "error: unknown signal '999'", "hint: use a name like"),
        (
            ("run", "--rm", "--mount", "/no/such/dir:/x", "IMG", "true"),
            2,
            "error: invalid --mount '/no/such/dir:/x': the source /no/such/dir does not exist",
            "hint: create it first",
        ),
        (
            ("run", "--rm", "--env-file", "/no/such/env", "IMG", "true"),
            2,
            "error: cannot read --env-file /no/such/env",
            "hint: give the path of a file",
        ),
    ],
)
def test_bad_container_command_input_gets_error_and_hint(
    fastdist: FastdistCLI, img: str, args: tuple[str, ...], rc: int, error: str, hint: str
) -> None:
    r = fastdist(*(img if a == "IMG" else a for a in args))
    assert r.rc == rc, r.stderr
    assert error in r.stderr
    assert hint in r.stderr
    assert "Traceback" not in r.stderr
    assert '"level"' not in r.stderr  # no raw runc log line
    assert fastdist.leftovers() == CLEAN


def test_kill_of_a_running_container_with_a_bogus_signal_touches_nothing(
    fastdist: FastdistCLI, img: str
) -> None:
    _detach(fastdist, img, "alive", "trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done")
    _ready(fastdist, "alive")
    r = fastdist("kill", "-s", "SIGBOGUS", "alive")
    assert r.rc == 2
    assert "error: unknown signal 'SIGBOGUS'" in r.stderr
    assert json.loads(fastdist("ps", "--format", "json").stdout)["Status"] == "running"
    assert fastdist("kill", "-s", "SIGTERM", "alive").rc == 0
    assert fastdist("wait", "alive").stdout == "3\n"  # TERM reached the trap


def test_ctrl_c_on_a_foreground_run_whose_pid1_ignores_it_says_what_to_do_and_twice_kills(
    fastdist: FastdistCLI, img: str
) -> None:
    proc = fastdist.popen("run", "--rm", img, "sh", "-c", IGNORES_TERM)
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        notice = proc.stderr.readline()  # the first ^C was relayed, and said so
        assert "press Ctrl-C again within 2 seconds to kill it" in notice
        proc.send_signal(signal.SIGINT)  # the second, right after: kill
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 137, err
    assert fastdist.leftovers() == CLEAN


@pytest.mark.parametrize("flags", [("--rm",), (), ("-d",)])
def test_run_that_cannot_use_runc_is_refused_and_leaves_no_record(
    fastdist: FastdistCLI, img: str, flags: tuple[str, ...]
) -> None:
    # The same precondition as running without root (issue 17: `run --rm` as non-root left a
    # `created` record): no runc on PATH. It must be refused before anything is created.
    r = fastdist("run", *flags, img, "true", env={"PATH": "/nonexistent"})
    assert r.rc == 8
    assert "error: cannot run containers: runc not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert fastdist("ps", "-a", "-q").stdout == ""
    assert fastdist.leftovers() == CLEAN


# --- resources and volumes -----------------------------------------------------------------
def test_memory_limit_is_enforced_by_the_oom_killer(fastdist: FastdistCLI, img: str) -> None:
    grow = 'BEGIN { s = "x"; while (1) s = s s }'  # doubles until something stops it
    r = fastdist("run", "--rm", "--memory", "32m", img, "awk", grow)
    assert r.rc == 137, r.stderr  # SIGKILL from the cgroup's OOM killer
    ok = fastdist("run", "--rm", "--memory", "32m", img, "sh", "-c", "echo fits")
    assert (ok.rc, ok.stdout) == (0, "fits\n"), ok.stderr


def test_pids_limit_is_enforced(fastdist: FastdistCLI, img: str) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; echo started; kill $(jobs -p)"
    r = fastdist("run", "--rm", "--pids-limit", "5", img, "sh", "-c", script)
    assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr, r.stderr
    free = fastdist("run", "--rm", img, "sh", "-c", script)
    assert free.rc == 0, free.stderr
    assert "fork" not in free.stderr


def test_cpus_limit_reaches_the_cgroup(fastdist: FastdistCLI, img: str) -> None:
    script = (
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || "
        "cut -d' ' -f1 /sys/fs/cgroup/cpu.max"
    )
    r = fastdist("run", "--rm", "--cpus", "0.5", img, "sh", "-c", script)
    assert (r.rc, r.stdout) == (0, "50000\n"), r.stderr


def test_volume_binds_a_host_directory_creating_it(
    fastdist: FastdistCLI, img: str, tmp_path: Path
) -> None:
    src = tmp_path / "new" / "data"
    r = fastdist(
        "run",
        "--rm",
        "-v",
        f"{src}:/data",
        "-v",
        f"{tmp_path}:/ro:ro",
        img,
        "sh",
        "-c",
        "echo hi > /data/f; touch /ro/x || echo refused",
    )
    assert r.rc == 0, r.stderr
    assert r.stdout == "refused\n"
    assert (src / "f").read_text() == "hi\n"


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (("-v", "relative:/x"), "the source must be an absolute host path"),
        (("-v", "/a:/b:rx"), "invalid --volume '/a:/b:rx'"),
        (("--memory", "lots"), "invalid --memory 'lots'"),
        (("--cpus", "none"), "invalid --cpus 'none'"),
        (("--pids-limit", "many"), "invalid --pids-limit 'many'"),
        (("-d", "--log-max-size", "lots"), "invalid --log-max-size 'lots'"),
        (("-d", "--log-max-size", "10"), "expected a size of at least 1k"),
    ],
)
def test_bad_resource_and_volume_options_exit_2_before_anything_is_created(
    fastdist: FastdistCLI, img: str, flags: tuple[str, ...], error: str
) -> None:
    r = fastdist("run", "--rm", *flags, img, "true")
    assert r.rc == 2, r.stderr
    assert error in r.stderr
    assert "\nhint: " in r.stderr
    assert fastdist("ps", "-aq").stdout == ""
    assert fastdist.leftovers() == CLEAN


# --- logs --------------------------------------------------------------------------------------
def test_logs_keep_stdout_and_stderr_apart_with_tail_and_timestamps(
    fastdist: FastdistCLI, img: str
) -> None:
    script = "echo out1; echo err1 >&2; echo out2; printf 'err2 no newline' >&2"
    r = fastdist("run", "-d", "--name", "split", img, "sh", "-c", script)
    assert r.rc == 0, r.stderr
    assert fastdist("wait", "split").stdout == "0\n"
    logs = fastdist("logs", "split")
    assert logs.rc == 0
    assert logs.stdout == "out1\nout2\n"
    assert logs.stderr == "err1\nerr2 no newline"
    # (The order between the two streams is the order fastdist read them in, as in docker.)
    assert fastdist("logs", "-n", "0", "split").stdout == ""
    r = fastdist("run", "-d", "--name", "count", img, "seq", "5")
    assert r.rc == 0, r.stderr
    assert fastdist("wait", "count").stdout == "0\n"
    assert fastdist("logs", "--tail", "2", "count").stdout == "4\n5\n"
    assert fastdist("logs", "--tail", "all", "count").stdout == "1\n2\n3\n4\n5\n"
    stamped = fastdist("logs", "-t", "split").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["out1", "out2"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamped[0].split()[0])
    bad = fastdist("logs", "--tail", "some", "split")
    assert bad.rc == 2
    assert "invalid number of lines" in bad.stderr


def test_logs_follow_streams_both_until_exit(fastdist: FastdistCLI, img: str) -> None:
    script = "echo ready; read x < /dev/null; echo late-out; echo late-err >&2"
    _detach(fastdist, img, "follow", script)
    r = fastdist("logs", "-f", "follow")  # returns once the container has exited
    assert r.stdout == "ready\nlate-out\n"
    assert r.stderr == "late-err\n"


def test_a_chatty_detached_container_keeps_its_log_within_the_cap(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "-d", "--log-max-size", "4k", "--name", "chatty", img, "seq", "3000")
    assert r.rc == 0, r.stderr
    assert fastdist("wait", "chatty").stdout == "0\n"
    bundle = fastdist.root / "containers" / "chatty"
    sizes = [(bundle / name).stat().st_size for name in ("log", "log.1")]
    assert all(0 < size <= 4096 for size in sizes), sizes  # ~130 KB written, 8 KiB kept
    out = fastdist("logs", "chatty").stdout.splitlines()
    assert len(out) > 60
    assert out == [str(n) for n in range(3001 - len(out), 3001)]  # the newest, in order
    assert fastdist("logs", "--tail", "2", "chatty").stdout == "2999\n3000\n"
    info = json.loads(fastdist("inspect", "chatty").stdout)
    assert info["HostConfig"]["LogConfig"]["Config"] == {"max-size": "4096", "max-file": "2"}
    assert fastdist("rm", "chatty").rc == 0
    assert fastdist.leftovers() == CLEAN


# --- publish ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (("-d", "-p", "99999:80"), "port 99999 is not in 1-65535"),
        (("-d", "-p", "80"), "expected [IP:]HOST:CONTAINER"),
        (("-d", "-p", "99999:80/udp"), "port 99999 is not in 1-65535"),
        (("-d", "-p", "80:80/sctp"), "protocol 'sctp' is not tcp or udp"),
        (("-d", "-p", "5353:53/udp", "-p", "5353:54/udp"), "5353/udp is published twice"),
        (("-d", "-p", "999.1.1.1:80:80"), "is not an IP address"),
        (("-d", "-p", "8080:80", "-p", "8080:81"), "is published twice"),
    ],
)
def test_bad_publish_options_exit_2_before_anything_is_created(
    fastdist: FastdistCLI, img: str, flags: tuple[str, ...], error: str
) -> None:
    r = fastdist("run", "--rm", *flags, img, "true")
    assert r.rc == 2, r.stderr
    assert error in r.stderr
    assert "\nhint: " in r.stderr
    assert fastdist.leftovers() == CLEAN


@pytest.mark.parametrize("mode", ["-d", "--rm"])
def test_published_port_reaches_a_server_on_the_containers_loopback(
    fastdist: FastdistCLI, img: str, mode: str
) -> None:
    import urllib.request

    from fastdist.testing.registry import free_port

    port = free_port()
    # busybox httpd serves the image's /srv (motd from the app layer) inside --net none.
    argv = (
        "run",
        mode,
        "-p",
        f"127.0.0.1:{port}:80",
        "--name",
        "web",
        img,
        "httpd",
        "-f",
        "-p",
        "127.0.0.1:80",
        "-h",
        "/srv",
    )
    foreground = fastdist.popen(*argv) if mode == "--rm" else None
    try:
        if foreground is None:
            r = fastdist(*argv)
            assert r.rc == 0, r.stderr
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/motd", timeout=5) as resp:
                    body = resp.read()
                break
            except OSError:
                time.sleep(0.1)  # the server in the container is still starting
        assert body == b"hello from the app layer\n"
        assert fastdist("stop", "-t", "1", "web").rc == 0
        if foreground is not None:
            _, err = foreground.communicate(timeout=60)
            assert foreground.returncode == 137, err  # httpd as PID 1 ignores TERM
        else:
            assert fastdist("rm", "web").rc == 0
    finally:
        if foreground is not None and foreground.poll() is None:
            foreground.kill()
            foreground.wait()
    with socket.socket() as probe:  # the host port is closed with the container
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert fastdist.leftovers() == CLEAN


# The host's python serves udp inside the container: busybox has no udp server applet. /usr and
# the loader's directories are bound read-only; the server echoes each datagram to its sender.
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', 5353))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(2048)\n"
    "    s.sendto(b'echo:' + data, peer)\n"
)
HOST_PYTHON = ("-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro")


def _udp_echo(port: int) -> bytes:
    """Send to the published udp port until the server in the container answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.5)  # a datagram sent before the server bound is lost: send again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            client.sendto(b"ping", ("127.0.0.1", port))
            try:
                return client.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
    return b""


@pytest.mark.parametrize("mode", ["-d", "--rm"])
def test_published_udp_port_reaches_a_server_on_the_containers_loopback(
    fastdist: FastdistCLI, img: str, mode: str
) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs the host's /usr/bin/python3 as the udp server")
    from fastdist.testing.registry import free_port

    port, second = free_port(), free_port()
    while second == port:
        second = free_port()
    argv = ("run", mode, "-p", f"127.0.0.1:{port}:5353/udp", "--name", "dns", *HOST_PYTHON)
    argv += ("-p", f"127.0.0.1:{second}:5353/udp")  # one container port, two host ports
    argv += (img, "/usr/bin/python3", "-c", UDP_ECHO)
    foreground = fastdist.popen(*argv) if mode == "--rm" else None
    try:
        if foreground is None:
            r = fastdist(*argv)
            assert r.rc == 0, r.stderr
        assert _udp_echo(port) == b"echo:ping"
        assert _udp_echo(second) == b"echo:ping"
        info = json.loads(fastdist("inspect", "dns").stdout)
        assert info["Ports"] == {
            "5353/udp": [
                {"HostIp": "127.0.0.1", "HostPort": str(port)},
                {"HostIp": "127.0.0.1", "HostPort": str(second)},
            ]
        }
        rows = [json.loads(line) for line in fastdist("ps", "--format", "json").stdout.splitlines()]
        shown = f"127.0.0.1:{port}->5353/udp, 127.0.0.1:{second}->5353/udp"
        assert [row["Ports"] for row in rows if row["ID"] == "dns"] == [shown]
        assert shown in fastdist("ps").stdout
        assert fastdist("stop", "-t", "1", "dns").rc == 0
        if foreground is not None:
            _, err = foreground.communicate(timeout=60)
            assert foreground.returncode == 137, err  # python as PID 1 ignores TERM
        else:
            assert fastdist("rm", "dns").rc == 0
    finally:
        if foreground is not None and foreground.poll() is None:
            foreground.kill()
            foreground.wait()
    for p in (port, second):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", p))  # the host ports are released with the container
    assert fastdist.leftovers() == CLEAN


@pytest.mark.parametrize("mode", ["-d", "--rm"])
def test_a_udp_port_in_use_is_named_and_nothing_is_created(
    fastdist: FastdistCLI, img: str, mode: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = fastdist("run", mode, "-p", f"127.0.0.1:{port}:53/udp", img, "true")
    assert r.rc != 0
    assert f"error: cannot publish port 127.0.0.1:{port}/udp: Address already in use" in r.stderr
    assert "\nhint: " in r.stderr
    assert fastdist.leftovers() == CLEAN


# --- restart policies ------------------------------------------------------------------------
def test_on_failure_restarts_at_most_n_times(fastdist: FastdistCLI, img: str) -> None:
    r = fastdist(
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        "flaky",
        img,
        "sh",
        "-c",
        "echo run; exit 3",
    )
    assert r.rc == 0, r.stderr
    assert fastdist("wait", "flaky").stdout == "3\n"  # once the policy gave up
    assert fastdist("logs", "flaky").stdout == "run\nrun\nrun\n"
    got = json.loads(fastdist("inspect", "flaky").stdout)
    assert got["RestartCount"] == 2
    assert got["HostConfig"]["RestartPolicy"] == {"name": "on-failure", "max_restarts": 2}
    ok = fastdist("run", "-d", "--restart", "on-failure", "--name", "fine", img, "true")
    assert ok.rc == 0
    assert fastdist("wait", "fine").stdout == "0\n"  # success: no restart
    assert json.loads(fastdist("inspect", "fine").stdout)["RestartCount"] == 0


def test_always_restarts_until_the_user_stops_it(fastdist: FastdistCLI, img: str) -> None:
    r = fastdist(
        "run", "-d", "--restart", "always", "--name", "loop", img, "sh", "-c", "echo ready; exit 0"
    )
    assert r.rc == 0, r.stderr
    deadline = time.monotonic() + 60
    while fastdist("logs", "loop").stdout.count("ready") < 3:  # it came back twice at least
        assert time.monotonic() < deadline, "no restarts"
        time.sleep(0.1)
    assert fastdist("stop", "-t", "1", "loop").rc == 0  # returns once the supervisor is done
    # stop returned only once the supervisor exited: nothing is left to restart it
    rows = [json.loads(x) for x in fastdist("ps", "-a", "--format", "json").stdout.splitlines()]
    assert [(x["ID"], x["Status"]) for x in rows] == [("loop", "stopped")]
    assert (fastdist.root / "containers" / "loop" / "stopped").exists()
    assert fastdist("rm", "loop").rc == 0
    assert fastdist.leftovers() == CLEAN


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (("-d", "--restart", "sometimes"), "invalid --restart 'sometimes'"),
        (("-d", "--restart", "on-failure:x"), "invalid --restart 'on-failure:x'"),
        (("--restart", "always"), "needs a detached container without --rm"),
        (("-d", "--rm", "--restart", "always"), "needs a detached container without --rm"),
    ],
)
def test_bad_restart_policies_exit_2(
    fastdist: FastdistCLI, img: str, flags: tuple[str, ...], error: str
) -> None:
    r = fastdist("run", *flags, img, "true")
    assert r.rc == 2, r.stderr
    assert error in r.stderr
    assert fastdist.leftovers() == CLEAN


def test_start_and_restart_run_a_stopped_container_again_on_its_snapshot(
    fastdist: FastdistCLI, img: str
) -> None:
    script = "echo run >> /count; wc -l < /count; exit 4"
    assert fastdist("run", "--name", "again", img, "sh", "-c", script).stdout == "1\n"
    r = fastdist("start", "again")
    assert (r.rc, r.stdout) == (0, "again\n"), r.stderr
    assert fastdist("wait", "again").stdout == "4\n"
    assert fastdist("logs", "again").stdout == "2\n"  # what it wrote before is still there
    busy = fastdist("run", "-d", "--name", "up", img, "sh", "-c", "echo ready; exec sleep 300")
    assert busy.rc == 0
    _ready(fastdist, "up")
    twice = fastdist("start", "up")
    assert twice.rc == 7
    assert "error: container up is already running" in twice.stderr
    r = fastdist("restart", "-t", "0", "up")
    assert (r.rc, r.stdout) == (0, "up\n"), r.stderr
    rows = {
        x["ID"]: x
        for x in map(json.loads, fastdist("ps", "--format", "json").stdout.split("\n")[:-1])
    }
    assert rows["up"]["Status"] == "running"
    deadline = time.monotonic() + 60
    while fastdist("logs", "up").stdout != "ready\nready\n":  # the new run's first line
        assert time.monotonic() < deadline, fastdist("logs", "up").stdout
        time.sleep(0.1)
