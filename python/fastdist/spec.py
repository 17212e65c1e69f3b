"""Image config + run options → the OCI runtime spec (``build_spec``); the run options' parsers.

The spec follows docker's rules for what an image asks for (Entrypoint + Cmd, Env, WorkingDir,
User, Volumes) and containerd/docker's defaults for what a container gets (mounts, capabilities,
masked and read-only kernel paths, namespaces, rlimits).

Networking: the default is ``net="none"``: a new network namespace in which runc brings up only
``lo`` (like ``ctr run``). ``net="host"`` is opt-in because sharing the host's network namespace
hands the container every service bound to the host's loopback and every abstract unix socket
(CVE-2020-15257 was exactly that), which an untrusted image must not get by default.

The spec's ``cwd`` is the canonical in-root path of the working directory, never anything under
``/proc`` or ``/sys`` (CVE-2024-21626).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import oci, rootfs, seccomp
from .errors import (
    InvalidRunOptionError,
    NoCommandError,
    WorkdirError,
)
from .logs import DEFAULT_LOG_MAX_SIZE, MIN_LOG_MAX_SIZE
from .ports import PortMapping
from .users import resolve_user

log = logging.getLogger(__name__)


NET_MODES = ("none", "host")


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


CONTAINER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Mount:
    """A bind mount from the host: ``src`` (absolute host path) on ``dst`` inside the container."""

    src: str
    dst: str
    readonly: bool = False


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


@dataclass(frozen=True)
class RunOptions:
    """What ``fastdist run`` was asked for, on top of the image config.

    ``command`` replaces the image's Cmd (``None`` or empty: keep it); ``entrypoint`` replaces the
    Entrypoint and clears Cmd (``""`` clears the Entrypoint). ``env_file`` entries (already parsed
    by the caller) apply before ``env``; both are ``KEY=VALUE``. ``net`` is ``"none"`` (default, see
    the module docstring) or ``"host"``. ``rm`` is for the caller (remove on exit).

    The one options type of a run: the CLI builds it from its flags (with the ``parse_*``
    functions below for the text forms), API users directly; :func:`check_options` refuses what
    cannot run before anything is pulled or created. ``id`` empty: ``Client.run`` picks one.
    """

    id: str = ""
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


def check_options(opts: RunOptions) -> None:
    """Refuse options that cannot run (InvalidRunOptionError), before anything is pulled or
    created: sizes and counts in range, a restart policy only for a detached container without
    ``rm``, known capability names. (``id`` and ``net`` are checked by :func:`build_spec`; a
    published port in use by :func:`fastdist.ports.check_ports`.)"""
    if opts.memory is not None:
        parse_memory(opts.memory)
    if opts.cpus is not None:
        parse_cpus(opts.cpus)
    if opts.pids_limit is not None:
        parse_pids_limit(opts.pids_limit)
    parse_log_max_size(opts.log_max_size)
    if opts.restart.name != "no" and (not opts.detach or opts.rm):
        raise InvalidRunOptionError(
            f"--restart {opts.restart.name} needs a detached container without --rm",
            hint="add -d (the detached container's supervisor restarts it), or drop --rm",
        )
    resolve_capabilities(opts.cap_add, opts.cap_drop, privileged=opts.privileged)


def _size(text: str | int) -> int | None:
    """A size as docker's flags take it: bytes, or a number with b, k, m, g, t (binary units,
    ``kb`` too); None when it is not one."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)b?\s*", text.lower())
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)]) if m else None


def parse_memory(text: str | int) -> int:
    """docker's ``--memory``: bytes, or a number with b, k, m, g (binary units, ``kb`` too)."""
    value = _size(text)
    if value is None or value < MIN_MEMORY or value >= 1 << 62:
        raise InvalidRunOptionError(
            f"invalid --memory {str(text)[:40]!r}: expected a size of at least 6m",
            hint="use a number with a unit, e.g. --memory 512m or --memory 2g",
        )
    return value


def parse_log_max_size(text: str | int) -> int:
    """``--log-max-size``: bytes, or a number with b, k, m, g (binary units), at least 1k."""
    value = _size(text)
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


def validate_id(container_id: str) -> str:
    """A container id becomes a directory name and a runc id: keep it boring."""
    if not CONTAINER_ID_RE.fullmatch(container_id):
        raise InvalidRunOptionError(
            f"invalid container id {container_id[:80]!r}: "
            "use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return container_id


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


def merge_env(base: list[str], overrides: tuple[str, ...], where: str | None) -> list[str]:
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
    env = merge_env(defaults, c.env, None)
    env = merge_env(env, opts.env_file, "the env file")
    env = merge_env(env, opts.env, "-e")
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
