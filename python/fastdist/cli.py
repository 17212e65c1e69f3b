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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from . import __version__
from .errors import FastdistError, InvalidArgumentError
from .progress import Phase, ProgressEvent
from .sizes import human_size
from .termsafe import sanitize

log = logging.getLogger("fastdist")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


class Terminated(KeyboardInterrupt):
    """SIGTERM during a pull: unwinds like Ctrl-C, so partial work is cleaned up the same way."""


# --- progress display -----------------------------------------------------------------------
@dataclass
class _Row:
    label: str
    phase: Phase
    current: int = 0
    total: int = 0
    started: float | None = None  # monotonic time of its first downloading event
    fetched: bool = False  # bytes came over the network (not "exists")


_DONE_PHASES = (Phase.DONE, Phase.EXISTS)
# Plain lines that carry the blob's size: where it starts, and how it ends.
_SIZED = {phase: phase in (Phase.DOWNLOADING, Phase.EXISTS, Phase.DONE) for phase in Phase}


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
        self._finished = False

    def __enter__(self) -> PullDisplay:
        if self._live:
            self._thread = threading.Thread(target=self._loop, name="fastdist-display", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._json and exc is not None and not self._finished:
            self._emit_json_error(exc)
        # The header says how the pull ended: an interrupted or failed pull is not "done".
        if exc_type is None:
            self._finish("done")
        elif issubclass(exc_type, KeyboardInterrupt):
            self._finish("interrupted")
        else:
            self._finish("failed")

    def _finish(self, state: str) -> None:
        """Stop redrawing and draw the final state, once. A recorded pull finishes the display
        at once (``run``: the container starts right after, and a live display redrawing its
        rows would overwrite what the container prints, or corrupt a ``-t`` prompt)."""
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw(state)

    def __call__(self, ev: ProgressEvent) -> None:
        if self._json:
            self._emit_json(ev)
            return
        if self._finished:
            return  # the pull was recorded; what follows (a container) is not drawn over
        digest = ev.digest
        if digest is None:
            if self._pull_event(ev):
                self._finish("done")  # outside the lock: the drawing thread takes it
            return
        with self._lock:
            row = self._rows.get(digest)
            label = _label(ev)
            if row is None:
                row = self._rows[digest] = _Row(label, ev.phase)
                changed = True
            else:
                changed = row.phase is not ev.phase
                # A retry or a late event must not move a finished row backwards.
                if row.phase in _DONE_PHASES and ev.phase not in (Phase.FAILED,):
                    return
                row.phase = ev.phase
            row.current = max(ev.current, row.current if ev.phase is Phase.DOWNLOADING else 0)
            row.total = ev.total or row.total
            if ev.phase is Phase.DOWNLOADING:
                row.fetched = True
                if row.started is None:
                    row.started = time.monotonic()
            if ev.phase is Phase.RETRYING:
                self._plain(f"{row.label}: retrying: {ev.message}", force=True)
            elif changed and ev.phase is not Phase.WAITING:
                size = f" ({human_size(row.total)})" if row.total and _SIZED[ev.phase] else ""
                self._plain(f"{row.label}: {ev.phase.value}{size}")

    def _pull_event(self, ev: ProgressEvent) -> bool:
        """An event of the pull as a whole (no digest); True once the pull is recorded."""
        with self._lock:
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
                self._plain(self._summary())
                return True
        return False

    def _summary(self) -> str:
        """The pipe's closing line: what came over the network, how long it took, how fast."""
        got = [r for r in self._rows.values() if r.fetched or r.phase is Phase.DONE]
        fetched = sum(r.total for r in got)
        blobs = len(got)
        elapsed = max(time.monotonic() - self._start, 1e-6)
        return (
            f"{self._title}: fetched {blobs} blob(s), {human_size(fetched)} in {elapsed:.1f} s "
            f"({human_size(int(fetched / elapsed))}/s)"
        )

    def _emit_json_error(self, exc: BaseException) -> None:
        """``--json``: the failure is an event too (the CLI still prints ``error:`` on stderr)."""
        obj: dict[str, object] = {
            "time": round(time.monotonic() - self._start, 4),
            "phase": Phase.FAILED.value,
            "digest": None,
        }
        if isinstance(exc, FastdistError):
            obj.update(error=exc.message, hint=exc.hint, exit_code=type(exc).exit_code)
        elif isinstance(exc, KeyboardInterrupt):
            terminated = isinstance(exc, Terminated)
            obj.update(
                error="terminated" if terminated else "interrupted",
                hint=None,
                exit_code=EXIT_TERMINATED if terminated else EXIT_INTERRUPTED,
            )
        else:
            obj.update(error=str(exc), hint=None, exit_code=1)
        with self._lock:
            self._out.write(json.dumps(obj) + "\n")
            self._out.flush()

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
        if ev.phase is Phase.DONE and ev.digest is None:
            # The pull's last event: the image recorded and its digest, as fields of their own
            # (the client's message is "<name> <digest>").
            name, _, image_digest = ev.message.rpartition(" ")
            obj["name"], obj["image_digest"] = name, image_digest
        with self._lock:
            self._out.write(json.dumps(obj) + "\n")
            self._out.flush()

    def _plain(self, line: str, force: bool = False) -> None:
        if self._live or self._json:
            return
        self._out.write(sanitize(line) + "\n")
        self._out.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._draw("pulling")

    def _draw(self, state: str) -> None:
        with self._lock:
            rows = list(self._rows.values())
            title = self._title
        if not title and not rows:
            return  # nothing was pulled (a present image): draw nothing at all
        import shutil  # only a live display draws

        width = shutil.get_terminal_size((100, 20)).columns
        lines = []
        if title:
            lines.append(_fit(f"{title}: {state}", width))
        done_bytes = 0
        now = time.monotonic()
        for r in rows:
            cur = r.total if r.phase in _DONE_PHASES else r.current
            done_bytes += cur if r.phase is not Phase.EXISTS else 0
            done = r.phase in _DONE_PHASES
            bar = _bar(1, 1, 20) if done and not r.total else _bar(cur, r.total, 20)
            size = f"{human_size(cur)}/{human_size(r.total)}" if r.total else ""
            lines.append(
                _fit(f"{r.label:<28} {r.phase.value:<11} {bar} {size:<21}{_speed(r, now)}", width)
            )
        elapsed = now - self._start
        rate = done_bytes / elapsed if elapsed > 0 else 0
        lines.append(
            _fit(
                f"elapsed: {elapsed:5.1f} s   total: {human_size(done_bytes)} "
                f"({human_size(int(rate))}/s)",
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


def _speed(row: _Row, now: float) -> str:
    """A downloading row's rate and time left (once a quarter second of it is measured)."""
    if row.phase is not Phase.DOWNLOADING or row.started is None or not row.total:
        return ""
    spent = now - row.started
    if spent < 0.25 or row.current <= 0:
        return ""
    rate = row.current / spent
    left = max(0, row.total - row.current) / rate
    eta = f"{int(left) // 60}m{int(left) % 60:02d}s" if left >= 60 else f"{left:.0f}s"
    return f" {human_size(int(rate))}/s ETA {eta}"


def _bar(cur: int, total: int, width: int) -> str:
    if total <= 0:
        return "|" + " " * width + "|"
    filled = min(width, int(width * cur / total))
    return "|" + "+" * filled + "-" * (width - filled) + "|"


def _fit(line: str, width: int) -> str:
    line = sanitize(line)
    return line if len(line) < width else line[: max(10, width - 1)]


# --- commands ---------------------------------------------------------------------------------
def _client(args: argparse.Namespace, **kw: Any) -> Any:
    from .client import Client

    cfg = _transport_config(args)
    return Client(
        args.root,
        snapshotter=getattr(args, "snapshotter", None),
        transport_config=cfg,
        hosts_dir=getattr(args, "hosts_dir", None),
        **kw,
    )


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, systemd, a container runtime stopping us) unwinds like Ctrl-C while
    the block runs, so an interrupted pull removes its staging directories the same way; only
    the main thread installs handlers, so elsewhere this does nothing."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_registry_options(sp: argparse.ArgumentParser) -> None:
    """TLS and plain-HTTP options of the commands that talk to a registry, for the reference's
    registry. ``--plain-http`` and ``--tls-verify=false`` take no separate value (a value after
    ``--plain-http`` would swallow REF: ``pull --plain-http host:5000/repo``), so another host
    is named with ``--plain-http-host HOST``."""
    sp.add_argument(
        "--plain-http",
        action="store_true",
        help="speak plain HTTP to the reference's registry (as ctr's flag; default: https, "
        "and for loopback registries plain HTTP only if the server answers in plain HTTP)",
    )
    sp.add_argument(
        "--plain-http-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="speak plain HTTP to HOST as well (a token realm or a mirror); repeatable "
        "(default: none)",
    )
    sp.add_argument(
        "--ca-file",
        metavar="FILE",
        help="trust the CA certificates in FILE (PEM) for the reference's registry "
        "(default: the system's CAs, and a hosts.toml ca)",
    )
    sp.add_argument(
        "--tls-verify",
        dest="tls_verify",
        action="store_true",
        default=True,
        help="verify the registry's certificate (default)",
    )
    sp.add_argument(
        "--tls-verify=false",
        dest="tls_verify",
        action="store_false",
        help="do not verify the reference's registry's certificate, and use plain HTTP if "
        "it answers in plain HTTP (skopeo's flag; only if you trust the network; default: verify)",
    )
    sp.add_argument(
        "--tls-verify=true", dest="tls_verify", action="store_true", help=argparse.SUPPRESS
    )


def _transport_config(args: argparse.Namespace) -> Any:
    """A TransportConfig from the registry options, or None when none is given (then the
    transport, and requests with it, is imported only when a command needs the network)."""
    plain = set(getattr(args, "plain_http_host", None) or ())
    ca_file = getattr(args, "ca_file", None)
    verify = getattr(args, "tls_verify", True)
    bare_plain = getattr(args, "plain_http", False)
    if not (plain or ca_file or bare_plain or not verify):
        return None
    from .reference import Reference
    from .transport import TransportConfig

    text = getattr(args, "ref", None) or getattr(args, "image", None)
    registry = Reference.parse(text).registry if isinstance(text, str) else None
    if (ca_file or bare_plain or not verify) and registry is None:  # pragma: no cover
        raise FastdistError("--plain-http, --ca-file and --tls-verify need a reference")
    if ca_file is not None and not os.access(ca_file, os.R_OK):
        raise FastdistError(
            f"--ca-file {ca_file}: cannot read the file",
            hint="pass a PEM file holding the registry's CA certificate",
        )
    if bare_plain and registry is not None:
        plain.add(registry)
    return TransportConfig(
        plain_http_hosts=frozenset(plain),
        host_ca_files={registry: ca_file} if ca_file and registry else {},
        insecure_skip_verify_hosts=frozenset({registry} if not verify and registry else ()),
    )


def cmd_pull(args: argparse.Namespace) -> int:
    out = sys.stdout
    live = out.isatty() and not args.quiet and not args.json
    display = PullDisplay(out, live=live, json_events=args.json)
    with sigterm_interrupts():
        if args.quiet:
            img = _client(args).pull(args.ref, platform=args.platform)
        else:
            with display:  # --json: a failure from here on is an event too
                img = _client(args).pull(args.ref, platform=args.platform, progress=display)
    if not args.json:
        print(sanitize(f"{img.name}: {img.target.digest}" if not args.quiet else img.target.digest))
    return 0


def _short_id(digest: str) -> str:
    """docker's IMAGE ID: the config digest's first 12 hex digits."""
    return digest.removeprefix("sha256:")[:12]


def _created_ago(created: str | None, now: float) -> str:
    """The config's RFC 3339 ``created`` as ``3d ago`` (``N/A`` when absent or unreadable)."""
    if not created:
        return "N/A"
    import datetime
    import re

    # fromisoformat takes at most 6 fractional digits; images carry nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", created.strip()).replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return "N/A"
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    from .cli_run import _ago

    return _ago(max(0.0, now - when.timestamp()))


def _image_matches(name: str, pattern: str) -> bool:
    """docker's ``images REPO[:TAG]``: the repository, and the tag or digest when given."""
    from .reference import Reference

    want, have = Reference.parse(pattern), Reference.parse(name)
    if want.name != have.name:
        return False
    last = pattern.partition("@")[0].rpartition("/")[2]
    if ":" in last and want.tag != have.tag:
        return False
    return want.digest is None or want.digest == have.digest


def cmd_images(args: argparse.Namespace) -> int:
    client = _client(args)
    images = client.images()
    if args.repository is not None:
        images = [img for img in images if _image_matches(img.name, args.repository)]
    now = time.time()
    listed: list[dict[str, Any]] = []
    for img in images:
        try:
            config = img.config()
            plat, created = str(config.platform), config.created
        except FastdistError:
            plat, created = "?", None
        listed.append(
            {
                "name": img.name,
                "id": img.record.config_digest,
                "digest": img.target.digest,
                "media_type": img.target.media_type,
                "created": created,
                "size": img.size(),
                "unpacked_size": img.unpacked_size(),
                "platform": plat,
            }
        )
    full = args.no_trunc
    if args.quiet:
        for entry in listed:
            print(entry["id"] if full else _short_id(entry["id"]))
        return 0
    if args.format == "json":
        for entry in listed:  # one object per line, as docker's --format json
            print(json.dumps(entry, sort_keys=True))
        return 0
    header = ["REF", "IMAGE ID", "CREATED", "SIZE", "UNPACKED", "PLATFORM"]
    if args.digests:
        header.insert(1, "DIGEST")
    if full:
        header.insert(1, "TYPE")
    rows = [header]
    for entry in listed:
        row = [
            entry["name"],
            entry["id"] if full else _short_id(entry["id"]),
            _created_ago(entry["created"], now),
            human_size(entry["size"]),
            human_size(entry["unpacked_size"]),
            entry["platform"],
        ]
        if args.digests:
            row.insert(1, entry["digest"] if full else entry["digest"][:19])
        if full:
            row.insert(1, entry["media_type"])
        rows.append(row)
    _table(rows)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    client = _client(args)
    if client.metadata.containers.get(args.ref) is not None:  # docker: a container name first
        print(json.dumps(client.container(args.ref).inspect(), indent=2, sort_keys=True))
        return 0
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
        print(sanitize(f"removed {name}"))
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
        f"freed {human_size(rep.bytes_freed)}"
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
            print(sanitize(line))
    return 0 if report.ok else 1


def cmd_unpack(args: argparse.Namespace) -> int:
    client = _client(args)
    out = client.unpack(args.ref, args.dest, keep_root_mode=args.keep_root_mode)
    print(sanitize(f"unpacked {args.ref} into {out}"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from .serve import ServeConfig, ServeError

    token = None
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ServeError(f"cannot read token file {args.token_file}: {e}") from e
        if not token:
            raise ServeError(f"token file {args.token_file} is empty")
    config = ServeConfig(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        htpasswd=args.htpasswd,
        token=token,
        max_connections=args.max_connections,
        head_timeout=args.timeout,
        idle_timeout=max(args.timeout, 30.0),
        io_timeout=max(args.timeout, 30.0),
    )
    if not args.quiet:
        logging.getLogger("fastdist.serve.access").setLevel(logging.INFO)
    server = _client(args).serve(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"serving {server.client.root} read-only on {server.url}", flush=True)
    stop.wait()
    server.stop()
    print("stopped", flush=True)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    client = _client(args)
    img = client.tag(args.src, args.dest)
    print(sanitize(f"tagged {img.name}: {img.target.digest}"))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    args.ref = args.dest or args.src  # the registry options are for the destination
    client = _client(args)
    out = sys.stdout
    live = out.isatty() and not args.quiet and not args.json
    if args.quiet:
        rep = client.push(args.src, args.dest)
    else:
        with PullDisplay(out, live=live, json_events=args.json) as display:
            rep = client.push(args.src, args.dest, progress=display)
    for platform in rep.missing:
        print(
            sanitize(
                f"note: platform {platform} of {args.src} is not present: pushed this "
                "platform's manifest only, not the index"
            ),
            file=sys.stderr,
        )
    if not args.json:
        print(
            sanitize(
                rep.digest
                if args.quiet
                else f"{rep.name}: {rep.digest} ({len(rep.uploaded)} uploaded, "
                f"{len(rep.mounted)} mounted, {len(rep.existed)} already there)"
            )
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
    args.ref = f"{args.registry}/login"  # the registry options are for this registry
    where = _client(args).login(args.registry, username, password)
    print(sanitize(f"login succeeded; credentials saved to {where}"))
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    if _client(args).logout(args.registry):
        print(sanitize(f"removed the credentials of {args.registry}"))
    else:
        print(sanitize(f"not logged in to {args.registry}"))
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
    print(
        sanitize(f"saved {len(args.refs)} image(s) to {args.output} ({args.format})"),
        file=sys.stderr,
    )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    client = _client(args)
    source = sys.stdin.buffer if args.input in (None, "-") else args.input
    for img in client.load(source, tag=args.tag):
        print(sanitize(f"loaded {img.name}: {img.target.digest}"))
    return 0


def _table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; every cell goes through the terminal sanitiser (one line each)."""
    rows = [[sanitize(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_error(e: FastdistError) -> None:
    """``error: …`` and ``hint: …`` on stderr. Messages quote registries, images and runc (a
    ``Location``, an index's platforms, an Entrypoint path): they go through the sanitiser."""
    print(f"error: {sanitize(e.message, keep_newlines=True)}", file=sys.stderr)
    if e.hint:
        print(f"hint: {sanitize(e.hint, keep_newlines=True)}", file=sys.stderr)


def _out_of_space(e: BaseException) -> bool:
    """ENOSPC, from Python (an OSError) or from the Rust core (a StoreError whose message ends
    in the io::Error's text, ``… (os error 28)``)."""
    import errno

    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    return isinstance(e, FastdistError) and f"(os error {errno.ENOSPC})" in e.message


def _enospc_hint(args: argparse.Namespace) -> str:
    from .client import default_root

    root = args.root or default_root()
    return (
        f"the filesystem of the store ({root}) is full: free space there (fastdist prune "
        "removes what no image uses) and run the same command again; finished downloads are "
        "kept and a partial one resumes where it stopped"
    )


class _SafeFormatter(logging.Formatter):
    """Log records quote registry answers too; they reach the terminal through the sanitiser."""

    def format(self, record: logging.LogRecord) -> str:
        return sanitize(super().format(record), keep_newlines=True)


# --- entry point ------------------------------------------------------------------------------
SNAPSHOTTER_HELP = (
    "overlayfs or native (default: overlayfs where the kernel allows it, else native)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with fastdist's error format (``error: …``, ``hint: usage …``, exit 2); the
    subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split())  # one line, however argparse wrapped it
        # argv may carry escapes too: the message goes through the sanitiser.
        self.exit(
            EXIT_USAGE, f"error: {sanitize(message)}\nhint: {usage}; see: {self.prog} --help\n"
        )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fastdist",
        description="Fast, verified container-image pulls and runs. "
        "Run 'fastdist COMMAND --help' for a command's options.",
    )
    p.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="store root (default: $FASTDIST_ROOT or /var/lib/fastdist)",
    )
    p.add_argument(
        "--debug", action="store_true", help="log HTTP requests; show tracebacks (default: off)"
    )
    p.add_argument(
        "--hosts-dir",
        default=None,
        metavar="DIR",
        help="registry mirrors: containerd-style DIR/<host>/hosts.toml (default: "
        "$FASTDIST_HOSTS_DIR, /etc/fastdist/certs.d, /etc/containerd/certs.d)",
    )
    p.add_argument("--version", action="version", version=f"fastdist {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser(
        "pull",
        help="fetch, verify and unpack an image",
        description="Fetch an image's manifest, config and layers from its registry, verify "
        "every digest, and unpack each layer into a snapshot. An interrupted pull resumes. "
        "On a terminal the progress is redrawn in place; to a pipe, one line per blob and "
        "phase and a summary line.",
    )
    sp.add_argument("ref", metavar="REF", help="[registry/]repository[:tag][@digest]")
    sp.add_argument(
        "--platform",
        help="os/arch[/variant] (default: this host's); a single-platform image built for "
        "another platform is refused; 'any' accepts it whatever its platform",
    )
    add_registry_options(sp)
    sp.add_argument("--snapshotter", choices=("overlayfs", "native"), help=SNAPSHOTTER_HELP)
    sp.add_argument(
        "-q", "--quiet", action="store_true", help="print only the digest (default: progress)"
    )
    sp.add_argument(
        "--json",
        action="store_true",
        help="one JSON event per line, failures included (default: text)",
    )
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser(
        "images",
        aliases=["ls"],
        help="list local images",
        description="List local images. IMAGE ID: the config digest, as docker shows it. "
        "CREATED: the config's creation time. SIZE: manifest, config and compressed layers. "
        "UNPACKED: what the image's layer snapshots take on disk (du of each layer directory; "
        "measured the first time it is listed, then cached beside each snapshot).",
    )
    sp.add_argument(
        "repository",
        nargs="?",
        metavar="REPO[:TAG]",
        help="list only this repository (and tag or digest, when given) (default: all)",
    )
    sp.add_argument(
        "-q", "--quiet", action="store_true", help="print only image IDs (default: a table)"
    )
    sp.add_argument(
        "--digests", action="store_true", help="add a DIGEST column (default: not shown)"
    )
    sp.add_argument(
        "--no-trunc",
        action="store_true",
        help="full IMAGE IDs and digests, and the TYPE column (default: short IDs)",
    )
    sp.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table, or json: one object per image per line (default: table)",
    )
    sp.set_defaults(func=cmd_images)

    sp = sub.add_parser(
        "inspect",
        help="show a container (state, spec, mounts) or an image (manifest, config) as JSON",
        description="Print a container's state, spec summary, mounts and ports, or a local "
        "image's record (name, target, size, chain_ids), its manifest and its config, as one "
        "JSON document. A container id or name wins over an image of the same name.",
    )
    sp.add_argument("ref", metavar="REF", help="a container id or name, or a local image")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser(
        "rmi",
        help="remove images (content stays until prune)",
        description="Forget local images. Their blobs and snapshots stay until 'fastdist "
        "prune' removes what no image or container uses.",
    )
    sp.add_argument("refs", nargs="+", metavar="REF", help="local image names")
    sp.set_defaults(func=cmd_rmi)

    sp = sub.add_parser(
        "tag",
        help="give a present image another name (same digest)",
        description="Give the present image SRC the name DEST: same target, manifest and "
        "snapshots (as docker tag); an image already called DEST is re-pointed.",
    )
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
    sp.add_argument("src", metavar="REF", help="the local image: name, name@digest or ID")
    sp.add_argument(
        "dest", metavar="DEST", nargs="?", default=None, help="where to push (default: REF)"
    )
    add_registry_options(sp)
    sp.add_argument(
        "-q", "--quiet", action="store_true", help="print only the digest (default: a summary)"
    )
    sp.add_argument(
        "--json", action="store_true", help="one JSON progress event per line (default: off)"
    )
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser(
        "login",
        help="check credentials against a registry and save them in docker's config",
        description="Check USER's password against REGISTRY and save it where docker would: "
        "the registry's credHelpers entry or the credsStore, else auths in "
        "$DOCKER_CONFIG/config.json or ~/.docker/config.json (0600). Pulls and pushes read "
        "credentials from the same places.",
    )
    sp.add_argument(
        "registry",
        metavar="REGISTRY",
        nargs="?",
        default="docker.io",
        help="host[:port] (default: docker.io)",
    )
    sp.add_argument(
        "-u", "--username", default=None, help="the user (default: asked on a terminal)"
    )
    sp.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: asked on a terminal)",
    )
    add_registry_options(sp)
    sp.set_defaults(func=cmd_login)

    sp = sub.add_parser(
        "logout",
        help="remove a registry's saved credentials",
        description="Remove REGISTRY's credentials from docker's config or credential helper.",
    )
    sp.add_argument(
        "registry",
        metavar="REGISTRY",
        nargs="?",
        default="docker.io",
        help="host[:port] (default: docker.io)",
    )
    sp.set_defaults(func=cmd_logout)

    sp = sub.add_parser(
        "save",
        help="write images to a docker-archive or OCI layout",
        description="Write present images to FILE: a docker-archive (default; docker >= 25's "
        "form with an OCI layout inside, read by docker load, podman load and OCI tools), an "
        "oci-archive, or an oci-dir. FILE is made 0600 (DIR 0700) under a temporary name and "
        "renamed into place when complete; -o - writes the archive to stdout.",
    )
    sp.add_argument("refs", nargs="+", metavar="REF", help="local images to save")
    sp.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="FILE, DIR (oci-dir) or - for stdout (no default: required)",
    )
    sp.add_argument(
        "--format",
        default="docker-archive",
        choices=("docker-archive", "oci-archive", "oci-dir"),
        help="archive format (default: docker-archive)",
    )
    sp.set_defaults(func=cmd_save)

    sp = sub.add_parser(
        "load",
        help="load images from a docker-archive or OCI layout (file, directory or stdin)",
        description="Load the images of a docker-archive (docker save, either form; podman "
        "save), an OCI layout directory or an oci-archive, verified as a pull is. Without -i "
        "(or with -i -) the archive is read from stdin.",
    )
    sp.add_argument(
        "-i",
        "--input",
        default=None,
        metavar="FILE|DIR",
        help="archive file or OCI layout directory (default: stdin)",
    )
    sp.add_argument(
        "--tag",
        default=None,
        metavar="NAME",
        help="name a single-image archive (default: the names in the archive)",
    )
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
        help="remove partial downloads untouched for AGE: 90s, 30m, 24h, 2d; "
        "0 removes them all (default: 24h)",
    )
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser(
        "check",
        aliases=["fsck"],
        help="verify the store's blobs and snapshots",
        description="Verify the store: every blob against its digest, every image's blobs and "
        "snapshots, snapshot parent chains; list leftovers (partial downloads, staging "
        "directories, stray mounts) for prune. Exits 1 when a problem is found. --repair removes "
        "corrupt blobs: the images that used them stay listed but incomplete, and the next pull "
        "of each fetches what is missing.",
    )
    sp.add_argument(
        "--no-verify",
        action="store_true",
        help="do not re-hash blobs, check sizes and links only (default: re-hash)",
    )
    sp.add_argument(
        "--repair",
        action="store_true",
        help="remove corrupt blobs, then pull the images it names again (default: report only)",
    )
    sp.add_argument(
        "-v", "--verbose", action="store_true", help="list leftovers too (default: count them)"
    )
    sp.add_argument("--json", action="store_true", help="the report as JSON (default: text)")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser(
        "unpack",
        help="write an image's flattened root filesystem into DIR",
        description="Write an image's flattened root filesystem into DIR (created if missing; "
        "it must be empty, owned by you and not writable by group or others), its layers "
        "applied in order. DIR is made 0700, so setuid files of the image are unreachable for "
        "other users; a failed unpack leaves DIR as it was.",
    )
    sp.add_argument("ref", metavar="REF", help="a local image: name, name@digest or ID")
    sp.add_argument("dest", metavar="DIR", help="the destination directory")
    sp.add_argument(
        "--keep-root-mode",
        action="store_true",
        help="give DIR the mode of the image's own ./ entry instead of 0700 (default: 0700)",
    )
    sp.set_defaults(func=cmd_unpack)

    sp = sub.add_parser(
        "serve",
        help="serve the store read-only as an OCI registry (a mirror for other hosts)",
        description="Serve the local store read-only over the OCI distribution API (pull side). "
        "A request with ?ns=REGISTRY (containerd's hosts.toml mirrors) is answered from the image "
        "pulled from REGISTRY; without it, NAME is a docker reference (library/redis means "
        "docker.io/library/redis), else the repository path under the one registry holding it. "
        "Stops gracefully on SIGTERM.",
    )
    sp.add_argument(
        "--listen",
        default="127.0.0.1:5000",
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:5000, loopback only)",
    )
    sp.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve HTTPS with this certificate chain (default: plain HTTP)",
    )
    sp.add_argument(
        "--tls-key", metavar="PEM", help="the certificate's private key (default: none)"
    )
    sp.add_argument(
        "--htpasswd",
        metavar="FILE",
        help="require basic auth: bcrypt (htpasswd -B) or {SHA} lines (default: no auth)",
    )
    sp.add_argument(
        "--token-file",
        metavar="FILE",
        help="require 'Authorization: Bearer <token in FILE>' (default: no auth)",
    )
    sp.add_argument(
        "--max-connections",
        type=int,
        default=256,
        metavar="N",
        help="connections served at once, the rest get 503 (default: 256)",
    )
    sp.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request head must arrive within this (default: 10)",
    )
    sp.add_argument(
        "-q", "--quiet", action="store_true", help="no access log (default: log each request)"
    )
    sp.set_defaults(func=cmd_serve)

    _add_run_commands(sub)

    sp = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for bash or zsh. Load it with "
        "'source <(fastdist completion bash)' (in ~/.bashrc), or for zsh "
        "'source <(fastdist completion zsh)' (in ~/.zshrc).",
    )
    sp.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
    sp.set_defaults(func=cmd_completion)
    return p


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    print(script(build_parser(), args.shell), end="")
    return 0


def _add_run_commands(sub: Any) -> None:
    try:
        from . import cli_run
    except ImportError:  # pragma: no cover - cli_run ships with the package
        return
    cli_run.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, handlers=[handler])
    if args.root is None and os.environ.get("FASTDIST_ROOT"):
        args.root = os.environ["FASTDIST_ROOT"]
    try:
        rc: int = args.func(args)
        return rc
    except FastdistError as e:
        if e.hint is None and _out_of_space(e):
            e.hint = _enospc_hint(args)
        _report(e, args.debug)
        return type(e).exit_code
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"error: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        print(
            "hint: run the same command again; finished downloads are kept and partial ones resume",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except PermissionError as e:
        if args.debug:
            log.exception("command failed")
        print(sanitize(f"error: permission denied: {e.filename or e}"), file=sys.stderr)
        print(
            "hint: fastdist needs root for its default store and for overlayfs; "
            "run it as root or pass --root DIR --snapshotter native",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:
        return 0
    except OSError as e:
        if args.debug:
            log.error("command failed", exc_info=e)
        if _out_of_space(e):
            print_error(
                FastdistError(
                    f"no space left on device: {e.filename or e}", hint=_enospc_hint(args)
                )
            )
            return 1
        # A path given on the command line that cannot be used (a --root under a missing or
        # read-only directory, say): still an error line, not a traceback.
        where = f": {e.filename}" if e.filename else ""
        print_error(
            FastdistError(
                f"{e.strerror or e}{where}",
                hint="check the paths given (--root, destinations, files); --debug shows where "
                "it failed",
            )
        )
        return 1


def _report(e: FastdistError, debug: bool) -> None:
    """``error: …`` and ``hint: …`` on stderr, sanitised (with the traceback under ``--debug``)."""
    if debug:
        log.error("command failed", exc_info=e)
    print_error(e)


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
