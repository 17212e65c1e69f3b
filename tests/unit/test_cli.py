"""``fastdist.cli`` helpers that need no store or registry."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastdist.cli.common import Terminated, _transport_config, print_error
from fastdist.cli.display import PullDisplay
from fastdist.cli.images import _duration
from fastdist.cli.main import build_parser
from fastdist.errors import FastdistError
from fastdist.progress import Phase, ProgressEvent

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


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


# --- pull display ------------------------------------------------------------------------------
def _events_then(display: PullDisplay, exc: BaseException | None) -> None:
    with display:
        display(ProgressEvent(Phase.RESOLVING, message="host/repo:1"))
        display(ProgressEvent(Phase.DOWNLOADING, "sha256:" + "a" * 64, OCI_LAYER, 10, 100))
        if exc is not None:
            raise exc


@pytest.mark.parametrize(
    ("exc", "state"),
    [
        (None, "done"),
        (KeyboardInterrupt(), "interrupted"),
        (Terminated(), "interrupted"),
        (FastdistError("boom"), "failed"),
    ],
)
def test_live_display_header_says_how_the_pull_ended(exc: BaseException | None, state: str) -> None:
    out = io.StringIO()
    display = PullDisplay(out, live=True)
    with contextlib.suppress(BaseException):
        _events_then(display, exc)
    headers = [line for line in out.getvalue().split("\x1b[2K") if line.startswith("host/repo:1")]
    assert headers[-1] == f"host/repo:1: {state}\n"
    if exc is not None:
        assert all("done" not in h for h in headers)


def test_live_display_draws_nothing_when_no_pull_happens() -> None:
    out = io.StringIO()
    with PullDisplay(out, live=True):
        pass  # e.g. ``run`` of a present image: no event arrives
    assert out.getvalue() == ""


def test_display_labels_and_messages_go_through_the_sanitiser() -> None:
    out = io.StringIO()
    with PullDisplay(out, live=False) as display:
        display(ProgressEvent(Phase.RESOLVING, message="host/repo:1"))
        display(
            ProgressEvent(
                Phase.RETRYING, "sha256:" + "b" * 64, OCI_LAYER, message="503 \x1b]0;x\x07 again"
            )
        )
    assert "\x1b" not in out.getvalue()
    assert "retrying: 503 \\x1b]0;x\\x07 again" in out.getvalue()

    live = io.StringIO()
    with PullDisplay(live, live=True) as display:
        display(ProgressEvent(Phase.RESOLVING, message="host/\x1b[2Jrepo:1\u202e"))
    drawn = live.getvalue().replace("\x1b[2K", "")
    drawn = re.sub(r"\x1b\[\d+F", "", drawn)  # the display's own cursor moves
    assert "\x1b" not in drawn
    assert "\u202e" not in drawn
    assert "host/\\x1b[2Jrepo:1\\u202e: done" in drawn


def test_error_and_hint_are_printed_through_the_sanitiser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_error(FastdistError("redirect to http://h/\x1b[2J\x00x", hint="see \u202eevil\x9b"))
    err = capsys.readouterr().err
    assert err == "error: redirect to http://h/\\x1b[2J\\x00x\nhint: see \\u202eevil\\x9b\n"


# --- help, usage errors, completion -------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_subcommand_has_a_description_and_every_option_a_help_with_its_default() -> None:
    parser = build_parser()
    missing = []
    for name, sub in [("fastdist", parser), *_subparsers(parser).items()]:
        if not sub.description:
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(f"{what}: no help")
            elif action.option_strings and "default" not in action.help:
                missing.append(f"{what}: help does not say its default")
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["pull"],
        ["pull", "--snapshotter", "zfs", "x"],
        ["images", "--format", "xml"],
        ["prune", "--partial-age", "soon"],
        ["rmi"],
        ["completion", "fish"],
        ["--root"],
    ],
)
def test_usage_errors_exit_2_with_error_and_hint(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("error: ")
    assert err[1].startswith("hint: usage: fastdist")
    assert err[1].endswith("--help")


def test_a_usage_error_quoting_argv_goes_through_the_sanitiser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["\x1b]0;x\x07"])
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\\x1b]0;x\\x07" in err


def _complete(script: str, line: str) -> list[str]:
    """What the generated bash function offers for the command line ``line``."""
    prog = (
        'source /dev/stdin; read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=("");'
        ' COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _fastdist; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(
        ["bash", "-c", prog, "_", line], input=script, capture_output=True, text=True, check=True
    )
    return [w for w in out.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("line", "offered"),
    [
        ("fastdist pu", ["pull", "push"]),
        ("fastdist --root /tmp/x im", ["images"]),
        ("fastdist images --fo", ["--format"]),
        ("fastdist images --format ", ["table", "json"]),
        ("fastdist pull --snapshotter n", ["native"]),
        ("fastdist completion ", ["bash", "zsh"]),
        ("fastdist pull --platform ", []),
    ],
)
def test_bash_completion_offers_commands_options_and_choices(line: str, offered: list[str]) -> None:
    from fastdist.completion import script

    assert _complete(script(build_parser(), "bash"), line) == offered


def test_zsh_completion_loads_the_bash_function_through_bashcompinit() -> None:
    from fastdist.completion import script

    text = script(build_parser(), "zsh")
    assert text.startswith("#compdef fastdist\n")
    assert "bashcompinit" in text
    assert "complete -F _fastdist fastdist" in text


def test_a_downloading_row_shows_its_rate_and_time_left() -> None:
    from fastdist.cli.display import _Row, _speed

    row = _Row("layer-sha256:abc", Phase.DOWNLOADING, current=30 << 20, total=90 << 20)
    row.started = 100.0
    assert _speed(row, now=110.0) == " 3.0 MiB/s ETA 20s"  # 30 MiB in 10 s, 60 MiB to go
    assert _speed(row, now=101.0) == " 30.0 MiB/s ETA 2s"
    slow = _Row("layer-sha256:def", Phase.DOWNLOADING, current=1 << 20, total=200 << 20)
    slow.started = 0.0
    assert _speed(slow, now=1.0) == " 1.0 MiB/s ETA 3m19s"
    assert _speed(row, now=100.1) == ""  # too early to say
    row.phase = Phase.DONE
    assert _speed(row, now=110.0) == ""


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


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"fastdist {importlib.metadata.version('fastdist')}\n"
