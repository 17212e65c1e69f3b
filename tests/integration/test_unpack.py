"""``Client.unpack`` of images pulled from Debian's docker-registry: the destination is private
(0700) unless asked, opened once and used by fd only (a path swapped between layers redirects
nothing), must be ours, and a failed unpack leaves nothing behind (issues 11.2-3, 17.3, 17.5)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist.client import Client
from fastdist.errors import FastdistError, VerificationError
from fastdist.progress import Phase, ProgressEvent
from fastdist.testing.images import (
    BuiltImage,
    Dir,
    File,
    build_image,
    build_layer,
    push_image,
    tar_entries,
)

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _three_layer_image() -> BuiltImage:
    return build_image(
        [
            build_layer(
                tar_entries(
                    [Dir(".", mode=0o755), Dir("bin"), File("bin/su", b"\x7fELF", mode=0o4755)]
                )
            ),
            build_layer(tar_entries([File("second", b"2")])),
            build_layer(tar_entries([File("third", b"3")])),
        ]
    )


@pytest.fixture(scope="module")
def pulled_ref(
    registry: LocalRegistry, pusher: Pusher, tmp_path_factory: pytest.TempPathFactory
) -> str:
    ref = f"{registry.host}/it/unpack:v1"
    push_image(pusher, ref, _three_layer_image())
    Client(tmp_path_factory.getbasetemp() / "unpack-store").pull(ref)
    return ref


@pytest.fixture
def pulled(pulled_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(tmp_path_factory.getbasetemp() / "unpack-store")


def _ref(client: Client) -> str:
    img = client.images()
    assert len(img) == 1
    return img[0].name


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_unpack_destination_is_private_and_setuid_files_stay(
    pulled: Client, tmp_path: Path
) -> None:
    out = pulled.unpack(_ref(pulled), tmp_path / "new")
    assert _mode(out) == 0o700  # the image's ./ says 0755: not kept by default
    assert _mode(out / "bin/su") == 0o4755
    assert sorted(os.listdir(out)) == ["bin", "second", "third"]  # no staging dir left


def test_unpack_keep_root_mode_gives_the_image_root_entry_mode(
    pulled: Client, tmp_path: Path
) -> None:
    out = pulled.unpack(_ref(pulled), tmp_path / "kept", keep_root_mode=True)
    assert _mode(out) == 0o755


def test_unpack_swapping_the_destination_between_layers_redirects_nothing(
    pulled: Client, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    moved = tmp_path / "moved"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)

    def swap(ev: ProgressEvent) -> None:
        # After the first layer: what an attacker owning DEST's parent could do between layers.
        if ev.phase is Phase.DONE and not moved.exists():
            dest.rename(moved)
            dest.symlink_to(elsewhere)

    pulled.unpack(_ref(pulled), dest, progress=swap)
    assert os.listdir(elsewhere) == []
    assert sorted(os.listdir(moved)) == ["bin", "second", "third"]


def test_unpack_that_fails_midway_leaves_nothing_behind(pulled: Client, tmp_path: Path) -> None:
    img = pulled.get(_ref(pulled))
    manifest = pulled.content.read_bytes(img.record.manifest_digest, 1 << 20)
    third = json.loads(manifest)["layers"][2]["digest"]
    blob = pulled.content.path(third)
    data = bytearray(blob.read_bytes())
    os.chmod(blob, 0o600)
    data[-1] ^= 0xFF  # the third layer: the first two are applied when it fails
    try:
        blob.write_bytes(bytes(data))
        # A blob that went bad on disk is named as such (with the repair hint), not a tar error.
        with pytest.raises(VerificationError, match="missing or corrupt in the content store"):
            pulled.unpack(_ref(pulled), tmp_path / "created")
        assert not (tmp_path / "created").exists()  # made by the failed call: removed again
        existing = tmp_path / "existing"
        existing.mkdir(mode=0o700)
        with pytest.raises(VerificationError, match="missing or corrupt in the content store"):
            pulled.unpack(_ref(pulled), existing)
        assert os.listdir(existing) == []
    finally:
        data[-1] ^= 0xFF
        blob.write_bytes(bytes(data))


def test_unpack_into_a_file_or_a_symlink_is_a_clean_error(pulled: Client, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    for dest in (f, link):
        with pytest.raises(FastdistError, match="not a directory") as e:
            pulled.unpack(_ref(pulled), dest)
        assert e.value.hint
    assert f.read_text() == "x"
    assert os.listdir(target) == []


def test_unpack_into_a_directory_others_can_write_is_refused(
    pulled: Client, tmp_path: Path
) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(FastdistError, match="writable by group or others"):
        pulled.unpack(_ref(pulled), d)
    assert os.listdir(d) == []


@needs_root
def test_unpack_into_a_directory_another_user_owns_is_refused(
    pulled: Client, tmp_path: Path
) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(FastdistError, match="owned by uid 65534"):
        pulled.unpack(_ref(pulled), d)
    assert os.listdir(d) == []
