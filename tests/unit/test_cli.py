"""``fastdist.cli`` helpers that need no store or registry."""

from __future__ import annotations

import argparse

import pytest

from fastdist.cli import _duration, build_parser


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
