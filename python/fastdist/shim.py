"""The supervisor of a detached container (``python -m fastdist.shim supervise …``).

Double-forked into its own session by :meth:`fastdist.runc.Runtime.start`, a child subreaper, it
runs ``runc create`` + ``runc start`` with stdout/stderr piped into ``<bundle>/log``, relays
published ports, reaps the container's init, applies the restart policy and records the exit status
in ``<bundle>/exit``. It holds an exclusive ``flock`` on ``<bundle>/supervisor.lock`` while it
lives, so ``wait``/``delete``/``logs -f`` synchronise on the lock instead of polling a pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import (
    ContainerRunError,
)
from .logs import DEFAULT_LOG_MAX_SIZE, LogWriter
from .ports import PortForwarder, PortMapping, listen
from .runc import runc_errors
from .spec import RestartPolicy, validate_id
from .store import write_file_atomic

log = logging.getLogger(__name__)


_PR_SET_CHILD_SUBREAPER = 36


def _exit_code(status: int) -> int:
    """A wait status as a shell would report it: 128+N when killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _supervise(root: Path, runc_path: str, container_id: str, report_fd: int) -> int:
    """Body of the detached supervisor (runs in its own session, see Runtime.start)."""
    if os.fork() != 0:
        os._exit(0)  # the intermediate: Runtime.start reaps it, we are reparented to init
    b = root / "containers" / validate_id(container_id)
    lock_fd = os.open(
        b / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
    )
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    report = os.fdopen(report_fd, "wb")

    def send(obj: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):
            report.write(json.dumps(obj).encode())
            report.close()

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        send({"ok": False, "error": f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}"})
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    base = [runc_path, "--root", str(root / "runc"), "--log", str(b / "runc.log")]
    base += ["--log-format", "json"]
    try:
        meta = json.loads((b / "fastdist.json").read_bytes())
        ports = [PortMapping(**p) for p in meta.get("ports", [])]
        listeners = [(p, listen(p)) for p in ports]
    except ContainerRunError as e:
        send({"ok": False, "error": f"{e.message}\n", "hint": e.hint})
        return 1
    restart = RestartPolicy(**meta.get("restart", {}))
    log = LogWriter(b / "log", int(meta.get("log_max_size", DEFAULT_LOG_MAX_SIZE)))
    forwarder: PortForwarder | None = None
    restarts = 0
    reported = False
    code: int | None = None
    while True:
        launched = _launch(base, b, container_id, log)
        if isinstance(launched, str):  # runc failed: the first time, the caller is told
            if not reported:
                send({"ok": False, "error": launched})
                log.close()
                return 1
            log.write("stderr", f"fastdist: restart failed: {launched}\n".encode())
            break
        pid, readers = launched
        if forwarder is None and listeners:
            forwarder = PortForwarder(listeners)
            forwarder.start()
        if forwarder is not None:
            forwarder.enter(pid)
        if not reported:
            send({"ok": True, "pid": pid})
            reported = True
        code = _reap(pid)
        # Once init is gone the kernel kills the rest of its pid namespace, so the pipes reach
        # EOF; bounded anyway, so a leaked writer cannot keep `wait` and `logs -f` from returning.
        for t in readers:
            t.join(_LOG_DRAIN_SECONDS)
        if not restart.wants(code, restarts) or (b / "stopped").exists():
            break
        restarts += 1
        write_file_atomic(b / "restarts", f"{restarts}\n".encode())
        subprocess.run(
            [*base, "delete", "--force", container_id],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            close_fds=True,
            check=False,
        )
        time.sleep(min(0.1 * 2 ** min(restarts, 10), 10.0))  # docker's back-off, capped
        if (b / "stopped").exists():  # stopped or removed during the back-off
            break
    log.close()
    if code is not None:
        write_file_atomic(b / "exit", f"{code}\n".encode())
    return 0


def _launch(
    base: list[str], b: Path, container_id: str, log: LogWriter
) -> tuple[int, list[Any]] | str:
    """``runc create`` + ``runc start`` with stdout/stderr piped into the log; the init's pid
    and the log readers, or runc's error."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        created = subprocess.run(
            [*base, "create", "--bundle", str(b), "--pid-file", str(b / "pid"), container_id],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            close_fds=True,
            check=False,
        )
    finally:
        os.close(out_w)  # the container holds its own copies now
        os.close(err_w)
    readers = [log.follow(out_r, "stdout"), log.follow(err_r, "stderr")]
    if created.returncode != 0:
        for t in readers:
            t.join(_LOG_DRAIN_SECONDS)
        return runc_errors(b / "runc.log") or f"runc create exited {created.returncode}"
    pid = int((b / "pid").read_text().strip())
    started = subprocess.run(
        [*base, "start", container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        close_fds=True,
        check=False,
    )
    if started.returncode != 0:
        error = runc_errors(b / "runc.log") or started.stderr.decode(errors="replace")
        subprocess.run(
            [*base, "delete", "--force", container_id],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            close_fds=True,
            check=False,
        )
        _reap(pid)
        for t in readers:
            t.join(_LOG_DRAIN_SECONDS)
        return error or f"runc start exited {started.returncode}"
    return pid, readers


_LOG_DRAIN_SECONDS = 10.0


def _reap(pid: int) -> int | None:
    """Reap children (we are a subreaper) until ``pid`` exits; its exit code."""
    while True:
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return None
        if wpid == pid:
            return _exit_code(status)


def _main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "supervise":
        logging.basicConfig(level=logging.INFO)
        return _supervise(Path(argv[1]), argv[2], argv[3], int(argv[4]))
    log.error("usage: python -m fastdist.shim supervise ROOT RUNC ID REPORT_FD")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
