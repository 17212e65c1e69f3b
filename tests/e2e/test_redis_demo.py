"""The seed's demo, for real: Debian's redis-server in an image pushed to the test registry,
pulled and run detached by the fastdist CLI, with host networking and with ``-p`` in the default
``--net none`` namespace; ``redis-cli ping`` from the host answers PONG. Also runs
``examples/redis.sh``, the documented script of the same demo."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from fastdist.testing.registry import free_port

if TYPE_CHECKING:
    from conftest import FastdistCLI

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.registry,
    pytest.mark.root,
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
]


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    """redis-server and redis-cli come from Debian (scripts/setup.sh installs them): missing
    ones skip the test locally and fail it in CI, which must run the demo."""
    missing = [t for t in ("redis-server", "redis-cli") if shutil.which(t) is None]
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install redis-server redis-tools)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _load_example() -> ModuleType:
    path = REPO / "examples" / "redis_image.py"
    spec = importlib.util.spec_from_file_location("fastdist_example_redis_image", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ping(port: int) -> str:
    proc = subprocess.run(
        ["redis-cli", "-p", str(port), "ping"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return proc.stdout.strip()


def _wait_for_pong(port: int, deadline_s: float = 30.0) -> str:
    """Ping until redis answers PONG or the deadline passes; the last answer."""
    deadline = time.monotonic() + deadline_s
    answer = _ping(port)
    while answer != "PONG" and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = _ping(port)
    return answer


def test_image_holds_redis_server_its_libraries_and_the_loader() -> None:
    example = _load_example()
    entries = {e.path: e for e in example.redis_entries()}
    assert entries["usr/bin/redis-server"].type in ("file", "symlink")
    for lib in example.shared_libraries("/usr/bin/redis-server"):
        assert lib.lstrip("/") in entries, lib
    assert any("ld-linux" in p for p in entries)
    assert any(p.endswith("/libc.so.6") for p in entries)


def test_redis_server_image_runs_detached_on_the_host_network_and_answers_ping(
    fastdist: FastdistCLI, registry: Any, pusher: Any
) -> None:
    example = _load_example()
    from fastdist.testing.images import push_image

    port = free_port()
    ref = f"{registry.host}/e2e/redis:{port}"
    digest = push_image(pusher, ref, example.redis_image(port))

    pulled = fastdist("pull", "-q", ref)
    assert pulled.rc == 0, pulled.stderr
    assert pulled.stdout.strip() == digest

    run = fastdist("run", "-d", "--net", "host", "--id", "redis", ref)
    assert run.rc == 0, run.stderr
    assert run.stdout == "redis\n"
    try:
        answer = _wait_for_pong(port)
        assert answer == "PONG", fastdist("logs", "redis").stdout
        ps = fastdist("ps")
        assert "redis-server --port" in ps.stdout
        assert "running" in ps.stdout

        set_ = subprocess.run(
            ["redis-cli", "-p", str(port), "set", "fastdist", "works"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert set_.stdout.strip() == "OK"
        got = subprocess.run(
            ["redis-cli", "-p", str(port), "get", "fastdist"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert got.stdout.strip() == "works"
    finally:
        stop = fastdist("stop", "redis")  # TERM (then KILL after 10 s): redis shuts down
    assert stop.rc == 0, stop.stderr
    logs = fastdist("logs", "-f", "redis")  # returns once redis has exited
    assert "Received SIGTERM" in logs.stdout
    assert "Ready to accept connections" in logs.stdout
    assert _ping(port) != "PONG"
    ps = fastdist("ps", "-a")
    assert "stopped (0)" in ps.stdout  # redis shuts down cleanly on SIGTERM

    rm = fastdist("rm", "redis")
    assert rm.rc == 0, rm.stderr
    assert fastdist.leftovers() == {"mounts": [], "snapshots": [], "bundles": [], "runc": []}


def test_redis_in_the_default_none_network_answers_on_a_published_port(
    fastdist: FastdistCLI, registry: Any, pusher: Any
) -> None:
    example = _load_example()
    from fastdist.testing.images import push_image

    port, host_port = free_port(), free_port()
    ref = f"{registry.host}/e2e/redis:{port}"
    push_image(pusher, ref, example.redis_image(port))
    assert fastdist("pull", "-q", ref).rc == 0
    run = fastdist("run", "-d", "-p", f"127.0.0.1:{host_port}:{port}", "--name", "redis", ref)
    assert run.rc == 0, run.stderr
    try:
        answer = _wait_for_pong(host_port)
        assert answer == "PONG", fastdist("logs", "redis").stdout
        assert _ping(port) != "PONG"  # only the published port reaches it: its own is inside
        ports = json.loads(fastdist("inspect", "redis").stdout)["Ports"]
        assert ports == {f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]}
        busy = fastdist("run", "-d", "-p", f"127.0.0.1:{host_port}:{port}", "--name", "second", ref)
        assert busy.rc == 8
        assert f"error: cannot publish port 127.0.0.1:{host_port}" in busy.stderr
        assert "hint: " in busy.stderr
    finally:
        stop = fastdist("stop", "redis")
    assert stop.rc == 0, stop.stderr
    assert _ping(host_port) != "PONG"
    assert fastdist("rm", "redis").rc == 0
    assert fastdist.leftovers() == {"mounts": [], "snapshots": [], "bundles": [], "runc": []}


@pytest.mark.slow
def test_the_redis_example_script_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, FASTDIST_ROOT=str(tmp_path / "store"))
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "redis.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "PONG" in lines
    assert lines[-1] == "redis demo: ok"
    assert "$ fastdist run -d -p 127.0.0.1:" in proc.stderr
    store = tmp_path / "store"
    assert not (store / "containers").exists() or os.listdir(store / "containers") == []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(store) not in f.read()
