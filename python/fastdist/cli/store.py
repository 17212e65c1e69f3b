"""The store commands: ``system df`` (what the images take on disk) and ``dedup``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..sizes import human_size
from ..termsafe import sanitize
from .common import _client, _table


def cmd_system_df(args: argparse.Namespace) -> int:
    usage = _client(args).disk_usage()
    if args.json:
        doc = {
            "snapshots": usage.snapshots,
            "logical": usage.logical,
            "physical": usage.physical,
            "shared": usage.shared,
            "unreferenced": usage.unreferenced,
            "blobs": usage.blobs,
            "images": [
                {
                    "name": i.name,
                    "layers": i.layers,
                    "logical": i.logical,
                    "physical": i.physical,
                    "unique": i.unique,
                    "shared": i.shared,
                    "blobs": i.blobs,
                }
                for i in usage.images
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    rows = [["IMAGE", "LAYERS", "LOGICAL", "PHYSICAL", "SHARED", "UNIQUE", "BLOBS"]]
    for i in usage.images:
        rows.append(
            [
                sanitize(i.name),
                str(i.layers),
                human_size(i.logical),
                human_size(i.physical),
                human_size(i.shared),
                human_size(i.unique),
                human_size(i.blobs),
            ]
        )
    _table(rows)
    print(
        f"snapshots: {usage.snapshots}, {human_size(usage.logical)} logical, "
        f"{human_size(usage.physical)} on disk ({human_size(usage.shared)} shared by images, "
        f"{human_size(usage.unreferenced)} used by none: fastdist prune frees it); "
        f"blobs: {human_size(usage.blobs)}"
    )
    return 0


def add_commands(sub: Any) -> None:
    sp = sub.add_parser(
        "system",
        help="store-wide information (df)",
        description="Store-wide information about what the images take on disk.",
    )
    ssub = sp.add_subparsers(dest="system_command", required=True, metavar="COMMAND")
    df = ssub.add_parser(
        "df",
        help="disk used per image: logical vs physical bytes and what images share",
        description="Per image: LOGICAL is the bytes of the files its layer snapshots hold "
        "(every path), PHYSICAL the blocks of their distinct inodes (hardlinks once), SHARED "
        "what other images also use and UNIQUE what only it uses (removing it frees that), "
        "BLOBS its compressed content. Reflinked extents are not visible here: on btrfs or xfs "
        "physical bytes are an upper bound.",
    )
    df.add_argument("--json", action="store_true", help="the report as JSON (default: a table)")
    df.set_defaults(func=cmd_system_df)

    sp = sub.add_parser(
        "dedup",
        help="share equal files between the unpacked layers",
        description="Share files equal in content and metadata (mode, owner, mtime, xattrs) "
        "across the committed layer snapshots: a reflink (a separate file sharing the blocks) "
        "where the filesystem has them (XFS, btrfs), a hardlink otherwise. Candidates come from "
        "the xxh3 index of the layer manifests; the bytes are compared before anything is "
        "shared. Layers a container uses, files the image itself hardlinks, and (for hardlinks) "
        "a second path of one image onto the same file are left alone; a container writing to a "
        "shared file gets its own copy (overlayfs copy-up; the native snapshotter copies the "
        "tree). Runs under the store's exclusive lock, as prune. `pull --dedup` runs the same "
        "pass for the pulled layers only.",
    )
    sp.set_defaults(func=cmd_dedup)


def cmd_dedup(args: argparse.Namespace) -> int:
    rep = _client(args).dedup()
    print(
        f"dedup: {rep.linked} file(s) now shared, {human_size(rep.bytes_saved)} saved; "
        f"{rep.candidates} candidate(s) from the xxh3 index, {rep.refused} refused (bytes or "
        f"metadata differ), {rep.skipped} left alone; {rep.indexed} snapshot(s) newly indexed"
    )
    return 0
