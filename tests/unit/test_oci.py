"""oci: strict parsing of untrusted manifests, indexes and configs; digests; platforms."""

from __future__ import annotations

import hashlib
import json

import pytest

from fastdist import oci
from fastdist.errors import InvalidDigestError, ManifestError, UnsupportedMediaTypeError
from fastdist.oci import Platform

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def _manifest(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": D2, "size": 20}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (D1, None),
        ("sha256:" + "A" * 64, InvalidDigestError),
        ("sha256:" + "a" * 63, InvalidDigestError),
        ("sha256:" + "a" * 65, InvalidDigestError),
        ("sha256:../../etc/passwd", InvalidDigestError),
        ("sha512:" + "a" * 128, UnsupportedMediaTypeError),
        ("", InvalidDigestError),
        (None, InvalidDigestError),
        (" " + D1, InvalidDigestError),
    ],
)
def test_parse_digest_accepts_only_sha256_hex(value: object, error: type[Exception] | None) -> None:
    if error is None:
        assert oci.parse_digest(value) == value
    else:
        with pytest.raises(error):
            oci.parse_digest(value)


def test_manifest_parses_descriptors() -> None:
    m = oci.parse_document(_manifest(), oci.OCI_MANIFEST)
    assert isinstance(m, oci.Manifest)
    assert m.config.digest == D1
    assert [x.digest for x in m.layers] == [D2]


def test_document_with_both_manifests_and_layers_is_rejected() -> None:
    # CVE-2021-41190: an ambiguous document could be read as index by one tool, manifest by another
    with pytest.raises(ManifestError, match="ambiguous"):
        oci.parse_document(_manifest(manifests=[]), None)


def test_media_type_disagreeing_with_descriptor_is_rejected() -> None:
    with pytest.raises(ManifestError, match="disagrees"):
        oci.parse_document(_manifest(), oci.OCI_INDEX)


def test_duplicate_keys_are_rejected() -> None:
    doc = _manifest()[:-1] + b', "layers": []}'
    with pytest.raises(ManifestError, match="duplicate key 'layers'"):
        oci.parse_document(doc, oci.OCI_MANIFEST)


def test_deep_nesting_is_rejected_before_parsing() -> None:
    doc = b'{"schemaVersion": 2, "a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(ManifestError, match="nests deeper"):
        oci.parse_document(doc, None)


def test_oversized_manifest_is_rejected() -> None:
    with pytest.raises(ManifestError, match="over the"):
        oci.parse_document(b" " * (oci.MAX_MANIFEST_BYTES + 1), None)


def test_bad_digest_inside_manifest_is_a_manifest_error_not_a_bad_reference() -> None:
    # The user's reference was fine; the registry's document is bad: exit 5, not 2.
    doc = _manifest(layers=[{"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:xyz", "size": 1}])
    with pytest.raises(ManifestError, match=r"layers\[0\]\.digest") as e:
        oci.parse_document(doc, oci.OCI_MANIFEST)
    assert not isinstance(e.value, InvalidDigestError)
    assert e.value.exit_code == 5


def test_bad_diff_id_inside_config_is_a_manifest_error() -> None:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:../x"]},
        }
    ).encode()
    with pytest.raises(ManifestError, match=r"diff_ids\[1\]") as e:
        oci.parse_config(config)
    assert e.value.exit_code == 5


def test_negative_size_is_rejected() -> None:
    doc = _manifest(layers=[{"mediaType": oci.OCI_LAYER_GZIP, "digest": D2, "size": -1}])
    with pytest.raises(ManifestError, match="size"):
        oci.parse_document(doc, oci.OCI_MANIFEST)


def test_schema1_is_refused_with_a_hint() -> None:
    with pytest.raises(UnsupportedMediaTypeError) as exc:
        oci.parse_document(json.dumps({"schemaVersion": 1}).encode(), None)
    assert exc.value.hint


def test_index_parses_platforms() -> None:
    doc = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": D1,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                },
            ],
        }
    ).encode()
    idx = oci.parse_document(doc, oci.OCI_INDEX)
    assert isinstance(idx, oci.Index)
    assert idx.manifests[0].platform == Platform("linux", "arm64", "v8")


def test_config_parses_container_settings_and_diff_ids() -> None:
    cfg = oci.parse_config(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Entrypoint": ["/bin/sh"],
                    "Cmd": ["-c", "true"],
                    "Env": ["A=1"],
                    "WorkingDir": "/w",
                    "User": "1000:1000",
                    "Volumes": {"/data": {}},
                },
                "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
            }
        ).encode()
    )
    assert cfg.diff_ids == (D1, D2)
    assert cfg.config.entrypoint == ("/bin/sh",)
    assert cfg.config.cmd == ("-c", "true")
    assert cfg.config.volumes == ("/data",)
    assert cfg.config.user == "1000:1000"


def test_config_with_null_cmd_means_none() -> None:
    cfg = oci.parse_config(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": None},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
    )
    assert cfg.config.cmd is None


def test_chain_ids_follow_the_image_spec() -> None:
    ids = oci.chain_ids([D1, D2])
    assert ids[0] == D1
    assert ids[1] == "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/x86_64", Platform("linux", "amd64")),
    ],
)
def test_platform_parse_normalises(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


def test_platform_matching_uses_default_variants() -> None:
    assert Platform.parse("linux/arm64").matches(Platform("linux", "arm64"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert not Platform.parse("linux/amd64").matches(Platform("windows", "amd64"))


def test_platform_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="os/arch"):
        Platform.parse("amd64")
