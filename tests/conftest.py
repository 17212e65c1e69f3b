"""Shared fixtures: a real registry process on loopback, fastdist's own pusher, a temp store."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry


def _require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        msg = f"{tool} is not installed (apt-get install {package}; `make test` does it)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI must run every test: a missing tool is a failure there
        pytest.skip(msg)


@pytest.fixture(scope="session")
def registry() -> Iterator[LocalRegistry]:
    """Debian's docker-registry on a free loopback port with its own temp storage."""
    _require("docker-registry", "docker-registry")
    from fastdist.testing.registry import LocalRegistry

    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="session")
def pusher() -> Pusher:
    from fastdist.pusher import Pusher
    from fastdist.transport import Transport

    return Pusher(Transport())


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    return root


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root")
