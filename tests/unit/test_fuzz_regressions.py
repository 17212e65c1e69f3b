"""Replays of the Python fuzz targets (fuzz/python/): every input kept in
fuzz/regressions/<target>/, the targets' seeds, and hand-written edge cases must now pass the
targets' own property: a typed fastdist error or a valid result, nothing outside the root.

The Rust targets' inputs (fuzz/regressions/{apply_layer,tar_reader,decompress}/) are replayed here
too, through the shipped module (the layer target as a plain tar or a gzip stream), besides their
own replay in fuzz/rust (`make fuzz-replay` runs both)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
REGRESSIONS = FUZZ / "regressions"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"fuzz_{name}", FUZZ / "python" / f"fuzz_{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


manifest_target = _load("manifest")
layer_target = _load("layer")


@pytest.fixture(scope="module", autouse=True)
def _cleanup_layer_workdir() -> Iterator[None]:
    yield
    if layer_target._WORK is not None:
        layer_target._rmtree(layer_target._WORK.base)
        layer_target._WORK = None


def _saved(target: str) -> list[bytes]:
    d = REGRESSIONS / target
    return [p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")]


# The layer target's first two bytes: byte 0 the encoding (0: the payload is the tar, 2: the
# payload is the gzip stream), byte 1 the API and mode (0: apply_layer, layer mode).
RUST_TARGETS_AS_LAYER_INPUTS = [
    *(b"\x00\x00" + d for d in _saved("apply_layer")),
    *(b"\x00\x00" + d for d in _saved("tar_reader")),
    # decompress: byte 0 picks the media type there; the rest is the blob (these are gzip).
    *(b"\x02\x00" + d[1:] for d in _saved("decompress")),
]


MANIFEST_EDGES = [
    b"\x00" + b"[" * 100_000,  # deeper than any stack
    b"\x01" + b'{"schemaVersion": 2, "config": {}, "layers": "x"}',
    b"\x01" + b'{"schemaVersion": 2.0, "mediaType": 7}',
    b"\x02" + b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:", "size": -1}]}',
    b"\x06" + b'{"rootfs": {"type": "layers", "diff_ids": [null]}, "os": "l", "architecture": "a"}',
    b"\x06" + b'{"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Volumes": []}}',
    b"\x01" + json.dumps({"schemaVersion": 2, "config": {"size": 10**400}}).encode(),
    b"\x01" + b'{"a": "\\ud800"}',
    b"\x01" + b"\xff\xfe{}",
]
LAYER_EDGES = [
    b"\x00\x00" + b"\0" * 1024,  # an empty tar
    b"\x00\x01" + b"x" * 700,  # not a tar
    b"\x02\x00\x1f\x8b\x08\x00" + b"\0" * 20,  # a truncated gzip header
    b"\x03\x01\x28\xb5\x2f\xfd" + b"\xff" * 16,  # zstd magic, garbage frame
    b"\x01\x02",  # flatten an empty stream
]


@pytest.mark.parametrize(
    "data",
    [*_saved("manifest"), *manifest_target.seeds(), *MANIFEST_EDGES],
    ids=lambda d: f"{len(d)}b",
)
def test_manifest_parser_input_gives_a_typed_error_or_a_valid_document(data: bytes) -> None:
    manifest_target.check(data)


@pytest.mark.parametrize(
    "data",
    [*_saved("layer"), *RUST_TARGETS_AS_LAYER_INPUTS, *layer_target.seeds(), *LAYER_EDGES],
    ids=lambda d: f"{len(d)}b",
)
def test_layer_input_gives_a_typed_error_and_nothing_outside_the_root_changes(data: bytes) -> None:
    layer_target.check(data)
    assert layer_target._work().snapshot() == layer_target._work().before


def test_seed_documents_parse() -> None:
    """The manifest seeds are valid, so the fuzzer starts from accepted documents."""
    from fastdist import oci

    for seed in manifest_target.seeds():
        kind = seed[0]
        if kind == len(manifest_target.MEDIA_TYPES):
            assert oci.parse_config(seed[1:]).diff_ids
        else:
            oci.parse_document(seed[1:], manifest_target.MEDIA_TYPES[kind])


def test_the_kept_inputs_are_found() -> None:
    """The one regression tree is where the replays look (a moved tree must not replay nothing)."""
    assert len(RUST_TARGETS_AS_LAYER_INPUTS) >= 4
    assert {p.name for p in REGRESSIONS.iterdir()} >= {
        "manifest",
        "layer",
        "apply_layer",
        "tar_reader",
        "decompress",
    }
