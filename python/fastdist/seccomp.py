"""Seccomp profiles of containers: the default one, user profiles, and their resolution to a spec.

A :class:`Profile` has docker's shape (the form ``--security-opt seccomp=FILE`` reads, so a profile
written for docker works here): a default action, an arch map, and rules that may apply only with
(``includes``) or without (``excludes``) some capabilities or host architectures. :func:`resolve`
turns it into the OCI spec's ``linux.seccomp`` for one container: the rules for the container's
bounding capabilities and the host's architecture, the native arch plus its sub-architectures.

The default profile follows the policy of moby's and containerd's defaults (allow what ordinary
programs use, refuse with EPERM what is a kernel attack surface or a way out of the container),
written here as our own table, with these deliberate differences:

- io_uring (``io_uring_setup``/``enter``/``register``) is closed: it bypasses the syscall filter
  for the operations it carries and has been a steady source of kernel bugs.
- ``socket`` is open for address families below ``AF_ALG`` (38) only, with one ``LT`` condition,
  not ``NE`` conditions: runc ORs several conditions on one argument (so ``!= 38 && != 40`` would
  allow everything), and libseccomp compares all 64 bits while the kernel reads an ``int``, so
  ``NE 40`` lets ``0x1_0000_0028`` through as AF_VSOCK. ``LT`` fails closed on both counts.
- 32-bit ``socketcall`` answers ENOSYS: it hides socket()'s family behind a pointer the filter
  cannot read, and libcs fall back to the direct socket syscalls (x86 has them since Linux 4.3).
- ``clone`` is open only without namespace flags, and ``clone3`` answers ENOSYS (its flags sit in
  a struct the filter cannot read; ENOSYS makes glibc and musl fall back to ``clone``), unless the
  container has ``CAP_SYS_ADMIN``; ``personality`` only for the values programs really use.

Syscall names libseccomp does not know are skipped by runc, and runc answers ENOSYS (not the
default EPERM) for syscalls newer than any the filter names, so new libcs can fall back.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import SeccompProfileError

log = logging.getLogger(__name__)

EPERM = 1
ENOSYS = 38
MAX_PROFILE_BYTES = 1 << 20

ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
)
OPS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)


@dataclass(frozen=True)
class Arg:
    """One condition on a syscall argument; for ``MASKED_EQ``, ``value`` is the mask and
    ``value_two`` the datum (``arg & value == value_two``), as libseccomp reads them."""

    index: int
    value: int
    op: str
    value_two: int = 0


@dataclass(frozen=True)
class Rule:
    """What happens to ``names``; it applies only with all ``caps`` and on one of ``arches``
    (when given), and never with any of ``not_caps`` or on ``not_arches``."""

    names: tuple[str, ...]
    action: str = "SCMP_ACT_ALLOW"
    errno: int | None = None
    args: tuple[Arg, ...] = ()
    caps: tuple[str, ...] = ()
    not_caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    not_arches: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A seccomp profile in docker's form (see the module docstring)."""

    rules: tuple[Rule, ...]
    default_action: str = "SCMP_ACT_ERRNO"
    default_errno: int | None = EPERM
    # native SCMP arch → its sub-architectures; empty: no architectures in the spec (runc: native)
    arch_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    architectures: tuple[str, ...] = ()


# --- architectures ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostArch:
    """The host's architecture: the name rules use (Go's), the native SCMP arch."""

    name: str
    scmp: str


# uname -m → (rule name, native SCMP arch)
_MACHINES = {
    "x86_64": HostArch("amd64", "SCMP_ARCH_X86_64"),
    "i386": HostArch("386", "SCMP_ARCH_X86"),
    "i686": HostArch("386", "SCMP_ARCH_X86"),
    "aarch64": HostArch("arm64", "SCMP_ARCH_AARCH64"),
    "arm64": HostArch("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": HostArch("arm", "SCMP_ARCH_ARM"),
    "armv6l": HostArch("arm", "SCMP_ARCH_ARM"),
    "ppc64le": HostArch("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": HostArch("s390x", "SCMP_ARCH_S390X"),
    "riscv64": HostArch("riscv64", "SCMP_ARCH_RISCV64"),
    "mips64": HostArch("mips64", "SCMP_ARCH_MIPS64"),
    "loongarch64": HostArch("loong64", "SCMP_ARCH_LOONGARCH64"),
}

# What a native architecture can also execute (compat modes), so the filter covers them too: a
# filter for x86_64 alone would kill a 32-bit binary outright instead of filtering it.
ARCH_MAP: Mapping[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "SCMP_ARCH_AARCH64": ("SCMP_ARCH_ARM",),
    "SCMP_ARCH_PPC64LE": (),
    "SCMP_ARCH_S390X": ("SCMP_ARCH_S390",),
    "SCMP_ARCH_RISCV64": (),
    "SCMP_ARCH_MIPS64": ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"),
    "SCMP_ARCH_LOONGARCH64": (),
    "SCMP_ARCH_X86": (),
    "SCMP_ARCH_ARM": (),
}


def host_arch(machine: str | None = None) -> HostArch:
    m = machine or platform.machine()
    arch = _MACHINES.get(m)
    if arch is None:
        raise SeccompProfileError(
            f"no seccomp architecture known for this machine ({m!r})",
            hint="run with --security-opt seccomp=unconfined, or give a profile file",
        )
    return arch


# --- the default profile ------------------------------------------------------------------------
# Namespace flags of clone(2): NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(2) values in real use: PER_LINUX, PER_LINUX32, UNAME26, both, and the query.
SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_ALG = 38  # the first of the newer, rarely needed and often buggy families (ALG, NFC, VSOCK…)

_ALLOWED = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat
dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group
faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64
futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat
getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage
getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit
ioctl ioprio_get ioprio_set ipc kill
landlock_add_rule landlock_create_ruleset landlock_restrict_self
lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek
lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore
mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease
process_vm_readv process_vm_writev pselect6 pselect6_time64 ptrace pwrite64 pwritev pwritev2
read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select
semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32
setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
signalfd signalfd4 sigprocmask sigreturn socketpair splice stat stat64 statfs statfs64 statx
symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""

# Syscalls a capability is the kernel's own gate for: opened when the container has it.
_BY_CAPABILITY: tuple[tuple[str, str], ...] = (
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount "
        "mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname "
        "sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise"),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday stime clock_settime clock_settime64"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
)

# Syscalls only some architectures have (rule arch names are Go's, as in docker's profiles).
_BY_ARCH: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("arch_prctl", ("amd64", "x32")),
    ("modify_ldt", ("amd64", "x32", "386")),
    ("arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls", ("arm", "arm64")),
    ("sync_file_range2", ("arm", "arm64", "ppc64le")),
    ("swapcontext", ("ppc64le",)),
    ("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr", ("s390", "s390x")),
    ("riscv_flush_icache", ("riscv64",)),
)


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _default_rules() -> tuple[Rule, ...]:
    rules = [Rule(_names(_ALLOWED))]
    rules += [Rule(_names(names), arches=arches) for names, arches in _BY_ARCH]
    rules += [Rule(_names(names), caps=(cap,)) for cap, names in _BY_CAPABILITY]
    # One condition per rule: rules OR together, conditions within a rule AND (runc ORs several
    # conditions on the same argument, so never put two on one index).
    rules += [
        Rule(("personality",), args=(Arg(0, value, "SCMP_CMP_EQ"),)) for value in SAFE_PERSONALITIES
    ]
    rules.append(Rule(("socket",), args=(Arg(0, AF_ALG, "SCMP_CMP_LT"),)))
    rules.append(Rule(("socketcall",), "SCMP_ACT_ERRNO", ENOSYS))
    no_ns = Arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)
    rules.append(
        Rule(("clone",), args=(no_ns,), not_caps=("CAP_SYS_ADMIN",), not_arches=("s390", "s390x"))
    )
    # s390's clone takes the stack first and the flags second.
    rules.append(
        Rule(
            ("clone",),
            args=(Arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
            not_caps=("CAP_SYS_ADMIN",),
            arches=("s390", "s390x"),
        )
    )
    rules.append(Rule(("clone3",), "SCMP_ACT_ERRNO", ENOSYS, not_caps=("CAP_SYS_ADMIN",)))
    return tuple(rules)


DEFAULT_PROFILE = Profile(rules=_default_rules(), arch_map=ARCH_MAP)


# --- resolution ---------------------------------------------------------------------------------
def _applies(rule: Rule, caps: frozenset[str], arch: str) -> bool:
    if rule.caps and not all(c in caps for c in rule.caps):
        return False
    if any(c in caps for c in rule.not_caps):
        return False
    if rule.arches and arch not in rule.arches:
        return False
    return arch not in rule.not_arches


def resolve(
    profile: Profile, capabilities: Sequence[str], machine: str | None = None
) -> dict[str, Any]:
    """``linux.seccomp`` of the OCI spec for a container with these bounding ``capabilities``."""
    arch = host_arch(machine) if profile.arch_map or _uses_arches(profile) else None
    caps = frozenset(capabilities)
    out: dict[str, Any] = {"defaultAction": profile.default_action}
    if profile.default_errno is not None and profile.default_action == "SCMP_ACT_ERRNO":
        out["defaultErrnoRet"] = profile.default_errno
    if profile.architectures:
        out["architectures"] = list(profile.architectures)
    elif arch is not None and arch.scmp in profile.arch_map:
        out["architectures"] = [arch.scmp, *profile.arch_map[arch.scmp]]
    syscalls = []
    for rule in profile.rules:
        if not _applies(rule, caps, arch.name if arch is not None else ""):
            continue
        entry: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
        if rule.errno is not None:
            entry["errnoRet"] = rule.errno
        if rule.args:
            entry["args"] = [
                {"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}
                for a in rule.args
            ]
        syscalls.append(entry)
    out["syscalls"] = syscalls
    return out


def _uses_arches(profile: Profile) -> bool:
    return any(r.arches or r.not_arches for r in profile.rules)


# --- user profiles ------------------------------------------------------------------------------
def load_profile(path: str) -> Profile:
    """A profile file in docker's form (``--security-opt seccomp=FILE``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise SeccompProfileError(
            f"cannot read seccomp profile {path}: {e.strerror or e}",
            hint="give the path of a JSON profile, or seccomp=unconfined",
        ) from None
    if len(data) > MAX_PROFILE_BYTES:
        raise SeccompProfileError(
            f"seccomp profile {path} is over {MAX_PROFILE_BYTES >> 10} KiB",
            hint="a profile is a small JSON document",
        )
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise SeccompProfileError(
            f"seccomp profile {path} is not JSON: {e}",
            hint="write it in docker's seccomp profile format (JSON)",
        ) from None
    return parse_profile(doc, os.fspath(path))


def _bad(where: str, what: str) -> SeccompProfileError:
    return SeccompProfileError(
        f"invalid seccomp profile {where}: {what}",
        hint="see docker's seccomp profile format (defaultAction, archMap, syscalls)",
    )


def _str_list(value: Any, where: str, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(where, f"{what} must be a list of strings")
    return tuple(value)


def _int(value: Any, where: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise _bad(where, f"{what} must be an unsigned 64-bit integer")
    return value


def _action(value: Any, where: str, what: str) -> str:
    if value not in ACTIONS:
        raise _bad(where, f"{what} {str(value)[:40]!r} is not one of {', '.join(ACTIONS)}")
    return str(value)


def _parse_rule(raw: Any, where: str, i: int) -> Rule:
    what = f"syscalls[{i}]"
    if not isinstance(raw, dict):
        raise _bad(where, f"{what} must be an object")
    names = _str_list(raw.get("names"), where, f"{what}.names")
    if isinstance(raw.get("name"), str):
        names += (raw["name"],)
    if not names:
        raise _bad(where, f"{what} names no syscall")
    action = _action(raw.get("action"), where, f"{what}.action")
    errno = raw.get("errnoRet")
    errno = None if errno is None else _int(errno, where, f"{what}.errnoRet")
    args: list[Arg] = []
    for j, a in enumerate(raw.get("args") or []):
        if not isinstance(a, dict) or a.get("op") not in OPS:
            raise _bad(where, f"{what}.args[{j}] needs an op, one of {', '.join(OPS)}")
        index = _int(a.get("index"), where, f"{what}.args[{j}].index")
        if index > 5:
            raise _bad(where, f"{what}.args[{j}].index must be 0-5")
        args.append(
            Arg(
                index,
                _int(a.get("value", 0), where, f"{what}.args[{j}].value"),
                str(a["op"]),
                _int(a.get("valueTwo", 0), where, f"{what}.args[{j}].valueTwo"),
            )
        )
    indexes = [a.index for a in args]
    if len(set(indexes)) != len(indexes):
        log.warning(
            "seccomp profile %s: %s has several conditions on one argument; runc ORs them",
            where,
            what,
        )
    includes = raw.get("includes") or {}
    excludes = raw.get("excludes") or {}
    if not isinstance(includes, dict) or not isinstance(excludes, dict):
        raise _bad(where, f"{what}.includes and .excludes must be objects")
    return Rule(
        names,
        action,
        errno,
        tuple(args),
        caps=_str_list(includes.get("caps"), where, f"{what}.includes.caps"),
        not_caps=_str_list(excludes.get("caps"), where, f"{what}.excludes.caps"),
        arches=_str_list(includes.get("arches"), where, f"{what}.includes.arches"),
        not_arches=_str_list(excludes.get("arches"), where, f"{what}.excludes.arches"),
    )


def parse_profile(doc: Any, where: str) -> Profile:
    """Check and convert a profile document (docker's form; OCI's ``architectures`` also read)."""
    if not isinstance(doc, dict):
        raise _bad(where, "the document must be a JSON object")
    default_action = _action(doc.get("defaultAction"), where, "defaultAction")
    errno = doc.get("defaultErrnoRet")
    default_errno = EPERM if errno is None else _int(errno, where, "defaultErrnoRet")
    arch_map: dict[str, tuple[str, ...]] = {}
    for i, entry in enumerate(doc.get("archMap") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise _bad(where, f"archMap[{i}] needs an architecture")
        arch_map[entry["architecture"]] = _str_list(
            entry.get("subArchitectures"), where, f"archMap[{i}].subArchitectures"
        )
    architectures = _str_list(doc.get("architectures"), where, "architectures")
    raw_rules = doc.get("syscalls", [])
    raw_rules = [] if raw_rules is None else raw_rules
    if not isinstance(raw_rules, list):
        raise _bad(where, "syscalls must be a list")
    rules = tuple(_parse_rule(r, where, i) for i, r in enumerate(raw_rules))
    return Profile(rules, default_action, default_errno, arch_map, architectures)
