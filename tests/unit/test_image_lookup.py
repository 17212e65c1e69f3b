"""Naming local images as docker does (issue 17.6/17.7): a name, ``name@digest``, a full digest
and a unique ID prefix, through ``Client.find``; ``rmi`` of several names, some missing. The
records are real rows in a real SQLite store, with digests crafted to share prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastdist import oci
from fastdist.cli import main as cli
from fastdist.client import Client
from fastdist.errors import (
    AmbiguousImageError,
    ImageNotFoundError,
    InUseError,
    InvalidReferenceError,
)
from fastdist.metadata import ImageRecord
from fastdist.oci import Descriptor, Digest


def _d(hex_prefix: str, fill: str) -> Digest:
    return oci.parse_digest("sha256:" + (hex_prefix + fill * 64)[:64])


def _record(name: str, target: Digest, manifest: Digest, config: Digest) -> ImageRecord:
    return ImageRecord(
        name=name,
        target=Descriptor(oci.OCI_INDEX if target != manifest else oci.OCI_MANIFEST, target, 10),
        manifest_digest=manifest,
        config_digest=config,
        layer_digests=(),
        chain_ids=(),
        snapshotter="native",
        size=10,
        created=1.0,
        updated=1.0,
    )


INDEX_A = _d("aaaa", "1")
MANIFEST_A = _d("bbbb", "2")
CONFIG_A = _d("cafe01", "3")
MANIFEST_B = _d("dddd", "4")
CONFIG_B = _d("cafe02", "5")


@pytest.fixture
def client(tmp_path: Path) -> Client:
    c = Client(tmp_path / "store", snapshotter="native")
    for rec in (
        _record("reg.example/team/a:v1", INDEX_A, MANIFEST_A, CONFIG_A),
        _record("reg.example/team/a:v2", INDEX_A, MANIFEST_A, CONFIG_A),  # same image
        _record("reg.example/team/b:v1", MANIFEST_B, MANIFEST_B, CONFIG_B),
    ):
        c.metadata.images.put(rec)
    return c


def _names(client: Client, ref: str) -> list[str]:
    return [r.name for r in client.find(ref)]


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ("reg.example/team/b:v1", ["reg.example/team/b:v1"]),
        # The image ID (config digest), whole, as sha256:prefix and as a bare prefix.
        (CONFIG_B, ["reg.example/team/b:v1"]),
        (CONFIG_B.removeprefix("sha256:"), ["reg.example/team/b:v1"]),
        ("sha256:cafe02", ["reg.example/team/b:v1"]),
        ("cafe02", ["reg.example/team/b:v1"]),
        # The manifest or index digest, and a prefix of it; both names of image a.
        (INDEX_A, ["reg.example/team/a:v1", "reg.example/team/a:v2"]),
        ("bbbb", ["reg.example/team/a:v1", "reg.example/team/a:v2"]),
        # name@digest: the images of that repository pointing at that digest.
        (f"reg.example/team/a@{INDEX_A}", ["reg.example/team/a:v1", "reg.example/team/a:v2"]),
        (f"reg.example/team/a@{MANIFEST_A}", ["reg.example/team/a:v1", "reg.example/team/a:v2"]),
        (f"reg.example/team/b@{MANIFEST_B}", ["reg.example/team/b:v1"]),
    ],
)
def test_find_takes_a_name_a_digest_and_a_unique_id_prefix(
    client: Client, ref: str, names: list[str]
) -> None:
    assert _names(client, ref) == names


def test_a_name_wins_over_an_id_prefix_spelled_the_same(client: Client) -> None:
    client.metadata.images.put(_record("docker.io/library/cafe:latest", *([_d("ee", "6")] * 3)))
    assert _names(client, "cafe") == ["docker.io/library/cafe:latest"]
    assert _names(client, "sha256:cafe02") == ["reg.example/team/b:v1"]


def test_an_ambiguous_prefix_is_an_error_listing_the_candidates(client: Client) -> None:
    with pytest.raises(AmbiguousImageError) as e:
        client.find("sha256:cafe0")
    assert set(e.value.candidates) == {
        "reg.example/team/a:v1",
        "reg.example/team/a:v2",
        "reg.example/team/b:v1",
    }
    assert "reg.example/team/b:v1" in e.value.message
    assert e.value.hint


@pytest.mark.parametrize(
    "ref",
    [
        "sha256:" + "f" * 64,  # no image has it
        "sha256:ffff",
        "f" * 64,
        f"reg.example/team/b@{INDEX_A}",  # a digest of another repository
        f"reg.example/team/c@{MANIFEST_B}",
        "reg.example/team/b:v2",
    ],
)
def test_what_matches_no_image_is_not_found(client: Client, ref: str) -> None:
    with pytest.raises(ImageNotFoundError):
        client.find(ref)


def test_a_digest_alone_is_no_reference_to_pull(client: Client) -> None:
    with pytest.raises(InvalidReferenceError, match="names no repository"):
        client.pull("sha256:" + "f" * 64)


def test_rmi_of_an_id_that_several_names_share_is_refused_and_by_name_it_works(
    client: Client,
) -> None:
    with pytest.raises(InUseError, match="2 names"):
        client.remove("bbbb")
    assert client.remove("sha256:cafe02") == "reg.example/team/b:v1"
    assert client.remove("reg.example/team/a:v1") == "reg.example/team/a:v1"
    assert client.remove(f"reg.example/team/a@{INDEX_A}") == "reg.example/team/a:v2"
    assert client.metadata.images.list() == []


def test_rmi_removes_every_present_name_and_reports_each_missing_one(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(
        [
            "--root",
            str(client.root),
            "rmi",
            "reg.example/team/missing:v1",
            "reg.example/team/a:v1",
            "sha256:" + "f" * 64,
            "cafe02",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == ImageNotFoundError.exit_code
    assert out.splitlines() == ["removed reg.example/team/a:v1", "removed reg.example/team/b:v1"]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert "reg.example/team/missing:v1" in errors[0]
    assert "f" * 64 in errors[1]
    assert [r.name for r in client.metadata.images.list()] == ["reg.example/team/a:v2"]
