"""fastdist: fast, verified container-image pulls and runs for Linux.

``fastdist.Client`` is the API; ``fastdist.errors`` holds the exception classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .client import Client, Container, ContainerInfo, Image, PruneReport
    from .errors import FastdistError

__all__ = ["Client", "Container", "ContainerInfo", "FastdistError", "Image", "PruneReport"]

# Imported on first use (PEP 562), so ``fastdist --help`` or a pull of a present image does not
# pay for the whole API at start-up.
_LAZY = {
    "Client": "client",
    "Container": "client",
    "ContainerInfo": "client",
    "Image": "client",
    "PruneReport": "client",
    "FastdistError": "errors",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastdist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
