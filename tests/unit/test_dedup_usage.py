"""``system df``'s count of shared extents (reflinks): each piece of the device once, however
many files map it, and a copy rewritten in part shares exactly its untouched pieces."""

from __future__ import annotations

from fastdist.dedup import _segments, _Walked

MiB = 1 << 20


def _total(units: dict[tuple[int, int], int]) -> int:
    return sum(units.values())


def test_two_clones_of_one_extent_are_one_piece_counted_once() -> None:
    a = _Walked(0, {}, {(1, 10): [(0, MiB)]})
    b = _Walked(0, {}, {(1, 11): [(0, MiB)]})
    pieces = _segments([a, b])
    assert pieces[(1, 10)] == pieces[(1, 11)]
    assert _total({**pieces[(1, 10)], **pieces[(1, 11)]}) == MiB


def test_a_copy_rewritten_in_part_shares_only_its_untouched_pieces() -> None:
    # a: the original extent; b: its clone after a write of the first 4 KiB (copy on write:
    # a new 4 KiB extent elsewhere, the rest of the original still mapped).
    a = _Walked(0, {}, {(1, 10): [(0, MiB)]})
    b = _Walked(0, {}, {(1, 11): [(8 * MiB, 8 * MiB + 4096), (4096, MiB)]})
    pieces = _segments([a, b])
    union = {**pieces[(1, 10)], **pieces[(1, 11)]}
    assert _total(union) == MiB + 4096  # no piece twice, none missing
    shared = set(pieces[(1, 10)]) & set(pieces[(1, 11)])
    assert sum(union[k] for k in shared) == MiB - 4096
    assert _total(pieces[(1, 10)]) == MiB
    assert _total(pieces[(1, 11)]) == MiB


def test_pieces_of_different_devices_never_meet() -> None:
    a = _Walked(0, {}, {(1, 10): [(0, MiB)]})
    b = _Walked(0, {}, {(2, 10): [(0, MiB)]})
    pieces = _segments([a, b])
    assert not set(pieces[(1, 10)]) & set(pieces[(2, 10)])
