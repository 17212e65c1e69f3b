"""``fastdist run / ps / logs / kill / rm``: the container half of the command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from .errors import FastdistError, InvalidArgumentError
from .termsafe import sanitize

if TYPE_CHECKING:
    from .runtime import Mount  # imported where used: the parser is built for every command


def add_commands(sub: Any) -> None:
    from .cli import SNAPSHOTTER_HELP, add_registry_options

    sp = sub.add_parser(
        "run",
        help="run a command in a new container from an image",
        description="Run IMAGE's entrypoint and command (or CMD) in a new container on a "
        "fresh writable snapshot, confined by default, with runc. The image is pulled first "
        "when it is not present (the pull display ends before the container starts). "
        "Foreground runs exit with the container's status.",
    )
    sp.add_argument("--id", help="container id (default: a readable generated one)")
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
        help="bind-mount host path SRC at DST, read-only with :ro (default: none)",
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
        "stopped one) and age.",
    )
    sp.add_argument(
        "-a", "--all", action="store_true", help="include stopped containers (default: running)"
    )
    sp.set_defaults(func=cmd_ps)

    sp = sub.add_parser(
        "logs",
        help="print a detached container's output",
        description="Print what a detached container wrote to stdout and stderr.",
    )
    sp.add_argument(
        "-f", "--follow", action="store_true", help="keep printing as it writes (default: no)"
    )
    sp.add_argument("id", metavar="ID", help="container id")
    sp.set_defaults(func=cmd_logs)

    sp = sub.add_parser(
        "kill",
        help="send a signal to a container",
        description="Send a signal to a running container's main process.",
    )
    sp.add_argument("-s", "--signal", default="TERM", help="signal name or number (default: TERM)")
    sp.add_argument("id", metavar="ID", help="container id")
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
    sp.add_argument("ids", nargs="+", metavar="ID", help="container ids")
    sp.set_defaults(func=cmd_rm)


def parse_mount(text: str) -> Mount:
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[0]
        or not parts[1]
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise InvalidArgumentError(f"invalid --mount {text!r}", hint="use SRC:DST or SRC:DST:ro")
    from .runtime import Mount

    return Mount(os.path.abspath(parts[0]), parts[1], len(parts) == 3 and parts[2] == "ro")


def parse_env_file(path: str) -> list[str]:
    """docker's --env-file: KEY=VALUE lines; a bare KEY takes the host's value; # comments."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise FastdistError(
            f"cannot read --env-file {path}: {e.strerror}",
            hint="pass a readable file of KEY=VALUE lines, or -e KEY=VALUE",
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


def _pull_if_missing(client: Any, args: argparse.Namespace) -> None:
    """Pull ``args.image`` when ``run`` needs it (``Client.image_for_run``: missing, or present
    for another platform), with the pull display on stderr.

    The display ends here, before the container starts: a live display redrawing its rows would
    overwrite what the container prints (and corrupt a ``-t`` prompt). A present image shows
    nothing at all (the display draws only once an event arrives)."""
    from .cli import PullDisplay, sigterm_interrupts

    with sigterm_interrupts(), PullDisplay(sys.stderr, live=sys.stderr.isatty()) as display:
        client.image_for_run(args.image, platform=args.platform, progress=display)


def cmd_run(args: argparse.Namespace) -> int:
    from .cli import _client

    client = _client(args)
    env_file: list[str] = []
    for path in args.env_file:
        env_file += parse_env_file(path)
    _pull_if_missing(client, args)
    container = client.run(
        args.image,
        args.command or None,
        id=args.id,
        detach=args.detach,
        rm=args.rm,
        platform=args.platform,
        entrypoint=args.entrypoint,
        env=_env(args.env),
        env_file=env_file,
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        interactive=args.interactive,
        net=args.net,
        mounts=[parse_mount(m) for m in args.mount],
        hostname=args.hostname,
        read_only=args.read_only,
    )
    if args.detach:
        print(container.id)
        return 0
    return container.exit_code if container.exit_code is not None else 1


def cmd_ps(args: argparse.Namespace) -> int:
    from .cli import _client, _table

    client = _client(args)
    rows = [("ID", "IMAGE", "COMMAND", "STATUS", "CREATED")]
    now = time.time()
    for c in client.containers(all=args.all):
        status = c.status if c.exit_code is None else f"{c.status} ({c.exit_code})"
        cmd = " ".join(c.command)
        cmd = cmd if len(cmd) <= 40 else cmd[:39] + "…"  # docker's ps truncation mark
        rows.append((c.id, c.image, cmd, status, _ago(now - c.created)))
    _table(rows)
    return 0


def _ago(seconds: float) -> str:
    s = int(seconds)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def cmd_logs(args: argparse.Namespace) -> int:
    from .cli import _client

    client = _client(args)
    out = sys.stdout.buffer
    for chunk in client.container(args.id).logs(follow=args.follow):
        out.write(chunk)
        out.flush()
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    from .cli import _client

    client = _client(args)
    sig: int | str = int(args.signal) if args.signal.isdigit() else args.signal.upper()
    client.container(args.id).kill(sig)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from .cli import _client, print_error

    client = _client(args)
    rc = 0
    for cid in args.ids:
        try:
            client.container(cid).remove(force=args.force)
            print(sanitize(cid))
        except FastdistError as e:
            print_error(e)
            rc = type(e).exit_code
    return rc
