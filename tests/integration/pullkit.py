"""Helpers shared by the fault, crash and concurrency tests: images served by the in-process
``FakeRegistry``, the tree a clean pull must produce, and the CLI run as a separate process."""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest

from fakeregistry import FakeRegistry
from fastdist import _native
from fastdist.client import Client
from fastdist.snapshots import overlay_supported
from fastdist.testing.images import (
    BuiltImage,
    BuiltLayer,
    Dir,
    File,
    Symlink,
    build_image,
    build_layer,
    tar_entries,
    tree_snapshot,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _overlay_available() -> bool:
    # Probed in a private directory: the probe treats its argument as a store root and secures
    # it (0700), so it must never be pointed at a shared directory such as /tmp.
    probe = Path(tempfile.mkdtemp(prefix="fastdist-probe-"))
    try:
        return overlay_supported(probe)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


SNAPSHOTTERS = [
    "native",
    pytest.param(
        "overlayfs",
        marks=pytest.mark.skipif(not _overlay_available(), reason="overlayfs not available"),
    ),
]


def small_layer(seed: int, files: int = 4) -> BuiltLayer:
    """A layer with a few small files (content fixed by ``seed``)."""
    rng = random.Random(seed)
    entries = [Dir(f"d{seed}")]
    for i in range(files):
        entries.append(File(f"d{seed}/f{i}", rng.randbytes(rng.randint(10, 3000))))
    entries.append(Symlink(f"d{seed}/link", "f0"))
    entries.append(File("shared", f"written by layer {seed}\n"))
    return build_layer(tar_entries(entries))


def big_layer(seed: int, size: int) -> BuiltLayer:
    """A layer holding ``size`` incompressible bytes (its blob is a little larger)."""
    data = random.Random(seed).randbytes(size)
    return build_layer(tar_entries([Dir("big"), File(f"big/blob{seed}.bin", data)]))


def image(*layers: BuiltLayer, cmd: str = "sh") -> BuiltImage:
    return build_image(list(layers), cmd=[cmd])


def serve(reg: FakeRegistry, repo: str, img: BuiltImage, tag: str = "v1") -> str:
    """Put ``img`` on ``reg`` as ``repo:tag``; returns the reference to pull."""
    for digest, blob in img.blobs().items():
        reg.blobs[digest] = blob
    reg.add_manifest(repo, img.manifest, img.descriptor.media_type, tag)
    return f"{reg.host}/{repo}:{tag}"


def expected_tree(img: BuiltImage) -> dict[str, tuple[object, ...]]:
    """The flattened root filesystem a correct pull of ``img`` unpacks to."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rootfs"
        out.mkdir()
        for n, layer in enumerate(img.layers):
            blob = Path(tmp) / f"blob{n}"
            blob.write_bytes(layer.blob)
            _native.apply_layer(
                str(blob),
                layer.descriptor.media_type,
                str(out),
                mode="flatten",
                expected_digest=layer.descriptor.digest,
                expected_size=layer.descriptor.size,
                expected_diff_id=layer.diff_id,
            )
        return tree_snapshot(out)


def unpacked_tree(client: Client, ref: str) -> dict[str, tuple[object, ...]]:
    with tempfile.TemporaryDirectory() as tmp:
        return tree_snapshot(client.unpack(ref, Path(tmp) / "rootfs"))


def full_blob_gets(reg: FakeRegistry, digest: str) -> list[object]:
    """GETs of a blob that started from byte 0 (a Range request continues a download)."""
    return [r for r in reg.requests_to(f"/blobs/{digest}", "GET") if "range" not in r.headers]


def range_gets(reg: FakeRegistry, digest: str) -> list[str]:
    gets = reg.requests_to(f"/blobs/{digest}", "GET")
    return [r.headers["range"] for r in gets if "range" in r.headers]
