"""Run containers: image config → OCI runtime spec (``build_spec``), runc lifecycle (``Runtime``).

The spec follows docker's rules for what an image asks for (Entrypoint + Cmd, Env, WorkingDir,
User, Volumes) and containerd/docker's defaults for what a container gets (mounts, capabilities,
masked and read-only kernel paths, namespaces, rlimits). Names in ``User`` are looked up in the
image's *own* ``/etc/passwd`` and ``/etc/group``, read through :mod:`fastdist.rootfs` so a
symlink can never make us read the host's files (design.md §7).

Networking: the default is ``net="none"``: a new network namespace in which runc brings up only
``lo`` (like ``ctr run``). ``net="host"`` is opt-in because sharing the host's network namespace
hands the container every service bound to the host's loopback and every abstract unix socket
(CVE-2020-15257 was exactly that), which an untrusted image must not get by default.

On disk (under the fastdist root)::

    <root>/runc/                 runc's state (--root), so we never clash with other runc users
    <root>/containers/<id>/      the bundle: config.json, fastdist.json, log, exit, runc.log,
                                 hostname, hosts, volumes/<n>/, rootfs/ (the caller mounts here)

Detached containers are watched by a small supervisor (``python -m fastdist.runtime supervise``,
double-forked into its own session, a child subreaper) that runs ``runc create`` + ``runc start``
with stdout/stderr going to ``<bundle>/log``, reaps the container's init and records its exit status
in ``<bundle>/exit``. It holds an exclusive ``flock`` on ``<bundle>/supervisor.lock`` while it
lives, so ``wait``/``delete``/``logs -f`` synchronise on the lock instead of polling a pid.

No fastdist file descriptor leaks into a container (CVE-2024-21626): Python opens everything
``O_CLOEXEC`` and every subprocess gets ``close_fds=True``; the spec's ``cwd`` is the canonical
in-root path of the working directory, never anything under ``/proc`` or ``/sys``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import posixpath
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from . import oci, rootfs, seccomp
from .errors import ContainerNotFoundError, ContainerRunError, InUseError
from .store import check_beneath

log = logging.getLogger(__name__)


# --- errors (all ContainerRunError, so the CLI maps them to one exit code) ----------------------
class NoCommandError(ContainerRunError):
    """The image has neither Entrypoint nor Cmd and no command was given."""


class UnknownUserError(ContainerRunError):
    """A user or group name is not in the image's /etc/passwd or /etc/group."""


class WorkdirError(ContainerRunError):
    """The working directory cannot be used (not absolute, not a directory, a kernel fs)."""


class InvalidRunOptionError(ContainerRunError):
    """A run option is malformed (env entry, mount, network mode, container id, capability)."""

    exit_code = 2  # a usage error, like argparse's: nothing was created


# --- options ------------------------------------------------------------------------------------
NET_MODES = ("none", "host")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_ACCOUNT_FILE_BYTES = 1 << 20  # /etc/passwd and /etc/group are read whole; cap them
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MAX_ID = (1 << 31) - 1  # libcontainer's limit for uids and gids


@dataclass(frozen=True)
class Mount:
    """A bind mount from the host: ``src`` (absolute host path) on ``dst`` inside the container."""

    src: str
    dst: str
    readonly: bool = False


PUBLISH_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortMapping:
    """``-p [IP:]HOST:CONTAINER[/tcp|udp]``: connections (tcp) or datagrams (udp) to
    ``host_ip:host_port`` on the host are relayed to ``127.0.0.1:container_port`` inside the
    container's network namespace."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        """docker's ``ps`` form: ``127.0.0.1:8080->80/tcp``."""
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.container_port}/{self.protocol}"


def parse_publish(text: str) -> PortMapping:
    """docker's ``-p/--publish [IP:]HOST:CONTAINER[/tcp|udp]`` (IPv6 addresses in brackets;
    the protocol defaults to tcp)."""
    import ipaddress

    spec, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:.]+\]|[0-9.]+):)?([0-9]{1,5}):([0-9]{1,5})", spec)
    if m is None:
        raise InvalidRunOptionError(
            f"invalid --publish {text[:80]!r}: expected [IP:]HOST:CONTAINER[/tcp|udp]",
            hint="e.g. -p 8080:80, -p 127.0.0.1:6379:6379 or -p 5353:53/udp",
        )
    if proto not in PUBLISH_PROTOCOLS:
        raise InvalidRunOptionError(
            f"invalid --publish {text[:80]!r}: protocol {proto[:20]!r} is not tcp or udp",
            hint="end the mapping with /tcp (the default) or /udp, e.g. -p 5353:53/udp",
        )
    ip = (m.group(1) or "0.0.0.0").strip("[]")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidRunOptionError(
            f"invalid --publish {text[:80]!r}: {ip!r} is not an IP address",
            hint="e.g. -p 127.0.0.1:8080:80",
        ) from None
    host, container = int(m.group(2)), int(m.group(3))
    for port in (host, container):
        if not 1 <= port <= 65535:
            raise InvalidRunOptionError(
                f"invalid --publish {text[:80]!r}: port {port} is not in 1-65535",
                hint="e.g. -p 8080:80",
            )
    return PortMapping(ip, host, container, proto)


def _listen(mapping: PortMapping) -> socket.socket:
    """The host's socket for a published port (listening for tcp, bound for udp); a port in
    use is named with its protocol."""
    family = socket.AF_INET6 if ":" in mapping.host_ip else socket.AF_INET
    udp = mapping.protocol == "udp"
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if not udp:
            # Not for udp: there SO_REUSEADDR lets two sockets share a port, so one in use by
            # another SO_REUSEADDR holder would not be refused.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((mapping.host_ip, mapping.host_port))
        if not udp:
            sock.listen(128)
    except OSError as e:
        sock.close()
        raise ContainerRunError(
            f"cannot publish port {mapping.host_ip}:{mapping.host_port}/{mapping.protocol}: "
            f"{e.strerror or e}",
            hint="the port is in use or not allowed: pick another host port with -p",
        ) from None
    return sock


def check_ports(ports: Sequence[PortMapping]) -> None:
    """Refuse duplicate host ports and ports already in use, before anything is created
    (tcp and udp are separate port spaces, as for docker)."""
    seen: set[tuple[str, int, str]] = set()
    for p in ports:
        key = (p.host_ip, p.host_port, p.protocol)
        if key in seen:
            raise InvalidRunOptionError(
                f"host port {p.host_ip}:{p.host_port}/{p.protocol} is published twice",
                hint="give each -p its own host port",
            )
        seen.add(key)
    for p in ports:
        _listen(p).close()


@dataclass(frozen=True)
class RestartPolicy:
    """docker's ``--restart``: ``no``, ``on-failure[:N]`` (at most N restarts; 0: no limit),
    ``always``; a container stopped, killed or removed by the user is not restarted."""

    name: str = "no"
    max_restarts: int = 0

    def wants(self, code: int | None, restarts: int) -> bool:
        if self.name == "always":
            return True
        if self.name == "on-failure" and code != 0:
            return self.max_restarts == 0 or restarts < self.max_restarts
        return False


def parse_restart(text: str) -> RestartPolicy:
    name, _, count = text.partition(":")
    if name in ("no", "always", "unless-stopped") and not count:
        # unless-stopped is always here: fastdist has no daemon whose restart would tell them apart
        return RestartPolicy("always" if name == "unless-stopped" else name)
    if name == "on-failure" and (not count or count.isdigit()):
        return RestartPolicy(name, int(count) if count else 0)
    raise InvalidRunOptionError(
        f"invalid --restart {text[:40]!r}",
        hint="use no, on-failure, on-failure:N, always or unless-stopped",
    )


DEFAULT_LOG_MAX_SIZE = 20 << 20  # a detached container's log file (docker's local driver: 20m)
MIN_LOG_MAX_SIZE = 1 << 10


@dataclass(frozen=True)
class RunOptions:
    """What ``fastdist run`` was asked for, on top of the image config.

    ``command`` replaces the image's Cmd (``None`` or empty: keep it); ``entrypoint`` replaces the
    Entrypoint and clears Cmd (``""`` clears the Entrypoint). ``env_file`` entries (already parsed
    by the caller) apply before ``env``; both are ``KEY=VALUE``. ``net`` is ``"none"`` (default, see
    the module docstring) or ``"host"``. ``rm`` is for the caller (remove on exit).
    """

    id: str
    command: tuple[str, ...] | None = None
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    env_file: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    interactive: bool = False
    detach: bool = False
    net: str = "none"
    mounts: tuple[Mount, ...] = ()
    hostname: str | None = None
    read_only: bool = False
    rm: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    seccomp_profile: seccomp.Profile | None = seccomp.DEFAULT_PROFILE  # None: unconfined
    no_new_privileges: bool = True
    ports: tuple[PortMapping, ...] = ()
    restart: RestartPolicy = RestartPolicy()
    memory: int | None = None  # bytes (memory and swap together: no swap beyond it)
    cpus: float | None = None  # CPUs of time per period (CFS quota)
    pids_limit: int | None = None
    log_max_size: int = DEFAULT_LOG_MAX_SIZE  # bytes per log file of a detached container


MIN_MEMORY = 6 << 20  # docker's minimum: less cannot even start a container
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_CFS_PERIOD = 100_000  # microseconds, the kernel's default period


def parse_memory(text: str | int) -> int:
    """docker's ``--memory``: bytes, or a number with b, k, m, g (binary units, ``kb`` too)."""
    if isinstance(text, int):
        value: int | None = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?\s*", text.lower())
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)]) if m else None
    if value is None or value < MIN_MEMORY or value >= 1 << 62:
        raise InvalidRunOptionError(
            f"invalid --memory {str(text)[:40]!r}: expected a size of at least 6m",
            hint="use a number with a unit, e.g. --memory 512m or --memory 2g",
        )
    return value


def parse_log_max_size(text: str | int) -> int:
    """``--log-max-size``: bytes, or a number with b, k, m, g (binary units), at least 1k."""
    if isinstance(text, int):
        value: int | None = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?\s*", text.lower())
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)]) if m else None
    if value is None or value < MIN_LOG_MAX_SIZE or value >= 1 << 62:
        raise InvalidRunOptionError(
            f"invalid --log-max-size {str(text)[:40]!r}: expected a size of at least 1k",
            hint="use a number with a unit, e.g. --log-max-size 10m (default 20m)",
        )
    return value


def parse_cpus(text: str | float) -> float:
    """docker's ``--cpus``: a positive number of CPUs, fractions allowed (``0.5``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 1 << 20:
        raise InvalidRunOptionError(
            f"invalid --cpus {str(text)[:40]!r}: expected a number of CPUs of at least 0.01",
            hint="e.g. --cpus 1.5",
        )
    return value


def parse_pids_limit(text: str | int) -> int:
    """docker's ``--pids-limit``: a positive number of processes (``-1``/``0``: unlimited)."""
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1 or value >= 1 << 62:
        raise InvalidRunOptionError(
            f"invalid --pids-limit {str(text)[:40]!r}: expected a number of processes",
            hint="e.g. --pids-limit 100 (or -1 for no limit)",
        )
    return value


def _resources(opts: RunOptions) -> dict[str, Any]:
    """The spec's cgroup resources (runc writes them for cgroup v1 and v2 alike)."""
    out: dict[str, Any] = {"devices": [{"allow": opts.privileged, "access": "rwm"}]}
    if opts.memory is not None:
        out["memory"] = {"limit": opts.memory, "swap": opts.memory}
    if opts.cpus is not None:
        out["cpu"] = {"quota": max(1000, int(opts.cpus * _CFS_PERIOD)), "period": _CFS_PERIOD}
    if opts.pids_limit is not None and opts.pids_limit > 0:
        out["pids"] = {"limit": opts.pids_limit}
    return out


@dataclass(frozen=True)
class SecurityOptions:
    """What ``--security-opt`` entries ask for (see :func:`parse_security_opts`)."""

    seccomp_profile: seccomp.Profile | None = seccomp.DEFAULT_PROFILE  # None: unconfined
    no_new_privileges: bool = True


def parse_security_opts(entries: Sequence[str]) -> SecurityOptions:
    """docker's ``--security-opt``: ``seccomp=unconfined|default|FILE``, ``no-new-privileges[=B]``.

    ``no-new-privileges`` is on by default here (stricter than docker, whose default is off);
    ``no-new-privileges=false`` turns it off for images whose setuid programs must work.
    """
    profile: seccomp.Profile | None = seccomp.DEFAULT_PROFILE
    nnp = True
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep:
            key, sep, value = entry.partition(":")  # docker's old spelling
        if key == "seccomp" and sep and value:
            if value == "unconfined":
                profile = None
            elif value in ("default", "builtin"):
                profile = seccomp.DEFAULT_PROFILE
            else:
                profile = seccomp.load_profile(value)
        elif key == "no-new-privileges" and value.lower() in ("", "true", "1", "yes"):
            nnp = True
        elif key == "no-new-privileges" and value.lower() in ("false", "0", "no"):
            nnp = False
        else:
            raise InvalidRunOptionError(
                f"invalid --security-opt {entry[:80]!r}",
                hint="use seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges[=false]",
            )
    return SecurityOptions(profile, nnp)


@dataclass(frozen=True)
class ResolvedUser:
    """The container process's numeric identity; ``home`` from passwd when the user has an entry."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str | None = None


@dataclass(frozen=True)
class ContainerState:
    """What runc and the exit file say about a container.

    ``status`` is ``created`` (bundle written, or runc created it but it has not started),
    ``running``, ``paused`` or ``stopped``; ``pid`` is the host pid of its init while it exists;
    ``exit_code`` is known once it stopped (128+N when killed by signal N).
    """

    id: str
    status: str
    pid: int | None
    exit_code: int | None
    bundle: Path


def validate_id(container_id: str) -> str:
    """A container id becomes a directory name and a runc id: keep it boring."""
    if not _ID_RE.fullmatch(container_id):
        raise InvalidRunOptionError(
            f"invalid container id {container_id[:80]!r}: "
            "use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return container_id


# --- user resolution ----------------------------------------------------------------------------
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


# --- the spec -----------------------------------------------------------------------------------
# docker's default capability set (moby oci/caps/defaults.go), in its order.
DEFAULT_CAPABILITIES = tuple(
    "CAP_" + c
    for c in (
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    )
)
# Kernel interfaces a container must not read or write (moby oci/defaults.go).
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# Every capability by number (linux/capability.h), for --cap-add/--cap-drop and --privileged.
ALL_CAPABILITIES = tuple(
    "CAP_" + c
    for c in (
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    )
)


def host_capabilities() -> tuple[str, ...]:
    """The capabilities fastdist can hand on: its own bounding set (a process cannot give what it
    lacks, and runc fails to start a container asking for more). ``--privileged`` and
    ``--cap-add ALL`` get these."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            line = next(x for x in f if x.startswith("CapBnd:"))
        bounding = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError, IndexError):
        return DEFAULT_CAPABILITIES
    return tuple(c for i, c in enumerate(ALL_CAPABILITIES) if bounding >> i & 1)


def _cap_name(text: str) -> str:
    name = text.strip().upper()
    name = name if name.startswith("CAP_") else "CAP_" + name
    if name != "CAP_ALL" and name not in ALL_CAPABILITIES:
        raise InvalidRunOptionError(
            f"unknown capability {text[:40]!r}",
            hint="use a name from capabilities(7), e.g. NET_ADMIN or CAP_SYS_PTRACE, or ALL",
        )
    return name


def resolve_capabilities(
    add: Sequence[str] = (), drop: Sequence[str] = (), *, privileged: bool = False
) -> list[str]:
    """docker's rules: privileged or ``--cap-add ALL`` start from every capability, ``--cap-drop
    ALL`` from none, else from the defaults; drops apply, then adds (an add beats a drop)."""
    adds = [_cap_name(c) for c in add]
    drops = [_cap_name(c) for c in drop]
    every = host_capabilities()
    if privileged or "CAP_ALL" in adds:
        return list(every)
    base = [] if "CAP_ALL" in drops else [c for c in DEFAULT_CAPABILITIES if c not in drops]
    for cap in adds:
        if cap not in base:
            if cap not in every:
                raise InvalidRunOptionError(
                    f"cannot add capability {cap}: fastdist itself does not have it",
                    hint="drop it from --cap-add (or run fastdist with it)",
                )
            base.append(cap)
    return base


def thermal_throttle_paths(sys_root: Path = Path("/sys")) -> list[str]:
    """The per-CPU ``thermal_throttle`` directories of this host, masked as docker does (they
    expose and, on some kernels, reset the host's thermal event counters)."""
    cpus = sys_root / "devices" / "system" / "cpu"
    try:
        names = sorted(
            (e.name for e in os.scandir(cpus) if re.fullmatch(r"cpu[0-9]+", e.name)),
            key=lambda n: int(n[3:]),
        )
    except OSError:
        return []
    return [
        f"/sys/devices/system/cpu/{n}/thermal_throttle"
        for n in names
        if (cpus / n / "thermal_throttle").is_dir()
    ]


_DEV_SKIP = ("pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console")


def host_devices(dev: Path = Path("/dev")) -> list[dict[str, Any]]:
    """Every device node of the host as spec ``linux.devices`` (what ``--privileged`` gets), as
    runc's HostDevices lists them: no ptys, no console, symlinks not followed."""
    out: list[dict[str, Any]] = []

    def walk(d: Path, rel: str) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if not rel and e.name in _DEV_SKIP:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            path = f"/dev/{rel}{e.name}"
            if stat.S_ISDIR(st.st_mode):
                walk(Path(e.path), f"{rel}{e.name}/")
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(
                    {
                        "path": path,
                        "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                        "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                    }
                )

    walk(dev, "")
    return out


_KERNEL_FS = ("/proc", "/sys")


def _default_mounts(privileged: bool = False) -> list[dict[str, Any]]:
    def m(dst: str, typ: str, src: str, *options: str) -> dict[str, Any]:
        if privileged and "ro" in options:  # docker: a privileged container's /sys is writable
            options = tuple(o for o in options if o != "ro")
        return {"destination": dst, "type": typ, "source": src, "options": list(options)}

    return [
        m("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        m("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ),
        m("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        m("/sys/fs/cgroup", "cgroup", "cgroup", "ro", "nosuid", "noexec", "nodev"),
        m("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        m("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
    ]


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def _merge_env(base: list[str], overrides: tuple[str, ...], where: str | None) -> list[str]:
    """docker's ReplaceOrAppendEnvValues: an entry replaces the same key in place, else appends.

    ``where`` names user input, which must be ``KEY=VALUE``; the image's own Env (``None``) is
    taken as it is.
    """
    out = list(base)
    index = {_env_key(e): i for i, e in enumerate(out)}
    for entry in overrides:
        key = _env_key(entry)
        if where is not None and ("=" not in entry or not key):
            raise InvalidRunOptionError(
                f"invalid environment entry {entry[:80]!r} in {where}: expected KEY=VALUE"
            )
        if key in index:
            out[index[key]] = entry
        else:
            index[key] = len(out)
            out.append(entry)
    return out


def _args(config: oci.ContainerConfig, opts: RunOptions) -> list[str]:
    """docker's rules: --entrypoint replaces Entrypoint, dropping Cmd; args replace Cmd."""
    if opts.entrypoint is not None:
        entrypoint: tuple[str, ...] = (opts.entrypoint,) if opts.entrypoint else ()
        cmd: tuple[str, ...] = ()
    else:
        entrypoint = config.entrypoint or ()
        cmd = config.cmd or ()
    if opts.command:
        cmd = opts.command
    args = list(entrypoint + cmd)
    if not args:
        raise NoCommandError(
            "nothing to run: the image has no Entrypoint or Cmd and no command was given",
            hint="give a command after the image name, e.g. `fastdist run IMAGE sh -c '…'`",
        )
    return args


def _clean_dst(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise InvalidRunOptionError(f"invalid {what} {path!r}: must be an absolute path")
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    return clean


def _workdir(config: oci.ContainerConfig, opts: RunOptions, root: Path) -> str:
    if opts.workdir is not None:
        if not opts.workdir.startswith("/"):
            raise WorkdirError(
                f"invalid working directory {opts.workdir!r}: it must be an absolute path"
            )
        wanted = opts.workdir
    else:
        # An image's relative WorkingDir is taken relative to / (what buildkit writes anyway).
        wanted = "/" + (config.working_dir or "/").lstrip("/")
    try:
        cwd = rootfs.resolve_dir(root, wanted, create=True)
    except OSError as e:
        raise WorkdirError(
            f"cannot use working directory {wanted!r} in the image: {e.strerror or e}",
            hint="pick another directory with -w",
        ) from None
    if any(cwd == k or cwd.startswith(k + "/") for k in _KERNEL_FS):
        raise WorkdirError(
            f"refusing working directory {wanted!r}: it resolves to {cwd!r}, "
            "inside a kernel filesystem mounted by the runtime",
            hint="pick another directory with -w",
        )
    return cwd


def _volume_mounts(
    config: oci.ContainerConfig, root: Path, taken: set[str], state_dir: Path | None
) -> list[dict[str, Any]]:
    """Anonymous scratch mounts for the image's Volumes, owned and moded like the image's dir.

    With a ``state_dir`` each is a fresh directory under ``<state_dir>/volumes`` (on disk, removed
    with the bundle); without one, a tmpfs. The image's content at that path is not copied in.
    """
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(config.volumes):
        dst = _clean_dst("/" + raw.lstrip("/"), "volume")
        if dst in taken or dst == "/":
            continue
        taken.add(dst)
        st = rootfs.stat_in_root(root, dst)
        if st is not None and stat.S_ISDIR(st.st_mode):
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        else:
            mode, uid, gid = 0o755, 0, 0
        if state_dir is None:
            out.append(
                {
                    "destination": dst,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", f"mode={mode:o}", f"uid={uid}", f"gid={gid}"],
                }
            )
            continue
        src = state_dir / "volumes" / str(i)
        src.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        out.append(
            {
                "destination": dst,
                "type": "bind",
                "source": str(src),
                "options": ["rbind", "rprivate"],
            }
        )
    return out


def build_spec(
    config: oci.ImageConfig,
    opts: RunOptions,
    root: Path,
    *,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec (config.json) for running ``config`` with ``opts`` on ``root``.

    Reads ``/etc/passwd`` and ``/etc/group`` inside ``root`` and creates the working directory
    inside it if missing. With a ``state_dir`` (the bundle), Volumes become directories under it
    and the spec binds ``<state_dir>/hostname`` (and ``hosts`` for ``net="none"``), which
    :meth:`Runtime.create` writes; without one, Volumes are tmpfs mounts.
    """
    validate_id(opts.id)
    if opts.net not in NET_MODES:
        raise InvalidRunOptionError(
            f"invalid network mode {opts.net!r}: expected one of {', '.join(NET_MODES)}"
        )
    c = config.config
    args = _args(c, opts)
    user = resolve_user(root, opts.user if opts.user is not None else c.user)
    hostname = opts.hostname or (socket.gethostname() if opts.net == "host" else opts.id[:63])

    # docker's order: defaults (PATH, HOSTNAME, TERM), then the image's Env, then the env file,
    # then -e; a later entry replaces an earlier one with the same key, in place. HOME last.
    defaults = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"] + (
        ["TERM=xterm"] if opts.tty else []
    )
    env = _merge_env(defaults, c.env, None)
    env = _merge_env(env, opts.env_file, "the env file")
    env = _merge_env(env, opts.env, "-e")
    if not any(_env_key(e) == "HOME" for e in env):
        env.append(f"HOME={user.home or '/'}")

    cwd = _workdir(c, opts, root)

    user_mounts: list[dict[str, Any]] = []
    taken: set[str] = set()
    for mnt in opts.mounts:
        dst = _clean_dst(mnt.dst, "mount destination")
        if dst == "/":
            raise InvalidRunOptionError(f"invalid mount {mnt.src}:{mnt.dst}: cannot mount over /")
        if not mnt.src.startswith("/") or not os.path.exists(mnt.src):
            raise InvalidRunOptionError(
                f"invalid mount {mnt.src}:{mnt.dst}: the source must be an existing absolute path"
            )
        options = ["rbind", "rprivate"] + (["ro"] if mnt.readonly else [])
        user_mounts.append(
            {"destination": dst, "type": "bind", "source": mnt.src, "options": options}
        )
        taken.add(dst)

    files: list[tuple[str, str]] = []  # (destination, host source), read-only binds
    if opts.net == "host":
        files += [(p, p) for p in ("/etc/resolv.conf", "/etc/hosts") if os.path.isfile(p)]
    elif state_dir is not None:
        files.append(("/etc/hosts", str(state_dir / "hosts")))
    if state_dir is not None:
        files.append(("/etc/hostname", str(state_dir / "hostname")))
    file_mounts = [
        {"destination": d, "type": "bind", "source": s, "options": ["rbind", "rprivate", "ro"]}
        for d, s in files
        if d not in taken
    ]
    taken.update(d for d, _ in files)
    volumes = _volume_mounts(c, root, taken, state_dir)

    extra = sorted(volumes + user_mounts, key=lambda m: m["destination"].count("/"))
    mounts = [m for m in _default_mounts(opts.privileged) if m["destination"] not in taken]
    mounts += file_mounts + extra

    namespaces = ["pid", "ipc", "uts", "mount"] + (["network"] if opts.net == "none" else [])
    process_user: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        process_user["additionalGids"] = list(user.additional_gids)
    caps = resolve_capabilities(opts.cap_add, opts.cap_drop, privileged=opts.privileged)
    linux: dict[str, Any] = {
        "namespaces": [{"type": t} for t in namespaces],
        "maskedPaths": [] if opts.privileged else [*MASKED_PATHS, *thermal_throttle_paths()],
        "readonlyPaths": [] if opts.privileged else list(READONLY_PATHS),
        "resources": _resources(opts),
        # Relative: runc nests it under its own cgroup, so limits on fastdist still apply.
        "cgroupsPath": f"fastdist/{opts.id}",
    }
    if opts.privileged:
        linux["devices"] = host_devices()
    elif opts.seccomp_profile is not None:  # docker: --privileged runs without a seccomp filter
        linux["seccomp"] = seccomp.resolve(opts.seccomp_profile, caps)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": opts.tty,
            "user": process_user,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": opts.no_new_privileges,
        },
        "root": {"path": str(root.absolute()), "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }


# --- the runc lifecycle -------------------------------------------------------------------------
_BUNDLE_FILES = (
    "config.json",
    "fastdist.json",
    "log",
    "log.1",
    "exit",
    "pid",
    "runc.log",
    "hostname",
    "hosts",
    "supervisor.lock",
    "supervisor.log",
    "stopped",
    "restarts",
)
_PR_SET_CHILD_SUBREAPER = 36
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
KILL_AFTER_SECOND_INTERRUPT = 2.0  # seconds: ^C twice in this window kills (docker's habit)
InterruptNotice = Callable[[str], None]  # told the container id after a first ^C is relayed
_TAIL = 4000
StdStream = Union[int, IO[Any], None]


def _exit_code(status: int) -> int:
    """A wait status as a shell would report it: 128+N when killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _runc_errors(runc_log: Path) -> str:
    """The error messages runc logged (``--log-format json``), newest last, trimmed to a tail."""
    try:
        with open(runc_log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    msgs: list[str] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msgs.append(str(entry.get("msg", "")))
    return "\n".join(msgs)[-_TAIL:]


class Runtime:
    """Containers on runc, one bundle per container under ``<root>/containers``.

    The caller's flow: ``prepare(id)`` → mount the container's snapshot at ``rootfs_dir(id)`` →
    ``create(config, opts)`` → ``run(id)`` (foreground) or ``start(id)`` (detached) → ``state``,
    ``wait``, ``logs``, ``kill`` → ``delete(id)`` (runc forgets it) → unmount → ``remove(id)``.
    """

    def __init__(self, root: Path, *, runc: str = "runc") -> None:
        self.root = Path(root)
        self.runc = runc
        self.state_root = self.root / "runc"
        self.containers_dir = self.root / "containers"

    # -- paths ---------------------------------------------------------------------------------
    def bundle(self, container_id: str) -> Path:
        return self.containers_dir / validate_id(container_id)

    def rootfs_dir(self, container_id: str) -> Path:
        """Where the caller mounts the container's root filesystem."""
        return self.bundle(container_id) / "rootfs"

    def ids(self) -> list[str]:
        """Every container that has a bundle, sorted."""
        try:
            return sorted(p.name for p in self.containers_dir.iterdir() if _ID_RE.fullmatch(p.name))
        except FileNotFoundError:
            return []

    def _existing(self, container_id: str) -> Path:
        b = self.bundle(container_id)
        if not b.is_dir():
            raise ContainerNotFoundError(f"no such container: {container_id}")
        return b

    # -- preconditions -------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse early (runc missing, not root), before a caller creates anything."""
        self._runc_cmd()

    def _runc_cmd(self, *args: str, bundle: Path | None = None, log: str = "runc.log") -> list[str]:
        path = shutil.which(self.runc)
        if path is None:
            raise ContainerRunError(
                f"cannot run containers: runc not found ({self.runc!r} is not on PATH)",
                hint="install it (apt-get install runc) or point fastdist at it",
            )
        if os.geteuid() != 0:
            raise ContainerRunError(
                "cannot run containers: fastdist must run as root to use runc",
                hint="run it again with sudo",
            )
        cmd = [path, "--root", str(self.state_root)]
        if bundle is not None:
            cmd += ["--log", str(bundle / log), "--log-format", "json"]
        return cmd + list(args)

    def _runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            self._runc_cmd(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            close_fds=True,
            check=False,
        )
        if check and proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", errors="replace").strip()[-_TAIL:]
            raise ContainerRunError(
                f"runc {args[0]} failed: {tail.splitlines()[-1] if tail else 'no message'}",
                status=proc.returncode,
                stderr_tail=tail,
            )
        return proc

    # -- setup ---------------------------------------------------------------------------------
    def prepare(self, container_id: str) -> Path:
        """Create the bundle directory (0700) and its empty ``rootfs`` mount point.

        Raises InUseError when the id is taken.
        """
        b = self.bundle(container_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in ("containers", "runc"):  # from the root's fd: a planted symlink is refused
            check_beneath(self.root, d, create=True)
        try:
            b.mkdir(mode=0o700)  # mkdir never follows a symlink in its place (EEXIST)
        except FileExistsError:
            raise InUseError(
                f"container id {container_id!r} is already in use",
                hint="pick another --id, or remove the old container",
            ) from None
        (b / "rootfs").mkdir(mode=0o755)
        return b

    def create(
        self, config: oci.ImageConfig, opts: RunOptions, rootfs_path: Path | None = None
    ) -> dict[str, Any]:
        """Write the bundle's config.json (and hostname/hosts) for ``opts.id``; return the spec.

        ``rootfs_path`` defaults to ``rootfs_dir(opts.id)``, which must already be mounted.
        """
        b = self._existing(opts.id)
        root = rootfs_path if rootfs_path is not None else b / "rootfs"
        spec = build_spec(config, opts, root, state_dir=b)
        hostname = str(spec["hostname"])
        _write_atomic(b / "hostname", f"{hostname}\n".encode(), 0o644)
        hosts = (
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n"
        )
        _write_atomic(b / "hosts", hosts.encode(), 0o644)
        meta = {
            "id": opts.id,
            "interactive": opts.interactive,
            "tty": opts.tty,
            "ports": [dataclasses.asdict(p) for p in opts.ports],
            "restart": dataclasses.asdict(opts.restart),
            "log_max_size": opts.log_max_size,
        }
        _write_atomic(b / "fastdist.json", json.dumps(meta).encode())
        _write_atomic(b / "config.json", json.dumps(spec, indent=1).encode())
        return spec

    def _meta(self, b: Path) -> Mapping[str, Any]:
        try:
            data = (
                json.loads((b / "config.json").read_bytes()),
                json.loads((b / "fastdist.json").read_bytes()),
            )
        except FileNotFoundError:
            raise ContainerRunError(
                f"container {b.name} has no spec yet", hint="call create() before starting it"
            ) from None
        spec, meta = data
        return {
            "tty": bool(spec["process"]["terminal"]),
            "interactive": bool(meta["interactive"]),
            "ports": [PortMapping(**p) for p in meta.get("ports", [])],
        }

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        container_id: str,
        *,
        stdin: StdStream = None,
        stdout: StdStream = None,
        stderr: StdStream = None,
        on_interrupt: InterruptNotice | None = None,
    ) -> int:
        """Run in the foreground with ``runc run`` and return the container's exit status.

        stdio is inherited unless given (stdin is /dev/null unless the container is interactive).
        SIGINT, SIGTERM, SIGHUP and SIGQUIT received meanwhile (main thread only) are forwarded:
        runc, in its own session so a terminal's ^C reaches it once, relays them to the
        container. A runc failure (not the container's own exit) raises ContainerRunError.
        """
        b = self._existing(container_id)
        meta = self._meta(b)
        pid_file = b / "pid"
        cmd = self._runc_cmd(
            "run", "--bundle", str(b), "--pid-file", str(pid_file), container_id, bundle=b
        )
        if not meta["interactive"] and stdin is None:
            stdin = subprocess.DEVNULL
        for name in ("exit", "pid"):
            with contextlib.suppress(FileNotFoundError):
                (b / name).unlink()
        (b / "runc.log").write_bytes(b"")
        listeners = [(p, _listen(p)) for p in meta["ports"]]  # a port in use: nothing ran
        forwarder = _PortForwarder(listeners, pid_file) if listeners else None
        if forwarder is not None:
            forwarder.start()
        try:
            code = self._foreground(
                container_id, cmd, meta["tty"], stdin, stdout, stderr, on_interrupt=on_interrupt
            )
        finally:
            if forwarder is not None:
                forwarder.close()
        errors = _runc_errors(b / "runc.log")
        if errors:
            raise ContainerRunError(
                f"runc could not run container {container_id}: {errors.splitlines()[-1]}",
                hint=_hint_for(errors),
                status=code,
                stderr_tail=errors,
            )
        _write_atomic(b / "exit", f"{code}\n".encode())
        return code

    def _foreground(
        self,
        container_id: str,
        cmd: list[str],
        tty: bool,
        stdin: StdStream,
        stdout: StdStream,
        stderr: StdStream,
        *,
        on_interrupt: InterruptNotice | None = None,
    ) -> int:
        """Run ``runc run``/``runc exec`` in the foreground, relaying signals; its exit status.

        runc is in its own session, so a terminal's ^C reaches it once, through us. A second
        SIGINT within ``KILL_AFTER_SECOND_INTERRUPT`` seconds of the first kills the container
        (its PID 1 may ignore SIGINT, as a shell does); ``on_interrupt`` is told after the first.
        """
        if tty:
            fds = [
                s if isinstance(s, int) else (s.fileno() if s is not None else d)
                for s, d in ((stdin, 0), (stdout, 1), (stderr, 2))
            ]
            if not any(fd >= 0 and os.isatty(fd) for fd in fds):
                raise ContainerRunError(
                    "cannot allocate a terminal: none of stdin, stdout, stderr is a TTY",
                    hint="drop -t, or run from a terminal",
                )
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,
        )
        previous: dict[int, Any] = {}
        last_interrupt: list[float] = []

        def forward(signum: int, _frame: object) -> None:
            now = time.monotonic()
            if signum == signal.SIGINT:
                if last_interrupt and now - last_interrupt[-1] <= KILL_AFTER_SECOND_INTERRUPT:
                    with contextlib.suppress(ContainerRunError):
                        self._runc("kill", container_id, "KILL", check=False)
                    return
                last_interrupt.append(now)
                if on_interrupt is not None:
                    on_interrupt(container_id)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        try:
            if _in_main_thread():
                # SIGWINCH too with a terminal: it reaches our process group, not runc's session,
                # and runc resizes the container's terminal when it gets it.
                forwarded = _FORWARDED_SIGNALS + ((signal.SIGWINCH,) if tty else ())
                for sig in forwarded:
                    previous[sig] = signal.signal(sig, forward)
            code = proc.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        return 128 - code if code < 0 else code

    def exec(
        self,
        container_id: str,
        args: Sequence[str],
        *,
        tty: bool = False,
        interactive: bool = False,
        env: Sequence[str] = (),
        user: str | None = None,
        workdir: str | None = None,
        stdin: StdStream = None,
        stdout: StdStream = None,
        stderr: StdStream = None,
    ) -> int:
        """Run ``args`` in the running container (``runc exec``); the process's exit status.

        The new process is the container's own process spec (capabilities, rlimits,
        no_new_privs, the seccomp filter of the container) with its args, env (``env`` entries
        replace or add ``KEY=VALUE``), user (resolved in the container's root) and cwd replaced.
        """
        b = self._existing(container_id)
        if not args:
            raise InvalidRunOptionError("nothing to exec: give a command", hint="exec ID CMD…")
        state = self.state(container_id)
        if state.status != "running":
            raise ContainerRunError(
                f"cannot exec in container {container_id}: it is {state.status}",
                hint="exec needs a running container (start one with run -d)",
            )
        spec = json.loads((b / "config.json").read_bytes())
        process = dict(spec["process"])
        process["args"] = list(args)
        process["terminal"] = tty
        process["env"] = _merge_env(list(process.get("env", [])), tuple(env), "-e")
        if user is not None:
            u = resolve_user(b / "rootfs", user)
            process["user"] = {"uid": u.uid, "gid": u.gid}
            if u.additional_gids:
                process["user"]["additionalGids"] = list(u.additional_gids)
        if workdir is not None:
            if not workdir.startswith("/"):
                raise WorkdirError(
                    f"invalid working directory {workdir!r}: it must be an absolute path"
                )
            process["cwd"] = workdir
        if not interactive and stdin is None:
            stdin = subprocess.DEVNULL
        fd, name = tempfile.mkstemp(prefix="exec-", suffix=".json", dir=b)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(process).encode())
            log_name = Path(name).name.removesuffix(".json") + ".log"
            cmd = self._runc_cmd("exec", "--process", name, container_id, bundle=b, log=log_name)
            try:
                code = self._foreground(container_id, cmd, tty, stdin, stdout, stderr)
                errors = _runc_errors(b / log_name)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    (b / log_name).unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        if errors:
            raise ContainerRunError(
                f"runc could not exec in container {container_id}: {errors.splitlines()[-1]}",
                hint=_hint_for(errors),
                status=code,
                stderr_tail=errors,
            )
        return code

    def start(self, container_id: str) -> ContainerState:
        """Start detached: output goes to ``<bundle>/log``; returns once the container runs.

        A supervisor process (see the module docstring) owns the container from here on.
        """
        b = self._existing(container_id)
        meta = self._meta(b)
        if meta["tty"]:
            raise ContainerRunError(
                "a detached container cannot have a terminal yet", hint="drop -t when using -d"
            )
        cmd = self._runc_cmd("state", container_id)  # checks runc and root up front
        runc_path = cmd[0]
        for name in ("exit", "pid", "stopped", "restarts"):
            with contextlib.suppress(FileNotFoundError):
                (b / name).unlink()
        (b / "runc.log").write_bytes(b"")
        read_fd, write_fd = os.pipe()  # both O_CLOEXEC; the write end is passed explicitly
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        try:
            with open(b / "supervisor.log", "ab") as err:
                intermediate = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fastdist.runtime",
                        "supervise",
                        str(self.root),
                        runc_path,
                        container_id,
                        str(write_fd),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    close_fds=True,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    cwd="/",  # never pin the caller's working directory (or its mount)
                    env=env,
                )
            os.close(write_fd)
            write_fd = -1
            intermediate.wait()  # it forks the supervisor and exits at once
            with os.fdopen(read_fd, "rb") as r:
                read_fd = -1
                report = r.read(1 << 20)
        finally:
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
        try:
            result = json.loads(report) if report else {}
        except ValueError:
            result = {}
        if not result.get("ok"):
            errors = str(result.get("error") or "the supervisor died; see supervisor.log")
            raise ContainerRunError(
                f"runc could not start container {container_id}: {errors.splitlines()[-1]}",
                hint=str(result["hint"]) if result.get("hint") else _hint_for(errors),
                status=result.get("status"),
                stderr_tail=errors[-_TAIL:],
            )
        return self.state(container_id)

    # -- inspection ----------------------------------------------------------------------------
    def state(self, container_id: str) -> ContainerState:
        b = self._existing(container_id)
        exit_code: int | None = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            exit_code = int((b / "exit").read_text().strip())
        proc = self._runc("state", container_id, check=False)
        if proc.returncode == 0:
            info = json.loads(proc.stdout)
            status = str(info.get("status", "unknown"))
            pid = info.get("pid") or None
            if status == "stopped":
                pid = None
            return ContainerState(container_id, status, pid, exit_code, b)
        status = "stopped" if exit_code is not None else "created"
        return ContainerState(container_id, status, None, exit_code, b)

    def wait(self, container_id: str) -> int | None:
        """Block until the container exits (and a detached one's supervisor recorded it); its
        exit status, if known."""
        b = self._existing(container_id)
        self._wait_exit(container_id, None)
        self._wait_supervisor(b)
        return self.state(container_id).exit_code

    def _wait_supervisor(self, b: Path, *, block: bool = True) -> bool:
        """Whether no supervisor holds the bundle (waiting for it to finish when ``block``)."""
        try:
            fd = os.open(b / "supervisor.lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            return True
        finally:
            os.close(fd)

    def logs(self, container_id: str, *, follow: bool = False) -> Iterator[bytes]:
        """The output of a detached container (stdout and stderr in the order written);
        with ``follow``, until it stops."""
        return (e.data for e in self.log_entries(container_id, follow=follow))

    def log_entries(
        self, container_id: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[LogEntry]:
        """The lines of a detached container's output with their stream and time; ``tail``:
        only the last N already written; with ``follow``, then what comes until it stops."""
        b = self._existing(container_id)
        try:
            f = open(b / "log", "rb")  # noqa: SIM115 - closed in the generator's finally
        except FileNotFoundError:
            return iter(())
        older: IO[bytes] | None = None
        with contextlib.suppress(FileNotFoundError):
            older = open(b / "log.1", "rb")  # noqa: SIM115 - closed in the generator's finally
        if older is not None and _same_file(older, f):
            older.close()  # rotated between the two opens: f is that file, read it once
            older = None
        return self._read_log(b, older, f, follow, tail)

    def _read_log(
        self, b: Path, older: IO[bytes] | None, f: IO[bytes], follow: bool, tail: int | None
    ) -> Iterator[LogEntry]:
        """``older`` (``log.1``, complete) then ``f`` (``log``, maybe being written); following,
        a rotation is seen as ``log`` naming another file, read from its start."""
        try:
            earlier = (line for line in older or () if line.endswith(b"\n"))  # streamed
            if tail is not None:
                import collections

                last: collections.deque[bytes] = collections.deque(earlier, maxlen=max(0, tail))
                pending = b""
                for line in f:
                    if not line.endswith(b"\n"):
                        pending = line  # being written: read again below
                        break
                    last.append(line)
                for line in last:
                    yield parse_log_line(line)
                f.seek(-len(pending), os.SEEK_CUR)
            else:
                for line in earlier:
                    yield parse_log_line(line)
            if older is not None:
                older.close()
            pending = b""
            while True:
                chunk = f.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield parse_log_line(line)
                    continue
                if not follow:
                    break
                if self._wait_supervisor(b, block=False):
                    pending += f.read()
                    break
                rotated = self._reopen_if_rotated(b, f)
                if rotated is not None:
                    pending += f.read()  # what was written before the rename
                    f.close()
                    f = rotated
                    continue
                time.sleep(0.1)  # like tail -f; the supervisor gives no write notifications
            if pending and not pending.startswith(b'{"s": '):  # else a record still being written
                yield parse_log_line(pending)
        finally:
            if older is not None:
                older.close()
            f.close()

    @staticmethod
    def _reopen_if_rotated(b: Path, f: IO[bytes]) -> IO[bytes] | None:
        """The new ``log`` when the writer renamed the one ``f`` reads (else None)."""
        try:
            new = open(b / "log", "rb")  # noqa: SIM115 - the caller owns it
        except FileNotFoundError:
            return None
        if _same_file(new, f):
            new.close()
            return None
        return new

    # -- control -------------------------------------------------------------------------------
    def kill(self, container_id: str, sig: int | str = signal.SIGKILL) -> None:
        """Send ``sig`` (a number, or a name like ``KILL``/``SIGKILL``) to the container's init.

        The default is KILL, as docker's: a shell as PID 1 ignores TERM.
        """
        b = self._existing(container_id)
        name = parse_signal(sig)
        if name in ("KILL", "TERM", "9", "15"):
            _mark_stopped(b)  # the user stops it: no restart policy brings it back
        self._runc("kill", container_id, name)

    def _init_pidfd(self, container_id: str) -> int | None:
        """A pidfd of the container's running init (None once it is gone)."""
        state = self.state(container_id)
        if state.status not in ("running", "paused") or state.pid is None:
            return None
        try:
            fd = os.pidfd_open(state.pid)
        except ProcessLookupError:
            return None
        # The pid could have been reused between runc's answer and pidfd_open: ask again.
        again = self.state(container_id)
        if again.pid != state.pid or again.status not in ("running", "paused"):
            os.close(fd)
            return None
        return fd

    def _wait_exit(self, container_id: str, timeout: float | None) -> bool:
        """Wait for the container's init to exit (at most ``timeout`` s); whether it did."""
        fd = self._init_pidfd(container_id)
        if fd is None:
            return True
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        finally:
            os.close(fd)

    def stop(self, container_id: str, timeout: float = 10.0) -> int | None:
        """docker's stop: TERM, then KILL if the container still runs after ``timeout`` s.

        Returns the exit status once known (recorded by a detached container's supervisor).
        """
        b = self._existing(container_id)
        _mark_stopped(b)
        if self.state(container_id).status in ("running", "paused"):
            with contextlib.suppress(ContainerRunError):  # it may exit meanwhile
                self._runc("kill", container_id, "TERM")
            if not self._wait_exit(container_id, timeout):
                with contextlib.suppress(ContainerRunError):
                    self._runc("kill", container_id, "KILL")
                self._wait_exit(container_id, None)
        self._wait_supervisor(b)
        return self.state(container_id).exit_code

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Make runc forget the container (``force`` kills a running one first).

        Waits for a detached container's supervisor to record the exit status. The bundle stays
        until :meth:`remove`, so the caller can unmount the rootfs first.
        """
        b = self._existing(container_id)
        proc = self._runc("state", container_id, check=False)
        if proc.returncode == 0:
            status = json.loads(proc.stdout).get("status")
            if status in ("running", "paused") and not force:
                raise InUseError(
                    f"container {container_id} is {status}",
                    hint="stop it first (kill), or force the removal",
                )
            _mark_stopped(b)
            self._runc("delete", *(["--force"] if force else []), container_id)
        self._wait_supervisor(b)

    def remove(self, container_id: str) -> None:
        """Remove the bundle: only the files fastdist wrote, never through a mounted rootfs."""
        b = self._existing(container_id)
        if self._runc("state", container_id, check=False).returncode == 0:
            raise InUseError(
                f"container {container_id} still exists in runc", hint="delete it first"
            )
        rootfs_dir = b / "rootfs"
        if os.path.ismount(rootfs_dir):
            raise InUseError(
                f"cannot remove container {container_id}: {rootfs_dir} is still mounted",
                hint="unmount the container's rootfs first",
            )
        for name in _BUNDLE_FILES:
            for leftover in (name, name + ".tmp"):  # .tmp: an interrupted _write_atomic
                with contextlib.suppress(FileNotFoundError):
                    (b / leftover).unlink()
        for stale in b.glob("exec-*"):  # an interrupted exec's process spec and log
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
        if (b / "volumes").exists():
            shutil.rmtree(b / "volumes")  # fd-based on Linux: never follows symlinks out
        for d in (rootfs_dir, b):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise ContainerRunError(
                    f"cannot remove {d}: {e.strerror}",
                    hint="it holds files fastdist did not write; inspect and remove it by hand",
                ) from None


def _mark_stopped(b: Path) -> None:
    _write_atomic(b / "stopped", b"")


def parse_signal(sig: int | str) -> str:
    """A signal as runc takes it (``KILL``, ``15``); unknown names and numbers are usage errors."""
    if isinstance(sig, int) or (isinstance(sig, str) and sig.isdigit()):
        number = int(sig)
        if 1 <= number <= signal.SIGRTMAX:
            return str(number)
    else:
        name = sig.upper().removeprefix("SIG")
        if name in {s.name.removeprefix("SIG") for s in signal.Signals}:
            return name
    raise InvalidRunOptionError(
        f"unknown signal {str(sig)[:40]!r}",
        hint="use a name like KILL, TERM, HUP, INT, USR1 (with or without SIG), or a number",
    )


def _hint_for(errors: str) -> str | None:
    if "executable file not found" in errors or "no such file or directory" in errors:
        return "check the command: it must exist in the image (and on its PATH)"
    if "permission denied" in errors:
        return "check the command's permissions and the user it runs as"
    return None


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --- the supervisor of a detached container -----------------------------------------------------
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
        listeners = [(p, _listen(p)) for p in ports]
    except ContainerRunError as e:
        send({"ok": False, "error": f"{e.message}\n", "hint": e.hint})
        return 1
    restart = RestartPolicy(**meta.get("restart", {}))
    log = _LogWriter(b / "log", int(meta.get("log_max_size", DEFAULT_LOG_MAX_SIZE)))
    forwarder: _PortForwarder | None = None
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
            forwarder = _PortForwarder(listeners)
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
        _write_atomic(b / "restarts", f"{restarts}\n".encode())
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
        _write_atomic(b / "exit", f"{code}\n".encode())
    return 0


def _launch(
    base: list[str], b: Path, container_id: str, log: _LogWriter
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
        return _runc_errors(b / "runc.log") or f"runc create exited {created.returncode}"
    pid = int((b / "pid").read_text().strip())
    started = subprocess.run(
        [*base, "start", container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        close_fds=True,
        check=False,
    )
    if started.returncode != 0:
        error = _runc_errors(b / "runc.log") or started.stderr.decode(errors="replace")
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


UDP_IDLE_SECONDS = 90.0  # a client mapping unused this long is dropped (docker's proxy: 90 s)
UDP_MAX_CLIENTS = 256  # client mappings (an fd each) per published udp port; past it, the least
# recently used one is dropped
_UDP_MAX_DATAGRAM = 65535


class _PortForwarder:
    """Relays a published port into the container's network namespace: for tcp each accepted
    connection, for udp each client's datagrams. The container side is a socket created by a
    thread that entered only the container's network namespace (``setns`` on its own thread),
    so no bridge, veth or NAT is needed and ``--net none`` keeps its loopback-only namespace."""

    def __init__(
        self,
        listeners: list[tuple[PortMapping, socket.socket]],
        pid_file: Path | None = None,
        *,
        udp_idle: float = UDP_IDLE_SECONDS,
        udp_max_clients: int = UDP_MAX_CLIENTS,
    ) -> None:
        """``pid_file``: where runc writes the init's pid (foreground runs), read at the first
        connection when :meth:`enter` was not called."""
        import threading

        self._netns = -1
        self._lock = threading.Lock()
        self._listeners = listeners
        self._pid_file = pid_file
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._udp_idle = udp_idle
        self._udp_max_clients = udp_max_clients
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)  # wakes the udp relays on close
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        for mapping, sock in self._listeners:
            if mapping.protocol == "tcp":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        for t in self._threads:
            if t.name == "publish-udp":
                t.join()  # it closes its client sockets; then the host port is free again
        for _, sock in self._listeners:
            sock.close()
        with self._lock:
            old, self._netns = self._netns, -1
        if old >= 0:
            os.close(old)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _netns_fd(self) -> int:
        """A duplicate of the current network namespace fd (-1: none yet)."""
        with self._lock:
            if self._netns < 0 and self._pid_file is not None:
                with contextlib.suppress(OSError, ValueError):
                    pid = int(self._pid_file.read_text().strip())
                    self._netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            return os.dup(self._netns) if self._netns >= 0 else -1

    def enter(self, pid: int) -> None:
        """Relay into the network namespace of ``pid`` (a container's init, also a restarted
        one) from now on."""
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        with self._lock:
            old, self._netns = self._netns, fd
        if old >= 0:
            os.close(old)

    def start(self) -> None:
        import threading

        self._threads = [
            threading.Thread(
                target=self._accept if mapping.protocol == "tcp" else self._udp,
                args=(mapping, sock),
                name=f"publish-{mapping.protocol}",
                daemon=True,
            )
            for mapping, sock in self._listeners
        ]
        for t in self._threads:
            t.start()

    def _enter_netns(self) -> bool:
        """Move the calling thread (only) into the container's network namespace."""
        netns = self._netns_fd()  # a restart replaces self._netns meanwhile
        if netns < 0:
            return False  # the container is not up yet
        try:
            entered = self._libc.setns(netns, _CLONE_NEWNET) == 0
        finally:
            os.close(netns)
        if not entered:
            log.warning("publish: setns: errno %d", ctypes.get_errno())
        return bool(entered)

    def _accept(self, mapping: PortMapping, sock: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._relay, args=(mapping, client), name="relay", daemon=True
            ).start()

    def _relay(self, mapping: PortMapping, client: socket.socket) -> None:
        import threading

        with client:
            if not self._enter_netns():
                return  # the client sees the connection close
            try:
                upstream = socket.create_connection(("127.0.0.1", mapping.container_port), 10)
            except OSError as e:
                log.info("publish: port %d in the container: %s", mapping.container_port, e)
                return
            with upstream:
                upstream.settimeout(None)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()

    def _udp_socket(self, mapping: PortMapping) -> socket.socket | None:
        """A udp socket of the container's network namespace connected to
        ``127.0.0.1:PORT`` (connected: only the container's replies from that port arrive);
        made on a short-lived thread so the relay's own thread stays in the host's namespace."""
        import threading

        made: list[socket.socket] = []

        def make() -> None:
            if not self._enter_netns():
                return
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as e:  # EMFILE: out of fds, the datagram is dropped
                log.warning("publish: udp socket in the container: %s", e)
                return
            try:
                s.connect(("127.0.0.1", mapping.container_port))
            except OSError as e:
                s.close()
                log.info("publish: udp port %d in the container: %s", mapping.container_port, e)
                return
            s.setblocking(False)
            made.append(s)

        t = threading.Thread(target=make, name="publish-netns", daemon=True)
        t.start()
        t.join()
        return made[0] if made else None

    def _udp(self, mapping: PortMapping, host: socket.socket) -> None:
        """One published udp port: each client address gets its own socket in the container
        (so replies find their client); a mapping idle for ``udp_idle`` seconds is dropped, and
        past ``udp_max_clients`` the least recently used one is."""
        clients = _UdpClients(self._udp_idle, self._udp_max_clients)
        host.setblocking(False)
        try:
            while True:
                expiry = clients.next_expiry(time.monotonic())
                poller = select.poll()  # not select(): more than 1024 fds are possible here
                upstreams = {s.fileno(): s for s in clients.sockets()}
                for fd in (self._stop_r, host.fileno(), *upstreams):
                    poller.register(fd, select.POLLIN)
                ready = [fd for fd, _ in poller.poll(None if expiry is None else expiry * 1000)]
                if self._stop_r in ready:
                    return
                now = time.monotonic()
                for fd in ready:
                    if fd == host.fileno():
                        self._udp_from_client(mapping, host, clients, now)
                    elif fd in upstreams:
                        self._udp_from_container(host, clients, upstreams[fd], now)
                for s in clients.expire(now):
                    s.close()
        finally:
            for s in clients.close_all():
                s.close()

    def _udp_from_client(
        self, mapping: PortMapping, host: socket.socket, clients: _UdpClients, now: float
    ) -> None:
        try:
            data, addr = host.recvfrom(_UDP_MAX_DATAGRAM)
        except OSError:
            return  # e.g. an ICMP error of an earlier reply: nothing to relay
        upstream = clients.get(addr, now)
        if upstream is None:
            upstream = self._udp_socket(mapping)
            if upstream is None:
                return  # the container is not up (yet): udp drops the datagram
            evicted = clients.add(addr, upstream, now)
            if evicted is not None:
                evicted.close()
        with contextlib.suppress(OSError):  # nobody listens in the container (yet): dropped
            upstream.send(data)

    def _udp_from_container(
        self, host: socket.socket, clients: _UdpClients, upstream: socket.socket, now: float
    ) -> None:
        try:
            data = upstream.recv(_UDP_MAX_DATAGRAM)
        except OSError:
            return  # ECONNREFUSED: nothing listens on the port in the container
        addr = clients.touch(upstream, now)
        if addr is not None:
            with contextlib.suppress(OSError):
                host.sendto(data, addr)


class _UdpClients:
    """The client address → container-side socket table of one published udp port, in least
    recently used order, bounded in size and in idle time."""

    def __init__(self, idle: float, max_clients: int) -> None:
        import collections

        self._idle = idle
        self._max = max(1, max_clients)
        self._by_addr: collections.OrderedDict[Any, tuple[socket.socket, float]] = (
            collections.OrderedDict()
        )
        self._addr_of: dict[socket.socket, Any] = {}

    def __len__(self) -> int:
        return len(self._by_addr)

    def sockets(self) -> list[socket.socket]:
        return list(self._addr_of)

    def get(self, addr: Any, now: float) -> socket.socket | None:
        entry = self._by_addr.get(addr)
        if entry is None:
            return None
        self._by_addr[addr] = (entry[0], now)
        self._by_addr.move_to_end(addr)
        return entry[0]

    def touch(self, sock: socket.socket, now: float) -> Any:
        """A reply came through ``sock``: its client address (None: gone meanwhile)."""
        addr = self._addr_of.get(sock)
        if addr is not None:
            self.get(addr, now)
        return addr

    def add(self, addr: Any, sock: socket.socket, now: float) -> socket.socket | None:
        """Map ``addr`` to ``sock``; the socket evicted to stay within the bound, if any."""
        evicted = None
        if len(self._by_addr) >= self._max:
            _, (evicted, _) = self._by_addr.popitem(last=False)
            del self._addr_of[evicted]
        self._by_addr[addr] = (sock, now)
        self._addr_of[sock] = addr
        return evicted

    def expire(self, now: float) -> list[socket.socket]:
        """Drop the mappings idle for longer than the idle time; their sockets."""
        gone = []
        while self._by_addr:
            addr, (sock, last) = next(iter(self._by_addr.items()))
            if now - last < self._idle:
                break
            del self._by_addr[addr]
            del self._addr_of[sock]
            gone.append(sock)
        return gone

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the oldest mapping expires (None: no mapping, wait for a client)."""
        if not self._by_addr:
            return None
        _, last = next(iter(self._by_addr.values()))
        return max(0.0, last + self._idle - now)

    def close_all(self) -> list[socket.socket]:
        socks = list(self._addr_of)
        self._by_addr.clear()
        self._addr_of.clear()
        return socks


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF, then half-close, so each direction ends on its own."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


_CLONE_NEWNET = 0x40000000
_LOG_DRAIN_SECONDS = 10.0
_LOG_LINE_MAX = 16 * 1024  # a longer line is recorded in pieces (docker: 16 KiB too)


@dataclass(frozen=True)
class LogEntry:
    """One line (or piece of a long one) a detached container wrote, with its stream and time."""

    stream: str  # "stdout" or "stderr"
    time: float
    data: bytes


class _LogWriter:
    """``<bundle>/log``: one JSON object per line the container wrote, so stdout and stderr
    stay apart and keep their order (``{"s": stream, "t": unix time, "b": text}``, the text
    with undecodable bytes kept as surrogate escapes).

    Capped like docker's json-file ``max-size`` with ``max-file=2``: a record that would take
    the file past ``max_bytes`` first renames it to ``log.1`` (replacing the older one), so a
    chatty container holds at most twice the cap (plus one record) on disk."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_LOG_MAX_SIZE) -> None:
        import threading

        self._path = path
        self._max = max_bytes
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size  # a restarted container appends
        self._lock = threading.Lock()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        return os.open(self._path, flags, 0o600)

    def write(self, stream: str, data: bytes) -> None:
        record = {"s": stream, "t": time.time(), "b": data.decode("utf-8", "surrogateescape")}
        line = json.dumps(record).encode() + b"\n"
        with self._lock:
            if self._size > 0 and self._size + len(line) > self._max:
                try:
                    os.rename(self._path, self._path.with_name(self._path.name + ".1"))
                    fd = self._open()
                except OSError as e:  # keep writing where we are rather than lose output
                    log.warning("log rotation of %s: %s", self._path, e)
                else:
                    os.close(self._fd)
                    self._fd, self._size = fd, 0
            os.write(self._fd, line)
            self._size += len(line)

    def follow(self, fd: int, stream: str) -> Any:
        import threading

        def pump() -> None:
            pending = b""
            try:
                while True:
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    pending += chunk
                    while True:
                        cut = pending.find(b"\n")
                        if cut < 0 and len(pending) < _LOG_LINE_MAX:
                            break
                        end = cut + 1 if 0 <= cut < _LOG_LINE_MAX else _LOG_LINE_MAX
                        self.write(stream, pending[:end])
                        pending = pending[end:]
                if pending:
                    self.write(stream, pending)
            finally:
                os.close(fd)

        t = threading.Thread(target=pump, name=f"log-{stream}", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        os.close(self._fd)


def _same_file(a: IO[bytes], b: IO[bytes]) -> bool:
    sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def parse_log_line(line: bytes) -> LogEntry:
    """A line of ``<bundle>/log``; anything not ours (an older raw log) is stdout text."""
    try:
        record = json.loads(line)
        if isinstance(record, dict) and record.get("s") in ("stdout", "stderr"):
            text = str(record.get("b", ""))
            return LogEntry(
                str(record["s"]),
                float(record.get("t", 0.0)),
                text.encode("utf-8", "surrogateescape"),
            )
    except (ValueError, TypeError, UnicodeError):
        pass
    return LogEntry("stdout", 0.0, line)


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
    log.error("usage: python -m fastdist.runtime supervise ROOT RUNC ID REPORT_FD")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
