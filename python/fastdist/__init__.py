"""fastdist: fast, verified container-image pulls and runs for Linux.

``fastdist.Client`` is the API; ``fastdist.errors`` holds the exception classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from .client import Client, Image, PruneReport
    from .containers import Container, ContainerInfo
    from .errors import FastdistError
    from .spec import Mount, RunOptions

__all__ = [
    "Client",
    "Container",
    "ContainerInfo",
    "FastdistError",
    "Image",
    "Mount",
    "PruneReport",
    "RunOptions",
]

# Imported on first use (PEP 562), so ``fastdist --help`` or a pull of a present image does not
# pay for the whole API at start-up.
_LAZY = {
    "Client": "client",
    "Container": "containers",
    "ContainerInfo": "containers",
    "Image": "client",
    "PruneReport": "client",
    "RunOptions": "spec",
    "Mount": "spec",
    "FastdistError": "errors",
}


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, the one copy); a source tree that
    is not installed has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastdist")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read on first use: importlib.metadata costs start-up time
        globals()[name] = value = _version()
        return value
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastdist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
