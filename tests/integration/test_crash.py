"""SIGKILL a pulling ``python -m fastdist pull`` at several points, then check what the store
shows, pull again, and let prune clear the leftovers. Points: mid-download (the registry drips
the big blob; the kill comes once it has served a known number of bytes), with a layer unpacked
but not committed, right after the first layer's commit (its rename not yet flushed), and with
every snapshot committed but the image not yet recorded (the last three through the
FASTDIST_TEST_CRASH_AT hook: nothing outside the process marks those moments)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pullkit import (
    SNAPSHOTTERS,
    big_layer,
    expected_tree,
    full_blob_gets,
    image,
    range_gets,
    serve,
    small_layer,
    unpacked_tree,
)

from clikit import cli_argv, cli_env, run_cli
from fakeregistry import FakeRegistry, Fault
from fastdist.client import Client
from fastdist.testing.images import BuiltImage

BIG = 3 << 20


@pytest.fixture(scope="module")
def img() -> BuiltImage:
    return image(small_layer(1), big_layer(2, BIG), small_layer(3))


def reg_size(reg: FakeRegistry, digest: str) -> int:
    return len(reg.blobs[digest])


def _client(root: Path, snapshotter: str) -> Client:
    return Client(root, snapshotter=snapshotter, hosts_dir=root.parent / "no-mirrors")


def _assert_nothing_listed_and_consistent(client: Client, img: BuiltImage) -> None:
    assert client.images() == []
    report = client.check()
    assert report.ok, report.problems
    for digest in client.content.digests():
        # Whatever is visible is verified (check re-hashed it) and belongs to this image.
        assert digest in {*img.blobs(), img.descriptor.digest}


def _finish_and_prune(client: Client, ref: str, img: BuiltImage, root: Path) -> None:
    client.pull(ref)
    assert [i.name for i in client.images()] == [ref]
    assert unpacked_tree(client, ref) == expected_tree(img)
    out = run_cli(root, "prune")
    assert out.returncode == 0, out.stderr
    report = client.check()
    assert report.ok, report.problems
    assert report.leftovers == ()
    assert unpacked_tree(client, ref) == expected_tree(img)  # prune kept the image whole


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_kill_during_download_resumes_by_range(
    tmp_path: Path, img: BuiltImage, snapshotter: str
) -> None:
    root = tmp_path / "store"
    big = img.layers[1].descriptor
    with FakeRegistry() as reg:
        ref = serve(reg, "crash/download", img)
        drip = reg.add_fault(
            Fault(path_contains=big.digest, drip=0.002, drip_chunk=16384, times=-1)
        )
        proc = subprocess.Popen(
            cli_argv(root, "pull", "--snapshotter", snapshotter, ref),
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert reg.wait_sent(big.digest, BIG // 3), "the download never got going"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL

        client = _client(root, snapshotter)
        _assert_nothing_listed_and_consistent(client, img)
        assert not client.content.exists(big.digest)
        partial = client.content.ingest_dir / big.digest.removeprefix("sha256:") / "data"
        have = partial.stat().st_size
        assert 0 < have < big.size

        drip.times = 0
        client.pull(ref)
        assert len(full_blob_gets(reg, big.digest)) == 1  # the killed process's only
        assert range_gets(reg, big.digest) == [f"bytes={have}-"]
    _finish_and_prune(client, ref, img, root)


_RANGED_PULL = """
import sys
from pathlib import Path
from fastdist.client import Client
from fastdist.fetcher import FetchConfig
ch = 64 << 10
cfg = FetchConfig(range_threshold=2 * ch, chunk_size=ch, window=4 * ch, adaptive=False)
root, snapshotter, ref = sys.argv[1:]
Client(Path(root), snapshotter=snapshotter, hosts_dir=Path(root).parent / "no-mirrors",
       fetch_config=cfg).pull(ref)
"""


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_kill_during_a_ranged_download_keeps_only_the_contiguous_prefix(
    tmp_path: Path, img: BuiltImage, snapshotter: str
) -> None:
    # The head chunk stalls while the range workers write the next chunks at their offsets:
    # the ingest file has a hole. After the SIGKILL the next pull must resume from the
    # recorded prefix (the bytes before the hole), never from the file's size.
    ch = 64 << 10
    root = tmp_path / "store"
    big = img.layers[1].descriptor
    partial = root / "content" / "ingest" / big.digest.removeprefix("sha256:") / "data"
    with FakeRegistry() as reg:
        ref = serve(reg, "crash/ranged", img)
        reg.add_fault(Fault(path_contains=big.digest, stall_after=20_000, range_start=0))
        proc = subprocess.Popen(
            [sys.executable, "-c", _RANGED_PULL, str(root), snapshotter, ref],
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # (the stalled head's bytes are not counted as sent)
            assert reg.wait_sent(big.digest, 4 * ch), "the chunks never came"
            # The bytes were sent; wait (a condition, bounded) until they are in the file.
            deadline = time.monotonic() + 60
            while (partial.stat().st_size if partial.exists() else 0) < 5 * ch:
                assert time.monotonic() < deadline, "the chunks never reached the ingest"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        recorded = int((partial.parent / "prefix").read_text())
        assert 0 < recorded <= 20_000 < partial.stat().st_size  # a hole after the prefix

        client = _client(root, snapshotter)
        _assert_nothing_listed_and_consistent(client, img)
        before = len(range_gets(reg, big.digest))
        client.pull(ref)
        assert range_gets(reg, big.digest)[before:] == [f"bytes={recorded}-"]
        assert not (partial.parent / "prefix").exists()
    _finish_and_prune(client, ref, img, root)


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("point", ["staged", "layer-committed", "committed"])
def test_kill_after_unpack_or_commit_leaves_no_image_and_the_next_pull_refetches_nothing(
    tmp_path: Path, img: BuiltImage, snapshotter: str, point: str
) -> None:
    root = tmp_path / "store"
    with FakeRegistry() as reg:
        ref = serve(reg, f"crash/{point}", img)
        out = run_cli(root, "pull", "--snapshotter", snapshotter, ref, FASTDIST_TEST_CRASH_AT=point)
        assert out.returncode == -signal.SIGKILL, out.stderr

        client = _client(root, snapshotter)
        _assert_nothing_listed_and_consistent(client, img)
        kinds = {x.kind for x in client.check().leftovers}
        if point == "staged":
            assert "staging" in kinds  # a complete but uncommitted unpack
        elif point == "layer-committed":
            # One layer renamed into place (its directory not yet fsynced: the pull flushes
            # once before it records the image), its siblings staged, or not started yet.
            assert "snapshot-unreferenced" in kinds
        else:
            assert "snapshot-unreferenced" in kinds  # committed, never recorded

        # What the killed process left: verified blobs, and partial downloads on disk.
        held = {}
        for layer in img.layers:
            d = layer.descriptor
            partial = client.content.ingest_dir / d.digest.removeprefix("sha256:") / "data"
            held[d.digest] = (
                d.size
                if client.content.exists(d.digest)
                else partial.stat().st_size
                if partial.exists()
                else 0
            )

        client.pull(ref)
        for digest, have in held.items():
            if have == 0:
                continue  # nothing of it reached the disk before the kill: fetched afresh
            # A verified blob is reused; a partial one continues from its last byte on disk.
            assert len(full_blob_gets(reg, digest)) == 1
            assert range_gets(reg, digest) == (
                [] if have == reg_size(reg, digest) else [f"bytes={have}-"]
            )
    _finish_and_prune(client, ref, img, root)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_prune_unmounts_stray_mounts_under_the_store(tmp_path: Path, img: BuiltImage) -> None:
    root = tmp_path / "store"
    client = _client(root, "native")
    target = root / "tmp" / "left-mounted"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    try:
        assert [x.kind for x in client.check().leftovers] == ["mount"]
        client.prune()
        assert client.check().leftovers == ()
        assert not os.path.ismount(target)
    finally:
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], check=False)
