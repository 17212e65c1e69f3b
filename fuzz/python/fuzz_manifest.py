"""Fuzz target: ``oci.parse_document`` and ``oci.parse_config`` on arbitrary bytes.

The property: parsing untrusted JSON either returns a value whose every digest is a valid
``sha256:<64 hex>`` string, or raises a ``FastdistError`` subclass; nothing else (no KeyError,
TypeError, RecursionError, MemoryError, hang). Run with ``make fuzz`` or
``python fuzz/python/fuzz_manifest.py [libFuzzer flags] [corpus dirs]``; ``check`` is also what
tests/unit/test_fuzz_regressions.py replays for every saved crash.
"""

from __future__ import annotations

import json
import os
import re
import sys

from fastdist import oci
from fastdist.errors import FastdistError

MEDIA_TYPES: list[str | None] = [
    None,
    oci.OCI_MANIFEST,
    oci.OCI_INDEX,
    oci.DOCKER_MANIFEST,
    oci.DOCKER_MANIFEST_LIST,
    "application/x-unknown",
]
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _valid(d: str) -> None:
    if not _DIGEST.fullmatch(d):
        raise AssertionError(f"parser let an invalid digest through: {d!r}")


def check(data: bytes) -> None:
    """One input: its first byte picks the parser and claimed media type, the rest is the body."""
    if not data:
        return
    which = data[0] % (len(MEDIA_TYPES) + 1)
    body = data[1:]
    try:
        if which == len(MEDIA_TYPES):
            cfg = oci.parse_config(body)
            for d in cfg.diff_ids:
                _valid(d)
            oci.chain_ids(cfg.diff_ids)
            return
        doc = oci.parse_document(body, MEDIA_TYPES[which])
    except FastdistError:
        return
    if isinstance(doc, oci.Manifest):
        for desc in (doc.config, *doc.layers):
            _valid(desc.digest)
            if desc.size < 0:
                raise AssertionError("negative size accepted")
        if doc.media_type not in oci.MANIFEST_TYPES:
            raise AssertionError(f"manifest of type {doc.media_type!r}")
    else:
        for desc in doc.manifests:
            _valid(desc.digest)
        if doc.media_type not in oci.INDEX_TYPES:
            raise AssertionError(f"index of type {doc.media_type!r}")


def seeds() -> list[bytes]:
    """Valid documents to start mutating from."""
    d = "sha256:" + "ab" * 32
    desc = {"mediaType": oci.OCI_LAYER_GZIP, "digest": d, "size": 3, "urls": ["https://x/y"]}
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": d, "size": 2},
        "layers": [desc, desc],
        "annotations": {"a": "b"},
    }
    index = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [
            {
                "mediaType": oci.OCI_MANIFEST,
                "digest": d,
                "size": 9,
                "platform": {"os": "linux", "architecture": "amd64", "variant": "v1"},
            }
        ],
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["A=b"], "Cmd": ["sh"], "Volumes": {"/v": {}}, "User": "1:2"},
        "rootfs": {"type": "layers", "diff_ids": [d, d]},
    }
    return [
        bytes([1]) + json.dumps(manifest).encode(),
        bytes([0]) + json.dumps(index).encode(),
        bytes([3]) + json.dumps({**manifest, "mediaType": oci.DOCKER_MANIFEST}).encode(),
        bytes([len(MEDIA_TYPES)]) + json.dumps(config).encode(),
    ]


def main() -> None:
    import atheris

    corpus = os.path.join(os.path.dirname(__file__), "corpus", "manifest")
    if not os.path.isdir(corpus) or not os.listdir(corpus):
        os.makedirs(corpus, exist_ok=True)
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
                f.write(seed)
    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
