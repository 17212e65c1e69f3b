"""The one terminal sanitiser: text from images, registries and clients made safe to print.

Image configs (``Cmd``, ``os``/``architecture``/``variant``, labels), registry answers (a redirect's
``Location``, error bodies) and runc's messages (quoting an ``Entrypoint``) are untrusted. Printed
raw, an ESC starts a terminal control sequence (retitle the window, rewrite the screen, OSC 52
writes the clipboard), a C1 control does the same on 8-bit terminals, a bidi override makes a
line read differently from what it holds, and a NUL or CR hides what follows. Everything the CLI
prints from outside goes through :func:`sanitize` (design.md §7), which shows such characters
escaped, the way Python's ``repr`` does: ``\\x1b``, ``\\x00``, ``\\u202e``.
"""

from __future__ import annotations

import re

# C0 controls (NUL, BEL, BS, CR, ESC…), DEL, C1 controls (CSI is U+009B), the line and paragraph
# separators, and the bidi embeddings, overrides, isolates and marks (Unicode TR9; CVE-2021-42574
# "Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NEWLINES = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def sanitize(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character, DEL, C1 control and bidi control shown escaped.

    ``keep_newlines`` lets ``\\n`` through (for multi-line messages such as a runc stderr tail);
    a table cell or a display label keeps the default, so one value is always one line.
    """
    pattern = _UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE
    if pattern.search(text) is None:  # the common case: nothing to copy
        return text
    return pattern.sub(_escape, text)
