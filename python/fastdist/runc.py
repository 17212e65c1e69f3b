"""Containers on runc (``Runtime``): bundles, the runc CLI, state, exec, logs, kill and removal.

On disk (under the fastdist root)::

    <root>/runc/                 runc's state (--root), so we never clash with other runc users
    <root>/containers/<id>/      the bundle: config.json, fastdist.json, log, exit, runc.log,
                                 hostname, hosts, volumes/<n>/, rootfs/ (the caller mounts here)

A detached container is started through the supervisor of :mod:`fastdist.shim`.

No fastdist file descriptor leaks into a container (CVE-2024-21626): Python opens everything
``O_CLOEXEC`` and every subprocess gets ``close_fds=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from . import oci
from .errors import (
    ContainerNotFoundError,
    ContainerRunError,
    InUseError,
    InvalidRunOptionError,
    WorkdirError,
)
from .logs import LogEntry, read_log
from .ports import PortForwarder, PortMapping, listen
from .spec import CONTAINER_ID_RE, RunOptions, build_spec, merge_env, validate_id
from .store import check_beneath, write_file_atomic
from .users import resolve_user

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerState:
    """What runc and the exit file say about a container.

    ``status`` is ``created`` (bundle written, or runc created it but it has not started),
    ``running``, ``paused`` or ``stopped``; ``pid`` is the host pid of its init while it exists;
    ``exit_code`` is known once it stopped (128+N when killed by signal N).
    """

    id: str
    status: str
    pid: int | None
    exit_code: int | None
    bundle: Path


_BUNDLE_FILES = (
    "config.json",
    "fastdist.json",
    "log",
    "log.1",
    "exit",
    "pid",
    "runc.log",
    "hostname",
    "hosts",
    "supervisor.lock",
    "supervisor.log",
    "stopped",
    "restarts",
)


_STALE_RE = re.compile(
    r"exec-.*|\.(?:" + "|".join(re.escape(n) for n in _BUNDLE_FILES) + r")\.[0-9a-f]{12}\.tmp"
)
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


KILL_AFTER_SECOND_INTERRUPT = 2.0  # seconds: ^C twice in this window kills (docker's habit)


InterruptNotice = Callable[[str], None]  # told the container id after a first ^C is relayed


_TAIL = 4000


StdStream = Union[int, IO[Any], None]


def runc_errors(runc_log: Path) -> str:
    """The error messages runc logged (``--log-format json``), newest last, trimmed to a tail."""
    try:
        with open(runc_log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    msgs: list[str] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msgs.append(str(entry.get("msg", "")))
    return "\n".join(msgs)[-_TAIL:]


class Runtime:
    """Containers on runc, one bundle per container under ``<root>/containers``.

    The caller's flow: ``prepare(id)`` → mount the container's snapshot at ``rootfs_dir(id)`` →
    ``create(config, opts)`` → ``run(id)`` (foreground) or ``start(id)`` (detached) → ``state``,
    ``wait``, ``logs``, ``kill`` → ``delete(id)`` (runc forgets it) → unmount → ``remove(id)``.
    """

    def __init__(self, root: Path, *, runc: str = "runc") -> None:
        self.root = Path(root)
        self.runc = runc
        self.state_root = self.root / "runc"
        self.containers_dir = self.root / "containers"

    # -- paths ---------------------------------------------------------------------------------
    def bundle(self, container_id: str) -> Path:
        return self.containers_dir / validate_id(container_id)

    def rootfs_dir(self, container_id: str) -> Path:
        """Where the caller mounts the container's root filesystem."""
        return self.bundle(container_id) / "rootfs"

    def ids(self) -> list[str]:
        """Every container that has a bundle, sorted."""
        try:
            return sorted(
                p.name for p in self.containers_dir.iterdir() if CONTAINER_ID_RE.fullmatch(p.name)
            )
        except FileNotFoundError:
            return []

    def _existing(self, container_id: str) -> Path:
        b = self.bundle(container_id)
        if not b.is_dir():
            raise ContainerNotFoundError(f"no such container: {container_id}")
        return b

    # -- preconditions -------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse early (runc missing, not root), before a caller creates anything."""
        self._runc_cmd()

    def _runc_cmd(self, *args: str, bundle: Path | None = None, log: str = "runc.log") -> list[str]:
        path = shutil.which(self.runc)
        if path is None:
            raise ContainerRunError(
                f"cannot run containers: runc not found ({self.runc!r} is not on PATH)",
                hint="install it (apt-get install runc) or point fastdist at it",
            )
        if os.geteuid() != 0:
            raise ContainerRunError(
                "cannot run containers: fastdist must run as root to use runc",
                hint="run it again with sudo",
            )
        cmd = [path, "--root", str(self.state_root)]
        if bundle is not None:
            cmd += ["--log", str(bundle / log), "--log-format", "json"]
        return cmd + list(args)

    def _runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            self._runc_cmd(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            close_fds=True,
            check=False,
        )
        if check and proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", errors="replace").strip()[-_TAIL:]
            raise ContainerRunError(
                f"runc {args[0]} failed: {tail.splitlines()[-1] if tail else 'no message'}",
                status=proc.returncode,
                stderr_tail=tail,
            )
        return proc

    # -- setup ---------------------------------------------------------------------------------
    def prepare(self, container_id: str) -> Path:
        """Create the bundle directory (0700) and its empty ``rootfs`` mount point.

        Raises InUseError when the id is taken.
        """
        b = self.bundle(container_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in ("containers", "runc"):  # from the root's fd: a planted symlink is refused
            check_beneath(self.root, d, create=True)
        try:
            b.mkdir(mode=0o700)  # mkdir never follows a symlink in its place (EEXIST)
        except FileExistsError:
            raise InUseError(
                f"container id {container_id!r} is already in use",
                hint="pick another --id, or remove the old container",
            ) from None
        (b / "rootfs").mkdir(mode=0o755)
        return b

    def create(
        self, config: oci.ImageConfig, opts: RunOptions, rootfs_path: Path | None = None
    ) -> dict[str, Any]:
        """Write the bundle's config.json (and hostname/hosts) for ``opts.id``; return the spec.

        ``rootfs_path`` defaults to ``rootfs_dir(opts.id)``, which must already be mounted.
        """
        b = self._existing(opts.id)
        root = rootfs_path if rootfs_path is not None else b / "rootfs"
        spec = build_spec(config, opts, root, state_dir=b)
        hostname = str(spec["hostname"])
        write_file_atomic(b / "hostname", f"{hostname}\n".encode(), 0o644)
        hosts = (
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n"
        )
        write_file_atomic(b / "hosts", hosts.encode(), 0o644)
        meta = {
            "id": opts.id,
            "interactive": opts.interactive,
            "tty": opts.tty,
            "ports": [dataclasses.asdict(p) for p in opts.ports],
            "restart": dataclasses.asdict(opts.restart),
            "log_max_size": opts.log_max_size,
        }
        write_file_atomic(b / "fastdist.json", json.dumps(meta).encode())
        write_file_atomic(b / "config.json", json.dumps(spec, indent=1).encode())
        return spec

    def _meta(self, b: Path) -> Mapping[str, Any]:
        try:
            data = (
                json.loads((b / "config.json").read_bytes()),
                json.loads((b / "fastdist.json").read_bytes()),
            )
        except FileNotFoundError:
            raise ContainerRunError(
                f"container {b.name} has no spec yet", hint="call create() before starting it"
            ) from None
        spec, meta = data
        return {
            "tty": bool(spec["process"]["terminal"]),
            "interactive": bool(meta["interactive"]),
            "ports": [PortMapping(**p) for p in meta.get("ports", [])],
        }

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        container_id: str,
        *,
        stdin: StdStream = None,
        stdout: StdStream = None,
        stderr: StdStream = None,
        on_interrupt: InterruptNotice | None = None,
    ) -> int:
        """Run in the foreground with ``runc run`` and return the container's exit status.

        stdio is inherited unless given (stdin is /dev/null unless the container is interactive).
        SIGINT, SIGTERM, SIGHUP and SIGQUIT received meanwhile (main thread only) are forwarded:
        runc, in its own session so a terminal's ^C reaches it once, relays them to the
        container. A runc failure (not the container's own exit) raises ContainerRunError.
        """
        b = self._existing(container_id)
        meta = self._meta(b)
        pid_file = b / "pid"
        cmd = self._runc_cmd(
            "run", "--bundle", str(b), "--pid-file", str(pid_file), container_id, bundle=b
        )
        if not meta["interactive"] and stdin is None:
            stdin = subprocess.DEVNULL
        for name in ("exit", "pid"):
            with contextlib.suppress(FileNotFoundError):
                (b / name).unlink()
        (b / "runc.log").write_bytes(b"")
        listeners = [(p, listen(p)) for p in meta["ports"]]  # a port in use: nothing ran
        forwarder = PortForwarder(listeners, pid_file) if listeners else None
        if forwarder is not None:
            forwarder.start()
        try:
            code = self._foreground(
                container_id, cmd, meta["tty"], stdin, stdout, stderr, on_interrupt=on_interrupt
            )
        finally:
            if forwarder is not None:
                forwarder.close()
        errors = runc_errors(b / "runc.log")
        if errors:
            raise ContainerRunError(
                f"runc could not run container {container_id}: {errors.splitlines()[-1]}",
                hint=_hint_for(errors),
                status=code,
                stderr_tail=errors,
            )
        write_file_atomic(b / "exit", f"{code}\n".encode())
        return code

    def _foreground(
        self,
        container_id: str,
        cmd: list[str],
        tty: bool,
        stdin: StdStream,
        stdout: StdStream,
        stderr: StdStream,
        *,
        on_interrupt: InterruptNotice | None = None,
    ) -> int:
        """Run ``runc run``/``runc exec`` in the foreground, relaying signals; its exit status.

        runc is in its own session, so a terminal's ^C reaches it once, through us. A second
        SIGINT within ``KILL_AFTER_SECOND_INTERRUPT`` seconds of the first kills the container
        (its PID 1 may ignore SIGINT, as a shell does); ``on_interrupt`` is told after the first.
        """
        if tty:
            fds = [
                s if isinstance(s, int) else (s.fileno() if s is not None else d)
                for s, d in ((stdin, 0), (stdout, 1), (stderr, 2))
            ]
            if not any(fd >= 0 and os.isatty(fd) for fd in fds):
                raise ContainerRunError(
                    "cannot allocate a terminal: none of stdin, stdout, stderr is a TTY",
                    hint="drop -t, or run from a terminal",
                )
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,
        )
        previous: dict[int, Any] = {}
        last_interrupt: list[float] = []

        def forward(signum: int, _frame: object) -> None:
            now = time.monotonic()
            if signum == signal.SIGINT:
                if last_interrupt and now - last_interrupt[-1] <= KILL_AFTER_SECOND_INTERRUPT:
                    with contextlib.suppress(ContainerRunError):
                        self._runc("kill", container_id, "KILL", check=False)
                    return
                last_interrupt.append(now)
                if on_interrupt is not None:
                    on_interrupt(container_id)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        try:
            if _in_main_thread():
                # SIGWINCH too with a terminal: it reaches our process group, not runc's session,
                # and runc resizes the container's terminal when it gets it.
                forwarded = _FORWARDED_SIGNALS + ((signal.SIGWINCH,) if tty else ())
                for sig in forwarded:
                    previous[sig] = signal.signal(sig, forward)
            code = proc.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        return 128 - code if code < 0 else code

    def exec(
        self,
        container_id: str,
        args: Sequence[str],
        *,
        tty: bool = False,
        interactive: bool = False,
        env: Sequence[str] = (),
        user: str | None = None,
        workdir: str | None = None,
        stdin: StdStream = None,
        stdout: StdStream = None,
        stderr: StdStream = None,
    ) -> int:
        """Run ``args`` in the running container (``runc exec``); the process's exit status.

        The new process is the container's own process spec (capabilities, rlimits,
        no_new_privs, the seccomp filter of the container) with its args, env (``env`` entries
        replace or add ``KEY=VALUE``), user (resolved in the container's root) and cwd replaced.
        """
        b = self._existing(container_id)
        if not args:
            raise InvalidRunOptionError("nothing to exec: give a command", hint="exec ID CMD…")
        state = self.state(container_id)
        if state.status != "running":
            raise ContainerRunError(
                f"cannot exec in container {container_id}: it is {state.status}",
                hint="exec needs a running container (start one with run -d)",
            )
        spec = json.loads((b / "config.json").read_bytes())
        process = dict(spec["process"])
        process["args"] = list(args)
        process["terminal"] = tty
        process["env"] = merge_env(list(process.get("env", [])), tuple(env), "-e")
        if user is not None:
            u = resolve_user(b / "rootfs", user)
            process["user"] = {"uid": u.uid, "gid": u.gid}
            if u.additional_gids:
                process["user"]["additionalGids"] = list(u.additional_gids)
        if workdir is not None:
            if not workdir.startswith("/"):
                raise WorkdirError(
                    f"invalid working directory {workdir!r}: it must be an absolute path"
                )
            process["cwd"] = workdir
        if not interactive and stdin is None:
            stdin = subprocess.DEVNULL
        fd, name = tempfile.mkstemp(prefix="exec-", suffix=".json", dir=b)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(process).encode())
            log_name = Path(name).name.removesuffix(".json") + ".log"
            cmd = self._runc_cmd("exec", "--process", name, container_id, bundle=b, log=log_name)
            try:
                code = self._foreground(container_id, cmd, tty, stdin, stdout, stderr)
                errors = runc_errors(b / log_name)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    (b / log_name).unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        if errors:
            raise ContainerRunError(
                f"runc could not exec in container {container_id}: {errors.splitlines()[-1]}",
                hint=_hint_for(errors),
                status=code,
                stderr_tail=errors,
            )
        return code

    def start(self, container_id: str) -> ContainerState:
        """Start detached: output goes to ``<bundle>/log``; returns once the container runs.

        A supervisor process (see the module docstring) owns the container from here on.
        """
        b = self._existing(container_id)
        meta = self._meta(b)
        if meta["tty"]:
            raise ContainerRunError(
                "a detached container cannot have a terminal yet", hint="drop -t when using -d"
            )
        cmd = self._runc_cmd("state", container_id)  # checks runc and root up front
        runc_path = cmd[0]
        for name in ("exit", "pid", "stopped", "restarts"):
            with contextlib.suppress(FileNotFoundError):
                (b / name).unlink()
        (b / "runc.log").write_bytes(b"")
        read_fd, write_fd = os.pipe()  # both O_CLOEXEC; the write end is passed explicitly
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        try:
            with open(b / "supervisor.log", "ab") as err:
                intermediate = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fastdist.shim",
                        "supervise",
                        str(self.root),
                        runc_path,
                        container_id,
                        str(write_fd),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    close_fds=True,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    cwd="/",  # never pin the caller's working directory (or its mount)
                    env=env,
                )
            os.close(write_fd)
            write_fd = -1
            intermediate.wait()  # it forks the supervisor and exits at once
            with os.fdopen(read_fd, "rb") as r:
                read_fd = -1
                report = r.read(1 << 20)
        finally:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
        try:
            result = json.loads(report) if report else {}
        except ValueError:
            result = {}
        if not result.get("ok"):
            errors = str(result.get("error") or "the supervisor died; see supervisor.log")
            raise ContainerRunError(
                f"runc could not start container {container_id}: {errors.splitlines()[-1]}",
                hint=str(result["hint"]) if result.get("hint") else _hint_for(errors),
                status=result.get("status"),
                stderr_tail=errors[-_TAIL:],
            )
        return self.state(container_id)

    # -- inspection ----------------------------------------------------------------------------
    def state(self, container_id: str) -> ContainerState:
        b = self._existing(container_id)
        exit_code: int | None = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            exit_code = int((b / "exit").read_text().strip())
        proc = self._runc("state", container_id, check=False)
        if proc.returncode == 0:
            info = json.loads(proc.stdout)
            status = str(info.get("status", "unknown"))
            pid = info.get("pid") or None
            if status == "stopped":
                pid = None
            return ContainerState(container_id, status, pid, exit_code, b)
        status = "stopped" if exit_code is not None else "created"
        return ContainerState(container_id, status, None, exit_code, b)

    def wait(self, container_id: str) -> int | None:
        """Block until the container exits (and a detached one's supervisor recorded it); its
        exit status, if known."""
        b = self._existing(container_id)
        self._wait_exit(container_id, None)
        self._wait_supervisor(b)
        return self.state(container_id).exit_code

    def _wait_supervisor(self, b: Path, *, block: bool = True) -> bool:
        """Whether no supervisor holds the bundle (waiting for it to finish when ``block``)."""
        try:
            fd = os.open(b / "supervisor.lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            return True
        finally:
            os.close(fd)

    def logs(self, container_id: str, *, follow: bool = False) -> Iterator[bytes]:
        """The output of a detached container (stdout and stderr in the order written);
        with ``follow``, until it stops."""
        return (e.data for e in self.log_entries(container_id, follow=follow))

    def log_entries(
        self, container_id: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[LogEntry]:
        """The lines of a detached container's output with their stream and time; ``tail``:
        only the last N already written; with ``follow``, then what comes until it stops."""
        b = self._existing(container_id)
        return read_log(
            b, follow=follow, tail=tail, writer_gone=lambda: self._wait_supervisor(b, block=False)
        )

    # -- control -------------------------------------------------------------------------------
    def kill(self, container_id: str, sig: int | str = signal.SIGKILL) -> None:
        """Send ``sig`` (a number, or a name like ``KILL``/``SIGKILL``) to the container's init.

        The default is KILL, as docker's: a shell as PID 1 ignores TERM.
        """
        b = self._existing(container_id)
        name = parse_signal(sig)
        if name in ("KILL", "TERM", "9", "15"):
            _mark_stopped(b)  # the user stops it: no restart policy brings it back
        self._runc("kill", container_id, name)

    def _init_pidfd(self, container_id: str) -> int | None:
        """A pidfd of the container's running init (None once it is gone)."""
        state = self.state(container_id)
        if state.status not in ("running", "paused") or state.pid is None:
            return None
        try:
            fd = os.pidfd_open(state.pid)
        except ProcessLookupError:
            return None
        # The pid could have been reused between runc's answer and pidfd_open: ask again.
        again = self.state(container_id)
        if again.pid != state.pid or again.status not in ("running", "paused"):
            os.close(fd)
            return None
        return fd

    def _wait_exit(self, container_id: str, timeout: float | None) -> bool:
        """Wait for the container's init to exit (at most ``timeout`` s); whether it did."""
        fd = self._init_pidfd(container_id)
        if fd is None:
            return True
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        finally:
            os.close(fd)

    def stop(self, container_id: str, timeout: float = 10.0) -> int | None:
        """docker's stop: TERM, then KILL if the container still runs after ``timeout`` s.

        Returns the exit status once known (recorded by a detached container's supervisor).
        """
        b = self._existing(container_id)
        _mark_stopped(b)
        if self.state(container_id).status in ("running", "paused"):
            with contextlib.suppress(ContainerRunError):  # it may exit meanwhile
                self._runc("kill", container_id, "TERM")
            if not self._wait_exit(container_id, timeout):
                with contextlib.suppress(ContainerRunError):
                    self._runc("kill", container_id, "KILL")
                self._wait_exit(container_id, None)
        self._wait_supervisor(b)
        return self.state(container_id).exit_code

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Make runc forget the container (``force`` kills a running one first).

        Waits for a detached container's supervisor to record the exit status. The bundle stays
        until :meth:`remove`, so the caller can unmount the rootfs first.
        """
        b = self._existing(container_id)
        proc = self._runc("state", container_id, check=False)
        if proc.returncode == 0:
            status = json.loads(proc.stdout).get("status")
            if status in ("running", "paused") and not force:
                raise InUseError(
                    f"container {container_id} is {status}",
                    hint="stop it first (kill), or force the removal",
                )
            _mark_stopped(b)
            self._runc("delete", *(["--force"] if force else []), container_id)
        self._wait_supervisor(b)

    def remove(self, container_id: str) -> None:
        """Remove the bundle: only the files fastdist wrote, never through a mounted rootfs."""
        b = self._existing(container_id)
        if self._runc("state", container_id, check=False).returncode == 0:
            raise InUseError(
                f"container {container_id} still exists in runc", hint="delete it first"
            )
        rootfs_dir = b / "rootfs"
        if os.path.ismount(rootfs_dir):
            raise InUseError(
                f"cannot remove container {container_id}: {rootfs_dir} is still mounted",
                hint="unmount the container's rootfs first",
            )
        for name in _BUNDLE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (b / name).unlink()
        for stale in b.iterdir():
            # An interrupted exec's process spec and log; an interrupted write_file_atomic's
            # temp file (``.<name>.<random>.tmp``).
            if _STALE_RE.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink():
                stale.unlink()
        if (b / "volumes").exists():
            shutil.rmtree(b / "volumes")  # fd-based on Linux: never follows symlinks out
        for d in (rootfs_dir, b):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise ContainerRunError(
                    f"cannot remove {d}: {e.strerror}",
                    hint="it holds files fastdist did not write; inspect and remove it by hand",
                ) from None


def _mark_stopped(b: Path) -> None:
    write_file_atomic(b / "stopped", b"")


def parse_signal(sig: int | str) -> str:
    """A signal as runc takes it (``KILL``, ``15``); unknown names and numbers are usage errors."""
    if isinstance(sig, int) or (isinstance(sig, str) and sig.isdigit()):
        number = int(sig)
        if 1 <= number <= signal.SIGRTMAX:
            return str(number)
    else:
        name = sig.upper().removeprefix("SIG")
        if name in {s.name.removeprefix("SIG") for s in signal.Signals}:
            return name
    raise InvalidRunOptionError(
        f"unknown signal {str(sig)[:40]!r}",
        hint="use a name like KILL, TERM, HUP, INT, USR1 (with or without SIG), or a number",
    )


def _hint_for(errors: str) -> str | None:
    if "executable file not found" in errors or "no such file or directory" in errors:
        return "check the command: it must exist in the image (and on its PATH)"
    if "permission denied" in errors:
        return "check the command's permissions and the user it runs as"
    return None


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
