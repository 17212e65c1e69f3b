"""Through the real CLI: images named by digest or ID (issue 17.6), and a corrupt stored layer
found, repaired and fetched again (issue 17.5), against Debian's docker-registry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

pytestmark = pytest.mark.registry


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def test_inspect_and_rmi_take_a_digest_a_short_id_and_name_at_digest(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    config = busybox.image.config_descriptor.digest
    repo = busybox.ref.rpartition(":")[0]
    for name in (
        config,  # docker's IMAGE ID, whole
        _hex(config)[:12],  # and short, as `docker images` shows it
        f"sha256:{_hex(config)[:12]}",
        busybox.digest,  # the manifest digest
        f"{repo}@{busybox.digest}",  # name@digest of an image pulled by tag
    ):
        r = fastdist("inspect", name)
        assert r.rc == 0, (name, r.stderr)
        doc = json.loads(r.stdout)
        assert (doc["name"], doc["id"]) == (busybox.ref, config)

    r = fastdist("rmi", _hex(config)[:12])
    assert (r.rc, r.stdout) == (0, f"removed {busybox.ref}\n"), r.stderr
    assert fastdist("inspect", config).rc == 7


def test_a_flipped_byte_in_a_layer_is_found_repaired_and_fetched_again(
    fastdist: FastdistCLI, busybox: PushedImage, tmp_path: Path
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    layer = busybox.image.layers[0].descriptor.digest
    blob = fastdist.root / "content" / "blobs" / "sha256" / _hex(layer)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))

    r = fastdist("unpack", busybox.ref, str(tmp_path / "out"))
    assert r.rc == 5, r.stderr  # VerificationError, not a tar error from the middle
    assert f"layer {layer} of {busybox.ref} is missing or corrupt" in r.stderr
    assert "hint: fastdist check --repair" in r.stderr

    r = fastdist("check")
    assert r.rc == 1
    assert f"problem: blob-corrupt: blob {layer}" in r.stdout
    assert "hint: fastdist check --repair removes the 1 corrupt blob(s)" in r.stdout

    r = fastdist("check", "--repair")
    assert r.rc == 1  # the image is incomplete until pulled again
    assert f"repaired: removed corrupt blob {layer}" in r.stdout
    assert (
        f"hint: 1 image(s) are incomplete; pull them again to fetch what is missing: "
        f"fastdist pull {busybox.ref}" in r.stdout
    )
    assert not blob.exists()

    r = fastdist("pull", busybox.ref)
    assert r.rc == 0, r.stderr
    assert f"layer-sha256:{_hex(layer)[:12]}: downloading" in r.stdout
    assert fastdist("check").rc == 0
    r = fastdist("unpack", busybox.ref, str(tmp_path / "again"))
    assert r.rc == 0, r.stderr
    assert (tmp_path / "again" / "bin" / "busybox").is_file()
