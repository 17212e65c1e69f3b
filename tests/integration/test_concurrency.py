"""Several fastdist processes and threads pulling overlapping images into one root at once: each
blob is downloaded once, each layer unpacked once, every pull succeeds, nothing is corrupt."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from pullkit import (
    SNAPSHOTTERS,
    expected_tree,
    full_blob_gets,
    image,
    serve,
    small_layer,
    unpacked_tree,
)

from clikit import cli_argv, cli_env
from fakeregistry import FakeRegistry, Fault
from fastdist.client import Client


def _overlapping_images(reg: FakeRegistry) -> tuple[dict[str, object], list[str]]:
    """Two images sharing their two bottom layers; the shared base drips slowly, so every
    process reaches it while the first download is still running."""
    base, mid = small_layer(1, files=40), small_layer(2)
    a = image(base, mid, small_layer(3), cmd="a")
    b = image(base, mid, small_layer(4), small_layer(5), cmd="b")
    ref_a = serve(reg, "conc/a", a)
    ref_b = serve(reg, "conc/b", b)
    reg.add_fault(
        Fault(path_contains=base.descriptor.digest, method="GET", drip=0.01, drip_chunk=2048)
    )
    layers = {x.descriptor.digest for img in (a, b) for x in img.layers}
    return {ref_a: a, ref_b: b}, sorted(layers)


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_four_processes_pulling_overlapping_images_fetch_and_unpack_each_layer_once(
    tmp_path: Path, snapshotter: str
) -> None:
    root = tmp_path / "store"
    with FakeRegistry() as reg:
        images, layer_digests = _overlapping_images(reg)
        refs = list(images)
        procs = [
            subprocess.Popen(
                cli_argv(root, "pull", "--json", "--snapshotter", snapshotter, refs[i % 2]),
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err

        blobs = {d for img in images.values() for d in img.blobs()}  # type: ignore[attr-defined]
        for digest in blobs:
            assert len(full_blob_gets(reg, digest)) == 1, digest

    events = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line]
    unpacked = Counter(e["digest"] for e in events if e["phase"] == "unpacking")
    assert {d: unpacked[d] for d in layer_digests} == dict.fromkeys(layer_digests, 1)

    client = Client(root, snapshotter=snapshotter)
    assert sorted(i.name for i in client.images()) == sorted(refs)
    for ref, img in images.items():
        assert unpacked_tree(client, ref) == expected_tree(img)  # type: ignore[arg-type]
    assert client.check().ok


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_threads_sharing_one_client_fetch_each_blob_once(tmp_path: Path, snapshotter: str) -> None:
    with FakeRegistry() as reg:
        images, layer_digests = _overlapping_images(reg)
        client = Client(tmp_path / "store", snapshotter=snapshotter)
        errors: list[BaseException] = []
        unpacking: list[str] = []
        lock = threading.Lock()

        def pull(ref: str) -> None:
            def progress(ev: object) -> None:
                if getattr(ev, "phase").value == "unpacking":  # noqa: B009
                    with lock:
                        unpacking.append(getattr(ev, "digest"))  # noqa: B009

            try:
                client.pull(ref, progress=progress)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=pull, args=(ref,)) for ref in list(images) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        blobs = {d for img in images.values() for d in img.blobs()}  # type: ignore[attr-defined]
        for digest in blobs:
            assert len(full_blob_gets(reg, digest)) == 1, digest
    assert sorted(unpacking) == layer_digests
    for ref, img in images.items():
        assert unpacked_tree(client, ref) == expected_tree(img)  # type: ignore[arg-type]
    assert client.check().ok
