"""Reads inside a container root: links resolve inside it, never on the host (rootfs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastdist import rootfs


# --- rootfs helpers -------------------------------------------------------------------------
def test_read_file_follows_relative_and_absolute_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("inside")
    (root / "rel").symlink_to("a/b/../b/f")
    (root / "abs").symlink_to("/a/./b/f")
    (root / "up").symlink_to("../../../../a/b/f")
    for name in ("rel", "abs", "up"):
        assert rootfs.read_file(root, name, 100) == b"inside"
    assert rootfs.read_file(root, "/missing", 100) is None
    assert rootfs.read_file(root, "/a/b/f/not-a-dir", 100) is None


def test_resolve_dir_reports_missing_without_creating(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(FileNotFoundError):
        rootfs.resolve_dir(root, "/nope")
    assert not (root / "nope").exists()
