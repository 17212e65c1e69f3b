"""``fastdist run / ps / logs / kill / rm``: the container half of the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import FastdistError, InvalidRunOptionError
from ..termsafe import sanitize
from .common import SNAPSHOTTER_HELP, _ago, _client, _table, add_registry_options, print_error
from .display import PullDisplay

if TYPE_CHECKING:
    from ..spec import Mount, RunOptions


def add_commands(sub: Any) -> None:
    sp = sub.add_parser(
        "run",
        help="run a command in a new container from an image",
        description="Run IMAGE's entrypoint and command (or CMD) in a new container on a "
        "fresh writable snapshot, confined by default (docker's capabilities, masked paths and "
        "a default seccomp profile), with runc. The image is pulled first when it is not "
        "present (the pull display ends before the container starts). Foreground runs exit "
        "with the container's status.",
    )
    sp.add_argument(
        "--name",
        "--id",
        dest="id",
        help="container name (default: a readable generated one)",
    )
    sp.add_argument(
        "--rm", action="store_true", help="remove the container when it exits (default: keep)"
    )
    sp.add_argument(
        "-d", "--detach", action="store_true", help="run in the background (default: foreground)"
    )
    sp.add_argument("-t", "--tty", action="store_true", help="allocate a terminal (default: no)")
    sp.add_argument(
        "-i", "--interactive", action="store_true", help="keep stdin open (default: /dev/null)"
    )
    sp.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable; a bare K passes the host's value (default: the "
        "image's Env)",
    )
    sp.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read K=V lines from FILE, as docker does (default: none)",
    )
    sp.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory (default: the image's, or /)"
    )
    sp.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="user to run as, a name from the image's /etc/passwd or a uid (default: the "
        "image's User, or root)",
    )
    sp.add_argument(
        "--entrypoint", metavar="CMD", help="replace the image's entrypoint (default: the image's)"
    )
    sp.add_argument(
        "--net",
        choices=("none", "host"),
        default="none",
        help="network: a new namespace with loopback only, or the host's (default: none)",
    )
    sp.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="bind-mount an existing host path SRC at DST, read-only with :ro (default: none)",
    )
    sp.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="bind a host path, creating the directory SRC if it is missing (docker's -v; "
        "default: none)",
    )
    sp.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:]HOST:CONTAINER[/tcp|udp]",
        help="relay a host TCP (default) or UDP port to a port on the container's loopback "
        "(default: none)",
    )
    sp.add_argument(
        "--log-max-size",
        metavar="SIZE",
        help="with -d: cap the log file at SIZE (e.g. 10m); when full it becomes the one older "
        "file kept, so the log takes at most twice SIZE (default: 20m)",
    )
    sp.add_argument(
        "--restart",
        default="no",
        metavar="POLICY",
        help="no, on-failure[:N], always: restart a detached container when it exits (default: no)",
    )
    sp.add_argument(
        "-m", "--memory", metavar="SIZE", help="memory limit, e.g. 512m, no swap (default: none)"
    )
    sp.add_argument("--cpus", metavar="N", help="CPU time limit in CPUs, e.g. 1.5 (default: none)")
    sp.add_argument(
        "--pids-limit", metavar="N", help="most processes at once, -1 for none (default: none)"
    )
    sp.add_argument(
        "--hostname", help="the container's hostname (default: its id; the host's with --net host)"
    )
    sp.add_argument(
        "--read-only",
        action="store_true",
        help="mount the root filesystem read-only (default: writable)",
    )
    sp.add_argument(
        "--cap-add",
        action="append",
        default=[],
        metavar="CAP",
        help="add a capability, or ALL (default: docker's set)",
    )
    sp.add_argument(
        "--cap-drop",
        action="append",
        default=[],
        metavar="CAP",
        help="drop a capability, or ALL (default: docker's set)",
    )
    sp.add_argument(
        "--privileged",
        action="store_true",
        help="every capability and host device, no seccomp filter, no masked paths "
        "(default: confined)",
    )
    sp.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="seccomp=unconfined|PROFILE.json, no-new-privileges[=false] (default: the built-in "
        "seccomp profile, no-new-privileges on)",
    )
    sp.add_argument(
        "--platform", help="platform to pull if the image is not present (default: this host)"
    )
    add_registry_options(sp)
    sp.add_argument("--snapshotter", choices=("overlayfs", "native"), help=SNAPSHOTTER_HELP)
    sp.add_argument("image", metavar="IMAGE", help="the image (pulled if missing)")
    sp.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="CMD", help="command and arguments"
    )
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser(
        "ps",
        help="list containers",
        description="List containers: id, image, command, status (with the exit status of a "
        "stopped one), age and published ports.",
    )
    sp.add_argument(
        "-a", "--all", action="store_true", help="include stopped containers (default: running)"
    )
    sp.add_argument(
        "-q", "--quiet", action="store_true", help="print only the container ids (default: table)"
    )
    sp.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (default: table)"
    )
    sp.set_defaults(func=cmd_ps)

    sp = sub.add_parser(
        "exec",
        help="run a command in a running container",
        description="Run CMD inside a running container, with its process settings (filter, "
        "capabilities, environment), as docker exec.",
    )
    sp.add_argument("-t", "--tty", action="store_true", help="allocate a terminal (default: no)")
    sp.add_argument(
        "-i", "--interactive", action="store_true", help="keep stdin open (default: /dev/null)"
    )
    sp.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (default: the container's)",
    )
    sp.add_argument(
        "-u", "--user", metavar="USER[:GROUP]", help="user to run as (default: the container's)"
    )
    sp.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory (default: the container's)"
    )
    sp.add_argument("id", metavar="ID", help="container id or name")
    sp.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="CMD", help="command and arguments"
    )
    sp.set_defaults(func=cmd_exec)

    sp = sub.add_parser(
        "stop",
        help="stop containers: TERM, then KILL after a timeout",
        description="Send TERM to each container's main process, then KILL if it has not "
        "exited after the timeout.",
    )
    _add_stop_timeout(sp)
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids or names")
    sp.set_defaults(func=cmd_stop)

    sp = sub.add_parser(
        "start",
        help="start stopped containers again, detached",
        description="Start stopped containers again, detached, on their writable snapshots.",
    )
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids or names")
    sp.set_defaults(func=cmd_start)

    sp = sub.add_parser(
        "restart",
        help="stop containers, then start them again, detached",
        description="Stop containers (TERM, then KILL after the timeout), then start them "
        "again, detached.",
    )
    _add_stop_timeout(sp)
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids or names")
    sp.set_defaults(func=cmd_restart)

    sp = sub.add_parser(
        "wait",
        help="wait for containers to exit and print their exit codes",
        description="Block until each container exits, then print its exit code.",
    )
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids or names")
    sp.set_defaults(func=cmd_wait)

    sp = sub.add_parser(
        "logs",
        help="print a detached container's output",
        description="Print what a detached container wrote: its stdout to stdout and its "
        "stderr to stderr, as docker does.",
    )
    sp.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until it exits (default: no)"
    )
    sp.add_argument(
        "-n", "--tail", type=_count, metavar="N", help="only the last N lines (default: all)"
    )
    sp.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="prefix each line with its time, UTC (default: no)",
    )
    sp.add_argument("id", metavar="ID", help="container id or name")
    sp.set_defaults(func=cmd_logs)

    sp = sub.add_parser(
        "kill",
        help="send a signal to containers",
        description="Send a signal to running containers' main processes (KILL, as docker).",
    )
    sp.add_argument("-s", "--signal", default="KILL", help="signal name or number (default: KILL)")
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids or names")
    sp.set_defaults(func=cmd_kill)

    sp = sub.add_parser(
        "rm",
        help="remove containers and their snapshots",
        description="Remove stopped containers: their bundles and writable snapshots.",
    )
    sp.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="kill running containers first (default: refuse them)",
    )
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids or names")
    sp.set_defaults(func=cmd_rm)


def _add_stop_timeout(sp: argparse.ArgumentParser) -> None:
    """``-t SECONDS`` of ``stop`` and ``restart`` (docker's spelling, and its 10 s default)."""
    sp.add_argument(
        "-t",
        "--time",
        "--timeout",
        dest="timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait after TERM before KILL (default: 10)",
    )


def _count(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid number of lines: {text!r} (a number or all)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}")
    return value


def parse_mount(text: str) -> Mount:
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[0]
        or not parts[1]
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise InvalidRunOptionError(f"invalid --mount {text!r}", hint="use SRC:DST or SRC:DST:ro")
    from ..spec import Mount

    src = os.path.abspath(parts[0])
    if not os.path.exists(src):
        raise InvalidRunOptionError(
            f"invalid --mount {text!r}: the source {src} does not exist",
            hint="create it first (docker's -v creates it; --mount does not), or fix the path",
        )
    return Mount(src, parts[1], len(parts) == 3 and parts[2] == "ro")


def parse_volume(text: str) -> Mount:
    """docker's ``-v SRC:DST[:ro|rw]`` for host paths: SRC absolute, created if missing."""
    from ..spec import Mount

    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[1]
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise InvalidRunOptionError(
            f"invalid --volume {text!r}", hint="use -v /host/path:/container/path[:ro]"
        )
    if not parts[0].startswith("/"):
        raise InvalidRunOptionError(
            f"invalid --volume {text!r}: the source must be an absolute host path",
            hint="named volumes are not supported; give an absolute path, e.g. -v $PWD/data:/data",
        )
    try:
        os.makedirs(parts[0], mode=0o755, exist_ok=True)
    except OSError as e:
        raise InvalidRunOptionError(
            f"cannot create the --volume source {parts[0]}: {e.strerror}",
            hint="create it yourself, or pick another path",
        ) from None
    return Mount(os.path.normpath(parts[0]), parts[1], len(parts) == 3 and parts[2] == "ro")


def parse_env_file(path: str) -> list[str]:
    """docker's --env-file: KEY=VALUE lines; a bare KEY takes the host's value; # comments."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InvalidRunOptionError(
            f"cannot read --env-file {path}: {e.strerror}",
            hint="give the path of a file of KEY=VALUE lines",
        ) from None
    out = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if "=" in s:
            out.append(s)
        elif s in os.environ:
            out.append(f"{s}={os.environ[s]}")
    return out


def _env(entries: list[str]) -> list[str]:
    out = []
    for e in entries:
        if "=" in e:
            out.append(e)
        elif e in os.environ:  # docker: -e NAME passes the host's value through
            out.append(f"{e}={os.environ[e]}")
    return out


def run_options(args: argparse.Namespace) -> RunOptions:
    """``fastdist run``'s flags as the one options value of a run (usage errors raise here)."""
    from ..logs import DEFAULT_LOG_MAX_SIZE
    from ..ports import parse_publish
    from ..spec import (
        RunOptions,
        parse_cpus,
        parse_log_max_size,
        parse_memory,
        parse_pids_limit,
        parse_restart,
        parse_security_opts,
    )

    env_file: list[str] = []
    for path in args.env_file:
        env_file += parse_env_file(path)
    security = parse_security_opts(args.security_opt)
    return RunOptions(
        id=args.id or "",
        command=tuple(args.command) or None,
        entrypoint=args.entrypoint,
        env=tuple(_env(args.env)),
        env_file=tuple(env_file),
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        interactive=args.interactive,
        detach=args.detach,
        net=args.net,
        mounts=tuple([parse_mount(m) for m in args.mount] + [parse_volume(v) for v in args.volume]),
        hostname=args.hostname,
        read_only=args.read_only,
        rm=args.rm,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        privileged=args.privileged,
        seccomp_profile=security.seccomp_profile,
        no_new_privileges=security.no_new_privileges,
        ports=tuple(parse_publish(p) for p in args.publish),
        restart=parse_restart(args.restart),
        memory=parse_memory(args.memory) if args.memory is not None else None,
        cpus=parse_cpus(args.cpus) if args.cpus is not None else None,
        pids_limit=parse_pids_limit(args.pids_limit) if args.pids_limit is not None else None,
        log_max_size=(
            parse_log_max_size(args.log_max_size)
            if args.log_max_size is not None
            else DEFAULT_LOG_MAX_SIZE
        ),
    )


def cmd_run(args: argparse.Namespace) -> int:

    options = run_options(args)
    client = _client(args)
    live = sys.stderr.isatty()
    display = PullDisplay(sys.stderr, live=live)
    with display:
        container = client.run(
            args.image,
            options,
            platform=args.platform,
            progress=display,
            on_interrupt=_interrupt_notice,
        )
    if args.detach:
        print(container.id)
        return 0
    return container.exit_code if container.exit_code is not None else 1


def _interrupt_notice(container_id: str) -> None:
    print(
        f"fastdist: sent SIGINT to container {container_id}; press Ctrl-C again within 2 "
        f"seconds to kill it (or: fastdist stop {container_id})",
        file=sys.stderr,
        flush=True,
    )


def cmd_ps(args: argparse.Namespace) -> int:

    client = _client(args)
    containers = client.containers(all=args.all)
    if args.quiet:
        for c in containers:
            print(c.id)
        return 0
    if args.format == "json":
        for c in containers:
            row = {
                "ID": c.id,
                "Image": c.image,
                "Command": list(c.command),
                "Status": c.status,
                "ExitCode": c.exit_code,
                "Created": c.created,
                "Ports": ", ".join(str(p) for p in c.ports),
            }
            print(json.dumps(row))
        return 0
    rows = [("ID", "IMAGE", "COMMAND", "STATUS", "CREATED", "PORTS")]
    now = time.time()
    for c in containers:
        status = c.status if c.exit_code is None else f"{c.status} ({c.exit_code})"
        cmd = " ".join(c.command)
        cmd = cmd if len(cmd) <= 40 else cmd[:39] + "…"  # docker's ps truncation mark
        ports = ", ".join(str(p) for p in c.ports)
        rows.append((c.id, c.image, cmd, status, _ago(now - c.created), ports))
    _table(rows)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:

    client = _client(args)
    streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for entry in client.container(args.id).log_entries(follow=args.follow, tail=args.tail):
        out = streams.get(entry.stream, sys.stdout.buffer)
        if args.timestamps:
            out.write(_rfc3339(entry.time).encode() + b" ")
        out.write(entry.data)
        out.flush()
    return 0


def _rfc3339(t: float) -> str:
    import datetime

    stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"  # docker's nanosecond form


def _each(args: argparse.Namespace, ids: list[str], action: Any) -> int:
    """Run ``action(client, id)`` for each id, reporting each failure; the last failure's code."""

    client = _client(args)
    rc = 0
    for cid in ids:
        try:
            action(client, cid)
        except FastdistError as e:
            print_error(e)
            rc = type(e).exit_code
    return rc


def cmd_kill(args: argparse.Namespace) -> int:
    from ..runc import parse_signal

    sig = parse_signal(args.signal)  # a usage error before any container is touched

    def kill(client: Any, cid: str) -> None:
        client.container(cid).kill(sig)
        print(sanitize(cid))

    return _each(args, args.ids, kill)


def cmd_stop(args: argparse.Namespace) -> int:
    def stop(client: Any, cid: str) -> None:
        client.container(cid).stop(args.timeout)
        print(sanitize(cid))

    return _each(args, args.ids, stop)


def cmd_start(args: argparse.Namespace) -> int:
    def start(client: Any, cid: str) -> None:
        client.container(cid).start()
        print(sanitize(cid))

    return _each(args, args.ids, start)


def cmd_restart(args: argparse.Namespace) -> int:
    def restart(client: Any, cid: str) -> None:
        client.container(cid).restart(args.timeout)
        print(sanitize(cid))

    return _each(args, args.ids, restart)


def cmd_wait(args: argparse.Namespace) -> int:
    def wait(client: Any, cid: str) -> None:
        code = client.container(cid).wait()
        print("unknown" if code is None else code)

    return _each(args, args.ids, wait)


def cmd_exec(args: argparse.Namespace) -> int:

    if not args.command:
        raise InvalidRunOptionError(
            "nothing to exec: give a command after the container id",
            hint=f"fastdist exec {args.id} sh -c '…'",
        )
    client = _client(args)
    return int(
        client.container(args.id).exec(
            args.command,
            tty=args.tty,
            interactive=args.interactive,
            env=_env(args.env),
            user=args.user,
            workdir=args.workdir,
        )
    )


def cmd_rm(args: argparse.Namespace) -> int:
    def remove(client: Any, cid: str) -> None:
        client.container(cid).remove(force=args.force)
        print(sanitize(cid))

    return _each(args, args.ids, remove)
