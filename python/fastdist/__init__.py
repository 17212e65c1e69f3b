"""fastdist: fast, verified container-image pulls and runs for Linux.

``fastdist.Client`` is the API; ``fastdist.errors`` holds the exception classes.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import Client, Container, ContainerInfo, Image, PruneReport
from .errors import FastdistError

__all__ = ["Client", "Container", "ContainerInfo", "FastdistError", "Image", "PruneReport"]
