"""pulling.py: layer plans from manifest + config, the per-pull job, and the dispatcher."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from fastdist import oci
from fastdist.content import ContentStore
from fastdist.errors import (
    LimitExceededError,
    ManifestError,
    RegistryError,
    UnsupportedMediaTypeError,
)
from fastdist.oci import OCI_LAYER_GZIP, Descriptor, Digest, ImageConfig, sha256_digest
from fastdist.pulling import PullJob, dispatch, plan_layers
from fastdist.snapshots import NativeSnapshotter, OverlaySnapshotter, Snapshotter, overlay_supported
from fastdist.testing.sources import BytesSource
from fastdist.unpacker import Unpacker


def _layer(n: int) -> tuple[Descriptor, Digest, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        data = f"layer {n}".encode()
        info = tarfile.TarInfo(f"f{n}")
        info.size, info.mtime = len(data), 1_700_000_000
        tf.addfile(info, io.BytesIO(data))
    tar = buf.getvalue()
    blob = gzip.compress(tar, mtime=0)
    return Descriptor(OCI_LAYER_GZIP, sha256_digest(blob), len(blob)), sha256_digest(tar), blob


LAYERS = [_layer(n) for n in range(4)]


def _config(diff_ids: list[Digest]) -> ImageConfig:
    return oci.parse_config(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
    )


def test_plans_pair_each_layer_with_its_diff_id_chain_and_parent() -> None:
    descs = [d for d, _, _ in LAYERS]
    diff_ids = [i for _, i, _ in LAYERS]
    plans = plan_layers(descs, _config(diff_ids))
    chains = oci.chain_ids(diff_ids)
    assert [p.index for p in plans] == [0, 1, 2, 3]
    assert [p.desc for p in plans] == descs
    assert [p.diff_id for p in plans] == diff_ids
    assert [p.chain_id for p in plans] == chains
    assert [p.parent for p in plans] == [None, *chains[:-1]]


def test_no_layers_is_no_plans() -> None:
    assert plan_layers([], _config([])) == ()


@pytest.mark.parametrize("extra", ["layer", "diff_id"])
def test_a_manifest_and_config_that_disagree_on_the_layer_count_are_refused(extra: str) -> None:
    descs = [d for d, _, _ in LAYERS[:2]]
    diff_ids = [i for _, i, _ in LAYERS[:2]]
    if extra == "layer":
        descs.append(LAYERS[2][0])
    else:
        diff_ids.append(LAYERS[2][1])
    with pytest.raises(ManifestError, match="layers but the config lists") as e:
        plan_layers(descs, _config(diff_ids))
    assert e.value.hint is not None


def test_a_layer_of_a_media_type_fastdist_cannot_unpack_is_refused() -> None:
    desc, diff_id, _ = LAYERS[0]
    odd = Descriptor("application/vnd.example.not-a-layer", desc.digest, desc.size)
    with pytest.raises(UnsupportedMediaTypeError, match="not-a-layer"):
        plan_layers([odd], _config([diff_id]))


def test_each_job_has_its_own_budget() -> None:
    plans = plan_layers([LAYERS[0][0]], _config([LAYERS[0][1]]))
    a = PullJob("a", 100)
    b = PullJob("b", 100)

    class Result:
        uncompressed_size = 60

    a.charge(plans[0], Result())
    b.charge(plans[0], Result())  # not a's: no limit crossed
    with pytest.raises(LimitExceededError, match="pull of a"):
        a.charge(plans[0], Result())


def test_the_size_check_refuses_what_the_descriptors_announce_over_the_limit(
    tmp_path: Path,
) -> None:
    snap = NativeSnapshotter(tmp_path / "root")
    content = ContentStore(snap.store_root)
    plans = plan_layers([d for d, _, _ in LAYERS], _config([i for _, i, _ in LAYERS]))
    total = sum(p.desc.size for p in plans)
    config = Descriptor(oci.OCI_CONFIG, sha256_digest(b"{}"), 2)
    layers = [p.desc for p in plans]
    PullJob("ok", total + 2).check_size(content, snap, config, layers, plans)
    PullJob("ok", total + 2).check_size(content, snap, config, layers)  # the manifest alone
    for known in (plans, None):
        with pytest.raises(LimitExceededError, match="max_pull_bytes"):
            PullJob("big", total + 1).check_size(content, snap, config, layers, known)


@pytest.fixture(params=["overlayfs", "native"])
def unpacker(request: pytest.FixtureRequest, tmp_path: Path) -> Unpacker:
    root = tmp_path / "root"
    snap: Snapshotter
    if request.param == "overlayfs":
        if not (os.geteuid() == 0 and overlay_supported(root)):
            pytest.skip("overlayfs needs root and overlay support")
        snap = OverlaySnapshotter(root)
    else:
        snap = NativeSnapshotter(root)
    return Unpacker(ContentStore(snap.store_root), snap)


@pytest.mark.parametrize("max_parallel", [1, 8])
def test_dispatch_commits_every_layer_in_chain_order(unpacker: Unpacker, max_parallel: int) -> None:
    plans = plan_layers([d for d, _, _ in LAYERS], _config([i for _, i, _ in LAYERS]))
    source = BytesSource({d.digest: b for d, _, b in LAYERS})
    dispatch(unpacker, plans, source, lambda ev: None, PullJob("img", 1 << 30, max_parallel))
    snap = unpacker.snapshotter
    for p in plans:
        assert snap.exists(p.chain_id)
        assert snap.parent(p.chain_id) == p.parent
    assert source.fetches == len(plans)


def test_dispatch_raises_the_real_failure_and_commits_nothing_above_it(
    unpacker: Unpacker,
) -> None:
    plans = plan_layers([d for d, _, _ in LAYERS], _config([i for _, i, _ in LAYERS]))
    source = BytesSource({d.digest: b for d, _, b in LAYERS}, refuse={plans[1].desc.digest})
    job = PullJob("img", 1 << 30)
    with pytest.raises(RegistryError, match="500"):  # not a sibling's "pull aborted"
        dispatch(unpacker, plans, source, lambda ev: None, job)
    assert job.aborted.is_set()
    snap = unpacker.snapshotter
    assert not any(snap.exists(p.chain_id) for p in plans[1:])
    assert os.listdir(snap.staging_dir) == []


def test_dispatch_over_the_budget_commits_nothing_past_it(unpacker: Unpacker) -> None:
    plans = plan_layers([d for d, _, _ in LAYERS], _config([i for _, i, _ in LAYERS]))
    source = BytesSource({d.digest: b for d, _, b in LAYERS})
    tar_bytes = 10240  # one small file per layer: a 10 KiB tar each
    with pytest.raises(LimitExceededError, match="max_pull_bytes"):
        dispatch(unpacker, plans, source, lambda ev: None, PullJob("img", 2 * tar_bytes))
    snap = unpacker.snapshotter
    assert not snap.exists(plans[3].chain_id)
    assert os.listdir(snap.staging_dir) == []
