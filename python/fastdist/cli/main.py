"""The ``fastdist`` command line: parse arguments, run the command, map errors to exit codes.

The ``cli`` package is the only place that prints or exits (design.md §1); errors become
``error: …`` / ``hint: …`` and an exit code. Commands live in ``images`` and ``containers``,
what they share in ``common``, the pull display in ``display``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import FastdistError
from ..termsafe import sanitize
from . import containers, images, store
from .common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Terminated,
    _report,
    log,
    print_error,
)


def _out_of_space(e: BaseException) -> bool:
    """ENOSPC, from Python (an OSError) or from the Rust core (a StoreError whose message ends
    in the io::Error's text, ``… (os error 28)``)."""
    import errno

    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    return isinstance(e, FastdistError) and f"(os error {errno.ENOSPC})" in e.message


def _enospc_hint(args: argparse.Namespace) -> str:
    from ..store import default_root

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
class _Version(argparse._VersionAction):
    """``--version``: the package's version, looked up only when asked (argparse's own action
    takes the string while the parser is built, for every command)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from .. import __version__

        self.version = f"fastdist {__version__}"
        super().__call__(parser, namespace, values, option_string)


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
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    images.add_commands(sub)
    containers.add_commands(sub)
    store.add_commands(sub)

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
    from ..completion import script

    print(script(build_parser(), args.shell), end="")
    return 0


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
