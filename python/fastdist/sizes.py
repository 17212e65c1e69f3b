"""Byte counts as people read them (binary units), for the CLI's tables and for error messages."""

from __future__ import annotations


def human_size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``754.4 MiB``, ``2.0 GiB`` (and TiB beyond 1024 GiB)."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1023.95:  # what would print as 1024.0 moves up a unit
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def size_and_bytes(n: int) -> str:
    """``754.4 MiB (791011348 bytes)``: readable, and exact for whoever compares numbers."""
    return f"{human_size(n)} ({n} bytes)" if n >= 1024 else f"{n} bytes"


def over_limit(n: int, limit: int) -> str:
    """``5000000 bytes (4.8 MiB), over the 4194304-byte limit (4.0 MiB)``: the tail of a
    size-limit message, exact and readable."""
    return f"{n} bytes ({human_size(n)}), over the {limit}-byte limit ({human_size(limit)})"
