"""The image commands: pull, images, inspect, rmi, tag, push, login, logout, save, load, prune,
check, unpack and serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import Any

from ..errors import FastdistError, InvalidArgumentError
from ..sizes import human_size
from ..termsafe import sanitize
from .common import (
    SNAPSHOTTER_HELP,
    _ago,
    _client,
    _report,
    _table,
    add_registry_options,
    sigterm_interrupts,
)
from .display import PullDisplay


def cmd_pull(args: argparse.Namespace) -> int:
    out = sys.stdout
    live = out.isatty() and not args.quiet and not args.json
    display = PullDisplay(out, live=live, json_events=args.json)
    link = _link_options(args)
    with sigterm_interrupts():
        if args.quiet:
            img = _client(args, **link).pull(args.ref, platform=args.platform, dedup=args.dedup)
        else:
            with display:  # --json: a failure from here on is an event too
                img = _client(args, **link).pull(
                    args.ref, platform=args.platform, progress=display, dedup=args.dedup
                )
    if not args.json:
        print(sanitize(f"{img.name}: {img.target.digest}" if not args.quiet else img.target.digest))
    return 0


def _link_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--max-connections`` and ``--limit-rate`` as Client arguments (Client checks them)."""
    out: dict[str, Any] = {}
    if args.max_connections is not None:
        text = args.max_connections.strip()
        if not (text.isascii() and text.isdigit()):
            raise InvalidArgumentError(
                f"--max-connections {args.max_connections[:40]!r}: expected a whole number",
                hint="e.g. --max-connections 4",
            )
        out["max_connections"] = int(text)
    if args.limit_rate is not None:
        out["limit_rate"] = args.limit_rate
    return out


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

    return _ago(max(0.0, now - when.timestamp()))


def _image_matches(name: str, pattern: str) -> bool:
    """docker's ``images REPO[:TAG]``: the repository, and the tag or digest when given."""
    from ..reference import Reference

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
    from ..check import deep_json, format_report

    client = _client(args)
    if args.repair and args.no_verify:
        raise InvalidArgumentError(
            "check --repair needs the blobs verified",
            hint="drop --no-verify: --repair re-hashes every blob to find the corrupt ones",
        )
    report = client.check(verify_blobs=not args.no_verify, repair=args.repair, deep=args.deep)
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
                    **({"deep": deep_json(report.deep)} if report.deep is not None else {}),
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

    from ..errors import ServeError
    from ..serve import ServeConfig

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
        rep = client.push(args.src, args.dest, all_platforms=args.all)
    else:
        with PullDisplay(out, live=live, json_events=args.json) as display:
            rep = client.push(args.src, args.dest, progress=display, all_platforms=args.all)
    for platform in rep.missing:
        print(
            sanitize(
                f"note: platform {platform} of {args.src} is not present: pushed this "
                "platform's manifest only, not the index (--all refuses instead)"
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


def add_commands(sub: Any) -> None:
    """The image commands' parsers, on the top-level subparsers ``sub``."""

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
    sp.add_argument(
        "--dedup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share the new layers' files with equal files already in the store once the "
        "image is recorded (bytes compared first; see `fastdist dedup`); default: off",
    )
    add_registry_options(sp)
    sp.add_argument("--snapshotter", choices=("overlayfs", "native"), help=SNAPSHOTTER_HELP)
    sp.add_argument(
        "--max-connections",
        metavar="N",
        help="blob requests in flight per registry host, for all layers together; a big "
        "layer over a slow link is fetched as parallel ranges within it (default: 32)",
    )
    sp.add_argument(
        "--limit-rate",
        metavar="RATE",
        help="cap the download rate of the whole pull, in bytes/s or with a k, M or G suffix "
        "(1024-based, as curl's; default: no cap)",
    )
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
        "on the same registry, big ones in resumable chunks), then the manifests, an index "
        "last; bytes exactly as stored. An image pulled through an index is pushed as the "
        "whole index when every platform is present; otherwise its present platform alone, "
        "with a note naming the others.",
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
    sp.add_argument(
        "--all",
        action="store_true",
        help="push the whole index or fail, naming the platforms not present (default: the "
        "present platform alone when some are missing, as skopeo copy without --all)",
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
        "of each fetches what is missing. --deep also re-hashes every unpacked file and compares "
        "it (content, mode, owner, mtime, xattrs) with the layer's manifest; with --repair the "
        "damaged snapshots are removed and the next pull unpacks them again.",
    )
    sp.add_argument(
        "--deep",
        action="store_true",
        help="also verify every unpacked file against its layer's manifest: changed, missing "
        "and extra files per layer and image (default: blobs and records only)",
    )
    sp.add_argument(
        "--no-verify",
        action="store_true",
        help="do not re-hash blobs, check sizes and links only (default: re-hash)",
    )
    sp.add_argument(
        "--repair",
        action="store_true",
        help="remove corrupt blobs (with --deep: damaged snapshots), then pull the images it "
        "names again (default: report only)",
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
