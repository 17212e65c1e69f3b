"""``fastdist run / ps / logs / kill / rm`` through the real CLI (a subprocess), as root with real
runc, on busybox-static images built here and pushed to the session registry."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fastdist.testing.images import BuiltLayer, build_image

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage, Result

pytestmark = [
    pytest.mark.registry,
    pytest.mark.root,
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
]

CLEAN = {"mounts": [], "snapshots": [], "bundles": [], "runc": []}
POLL_DEADLINE = 30.0  # seconds a bounded wait-for-condition loop may take before failing


@pytest.fixture(scope="session")
def entry_image(push: Any, busybox_layer: BuiltLayer) -> PushedImage:
    """Entrypoint ``echo ep`` with Cmd ``default-cmd``."""
    image = build_image([busybox_layer], entrypoint=["echo", "ep"], cmd=["default-cmd"])
    pushed: PushedImage = push("entry:1", image)
    return pushed


@pytest.fixture(scope="session")
def nocmd_image(push: Any, busybox_layer: BuiltLayer) -> PushedImage:
    """Neither Entrypoint nor Cmd."""
    pushed: PushedImage = push("nocmd:1", build_image([busybox_layer], env=["PATH=/bin"]))
    return pushed


@pytest.fixture
def img(fastdist: FastdistCLI, busybox: PushedImage) -> str:
    """The busybox image, already pulled into the test's store."""
    r = fastdist("pull", "-q", busybox.ref)
    assert r.rc == 0, r.stderr
    return busybox.ref


def _poll(what: str, check: Callable[[], Result | None]) -> Result:
    """Repeat ``check`` until it returns a result, for at most POLL_DEADLINE seconds."""
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        got = check()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _ps(fastdist: FastdistCLI, *flags: str) -> dict[str, list[str]]:
    """``fastdist ps`` rows by id: [IMAGE, COMMAND…, STATUS…, CREATED…, PORTS…] split on
    whitespace."""
    r = fastdist("ps", *flags)
    assert r.rc == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "IMAGE", "COMMAND", "STATUS", "CREATED", "PORTS"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def _status(fastdist: FastdistCLI, cid: str) -> str:
    r = fastdist("ps", "-a")
    lines = r.stdout.splitlines()
    header = lines[0]
    start, end = header.index("STATUS"), header.index("CREATED")
    for line in lines[1:]:
        if line.split()[0] == cid:
            return line[start:end].strip()
    return ""


# --- exit codes, stdio, env ------------------------------------------------------------------
def test_exit_code_of_the_container_is_the_exit_code_of_fastdist(
    fastdist: FastdistCLI, img: str
) -> None:
    assert fastdist("run", "--rm", img, "sh", "-c", "exit 7").rc == 7
    assert fastdist("run", "--rm", img, "true").rc == 0
    assert fastdist("run", "--rm", img, "sh", "-c", "exit 255").rc == 255


def test_stdout_and_stderr_stay_separate(fastdist: FastdistCLI, img: str) -> None:
    r = fastdist("run", "--rm", img, "sh", "-c", "echo to-out; echo to-err >&2")
    assert r.rc == 0
    assert r.stdout == "to-out\n"
    assert r.stderr == "to-err\n"  # the image was pulled already: no pull display


def test_env_merges_image_env_file_and_flags_in_that_order(
    fastdist: FastdistCLI, img: str, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\n\nKEEP=from-file\nFROM_FILE=yes\nHOST_PASS\n")
    r = fastdist(
        "run",
        "--rm",
        "-e",
        "GREETING=from-cli",
        "-e",
        "FROM_FILE=overridden",
        "-e",
        "NEW=1",
        "--env-file",
        str(env_file),
        img,
        "env",
        env={"HOST_PASS": "through"},
    )
    assert r.rc == 0, r.stderr
    env = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert env["PATH"] == "/usr/bin:/bin"  # the image's
    assert env["GREETING"] == "from-cli"  # -e replaces the image's value
    assert env["KEEP"] == "from-file"  # --env-file replaces the image's value
    assert env["FROM_FILE"] == "overridden"  # -e beats --env-file
    assert env["NEW"] == "1"
    assert env["HOST_PASS"] == "through"  # a bare name takes the host's value
    assert env["HOME"] == "/root"
    plain = fastdist("run", "--rm", img, "env")
    env = dict(line.split("=", 1) for line in plain.stdout.splitlines())
    assert env["GREETING"] == "from-image"
    assert env["KEEP"] == "image-value"
    assert "NEW" not in env


# --- user, workdir, entrypoint/cmd -----------------------------------------------------------
def test_user_by_name_gets_its_groups_and_home_from_the_image(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "--rm", "-u", "app", img, "sh", "-c", 'id; id -G; echo "$HOME"')
    assert r.rc == 0, r.stderr
    ident, groups, home = r.stdout.splitlines()
    assert ident.startswith("uid=1000(app) gid=1000(app) ")
    assert set(groups.split()) >= {"1000", "29", "2000"}  # primary plus audio and extra
    assert home == "/home/app"


def test_numeric_user_and_group_have_no_supplementary_groups(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "--rm", "-u", "1000:1000", img, "sh", "-c", "id -u; id -g; id -G")
    assert r.rc == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["1000", "1000", "1000"]
    r = fastdist("run", "--rm", "-u", "4242", img, "id")
    assert r.stdout.startswith("uid=4242 gid=0(root)")


def test_workdir_is_created_and_used(fastdist: FastdistCLI, img: str) -> None:
    r = fastdist("run", "--rm", "-w", "/some/new/dir", img, "sh", "-c", "pwd; ls -d /some/new")
    assert r.rc == 0, r.stderr
    assert r.stdout == "/some/new/dir\n/some/new\n"
    default = fastdist("run", "--rm", img, "pwd")
    assert default.stdout == "/srv\n"  # the image's WorkingDir


def test_entrypoint_and_cmd_follow_docker_rules(
    fastdist: FastdistCLI, entry_image: PushedImage
) -> None:
    ref = entry_image.ref
    assert fastdist("run", "--rm", ref).stdout == "ep default-cmd\n"
    # CLI args replace Cmd and keep the Entrypoint
    assert fastdist("run", "--rm", ref, "a", "b").stdout == "ep a b\n"
    # --entrypoint replaces the Entrypoint and clears Cmd
    assert fastdist("run", "--rm", "--entrypoint", "echo", ref).stdout == "\n"
    assert fastdist("run", "--rm", "--entrypoint", "echo", ref, "x").stdout == "x\n"
    r = fastdist("run", "--rm", "--entrypoint", "/bin/sh", ref, "-c", "echo $0")
    assert r.stdout == "/bin/sh\n"


def test_image_with_nothing_to_run_is_a_clear_error_and_leaves_nothing(
    fastdist: FastdistCLI, nocmd_image: PushedImage
) -> None:
    r = fastdist("run", "--rm", nocmd_image.ref)
    assert r.rc == 8  # ContainerRunError
    assert "Traceback" not in r.stderr
    assert "error: nothing to run" in r.stderr
    assert "\nhint: " in r.stderr
    assert fastdist.leftovers() == CLEAN
    assert _ps(fastdist, "-a") == {}
    # The same image runs once it is given a command.
    assert fastdist("run", "--rm", nocmd_image.ref, "echo", "ok").stdout == "ok\n"


def test_unknown_user_is_a_clear_error_and_leaves_no_snapshot_or_mount(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "-u", "ghost", img, "id")
    assert r.rc == 8
    assert "Traceback" not in r.stderr
    assert "error: unknown user 'ghost'" in r.stderr
    assert "\nhint: " in r.stderr
    assert fastdist.leftovers() == CLEAN
    assert _ps(fastdist, "-a") == {}


@pytest.mark.parametrize("flags", [(), ("--rm",), ("-d",)])
def test_a_command_missing_from_the_image_fails_clearly_and_leaves_nothing(
    fastdist: FastdistCLI, img: str, flags: tuple[str, ...]
) -> None:
    r = fastdist("run", *flags, "--id", "broken", img, "/no/such/command")
    assert r.rc == 8  # ContainerRunError: runc could not start it
    assert "Traceback" not in r.stderr
    assert "error: runc could not" in r.stderr
    assert "/no/such/command" in r.stderr
    assert "hint: check the command" in r.stderr
    assert r.stdout == ""
    assert _ps(fastdist, "-a") == {}
    assert fastdist.leftovers() == CLEAN


def test_tty_without_a_terminal_is_refused_and_leaves_nothing(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "-t", img, "true")  # stdin is /dev/null, stdout/stderr are pipes
    assert r.rc == 8
    assert "error: cannot allocate a terminal" in r.stderr
    assert "hint: drop -t" in r.stderr
    assert _ps(fastdist, "-a") == {}
    assert fastdist.leftovers() == CLEAN


def test_detached_rm_container_is_reaped_once_it_exits(fastdist: FastdistCLI, img: str) -> None:
    r = fastdist("run", "-d", "--rm", "--id", "brief", img, "sh", "-c", "echo bye")
    assert r.rc == 0, r.stderr
    assert fastdist("logs", "-f", "brief").stdout == "bye\n"  # returns once it exited
    assert _ps(fastdist, "-a") == {}  # ps reaps stopped --rm containers
    assert fastdist.leftovers() == CLEAN


def test_invalid_container_id_is_refused_before_anything_is_created(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "--id", "../escape", img, "true")
    assert r.rc == 2  # a usage error
    assert "error: invalid container id '../escape'" in r.stderr
    assert fastdist.leftovers() == CLEAN
    assert not (fastdist.root.parent / "escape").exists()


def test_kill_of_a_stopped_container_and_rm_of_an_unknown_one_are_clear_errors(
    fastdist: FastdistCLI, img: str
) -> None:
    assert fastdist("run", "--id", "done", img, "true").rc == 0
    k = fastdist("kill", "done")
    assert k.rc == 8
    assert "error: cannot kill container done: it is stopped" in k.stderr
    r = fastdist("rm", "ghost")
    assert r.rc == 7
    assert "error: no such container: ghost" in r.stderr
    assert "hint: list them with: fastdist ps -a" in r.stderr


# --- rootfs ----------------------------------------------------------------------------------
def test_rm_removes_the_container_its_mount_and_its_snapshot(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "--rm", "--id", "gone", img, "sh", "-c", "echo x > /written; cat /written")
    assert r.rc == 0, r.stderr
    assert r.stdout == "x\n"
    assert _ps(fastdist, "-a") == {}
    assert fastdist.leftovers() == CLEAN
    # The image's layers were not touched by the container's write.
    assert not list((fastdist.root / "snapshots").glob("*/layers/*/fs/written"))


def test_without_rm_a_stopped_container_keeps_its_writes_until_rm(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "--id", "kept", img, "sh", "-c", "echo x > /written")
    assert r.rc == 0, r.stderr
    assert _status(fastdist, "kept") == "stopped (0)"
    assert len(fastdist.active_snapshots()) == 1
    assert fastdist.bundles() == ["kept"]
    # A new container from the same image starts from the image, not from kept's writes.
    assert fastdist("run", "--rm", img, "ls", "/written").rc != 0
    rm = fastdist("rm", "kept")
    assert rm.rc == 0, rm.stderr
    assert rm.stdout == "kept\n"
    assert fastdist.leftovers() == CLEAN


def test_read_only_root_refuses_writes(fastdist: FastdistCLI, img: str) -> None:
    r = fastdist("run", "--rm", "--read-only", img, "sh", "-c", "echo x > /x")
    assert r.rc != 0
    assert "Read-only file system" in r.stderr
    ok = fastdist(
        "run", "--rm", "--read-only", img, "sh", "-c", "echo x > /dev/shm/x; cat /dev/shm/x"
    )
    assert ok.stdout == "x\n"  # tmpfs mounts stay writable
    assert fastdist.leftovers() == CLEAN


# --- lifecycle -------------------------------------------------------------------------------
def _wait_for_log(fastdist: FastdistCLI, cid: str, text: str) -> Result:
    def check() -> Result | None:
        r = fastdist("logs", cid)
        return r if text in r.stdout else None

    return _poll(f"{text!r} in the logs of {cid}", check)


def test_detached_lifecycle_ps_logs_kill_rm(fastdist: FastdistCLI, img: str) -> None:
    script = "trap 'echo stopping; exit 3' TERM; echo hi; while :; do sleep 0.1; done"
    r = fastdist("run", "-d", "--id", "x", img, "sh", "-c", script)
    assert r.rc == 0, r.stderr
    assert r.stdout == "x\n"

    running = _ps(fastdist)
    assert list(running) == ["x"]
    assert running["x"][0] == img
    assert " ".join(running["x"][1:4]) == "sh -c trap"  # COMMAND, cut at 40 with a mark
    assert "…" in fastdist("ps").stdout
    assert _status(fastdist, "x") == "running"
    assert len(fastdist.mounts()) == 1
    assert _wait_for_log(fastdist, "x", "hi").stdout.startswith("hi\n")

    busy = fastdist("rm", "x")
    assert busy.rc == 7  # InUseError
    assert "error: container x is running" in busy.stderr
    assert "hint: " in busy.stderr
    assert "rm -f" in busy.stderr
    assert _status(fastdist, "x") == "running"  # the failed rm changed nothing

    assert fastdist("kill", "-s", "TERM", "x").rc == 0  # KILL is the default, as docker's
    follow = fastdist("logs", "-f", "x")  # returns once the container has exited
    assert follow.stdout == "hi\nstopping\n"
    assert _ps(fastdist) == {}  # no longer running
    assert _status(fastdist, "x") == "stopped (3)"

    rm = fastdist("rm", "x")
    assert rm.rc == 0, rm.stderr
    assert _ps(fastdist, "-a") == {}
    assert fastdist.leftovers() == CLEAN
    gone = fastdist("logs", "x")
    assert gone.rc == 7
    assert "no such container: x" in gone.stderr


def test_kill_with_sigkill_stops_a_container_that_ignores_sigterm(
    fastdist: FastdistCLI, img: str
) -> None:
    r = fastdist("run", "-d", "--id", "x", img, "sh", "-c", "echo hi; sleep 1000")
    assert r.rc == 0, r.stderr
    _wait_for_log(fastdist, "x", "hi")
    assert fastdist("kill", "-s", "KILL", "x").rc == 0
    fastdist("logs", "-f", "x")  # waits for the exit
    assert _status(fastdist, "x") == "stopped (137)"
    assert fastdist("rm", "x").rc == 0
    assert fastdist.leftovers() == CLEAN


def test_rm_force_removes_a_running_container(fastdist: FastdistCLI, img: str) -> None:
    assert fastdist("run", "-d", "--id", "busy", img, "sleep", "1000").rc == 0
    r = fastdist("rm", "-f", "busy")
    assert r.rc == 0, r.stderr
    assert _ps(fastdist, "-a") == {}
    assert fastdist.leftovers() == CLEAN


def test_same_id_twice_is_refused_and_leaks_nothing(fastdist: FastdistCLI, img: str) -> None:
    assert fastdist("run", "-d", "--id", "dup", img, "sleep", "1000").rc == 0
    before = fastdist.leftovers()
    for flags in (("-d",), ("--rm",), ()):
        r = fastdist("run", *flags, "--id", "dup", img, "echo", "second")
        assert r.rc == 7, r.stderr  # InUseError
        assert "Traceback" not in r.stderr
        assert "dup" in r.stderr.splitlines()[0]
        assert r.stdout == ""
        assert fastdist.leftovers() == before
        assert _status(fastdist, "dup") == "running"  # the first one is untouched
    assert fastdist("rm", "-f", "dup").rc == 0
    assert fastdist.leftovers() == CLEAN


def test_generated_ids_are_readable_and_unique(fastdist: FastdistCLI, img: str) -> None:
    ids = set()
    for _ in range(3):
        r = fastdist("run", "-d", img, "sleep", "1000")
        assert r.rc == 0, r.stderr
        ids.add(r.stdout.strip())
    assert len(ids) == 3
    for cid in ids:
        adjective, noun, suffix = cid.split("-")
        assert adjective.isalpha()
        assert noun.isalpha()
        assert len(suffix) == 4
    assert set(_ps(fastdist)) == ids
    r = fastdist("rm", "-f", *sorted(ids))
    assert r.rc == 0
    assert sorted(r.stdout.split()) == sorted(ids)
    assert fastdist.leftovers() == CLEAN


# --- images and containers -------------------------------------------------------------------
def test_run_pulls_an_image_that_is_not_there_yet(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    r = fastdist("run", "--rm", busybox.ref, "cat", "/srv/motd")
    assert r.rc == 0, r.stderr
    assert r.stdout == "hello from the app layer\n"
    assert f"{busybox.ref}: resolving" in r.stderr  # the pull display goes to stderr
    assert fastdist("images", "-q", busybox.ref).stdout.strip()  # listed (-q prints IDs)


def test_rmi_of_an_image_a_container_uses_fails_with_a_hint(
    fastdist: FastdistCLI, img: str
) -> None:
    assert fastdist("run", "--id", "user1", img, "true").rc == 0  # stopped, still a container
    r = fastdist("rmi", img)
    assert r.rc == 7  # InUseError
    assert "Traceback" not in r.stderr
    assert "used by container(s) user1" in r.stderr
    assert "hint: remove the containers first: fastdist rm -f user1" in r.stderr
    assert fastdist("images", "-q", img).stdout.strip()  # still listed (-q prints IDs)
    # prune keeps what the container's image needs
    assert fastdist("prune").stdout.startswith("removed 0 blob(s), 0 snapshot(s)")
    assert fastdist("rm", "user1").rc == 0
    assert fastdist("rmi", img).rc == 0


# --- signals ---------------------------------------------------------------------------------
def test_sigterm_to_foreground_fastdist_reaches_the_container(
    fastdist: FastdistCLI, img: str
) -> None:
    script = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    proc = fastdist.popen("run", "--rm", img, "sh", "-c", script)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"  # the trap is installed
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, err
    assert out == "got TERM\n"
    assert fastdist.leftovers() == CLEAN


def test_sigint_to_foreground_fastdist_reaches_the_container(
    fastdist: FastdistCLI, img: str
) -> None:
    script = "trap 'echo got INT; exit 5' INT; echo ready; while :; do sleep 0.05; done"
    proc = fastdist.popen("run", "--rm", img, "sh", "-c", script)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 5, err
    assert out == "got INT\n"
    assert fastdist.leftovers() == CLEAN


def test_mounts_and_hostname_options(fastdist: FastdistCLI, img: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")
    r = fastdist(
        "run",
        "--rm",
        "--hostname",
        "box1",
        "--mount",
        f"{shared}:/mnt/rw",
        "--mount",
        f"{shared}:/mnt/ro:ro",
        img,
        "sh",
        "-c",
        "hostname; cat /mnt/ro/in; echo out > /mnt/rw/out; echo x > /mnt/ro/y || echo refused",
    )
    assert r.rc == 0, r.stderr
    assert r.stdout == "box1\nfrom host\nrefused\n"
    assert (shared / "out").read_text() == "out\n"
    assert not (shared / "y").exists()
    assert fastdist.leftovers() == CLEAN
    bad = fastdist("run", "--rm", "--mount", "nocolon", img, "true")
    assert bad.rc == 2  # a usage error, as argparse's own
    assert "error: invalid --mount 'nocolon'" in bad.stderr
    assert "hint: use SRC:DST or SRC:DST:ro" in bad.stderr


def test_the_python_api_runs_an_image_with_one_run_options_value(
    fastdist: FastdistCLI, img: str, tmp_path: Path
) -> None:
    from fastdist import Client, RunOptions
    from fastdist.errors import InvalidRunOptionError
    from fastdist.spec import RestartPolicy

    client = Client(fastdist.root)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        c = client.run(
            img,
            RunOptions(command=("sh", "-c", "echo $FOO; id -u"), env=("FOO=bar",), user="7:7"),
            pull=False,
            stdout=f,
        )
    assert c.exit_code == 0
    assert out.read_bytes() == b"bar\n7\n"
    assert [i.id for i in client.containers()] == [c.id]  # a generated id, kept (no rm)
    c.remove()
    # what cannot run is refused before anything is created
    with pytest.raises(InvalidRunOptionError, match="needs a detached container"):
        client.run(img, RunOptions(restart=RestartPolicy("always")), pull=False)
    assert client.containers() == []
    assert fastdist.leftovers() == CLEAN
