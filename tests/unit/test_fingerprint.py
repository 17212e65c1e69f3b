"""fingerprint.ExpectedTree: the fold of layer manifests that ``check --deep`` and dedup compare
trees against, as the applier applies layers (image-spec ``layer.md#whiteouts``)."""

from __future__ import annotations

import pytest

from fastdist.errors import StoreError
from fastdist.fingerprint import ExpectedTree, ManifestRecord, RecordKind


def rec(kind: RecordKind, path: str, link: str | None = None, mode: int = 0o644) -> ManifestRecord:
    xxh3 = "0" * 32 if kind == "f" else None
    return ManifestRecord(
        kind, path.encode(), mode, 0, 0, 0, 1, xxh3, None if link is None else link.encode(), ()
    )


def fold(*layers: list[ManifestRecord], flatten: bool = True) -> ExpectedTree:
    tree = ExpectedTree.empty()
    for layer in layers:
        tree.apply(tuple(layer), flatten=flatten)
    return tree


def test_a_whiteout_removes_the_lower_path_and_everything_below_it() -> None:
    tree = fold(
        [rec("d", "a"), rec("f", "a/x"), rec("d", "a/b"), rec("f", "a/b/y"), rec("f", "keep")],
        [rec("w", "a")],
    )
    assert set(tree.entries) == {b"keep"}


def test_an_opaque_dir_hides_lower_entries_but_keeps_its_own_layers() -> None:
    tree = fold(
        [rec("d", "c"), rec("f", "c/old")],
        [rec("f", "c/new"), rec("o", "c"), rec("f", "c/later")],
    )
    assert set(tree.entries) == {b"c", b"c/new", b"c/later"}


def test_a_whiteout_of_a_path_the_same_layer_wrote_keeps_it() -> None:
    tree = fold([rec("f", "x"), rec("w", "x")])
    assert set(tree.entries) == {b"x"}


def test_paths_resolve_through_symlinks_inside_the_root() -> None:
    tree = fold(
        [rec("d", "run"), rec("d", "var"), rec("l", "var/run", "/run"), rec("l", "up", "../../..")],
        [rec("f", "var/run/pid"), rec("f", "up/etc-file")],
    )
    assert b"run/pid" in tree.entries
    assert b"var/run/pid" not in tree.entries
    assert b"etc-file" in tree.entries  # ".." stops at the root


def test_a_symlink_loop_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="too many symlinks"):
        fold([rec("l", "a", "b"), rec("l", "b", "a"), rec("f", "a/x")])


def test_a_hardlink_takes_its_targets_metadata_even_after_the_target_is_replaced() -> None:
    tree = fold(
        [rec("f", "t", mode=0o4755), rec("h", "l", "t")],
        [rec("f", "t", mode=0o600)],
    )
    assert tree.entries[b"l"].kind == "f"
    assert tree.entries[b"l"].mode == 0o4755
    assert tree.entries[b"t"].mode == 0o600


def test_a_file_replacing_a_directory_drops_what_was_below_it() -> None:
    tree = fold([rec("d", "d"), rec("f", "d/x")], [rec("f", "d")])
    assert set(tree.entries) == {b"d"}


def test_parents_an_entry_implies_are_directories_of_unknown_metadata() -> None:
    tree = fold([rec("f", "a/b/c")])
    assert tree.implicit == {b"a", b"a/b"}
    assert tree.entries[b"a/b"].kind == "d"


def test_overlay_form_keeps_whiteouts_as_devices_and_marks_opaque_dirs() -> None:
    tree = fold([rec("w", "gone"), rec("o", "c"), rec("f", "c/new")], flatten=False)
    assert tree.entries[b"gone"].kind == "w"
    assert tree.opaque == {b"c"}
    assert set(tree.entries) == {b"gone", b"c", b"c/new"}
