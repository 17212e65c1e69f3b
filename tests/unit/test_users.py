"""User and group resolution from the image's own /etc/passwd and /etc/group (users.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from runkit import make_rootfs

from fastdist.errors import (
    InvalidRunOptionError,
    UnknownUserError,
)
from fastdist.users import ResolvedUser, resolve_user


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path)


# --- User -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ResolvedUser(0, 0, (), "/root")),
        ("root", ResolvedUser(0, 0, (), "/root")),
        ("app", ResolvedUser(1000, 1000, (29, 44), "/home/app")),
        ("1000", ResolvedUser(1000, 1000, (29, 44), "/home/app")),
        ("daemon", ResolvedUser(1, 1, (29,), "/usr/sbin")),
        ("4242", ResolvedUser(4242, 0, (), None)),
        ("app:staff", ResolvedUser(1000, 50, (), "/home/app")),
        ("app:50", ResolvedUser(1000, 50, (), "/home/app")),
        ("1000:777", ResolvedUser(1000, 777, (), "/home/app")),
        ("4242:4343", ResolvedUser(4242, 4343, (), None)),
        ("4242:video", ResolvedUser(4242, 44, (), None)),
    ],
)
def test_user_forms_resolve_from_the_image_files(
    root: Path, user: str, expected: ResolvedUser
) -> None:
    assert resolve_user(root, user) == expected


def test_numeric_user_works_without_account_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_user(empty, "123:456") == ResolvedUser(123, 456, (), None)
    assert resolve_user(empty, "") == ResolvedUser(0, 0, (), None)


@pytest.mark.parametrize(("user", "what"), [("nobody", "user"), ("app:wheel", "group")])
def test_unknown_user_or_group_is_a_clear_error(root: Path, user: str, what: str) -> None:
    with pytest.raises(UnknownUserError, match=f"unknown {what}") as exc:
        resolve_user(root, user)
    assert exc.value.hint


def test_out_of_range_uid_is_refused(root: Path) -> None:
    with pytest.raises(InvalidRunOptionError, match="at most"):
        resolve_user(root, str(1 << 32))


def test_absolute_passwd_symlink_resolves_inside_the_rootfs(tmp_path: Path) -> None:
    # A hostile image points /etc/passwd at an absolute path; the image's own file must be read.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "secret" / "pw").write_text("img:x:7:8:from image:/img:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/../../../secret/pw")
    (root / "etc" / "group").symlink_to("/etc/group-host-does-not-matter")
    assert resolve_user(root, "img") == ResolvedUser(7, 8, (), "/img")


def test_passwd_symlink_to_host_file_never_reads_the_host(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/shadow")  # absent inside the image
    with pytest.raises(UnknownUserError, match="unknown user 'daemon'"):
        resolve_user(root, "daemon")
    assert resolve_user(root, "") == ResolvedUser(0, 0, (), None)


def test_passwd_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")  # opening it would block; it must not be opened
    with pytest.raises(UnknownUserError, match="cannot read /etc/passwd"):
        resolve_user(root, "app")


def test_oversized_passwd_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(UnknownUserError, match="larger than"):
        resolve_user(root, "app")
