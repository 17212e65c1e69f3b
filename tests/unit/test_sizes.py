"""``fastdist.sizes``: byte counts for people, in tables and in error messages."""

from __future__ import annotations

import pytest

from fastdist import oci
from fastdist.errors import LimitExceededError
from fastdist.pulling import PullBudget
from fastdist.sizes import human_size, size_and_bytes


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        ((1 << 20) - 1, "1.0 MiB"),  # never "1024.0 KiB"
        (791011348, "754.4 MiB"),
        (2 << 30, "2.0 GiB"),
        (3 << 40, "3.0 TiB"),
    ],
)
def test_human_size_uses_binary_units(n: int, shown: str) -> None:
    assert human_size(n) == shown


def test_size_and_bytes_keeps_the_exact_count_beside_the_readable_one() -> None:
    assert size_and_bytes(791011348) == "754.4 MiB (791011348 bytes)"
    assert size_and_bytes(100) == "100 bytes"


def test_the_per_pull_limit_error_reads_in_mib() -> None:
    budget = PullBudget(700 << 20, "r")
    with pytest.raises(LimitExceededError) as info:
        budget.add(791011348, oci.Digest("sha256:" + "a" * 64))
    assert "754.4 MiB (791011348 bytes)" in info.value.message
    assert "700.0 MiB (734003200 bytes)" in info.value.message


def test_a_document_over_its_size_limit_is_reported_exact_and_readable() -> None:
    from fastdist.errors import ManifestError
    from fastdist.oci import parse_json

    with pytest.raises(ManifestError) as info:
        parse_json(b" " * (5 << 20), 4 << 20, "manifest")
    assert info.value.message == (
        "manifest is 5242880 bytes (5.0 MiB), over the 4194304-byte limit (4.0 MiB)"
    )
