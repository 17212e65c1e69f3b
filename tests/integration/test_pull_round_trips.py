"""Images of many small layers: round trips, not bytes, bound them (issue 18). Connections are
opened while the manifest is in flight and reused, the dispatcher never holds a layer's request
back while the connection budget has room, and a pull does not import what it does not use.

No timing: the fake registry holds an answer until what must happen before it has happened
(a bound of a few seconds turns a regression into a failure instead of a hang)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pullkit import big_layer, expected_tree, image, serve, small_layer, unpacked_tree

from clikit import cli_env
from fakeregistry import FakeRegistry, Fault
from fastdist.client import PRECONNECT_KNOWN, Client
from fastdist.errors import VerificationError
from fastdist.fetcher import EARLY_BODY_MAX, FetchConfig
from fastdist.transport import TransportConfig

# Never part of a pull: the container, serve, archive, push, check and dedup halves.
NOT_FOR_A_PULL = (
    "fastdist.containers",
    "fastdist.runc",
    "fastdist.spec",
    "fastdist.seccomp",
    "fastdist.serve",
    "fastdist.archive",
    "fastdist.pusher",
    "fastdist.check",
    "fastdist.dedup",
)


def _plain(reg: FakeRegistry) -> TransportConfig:
    # Plain HTTP from the first request: no TLS probe connection to count.
    return TransportConfig(plain_http_hosts=frozenset({reg.host}))


def test_connections_open_while_the_manifest_is_in_flight_and_are_reused(
    store_root: Path,
) -> None:
    budget = 4
    early = budget  # a name the store has no image of: the whole budget
    with FakeRegistry() as reg:
        img = image(*(small_layer(i) for i in range(6)))
        ref = serve(reg, "rt/six", img)
        # The manifest's answer waits until the pre-opened connections arrived (the manifest
        # may go over one of them; without pre-connecting there would be one connection only).
        held = reg.add_fault(
            Fault(path_contains="/manifests/", method="GET", hold_until_connections=early)
        )
        client = Client(
            store_root, snapshotter="native", transport_config=_plain(reg), max_connections=budget
        )
        client.pull(ref)
        assert held.seen_connections >= early > 1
        manifest_conn = next(r.connection for r in reg.requests if "/manifests/" in r.path)
        blob_conns = {r.connection for r in reg.requests if "/blobs/" in r.path}
        # The blobs went over the pre-opened connections, and no more were opened than the
        # budget's (plus the manifest's own): kept alive and reused, not reopened.
        assert blob_conns - {manifest_conn}
        assert reg.connections <= budget + 1
        assert unpacked_tree(client, ref) == expected_tree(img)
        # Pulled again by a new process (a new pool): the name is known, the image here, so
        # only the manifest's connection is opened.
        before = reg.connections
        again = Client(
            store_root, snapshotter="native", transport_config=_plain(reg), max_connections=budget
        )
        again.pull(ref)
        assert reg.connections - before == 1 + PRECONNECT_KNOWN


def test_the_dispatcher_never_holds_a_request_back_below_the_budget(store_root: Path) -> None:
    """max_parallel_layers is not given: every layer's GET goes out while the budget has room
    (the old default of 8 threads held the 9th and later back)."""
    budget = 10
    with FakeRegistry() as reg:
        img = image(*(small_layer(i) for i in range(12)))
        ref = serve(reg, "rt/twelve", img)
        # Each layer's answer waits until the config's request and ``budget`` layer requests
        # were seen: only a dispatcher with at least ``budget`` requests in flight gets there.
        faults = [
            reg.add_fault(
                Fault(
                    path_contains=layer.descriptor.digest,
                    method="GET",
                    hold_until_request="/blobs/",
                    hold_count=1 + budget,
                )
            )
            for layer in img.layers
        ]
        client = Client(
            store_root, snapshotter="native", transport_config=_plain(reg), max_connections=budget
        )
        client.pull(ref)
        assert all(f.seen_request for f in faults[:budget])
        assert reg.peak_blob_gets <= budget  # and never more than the budget
        assert unpacked_tree(client, ref) == expected_tree(img)


def _modules_after(argv: list[str]) -> set[str]:
    """The modules a CLI process had imported once ``main(argv)`` returned."""
    code = (
        "import json, sys\n"
        "from fastdist.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_pull_help_imports_neither_the_api_nor_http(tmp_path: Path) -> None:
    mods = _modules_after(["--root", str(tmp_path / "root"), "pull", "--help"])
    assert not {"requests", "fastdist.client", "subprocess", *NOT_FOR_A_PULL} & mods


def test_a_pull_imports_only_what_a_pull_uses(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FakeRegistry() as reg:
        ref = serve(reg, "rt/lean", image(small_layer(1), small_layer(2)))
        argv = ["--root", str(root), "pull", "-q", "--snapshotter", "native", ref]
        cold = _modules_after(argv)
        warm = _modules_after(argv)  # present: only the manifest is asked for
    for mods in (cold, warm):
        assert "fastdist.client" in mods  # it did pull
        assert not set(NOT_FOR_A_PULL) & mods, sorted(set(NOT_FOR_A_PULL) & mods)
    # A present image runs no program (a credential helper only when one is configured; the
    # native snapshotter's ``cp`` only when it copies a layer).
    assert "subprocess" not in warm


def test_one_token_serves_every_request_of_a_many_layer_pull(store_root: Path) -> None:
    """The token is fetched once per scope, not per layer, even with every layer's request
    (and the pre-opened connections) going out at once."""
    with FakeRegistry(auth="token") as reg:
        img = image(*(small_layer(i) for i in range(12)))
        ref = serve(reg, "rt/token", img)
        client = Client(store_root, snapshotter="native", transport_config=_plain(reg))
        client.pull(ref)
        assert len(reg.token_requests) == 1
        blob_gets = [r for r in reg.requests if "/blobs/" in r.path]
        assert len(blob_gets) == 13  # config + 12 layers, none answered 401 and asked again
        assert all(r.authorization for r in blob_gets)
        assert unpacked_tree(client, ref) == expected_tree(img)


# Early layer requests whatever the registry's distance (the fake is on loopback).
_EARLY = FetchConfig(early_after=0)


def _wait_idle(client: Client, host: str) -> bool:
    """Whether the host's budget has no place taken (within a bound, never a timing claim)."""
    deadline = time.monotonic() + 10
    while client.transport.budget.active(host) and time.monotonic() < deadline:
        time.sleep(0.01)
    return client.transport.budget.active(host) == 0


def test_layer_requests_are_in_flight_while_the_config_is(store_root: Path) -> None:
    """The first GET of every layer blob goes out while the config's answer is still awaited
    (one round trip fewer): more small layers than the budget still all go out (the early
    lanes read each small body and send the next), and a blob too big to read ahead keeps
    its answer for its layer. Each blob is fetched once."""
    budget = 4
    with FakeRegistry() as reg:
        layers = [small_layer(i) for i in range(7)] + [big_layer(9, EARLY_BODY_MAX + (1 << 16))]
        img = image(*layers)
        ref = serve(reg, "rt/early", img)
        held = reg.add_fault(
            Fault(
                path_contains=img.config_descriptor.digest,
                method="GET",
                hold_until_request="/blobs/",
                hold_count=1 + len(layers),  # the config's own and every layer's
                hold_timeout=5,
            )
        )
        client = Client(
            store_root, transport_config=_plain(reg), max_connections=budget, fetch_config=_EARLY
        )
        client.pull(ref)
        assert held.seen_request
        for layer in img.layers:
            assert len(reg.requests_to(f"/blobs/{layer.descriptor.digest}", "GET")) == 1
        assert reg.peak_blob_gets <= budget
        assert unpacked_tree(client, ref) == expected_tree(img)
        assert _wait_idle(client, reg.host)


def test_early_requests_of_a_failed_pull_are_dropped(store_root: Path) -> None:
    """A pull that fails on its config gives back every place its early requests took, so
    the next pull through the same client is not starved."""
    budget = 3
    with FakeRegistry() as reg:
        img = image(*(small_layer(i) for i in range(5)), big_layer(7, EARLY_BODY_MAX * 2))
        ref = serve(reg, "rt/dropped", img)
        reg.add_fault(Fault(path_contains=img.config_descriptor.digest, body=b"{}", times=1))
        client = Client(
            store_root, transport_config=_plain(reg), max_connections=budget, fetch_config=_EARLY
        )
        with pytest.raises(VerificationError):
            client.pull(ref)
        assert _wait_idle(client, reg.host)
        client.pull(ref)  # the fault is spent: the same client pulls it
        assert unpacked_tree(client, ref) == expected_tree(img)
        assert _wait_idle(client, reg.host)


def test_a_failed_early_request_is_sent_again_by_its_layer(store_root: Path) -> None:
    """An early GET that failed (here a 404, which is no retry) is not an error: the layer
    sends its own request, which gets the blob."""
    with FakeRegistry() as reg:
        img = image(small_layer(1), small_layer(2))
        ref = serve(reg, "rt/again", img)
        first = img.layers[0].descriptor.digest
        reg.add_fault(Fault(path_contains=first, method="GET", status=404, code="BLOB_UNKNOWN"))
        client = Client(store_root, transport_config=_plain(reg), fetch_config=_EARLY)
        client.pull(ref)
        assert len(reg.requests_to(f"/blobs/{first}", "GET")) == 2
        assert unpacked_tree(client, ref) == expected_tree(img)
