"""``fastdist.cli`` helpers that need no store or registry."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fastdist.cli import _duration, _transport_config, build_parser
from fastdist.errors import FastdistError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("24h", 86400.0),
        ("2d", 172800.0),
        ("1.5h", 5400.0),
        ("2H", 7200.0),
    ],
)
def test_duration_accepts_seconds_and_units(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1", "-5m", "ten", "1w", "nan", "inf", "1e999h"])
def test_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        _duration(text)


def test_prune_partial_age_defaults_to_the_clients_default() -> None:
    args = build_parser().parse_args(["prune"])
    assert args.partial_age is None
    assert build_parser().parse_args(["prune", "--partial-age", "36h"]).partial_age == 129600.0


# --- registry options (issue 17: TLS on loopback, ctr's --plain-http) --------------------------
@pytest.mark.parametrize("command", ["pull", "run"])
def test_bare_plain_http_flag_does_not_swallow_the_reference(command: str) -> None:
    args = build_parser().parse_args([command, "--plain-http", "host.example:5000/repo:tag"])
    assert args.plain_http is True
    assert (args.ref if command == "pull" else args.image) == "host.example:5000/repo:tag"
    cfg = _transport_config(args)
    assert cfg.plain_http_hosts == frozenset({"host.example:5000"})


def test_plain_http_host_names_another_host() -> None:
    args = build_parser().parse_args(
        ["pull", "--plain-http-host", "auth.example:80", "host.example:5000/repo:tag"]
    )
    assert args.ref == "host.example:5000/repo:tag"
    assert _transport_config(args).plain_http_hosts == frozenset({"auth.example:80"})


@pytest.mark.parametrize(
    ("flags", "verify", "skip"),
    [
        ([], True, frozenset()),
        (["--tls-verify"], True, frozenset()),
        (["--tls-verify=true"], True, frozenset()),
        (["--tls-verify=false"], False, frozenset({"host.example:5443"})),
    ],
)
def test_tls_verify_is_skopeos_flag_for_the_references_registry(
    flags: list[str], verify: bool, skip: frozenset[str]
) -> None:
    args = build_parser().parse_args(["pull", *flags, "host.example:5443/repo:tag"])
    assert args.tls_verify is verify
    assert args.ref == "host.example:5443/repo:tag"
    cfg = _transport_config(args)
    assert (cfg.insecure_skip_verify_hosts if cfg is not None else frozenset()) == skip


def test_ca_file_applies_to_the_references_registry(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here\n")
    args = build_parser().parse_args(
        ["run", "--ca-file", str(ca), "host.example:5443/repo:tag", "sh", "--tls-verify=false"]
    )
    # The container's own arguments stay the container's.
    assert args.command == ["sh", "--tls-verify=false"]
    assert args.tls_verify is True
    assert dict(_transport_config(args).host_ca_files) == {"host.example:5443": str(ca)}


def test_an_unreadable_ca_file_is_an_error_with_a_hint(tmp_path: Path) -> None:
    args = build_parser().parse_args(["pull", "--ca-file", str(tmp_path / "none"), "a/b:c"])
    with pytest.raises(FastdistError) as info:
        _transport_config(args)
    assert info.value.hint
