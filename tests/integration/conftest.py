"""After every integration test that pulled into its ``store_root``: each committed snapshot's
tree matches the manifests the applier recorded (``check --deep``), on either snapshotter, so
every fixture image of the suite is also a manifest test. A test that damages trees on purpose
is marked ``damages_trees``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fastdist.check import deep_check
from fastdist.snapshots import SNAPSHOTTERS, snapshotter_by_name


@pytest.fixture(autouse=True)
def _trees_match_their_manifests(request: pytest.FixtureRequest) -> Iterator[None]:
    if "store_root" not in request.fixturenames or request.node.get_closest_marker("damages_trees"):
        yield
        return
    root: Path = request.getfixturevalue("store_root")  # set up first, so torn down after us
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.passed:
        return
    snaps = {
        n: snapshotter_by_name(n, root) for n in SNAPSHOTTERS if (root / "snapshots" / n).is_dir()
    }
    for layer in deep_check(snaps):
        assert not layer.findings, (layer.snapshotter, layer.chain_id, layer.findings[:10])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep
