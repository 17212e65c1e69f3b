"""fastdist: fast, verified container-image pulls and runs for Linux."""

from __future__ import annotations

__version__ = "0.1.0"
