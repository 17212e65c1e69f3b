"""The CLI over a table of bad inputs (issue 17.3): every one ends in ``error: …`` and
``hint: …`` on stderr with the exit code of its error class, and never a traceback. Real CLI
processes, against Debian's docker-registry where a registry is asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry

USAGE = 2  # argparse, InvalidReferenceError, InvalidArgumentError (bad --platform)
REGISTRY = 3  # RegistryError: not found on the registry
PLATFORM = 4  # PlatformNotFoundError
STORE = 7  # StoreError: no such local image or container
LAYER = 6  # UnsupportedMediaTypeError: a digest algorithm other than sha256

ZEROS = "sha256:" + "0" * 64
HEX64 = "f" * 64


class Row(NamedTuple):
    args: tuple[str, ...]
    rc: int
    says: str  # a piece of the error line


def row(rc: int, says: str, *args: str) -> Row:
    return Row(args, rc, says)


# {reg}: the registry host; {img}: a pushed single-platform busybox reference; {tmp}: a temp
# directory; {file}: an existing regular file there.
ROWS: dict[str, Row] = {
    # references
    "empty-reference": row(USAGE, "empty", "pull", ""),
    "whitespace": row(USAGE, "whitespace", "pull", "a b"),
    "uppercase-repo": row(USAGE, "lowercase", "pull", "{reg}/Upper/case"),
    "bad-tag": row(USAGE, "bad tag", "pull", "{reg}/x:-tag"),
    "bad-digest-hex": row(USAGE, "sha256", "pull", "{reg}/x@sha256:xyz"),
    "digest-algorithm": row(LAYER, "md5", "pull", "{reg}/x@md5:abc"),
    "bad-port": row(USAGE, "bad domain", "pull", "host:port/x"),
    "url-scheme": row(USAGE, "not a http:// URL", "pull", "http://{reg}/x"),
    "name-too-long": row(USAGE, "longer than", "pull", "{reg}/" + "a" * 300),
    "bare-digest-pull": row(USAGE, "names no repository", "pull", ZEROS),
    "bare-hex-pull": row(USAGE, "names no repository", "pull", HEX64),
    # platforms
    "platform-garbage": row(USAGE, "invalid platform", "pull", "--platform", "garbage", "{img}"),
    "platform-os-only": row(USAGE, "invalid platform", "pull", "--platform", "linux", "{img}"),
    "platform-empty-arch": row(USAGE, "invalid platform", "pull", "--platform", "linux/", "{img}"),
    "platform-four-parts": row(USAGE, "invalid platform", "pull", "--platform", "a/b/c/d", "{img}"),
    "platform-mismatch": row(PLATFORM, "linux/s390x", "pull", "--platform", "linux/s390x", "{img}"),
    "run-platform-garbage": row(
        USAGE, "invalid platform", "run", "--platform", "x", "{reg}/e2e/nosuch:v1", "true"
    ),
    # what the registry does not have
    "unknown-repo": row(REGISTRY, "nosuch", "pull", "{reg}/e2e/nosuch:v1"),
    "unknown-tag": row(REGISTRY, "nosuchtag", "pull", "{reg}/e2e/busybox:nosuchtag"),
    "unknown-digest": row(REGISTRY, ZEROS, "pull", "{reg}/e2e/busybox@" + ZEROS),
    "run-unknown-repo": row(REGISTRY, "nosuch", "run", "--rm", "{reg}/e2e/nosuch:v1", "true"),
    # local names, digests and IDs
    "inspect-missing": row(STORE, "not found", "inspect", "{reg}/e2e/missing:v1"),
    "inspect-bad-ref": row(USAGE, "lowercase", "inspect", "{reg}/NOPE"),
    "inspect-short-digest": row(USAGE, "sha256", "inspect", "{reg}/x@sha256:12"),
    "inspect-unknown-id": row(STORE, "sha256:ffff", "inspect", "sha256:ffff"),
    "inspect-unknown-digest": row(STORE, HEX64, "inspect", HEX64),
    "rmi-missing": row(STORE, "not found", "rmi", "{reg}/e2e/missing:v1"),
    "run-unknown-id": row(STORE, ZEROS, "run", "--rm", ZEROS, "true"),
    "unpack-missing": row(STORE, "not found", "unpack", "{reg}/e2e/missing:v1", "{tmp}/out"),
    # containers
    "logs-missing": row(STORE, "no such container", "logs", "nosuch"),
    "kill-missing": row(STORE, "no such container", "kill", "nosuch"),
    "kill-bogus-signal": row(USAGE, "unknown signal", "kill", "-s", "BOGUS", "nosuch"),
    "rm-missing": row(STORE, "no such container", "rm", "nosuch"),
    # flags and arguments
    "no-command": row(USAGE, "required", *()),
    "unknown-command": row(USAGE, "invalid choice", "frobnicate"),
    "pull-without-ref": row(USAGE, "required", "pull"),
    "unknown-flag": row(USAGE, "unrecognized arguments", "pull", "--bogus", "{img}"),
    "bad-snapshotter": row(USAGE, "invalid choice", "pull", "--snapshotter", "zfs", "{img}"),
    "limit-rate-word": row(USAGE, "invalid rate", "pull", "--limit-rate", "fast", "{img}"),
    "limit-rate-zero": row(USAGE, "invalid rate", "pull", "--limit-rate", "0", "{img}"),
    "max-connections-zero": row(USAGE, "at least 1", "pull", "--max-connections", "0", "{img}"),
    "max-connections-word": row(
        USAGE, "whole number", "pull", "--max-connections", "many", "{img}"
    ),
    "bad-partial-age": row(USAGE, "not a duration", "prune", "--partial-age", "soon"),
    "unpack-without-dir": row(USAGE, "required", "unpack", "{img}"),
    "repair-without-verify": row(USAGE, "--repair", "check", "--repair", "--no-verify"),
    "bad-net": row(USAGE, "invalid choice", "run", "--net", "bridge", "{img}", "true"),
    # files
    "bad-mount": row(USAGE, "--mount", "run", "--mount", "nocolon", "{img}", "true"),
    "missing-env-file": row(USAGE, "--env-file", "run", "--env-file", "{tmp}/nope", "{img}"),
}

# Paths another engineer's branch gives dedicated errors (issue 17.3: "unpack REF
# /existing/file", "--root /some/file"); here the CLI's OSError fallback already reports them.
# Any non-zero exit code (None), so that the dedicated classes need no change here.
PATH_ROWS: dict[str, Row] = {
    "root-is-a-file": Row(("--root", "{file}", "images"), -1, "{file}"),
    "root-under-a-file": Row(("--root", "{file}/store", "images"), -1, "{file}"),
    "root-under-proc": Row(("--root", "/proc/nope/store", "images"), -1, "/proc/nope"),
    "unpack-into-a-file": Row(("unpack", "{img}", "{file}"), -1, "{file}"),
}


def _params() -> list[object]:
    return [pytest.param(r, id=name) for name, r in {**ROWS, **PATH_ROWS}.items()]


def test_the_table_has_at_least_thirty_bad_inputs() -> None:
    assert len(ROWS) >= 30


@pytest.mark.parametrize("bad", _params())
def test_a_bad_input_ends_in_error_and_hint_with_its_exit_code_and_no_traceback(
    fastdist: FastdistCLI, busybox: PushedImage, registry: LocalRegistry, tmp_path: Path, bad: Row
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    if bad.args[:1] == ("unpack",) and "{file}" in bad.args:
        assert fastdist("pull", "-q", busybox.ref).rc == 0
    fill = {
        "reg": registry.host,
        "img": busybox.ref,
        "tmp": str(tmp_path),
        "file": str(a_file),
    }
    args = [a.format(**fill) for a in bad.args]
    r = fastdist(*args)
    assert "Traceback" not in r.stderr
    # run's pull display shares stderr: the error is the first "error:" line, then its hint.
    lines = r.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert errors, r.stderr
    first = errors[0]
    assert first + 1 < len(lines), r.stderr
    assert lines[first + 1].startswith("hint: "), r.stderr
    assert bad.says.format(**fill) in lines[first], r.stderr
    if "run" not in bad.args:  # nothing else: no stray log lines, a usage hint on one line
        assert all(line.startswith(("error: ", "hint: ")) for line in lines), r.stderr
    if bad.rc == -1:
        assert r.rc != 0, r.stderr
    else:
        assert r.rc == bad.rc, r.stderr


def test_an_empty_root_is_refused_and_the_working_directory_left_alone(tmp_path: Path) -> None:
    """``--root ''`` once made the working directory the store, and chmod'ed it to 0700."""
    env = {k: v for k, v in os.environ.items() if k != "FASTDIST_ROOT"}
    cwd = tmp_path / "cwd"
    cwd.mkdir(mode=0o755)
    cwd.chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist", "--root", "", "images"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == USAGE, proc.stderr
    assert proc.stderr.startswith("error: the store root is an empty path"), proc.stderr
    assert "hint: " in proc.stderr
    assert (cwd.stat().st_mode & 0o777, list(cwd.iterdir())) == (0o755, [])


def test_run_with_another_platform_than_the_present_image_is_refused_not_run(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    """docker run --platform: a present image built for another platform is not the one asked
    for; for a single-platform image the pull that follows refuses, and nothing runs."""
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    r = fastdist("run", "--rm", "--platform", "linux/s390x", busybox.ref, "echo", "ran")
    assert "ran" not in r.stdout
    assert r.rc == PLATFORM, r.stderr
    assert "linux/s390x" in r.stderr
    assert "hint: pull it anyway with --platform any" in r.stderr
    assert "Traceback" not in r.stderr
