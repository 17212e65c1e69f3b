"""The ``fastdist`` command line: parse arguments, call ``Client``, print. The only module that
prints or exits (design.md §1); errors become ``error: …`` / ``hint: …`` and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from . import __version__
from .errors import FastdistError, InvalidArgumentError
from .progress import Phase, ProgressEvent

log = logging.getLogger("fastdist")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# --- progress display -----------------------------------------------------------------------
@dataclass
class _Row:
    label: str
    phase: Phase
    current: int = 0
    total: int = 0


_DONE_PHASES = (Phase.DONE, Phase.EXISTS)


class PullDisplay:
    """containerd ``dist pull``-style live display: a row per blob, elapsed time, total and rate.

    On a terminal the rows are redrawn in place ten times a second; otherwise one plain line is
    printed per change of phase (never one per chunk), so logs stay readable.
    """

    def __init__(self, out: IO[str], live: bool, json_events: bool = False) -> None:
        self._out = out
        self._live = live
        self._json = json_events
        self._rows: dict[str, _Row] = {}
        self._title = ""
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PullDisplay:
        if self._live:
            self._thread = threading.Thread(target=self._loop, name="fastdist-display", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw(final=True)

    def __call__(self, ev: ProgressEvent) -> None:
        if self._json:
            self._emit_json(ev)
            return
        with self._lock:
            if ev.digest is None:
                if ev.phase is Phase.RESOLVING and ev.message != self._title:
                    self._title = ev.message
                    self._start = time.monotonic()
                    self._plain(f"{ev.message}: resolving")
                elif ev.phase is Phase.DONE:
                    # The pull is recorded: the manifests and indexes it resolved (stored right
                    # after resolving, with no event of their own) are done too.
                    for resolved in self._rows.values():
                        if resolved.phase is Phase.RESOLVED:
                            resolved.phase = Phase.DONE
                            self._plain(f"{resolved.label}: done")
                return
            row = self._rows.get(ev.digest)
            label = _label(ev)
            if row is None:
                row = self._rows[ev.digest] = _Row(label, ev.phase)
                changed = True
            else:
                changed = row.phase is not ev.phase
                # A retry or a late event must not move a finished row backwards.
                if row.phase in _DONE_PHASES and ev.phase not in (Phase.FAILED,):
                    return
                row.phase = ev.phase
            row.current = max(ev.current, row.current if ev.phase is Phase.DOWNLOADING else 0)
            row.total = ev.total or row.total
            if ev.phase is Phase.RETRYING:
                self._plain(f"{row.label}: retrying: {ev.message}", force=True)
            elif changed and ev.phase is not Phase.WAITING:
                self._plain(f"{row.label}: {ev.phase.value}")

    def _emit_json(self, ev: ProgressEvent) -> None:
        if ev.phase is Phase.DOWNLOADING and ev.current != ev.total:
            # Throttle per-chunk events to one per MiB-ish step to keep the stream small.
            with self._lock:
                row = self._rows.setdefault(ev.digest or "", _Row("", ev.phase))
                if ev.current - row.current < (1 << 20):
                    return
                row.current = ev.current
        obj: dict[str, object] = {
            "time": round(time.monotonic() - self._start, 4),
            "phase": ev.phase.value,
            "digest": ev.digest,
            "media_type": ev.media_type,
            "current": ev.current,
            "total": ev.total,
            "message": ev.message,
        }
        if ev.timings:
            obj["timings"] = {k: round(v, 4) for k, v in ev.timings}
        with self._lock:
            self._out.write(json.dumps(obj) + "\n")
            self._out.flush()

    def _plain(self, line: str, force: bool = False) -> None:
        if self._live or self._json:
            return
        self._out.write(line + "\n")
        self._out.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        with self._lock:
            rows = list(self._rows.values())
            title = self._title
        import shutil  # only a live display draws

        width = shutil.get_terminal_size((100, 20)).columns
        lines = []
        if title:
            lines.append(_fit(f"{title}: {'done' if final else 'pulling'}", width))
        done_bytes = 0
        for r in rows:
            cur = r.total if r.phase in _DONE_PHASES else r.current
            done_bytes += cur if r.phase is not Phase.EXISTS else 0
            done = r.phase in _DONE_PHASES
            bar = _bar(1, 1, 30) if done and not r.total else _bar(cur, r.total, 30)
            size = f"{_human(cur)}/{_human(r.total)}" if r.total else ""
            lines.append(_fit(f"{r.label:<28} {r.phase.value:<12} {bar} {size}", width))
        elapsed = time.monotonic() - self._start
        rate = done_bytes / elapsed if elapsed > 0 else 0
        lines.append(
            _fit(
                f"elapsed: {elapsed:5.1f} s   total: {_human(done_bytes)} ({_human(int(rate))}/s)",
                width,
            )
        )
        buf = []
        if self._drawn:
            buf.append(f"\x1b[{self._drawn}F")
        for line in lines:
            buf.append("\x1b[2K" + line + "\n")
        self._out.write("".join(buf))
        self._out.flush()
        self._drawn = len(lines)


def _label(ev: ProgressEvent) -> str:
    kind = "layer"
    mt = ev.media_type or ""
    if "manifest" in mt:
        kind = "manifest"
    elif "index" in mt or "list" in mt:
        kind = "index"
    elif "config" in mt or "container.image" in mt:
        kind = "config"
    digest = (ev.digest or "").removeprefix("sha256:")
    return f"{kind}-sha256:{digest[:12]}"


def _bar(cur: int, total: int, width: int) -> str:
    if total <= 0:
        return "|" + " " * width + "|"
    filled = min(width, int(width * cur / total))
    return "|" + "+" * filled + "-" * (width - filled) + "|"


def _fit(line: str, width: int) -> str:
    return line if len(line) < width else line[: max(10, width - 1)]


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


# --- commands ---------------------------------------------------------------------------------
def _client(args: argparse.Namespace, **kw: Any) -> Any:
    from .client import Client

    cfg = None
    plain = frozenset(getattr(args, "plain_http", None) or ())
    if plain:  # only then: importing the transport loads requests, which local commands skip
        from .transport import TransportConfig

        cfg = TransportConfig(plain_http_hosts=plain)
    return Client(
        args.root,
        snapshotter=getattr(args, "snapshotter", None),
        transport_config=cfg,
        hosts_dir=getattr(args, "hosts_dir", None),
        **kw,
    )


def cmd_pull(args: argparse.Namespace) -> int:
    client = _client(args)
    out = sys.stdout
    live = out.isatty() and not args.quiet and not args.json
    display = PullDisplay(out, live=live, json_events=args.json)
    if args.quiet:
        img = client.pull(args.ref, platform=args.platform)
    else:
        with display:
            img = client.pull(args.ref, platform=args.platform, progress=display)
    if not args.json:
        print(f"{img.name}: {img.target.digest}" if not args.quiet else img.target.digest)
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    client = _client(args)
    rows = [("REF", "TYPE", "DIGEST", "SIZE", "UNPACKED", "PLATFORM")]
    for img in client.images():
        try:
            plat = str(img.config().platform)
        except FastdistError:
            plat = "?"
        rows.append(
            (
                img.name,
                img.target.media_type,
                img.target.digest,
                _human(img.size()),
                _human(img.unpacked_size()),
                plat,
            )
        )
    if args.quiet:
        for r in rows[1:]:
            print(r[0])
        return 0
    _table(rows)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    client = _client(args)
    print(json.dumps(client.inspect(args.ref), indent=2, sort_keys=True))
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    """Every name is tried (docker does too): a missing one is reported and the rest removed;
    the exit status is the first failure's."""
    client = _client(args)
    rc = 0
    for ref in args.refs:
        try:
            name = client.remove(ref)
        except FastdistError as e:
            _report(e, args.debug)
            rc = rc or type(e).exit_code
            continue
        print(f"removed {name}")
    return rc


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``2d`` or plain seconds, as seconds (argparse type)."""
    unit = _DURATION_UNITS.get(text[-1:].lower(), 0.0)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 24h, 2d, 0)")
    return value


def cmd_prune(args: argparse.Namespace) -> int:
    client = _client(args)
    rep = (
        client.prune()
        if args.partial_age is None
        else client.prune(partial_older_than=args.partial_age)
    )
    print(
        f"removed {rep.blobs} blob(s), {rep.snapshots} snapshot(s), {rep.leftovers} leftover(s); "
        f"freed {_human(rep.bytes_freed)}"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .check import format_report

    client = _client(args)
    if args.repair and args.no_verify:
        raise InvalidArgumentError(
            "check --repair needs the blobs verified",
            hint="drop --no-verify: --repair re-hashes every blob to find the corrupt ones",
        )
    report = client.check(verify_blobs=not args.no_verify, repair=args.repair)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "blobs": report.blobs,
                    "snapshots": report.snapshots,
                    "images": report.images,
                    "problems": [vars(p) for p in report.problems],
                    "repaired": [vars(p) for p in report.repaired],
                    "incomplete_images": list(report.incomplete_images),
                    "leftovers": [vars(x) for x in report.leftovers],
                },
                indent=2,
            )
        )
    else:
        for line in format_report(report, verbose=args.verbose):
            print(line)
    return 0 if report.ok else 1


def cmd_unpack(args: argparse.Namespace) -> int:
    client = _client(args)
    out = client.unpack(args.ref, args.dest, keep_root_mode=args.keep_root_mode)
    print(f"unpacked {args.ref} into {out}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    client = _client(args)
    img = client.tag(args.src, args.dest)
    print(f"tagged {img.name}: {img.target.digest}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    client = _client(args)
    out = sys.stdout
    live = out.isatty() and not args.quiet and not args.json
    if args.quiet:
        rep = client.push(args.ref, args.dest)
    else:
        with PullDisplay(out, live=live, json_events=args.json) as display:
            rep = client.push(args.ref, args.dest, progress=display)
    for platform in rep.missing:
        print(
            f"note: platform {platform} of {args.ref} is not present: pushed this platform's "
            "manifest only, not the index",
            file=sys.stderr,
        )
    if not args.json:
        print(
            rep.digest
            if args.quiet
            else f"{rep.name}: {rep.digest} ({len(rep.uploaded)} uploaded, {len(rep.mounted)} "
            f"mounted, {len(rep.existed)} already there)"
        )
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
    else:
        raise InvalidArgumentError(
            "no password given", hint="pipe it in with --password-stdin (never on the command line)"
        )
    username = args.username
    if username is None:
        if not sys.stdin.isatty() or args.password_stdin:
            raise InvalidArgumentError("no username given", hint="pass -u USER")
        username = input("Username: ")
    where = _client(args).login(args.registry, username, password)
    print(f"login succeeded; credentials saved to {where}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    if _client(args).logout(args.registry):
        print(f"removed the credentials of {args.registry}")
    else:
        print(f"not logged in to {args.registry}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.output == "-":
        if sys.stdout.isatty():
            raise InvalidArgumentError(
                "refusing to write an archive to a terminal", hint="redirect it: -o - > FILE"
            )
        client.save(args.refs, sys.stdout.buffer, format=args.format)
        return 0
    client.save(args.refs, args.output, format=args.format)
    print(f"saved {len(args.refs)} image(s) to {args.output} ({args.format})", file=sys.stderr)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    client = _client(args)
    source = sys.stdin.buffer if args.input in (None, "-") else args.input
    for img in client.load(source, tag=args.tag):
        print(f"loaded {img.name}: {img.target.digest}")
    return 0


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# --- entry point ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with fastdist's error format (``error: …``, ``hint: usage …``, exit 2); the
    subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split())  # one line, however argparse wrapped it
        self.exit(EXIT_USAGE, f"error: {message}\nhint: {usage}; see: {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastdist", description="Fast, verified container-image pulls and runs.")
    p.add_argument(
        "--root", default=None, help="store root (default: $FASTDIST_ROOT or /var/lib/fastdist)"
    )
    p.add_argument("--debug", action="store_true", help="log HTTP requests; show tracebacks")
    p.add_argument(
        "--hosts-dir",
        default=None,
        metavar="DIR",
        help="registry mirrors: containerd-style DIR/<host>/hosts.toml (default: "
        "$FASTDIST_HOSTS_DIR, /etc/fastdist/certs.d, /etc/containerd/certs.d)",
    )
    p.add_argument("--version", action="version", version=f"fastdist {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("pull", help="fetch, verify and unpack an image")
    sp.add_argument("ref", metavar="REF")
    sp.add_argument(
        "--platform",
        help="os/arch[/variant] (default: this host's); a single-platform image built for "
        "another platform is refused; 'any' accepts it whatever its platform",
    )
    sp.add_argument(
        "--plain-http",
        action="append",
        metavar="HOST",
        help="allow plain HTTP to HOST[:PORT] (loopback is always allowed)",
    )
    sp.add_argument("--snapshotter", choices=("overlayfs", "native"))
    sp.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    sp.add_argument("--json", action="store_true", help="one JSON progress event per line")
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser(
        "images",
        aliases=["ls"],
        help="list local images",
        description="List local images. SIZE: manifest, config and compressed layers. "
        "UNPACKED: what the image's layer snapshots take on disk (du of each layer directory; "
        "measured the first time it is listed, then cached beside each snapshot).",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="names only")
    sp.set_defaults(func=cmd_images)

    sp = sub.add_parser("inspect", help="show an image's record, manifest and config as JSON")
    sp.add_argument("ref", metavar="REF")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("rmi", help="remove images (content stays until prune)")
    sp.add_argument("refs", nargs="+", metavar="REF")
    sp.set_defaults(func=cmd_rmi)

    sp = sub.add_parser("tag", help="give a present image another name (same digest)")
    sp.add_argument("src", metavar="SRC", help="name, name@digest or image ID (prefix)")
    sp.add_argument("dest", metavar="DEST", help="the new name[:tag]")
    sp.set_defaults(func=cmd_tag)

    sp = sub.add_parser(
        "push",
        help="push a present image to a registry",
        description="Push a present image to DEST (default: its own name): blobs first "
        "(skipped when the registry has them, mounted from the image's repository when it is "
        "on the same registry), then the manifest, an index last; bytes exactly as stored.",
    )
    sp.add_argument("ref", metavar="REF")
    sp.add_argument("dest", metavar="DEST", nargs="?", default=None)
    sp.add_argument(
        "--plain-http",
        action="append",
        metavar="HOST",
        help="allow plain HTTP to HOST[:PORT] (loopback is always allowed)",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    sp.add_argument("--json", action="store_true", help="one JSON progress event per line")
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser(
        "login",
        help="check credentials against a registry and save them in docker's config",
        description="Check USER's password against REGISTRY (default docker.io) and save it "
        "where docker would: the registry's credHelpers entry or the credsStore, else auths "
        "in $DOCKER_CONFIG/config.json or ~/.docker/config.json (0600). Pulls and pushes read "
        "credentials from the same places.",
    )
    sp.add_argument("registry", metavar="REGISTRY", nargs="?", default="docker.io")
    sp.add_argument("-u", "--username", default=None)
    sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sp.add_argument(
        "--plain-http", action="append", metavar="HOST", help="allow plain HTTP to HOST[:PORT]"
    )
    sp.set_defaults(func=cmd_login)

    sp = sub.add_parser("logout", help="remove a registry's saved credentials")
    sp.add_argument("registry", metavar="REGISTRY", nargs="?", default="docker.io")
    sp.set_defaults(func=cmd_logout)

    sp = sub.add_parser(
        "save",
        help="write images to a docker-archive or OCI layout",
        description="Write present images to FILE: a docker-archive (default; docker >= 25's "
        "form with an OCI layout inside, read by docker load, podman load and OCI tools), an "
        "oci-archive, or an oci-dir. FILE is made 0600 (DIR 0700) under a temporary name and "
        "renamed into place when complete; -o - writes the archive to stdout.",
    )
    sp.add_argument("refs", nargs="+", metavar="REF")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE, DIR or -")
    sp.add_argument(
        "--format", default="docker-archive", choices=("docker-archive", "oci-archive", "oci-dir")
    )
    sp.set_defaults(func=cmd_save)

    sp = sub.add_parser(
        "load",
        help="load images from a docker-archive or OCI layout (file, directory or stdin)",
        description="Load the images of a docker-archive (docker save, either form; podman "
        "save), an OCI layout directory or an oci-archive, verified as a pull is. Without -i "
        "(or with -i -) the archive is read from stdin.",
    )
    sp.add_argument("-i", "--input", default=None, metavar="FILE|DIR")
    sp.add_argument("--tag", default=None, metavar="NAME", help="name a single-image archive")
    sp.set_defaults(func=cmd_load)

    sp = sub.add_parser(
        "prune",
        help="delete blobs and snapshots no image uses",
        description="Delete blobs and snapshots that no image or container uses, leftover "
        "staging directories and mounts, and partial downloads older than --partial-age "
        "(a recent one is kept so that its pull resumes).",
    )
    sp.add_argument(
        "--partial-age",
        type=_duration,
        default=None,
        metavar="AGE",
        help="remove partial downloads untouched for AGE: 90s, 30m, 24h (default), 2d; "
        "0 removes them all",
    )
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser(
        "check",
        aliases=["fsck"],
        help="verify the store's blobs and snapshots",
        description="Verify the store: every blob against its digest, every image's blobs and "
        "snapshots, snapshot parent chains; list leftovers for prune. Exit 1 if there are "
        "problems. --repair removes corrupt blobs: the images that used them stay listed but "
        "incomplete, and the next pull of each fetches what is missing.",
    )
    sp.add_argument(
        "--no-verify", action="store_true", help="do not re-hash blobs (sizes and links only)"
    )
    sp.add_argument(
        "--repair",
        action="store_true",
        help="remove corrupt blobs (then pull the images it names again)",
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="list leftovers too")
    sp.add_argument("--json", action="store_true", help="the report as JSON")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser(
        "unpack",
        help="write an image's flattened root filesystem into DIR",
        description="Write an image's flattened root filesystem into DIR (created if missing; "
        "it must be empty, owned by you and not writable by group or others). DIR is made 0700, "
        "so setuid files of the image are unreachable for other users; a failed unpack leaves "
        "DIR as it was.",
    )
    sp.add_argument("ref", metavar="REF")
    sp.add_argument("dest", metavar="DIR")
    sp.add_argument(
        "--keep-root-mode",
        action="store_true",
        help="give DIR the mode of the image's own ./ entry instead of 0700 (default: 0700)",
    )
    sp.set_defaults(func=cmd_unpack)

    _add_run_commands(sub)
    return p


def _add_run_commands(sub: Any) -> None:
    try:
        from . import cli_run
    except ImportError:  # pragma: no cover - cli_run ships with the package
        return
    cli_run.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.root is None and os.environ.get("FASTDIST_ROOT"):
        args.root = os.environ["FASTDIST_ROOT"]
    try:
        rc: int = args.func(args)
        return rc
    except FastdistError as e:
        _report(e, args.debug)
        return type(e).exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        print(
            "hint: run the same command again; finished downloads are kept and partial ones resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except PermissionError as e:
        if args.debug:
            log.exception("command failed")
        print(f"error: permission denied: {e.filename or e}", file=sys.stderr)
        print(
            "hint: fastdist needs root for its default store and for overlayfs; "
            "run it as root or pass --root DIR --snapshotter native",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:
        return 0
    except OSError as e:
        # A path given on the command line that cannot be used (a --root under a missing or
        # read-only directory, say): still an error line, not a traceback.
        if args.debug:
            log.error("command failed", exc_info=e)
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        print(
            "hint: check the paths given (--root, destinations, files); --debug shows where "
            "it failed",
            file=sys.stderr,
        )
        return 1


def _report(e: FastdistError, debug: bool) -> None:
    """``error: …`` and ``hint: …`` on stderr (with the traceback under ``--debug``)."""
    if debug:
        log.error("command failed", exc_info=e)
    print(f"error: {e.message}", file=sys.stderr)
    if e.hint:
        print(f"hint: {e.hint}", file=sys.stderr)


def run() -> NoReturn:
    """The ``fastdist`` command (and ``python -m fastdist``): ``main()``, then a quick exit.

    Once ``main()`` has returned, the command's work is complete and committed: pulls have
    joined their threads, the database has committed (WAL: durable without the checkpoint
    that closing would add), locks go with the process. Tearing down the interpreter
    (finalising requests, urllib3, ssl and every other module) then took 20-25 ms, a fifth of
    a pull of a present image, so it is skipped: flush what was printed and ``os._exit``.
    """
    rc = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # reader gone, stream closed
            stream.flush()
    os._exit(rc)


if __name__ == "__main__":
    run()
