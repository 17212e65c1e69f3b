"""Who a container runs as: ``User`` (``name``, ``uid``, ``name:group``…) resolved to numeric ids.

Names are looked up in the image's *own* ``/etc/passwd`` and ``/etc/group``, read through
:mod:`fastdist.rootfs` so a symlink can never make us read the host's files (design.md §7).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import rootfs
from .errors import (
    InvalidRunOptionError,
    UnknownUserError,
)

log = logging.getLogger(__name__)


MAX_ACCOUNT_FILE_BYTES = 1 << 20  # /etc/passwd and /etc/group are read whole; cap them


_MAX_ID = (1 << 31) - 1  # libcontainer's limit for uids and gids


@dataclass(frozen=True)
class ResolvedUser:
    """The container process's numeric identity; ``home`` from passwd when the user has an entry."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str | None = None


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _read_account_file(root: Path, path: str) -> str:
    try:
        data = rootfs.read_file(root, path, MAX_ACCOUNT_FILE_BYTES)
    except OSError as e:
        raise UnknownUserError(
            f"cannot read {path} in the image: {e.strerror or e}",
            hint="use a numeric uid[:gid] with -u",
        ) from None
    return "" if data is None else data.decode("utf-8", errors="replace")


def _int_field(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value <= _MAX_ID:
            return value
    return None


def _parse_passwd(text: str) -> list[_PasswdEntry]:
    out: list[_PasswdEntry] = []
    for line in text.splitlines():
        f = line.strip().split(":")
        if len(f) < 4 or not f[0] or f[0].startswith(("#", "+", "-")):
            continue
        uid, gid = _int_field(f[2]), _int_field(f[3])
        if uid is None or gid is None:
            continue
        out.append(_PasswdEntry(f[0], uid, gid, f[5] if len(f) > 5 else ""))
    return out


def _parse_group(text: str) -> list[_GroupEntry]:
    out: list[_GroupEntry] = []
    for line in text.splitlines():
        f = line.strip().split(":")
        if len(f) < 3 or not f[0] or f[0].startswith(("#", "+", "-")):
            continue
        gid = _int_field(f[2])
        if gid is None:
            continue
        members = tuple(m for m in (f[3].split(",") if len(f) > 3 else []) if m)
        out.append(_GroupEntry(f[0], gid, members))
    return out


def _numeric(text: str, what: str) -> int | None:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value > _MAX_ID:
            raise InvalidRunOptionError(f"invalid {what} {text!r}: must be at most {_MAX_ID}")
        return value
    return None


def resolve_user(root: Path, user: str) -> ResolvedUser:
    """Resolve ``user``, ``uid``, ``user:group`` or ``uid:gid`` the way docker (libcontainer) does.

    The user part matches a passwd entry by name or uid (first match wins); a numeric uid without
    an entry is fine (gid 0, no home). ``""`` means root. An explicit group must match
    ``/etc/group`` by name or gid, or be numeric; without one, the gid comes from passwd and the
    supplementary groups are every group listing the user's name (docker gives none when the group
    is explicit). The files are read inside ``root`` only.
    """
    user_part, _, group_part = user.partition(":")
    passwd = _parse_passwd(_read_account_file(root, "/etc/passwd"))
    if user_part:
        entry = next((p for p in passwd if p.name == user_part or str(p.uid) == user_part), None)
    else:
        entry = next((p for p in passwd if p.uid == 0), None)
    if entry is not None:
        uid, gid, home, name = entry.uid, entry.gid, entry.home or None, entry.name
    else:
        number = _numeric(user_part, "uid") if user_part else 0
        if number is None:
            raise UnknownUserError(
                f"unknown user {user_part!r}: no matching entry in the image's /etc/passwd",
                hint="use a user that exists in the image, or a numeric uid[:gid]",
            )
        uid, gid, home, name = number, 0, None, ""
    if not group_part and not name:
        return ResolvedUser(uid, gid, (), home)
    groups = _parse_group(_read_account_file(root, "/etc/group"))
    if group_part:
        g = next((g for g in groups if g.name == group_part or str(g.gid) == group_part), None)
        if g is not None:
            return ResolvedUser(uid, g.gid, (), home)
        number = _numeric(group_part, "gid")
        if number is None:
            raise UnknownUserError(
                f"unknown group {group_part!r}: no matching entry in the image's /etc/group",
                hint="use a group that exists in the image, or a numeric gid",
            )
        return ResolvedUser(uid, number, (), home)
    extra: list[int] = []
    for g in groups:
        if name in g.members and g.gid not in extra:
            extra.append(g.gid)
    return ResolvedUser(uid, gid, tuple(extra), home)
