"""What the command modules share: the Client from the options, registry options, exit codes,
SIGTERM as an interrupt, tables and ``error: …`` / ``hint: …`` output."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import FastdistError
from ..termsafe import sanitize

log = logging.getLogger("fastdist")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it

SNAPSHOTTER_HELP = (
    "overlayfs or native (default: overlayfs where the kernel allows it, else native)"
)


class Terminated(KeyboardInterrupt):
    """SIGTERM during a pull: unwinds like Ctrl-C, so partial work is cleaned up the same way."""


def _client(args: argparse.Namespace, **kw: Any) -> Any:
    from ..client import Client

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
    from ..reference import Reference
    from ..transport import TransportConfig

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


def _ago(seconds: float) -> str:
    s = int(seconds)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _report(e: FastdistError, debug: bool) -> None:
    """``error: …`` and ``hint: …`` on stderr, sanitised (with the traceback under ``--debug``)."""
    if debug:
        log.error("command failed", exc_info=e)
    print_error(e)
