"""The seccomp profile's shape per architecture and capability set, and user profile parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastdist.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    DEFAULT_PROFILE,
    ENOSYS,
    EPERM,
    SeccompProfileError,
    load_profile,
    parse_profile,
    resolve,
)
from fastdist.spec import DEFAULT_CAPABILITIES

DEFAULT = list(DEFAULT_CAPABILITIES)


def rules_for(spec: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in spec["syscalls"] if name in r["names"]]


def allowed_unconditionally(spec: dict[str, Any]) -> set[str]:
    return {
        n
        for r in spec["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }


def test_default_action_is_eperm_and_the_arch_map_covers_compat_modes() -> None:
    spec = resolve(DEFAULT_PROFILE, DEFAULT, "x86_64")
    assert spec["defaultAction"] == "SCMP_ACT_ERRNO"
    assert spec["defaultErrnoRet"] == EPERM
    assert spec["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    arm = resolve(DEFAULT_PROFILE, DEFAULT, "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert resolve(DEFAULT_PROFILE, DEFAULT, "riscv64")["architectures"] == ["SCMP_ARCH_RISCV64"]


def test_unknown_machine_is_a_clear_error() -> None:
    with pytest.raises(SeccompProfileError, match="no seccomp architecture"):
        resolve(DEFAULT_PROFILE, DEFAULT, "pdp11")


@pytest.mark.parametrize(
    ("machine", "present", "absent"),
    [
        ("x86_64", {"arch_prctl", "modify_ldt"}, {"set_tls", "s390_runtime_instr"}),
        ("aarch64", {"set_tls", "cacheflush"}, {"arch_prctl", "modify_ldt"}),
        ("s390x", {"s390_runtime_instr"}, {"arch_prctl", "set_tls"}),
    ],
)
def test_architecture_specific_syscalls_follow_the_host(
    machine: str, present: set[str], absent: set[str]
) -> None:
    names = allowed_unconditionally(resolve(DEFAULT_PROFILE, DEFAULT, machine))
    assert present <= names
    assert not absent & names


def test_escape_and_attack_surface_syscalls_are_not_allowed_by_default() -> None:
    spec = resolve(DEFAULT_PROFILE, DEFAULT, "x86_64")
    every = {n for r in spec["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    closed = {
        "keyctl",
        "add_key",
        "request_key",
        "unshare",
        "setns",
        "mount",
        "umount2",
        "bpf",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "kexec_load",
        "init_module",
        "open_by_handle_at",
        "perf_event_open",
        "acct",
        "clock_settime",
        "reboot",
        "swapon",
        "pivot_root",
        "fsopen",
        "move_mount",
    }
    assert not closed & every


def test_sys_admin_opens_the_namespace_and_mount_calls_and_lifts_the_clone_rules() -> None:
    spec = resolve(DEFAULT_PROFILE, [*DEFAULT, "CAP_SYS_ADMIN"], "x86_64")
    names = allowed_unconditionally(spec)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "sethostname"} <= names
    # no ENOSYS rule for clone3 is left: it is allowed outright
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules_for(spec, "clone3"))
    assert not [r for r in rules_for(spec, "clone") if r.get("args")]  # no flag-masked rule
    assert "keyctl" not in names
    assert "io_uring_setup" not in names


def test_without_sys_admin_clone_is_masked_and_clone3_answers_enosys() -> None:
    spec = resolve(DEFAULT_PROFILE, DEFAULT, "x86_64")
    (clone,) = rules_for(spec, "clone")
    assert clone["action"] == "SCMP_ACT_ALLOW"
    assert clone["args"] == [
        # libseccomp's order: value is the mask, valueTwo the datum (arg & mask == 0)
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
    assert CLONE_NAMESPACE_FLAGS == 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | (
        0x10000000 | 0x20000000 | 0x40000000
    )
    (clone3,) = rules_for(spec, "clone3")
    assert clone3["action"] == "SCMP_ACT_ERRNO"
    assert clone3["errnoRet"] == ENOSYS


def test_s390_clone_rule_masks_the_second_argument() -> None:
    (clone,) = rules_for(resolve(DEFAULT_PROFILE, DEFAULT, "s390x"), "clone")
    assert clone["args"][0]["index"] == 1


def test_personality_only_for_its_safe_values() -> None:
    rules = rules_for(resolve(DEFAULT_PROFILE, DEFAULT, "x86_64"), "personality")
    assert all(r["action"] == "SCMP_ACT_ALLOW" and len(r["args"]) == 1 for r in rules)
    values = {r["args"][0]["value"] for r in rules if r["args"][0]["op"] == "SCMP_CMP_EQ"}
    assert values == {0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert 0x0400000 not in values  # READ_IMPLIES_EXEC


def test_socket_families_from_af_alg_up_are_closed_with_one_fail_closed_condition() -> None:
    spec = resolve(DEFAULT_PROFILE, DEFAULT, "x86_64")
    (sock,) = rules_for(spec, "socket")
    assert sock["args"] == [{"index": 0, "value": 38, "valueTwo": 0, "op": "SCMP_CMP_LT"}]
    (call,) = rules_for(spec, "socketcall")  # 32-bit: the family is behind a pointer
    assert call["action"] == "SCMP_ACT_ERRNO"
    assert call["errnoRet"] == ENOSYS


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "s390x"])
@pytest.mark.parametrize("extra", [(), ("CAP_SYS_ADMIN",), ("CAP_SYS_PTRACE", "CAP_BPF")])
def test_no_rule_has_two_conditions_on_one_argument(machine: str, extra: tuple[str, ...]) -> None:
    # runc ORs conditions on the same argument: two would widen an allow rule to almost anything.
    for rule in resolve(DEFAULT_PROFILE, [*DEFAULT, *extra], machine)["syscalls"]:
        indexes = [a["index"] for a in rule.get("args", [])]
        assert len(indexes) == len(set(indexes)), rule


@pytest.mark.parametrize(
    ("cap", "opened"),
    [
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_BPF", {"bpf"}),
    ],
)
def test_each_capability_opens_its_own_syscalls(cap: str, opened: set[str]) -> None:
    without = allowed_unconditionally(resolve(DEFAULT_PROFILE, DEFAULT, "x86_64"))
    with_cap = allowed_unconditionally(resolve(DEFAULT_PROFILE, [*DEFAULT, cap], "x86_64"))
    assert not opened & without
    assert opened <= with_cap - without
    assert not {"mount", "keyctl", "io_uring_setup"} & with_cap


def test_chroot_follows_the_default_capability() -> None:
    names = allowed_unconditionally(resolve(DEFAULT_PROFILE, DEFAULT, "x86_64"))
    assert "chroot" in names  # CAP_SYS_CHROOT is a default capability
    no_chroot = [c for c in DEFAULT if c != "CAP_SYS_CHROOT"]
    assert "chroot" not in allowed_unconditionally(resolve(DEFAULT_PROFILE, no_chroot, "x86_64"))


def test_a_docker_form_profile_resolves_includes_and_excludes(tmp_path: Path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [
            {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {
                "names": ["mount"],
                "action": "SCMP_ACT_ERRNO",
                "excludes": {"caps": ["CAP_SYS_ADMIN"]},
            },
            {"names": ["x"], "action": "SCMP_ACT_LOG", "includes": {"arches": ["arm64"]}},
        ],
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    spec = resolve(load_profile(str(path)), DEFAULT, "x86_64")
    assert spec["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "defaultErrnoRet" not in spec
    assert spec["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [r["names"] for r in spec["syscalls"]] == [["keyctl"], ["mount"]]
    admin = resolve(load_profile(str(path)), [*DEFAULT, "CAP_SYS_ADMIN"], "x86_64")
    assert [r["names"] for r in admin["syscalls"]] == [["keyctl"]]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "must be a JSON object"),
        ({}, "defaultAction"),
        ({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls must be a list"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}, "names"),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["x"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 9, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "index must be 0-5",
        ),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "unsigned"),
    ],
)
def test_malformed_profiles_are_refused_with_a_hint(doc: Any, match: str) -> None:
    with pytest.raises(SeccompProfileError, match=match) as e:
        parse_profile(doc, "p.json")
    assert e.value.hint
    assert SeccompProfileError.exit_code == 2


def test_unreadable_or_non_json_profile_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SeccompProfileError, match="cannot read"):
        load_profile(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(SeccompProfileError, match="not JSON"):
        load_profile(str(tmp_path / "bad.json"))
