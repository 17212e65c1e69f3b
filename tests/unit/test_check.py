"""``Client.check`` / ``fastdist check``: a clean store passes; each kind of damage is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakeregistry import FakeRegistry
from fastdist.client import Client
from fastdist.oci import Descriptor
from fastdist.testing.images import File, build_image, build_layer, tar_entries

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pulled(tmp_path: Path) -> tuple[Client, str, object]:
    img = build_image(
        [
            build_layer(tar_entries([File("a", "one\n")])),
            build_layer(tar_entries([File("b", "two\n")])),
        ]
    )
    with FakeRegistry() as reg:
        for digest, blob in img.blobs().items():
            reg.blobs[digest] = blob
        reg.add_manifest("chk/img", img.manifest, img.descriptor.media_type, "v1")
        ref = f"{reg.host}/chk/img:v1"
        client = Client(tmp_path / "store", snapshotter="native", hosts_dir=tmp_path / "none")
        client.pull(ref)
    return client, ref, img


def _kinds(client: Client) -> set[str]:
    return {p.kind for p in client.check().problems}


def test_clean_store_has_no_problems_and_no_leftovers(pulled: tuple[Client, str, object]) -> None:
    client, _, _ = pulled
    report = client.check()
    assert report.ok
    assert report.problems == ()
    assert report.leftovers == ()
    assert (report.images, report.snapshots) == (1, 2)
    assert report.blobs == 4  # manifest, config, two layers


def test_a_flipped_byte_in_a_blob_is_reported_as_corrupt(
    pulled: tuple[Client, str, object],
) -> None:
    client, _, img = pulled
    digest = img.layers[0].descriptor.digest  # type: ignore[attr-defined]
    path = client.content.blob_path(digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    report = client.check()
    assert not report.ok
    assert [(p.kind, p.subject) for p in report.problems] == [("blob-corrupt", digest)]
    assert client.check(verify_blobs=False).ok  # only hashing finds this one


def test_a_missing_layer_blob_and_snapshot_are_reported_for_the_image(
    pulled: tuple[Client, str, object],
) -> None:
    client, ref, img = pulled
    client.content.delete(img.layers[1].descriptor.digest)  # type: ignore[attr-defined]
    client.snapshotter.remove(client.get(ref).record.chain_ids[1])
    assert _kinds(client) == {"image-missing-blob", "image-missing-snapshot"}


def test_a_truncated_blob_is_a_size_problem_against_its_descriptor(
    pulled: tuple[Client, str, object],
) -> None:
    client, _, img = pulled
    layer: Descriptor = img.layers[0].descriptor  # type: ignore[attr-defined]
    path = client.content.blob_path(layer.digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-3])
    report = client.check(verify_blobs=False)
    assert [(p.kind, p.subject) for p in report.problems] == [("blob-size", layer.digest)]


def test_a_snapshot_whose_parent_is_gone_breaks_its_chain(
    pulled: tuple[Client, str, object],
) -> None:
    client, ref, _ = pulled
    bottom, _top = client.get(ref).record.chain_ids
    # Remove the bottom layer behind the store's back (as a crash or a bad tool could).
    os.rename(client.snapshotter.layer_dir(bottom), client.root / "moved-away")
    kinds = _kinds(client)
    assert "snapshot-parent" in kinds
    assert "image-missing-snapshot" in kinds


def test_unreadable_snapshot_info_is_reported(pulled: tuple[Client, str, object]) -> None:
    client, ref, _ = pulled
    top = client.get(ref).record.chain_ids[1]
    (client.snapshotter.layer_dir(top) / "info.json").write_text("{not json")
    assert "snapshot-info" in _kinds(client)


def test_leftovers_are_listed_but_are_not_problems_and_prune_removes_them(
    pulled: tuple[Client, str, object],
) -> None:
    client, _, _ = pulled
    (client.snapshotter.staging_dir / "123-deadbeef").mkdir()  # a crashed unpack, no owner
    ingest = client.content.ingest_dir / ("ab" * 32)
    ingest.mkdir()
    (ingest / "data").write_bytes(b"partial")
    orphan = b"an unreferenced blob"
    from fastdist.oci import sha256_digest

    client.content.write_blob(sha256_digest(orphan), orphan)
    report = client.check()
    assert report.ok
    assert {x.kind for x in report.leftovers} == {"staging", "ingest", "blob-unreferenced"}
    client.prune()  # a partial download from just now is kept: its pull may resume
    assert {x.kind for x in client.check().leftovers} == {"ingest"}
    assert (ingest / "data").read_bytes() == b"partial"
    client.prune(partial_older_than=0)
    assert client.check().leftovers == ()


def test_prune_removes_partial_downloads_past_the_age_and_keeps_younger_or_held_ones(
    pulled: tuple[Client, str, object],
) -> None:
    from fastdist.store import FileLock

    client, ref, _ = pulled
    day = 24 * 3600
    now = time.time()

    def partial(name: str, age: float) -> Path:
        d = client.content.ingest_dir / (name * 64)
        d.mkdir()
        (d / "data").write_bytes(b"partial " + name.encode())
        os.utime(d / "data", (now - age, now - age))
        return d

    old, young, held = partial("a", 2 * day), partial("b", day - 600), partial("c", 3 * day)
    # Young but with nothing to resume: no bytes yet, or the blob already stored (a process
    # killed between storing it and removing its ingest). Age does not protect those.
    empty = client.content.ingest_dir / ("d" * 64)
    empty.mkdir()
    (empty / "lock").touch()
    stored_digest = client.get(ref).record.layer_digests[0]  # the pulled image's, kept
    stored = client.content.ingest_dir / stored_digest.removeprefix("sha256:")
    stored.mkdir()
    (stored / "data").write_bytes(b"first bytes")
    messages = {x.subject: x.message for x in client.check().leftovers if x.kind == "ingest"}
    assert "nothing to resume" in messages[stored_digest]
    assert "resumable" in messages["sha256:" + "b" * 64]
    lock = FileLock(held / "lock")
    assert lock.acquire(blocking=False)  # a pull of this blob is running
    try:
        client.prune()
        assert not empty.exists()
        assert not stored.exists()
        assert client.content.exists(stored_digest)
        assert not old.exists()
        assert (young / "data").read_bytes() == b"partial b"
        assert (held / "data").read_bytes() == b"partial c"
        client.prune(partial_older_than=3600)
        assert not young.exists()
        assert held.exists()
    finally:
        lock.release()
    client.prune(partial_older_than=0)
    assert not held.exists()
    with pytest.raises(ValueError, match="partial_older_than"):
        client.prune(partial_older_than=-1)


def test_cli_check_exits_non_zero_and_names_the_problem(
    pulled: tuple[Client, str, object],
) -> None:
    client, _, img = pulled
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    argv = [sys.executable, "-m", "fastdist", "--root", str(client.root), "check"]
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "0 problem(s)" in ok.stdout

    digest = img.config_descriptor.digest  # type: ignore[attr-defined]
    client.content.delete(digest)
    bad = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert [p["kind"] for p in report["problems"]] == ["image-missing-blob"]
    assert digest in report["problems"][0]["message"]


def test_check_repair_json_lists_what_it_removed_and_the_images_left_incomplete(
    pulled: tuple[Client, str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    from fastdist.cli import main as cli

    client, ref, img = pulled
    digest = img.layers[1].descriptor.digest  # type: ignore[attr-defined]
    path = client.content.blob_path(digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    assert cli.main(["--root", str(client.root), "check", "--repair", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["subject"]) for r in report["repaired"]] == [("blob-removed", digest)]
    assert report["incomplete_images"] == [ref]
    assert [p["kind"] for p in report["problems"]] == ["image-missing-blob"]
    assert not client.content.exists(digest)
    # Nothing more to repair: a second run removes nothing.
    assert client.check(repair=True).repaired == ()
