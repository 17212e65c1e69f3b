"""``fastdist.termsafe``: the one sanitiser every untrusted string passes before the terminal."""

from __future__ import annotations

import pytest

from fastdist.termsafe import sanitize


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, ünïcode ok: 日本", "plain text, ünïcode ok: 日本"),
        ("\x1b[31mred", "\\x1b[31mred"),  # ESC: CSI sequences
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # OSC: retitle the window, BEL
        ("\x1b]52;c;ZXZpbA==\x07", "\\x1b]52;c;ZXZpbA==\\x07"),  # OSC 52: write the clipboard
        ("a\x00b", "a\\x00b"),  # NUL
        ("shown\rhidden", "shown\\rhidden"),  # CR rewrites the line
        ("one\ntwo\tthree", "one\\ntwo\\tthree"),
        ("del\x7f", "del\\x7f"),
        ("\x9b31m c1 csi", "\\x9b31m c1 csi"),  # C1 CSI (8-bit terminals)
        ("\x85nel", "\\x85nel"),
        ("abc\u202edcba", "abc\\u202edcba"),  # RIGHT-TO-LEFT OVERRIDE (Trojan Source)
        ("\u2066iso\u2069", "\\u2066iso\\u2069"),  # isolates
        ("\u200fmark\u061c", "\\u200fmark\\u061c"),
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_control_escape_c1_del_nul_and_bidi_characters_are_shown_escaped(
    raw: str, shown: str
) -> None:
    assert sanitize(raw) == shown


def test_every_c0_c1_and_del_code_point_is_escaped() -> None:
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        out = sanitize(f"x{chr(code)}y")
        assert out.startswith("x\\"), (code, out)
        assert out.endswith("y"), (code, out)
        assert all(ch.isprintable() for ch in out), (code, out)


def test_keep_newlines_lets_only_the_newline_through() -> None:
    assert sanitize("tail:\nline 2\x1b[2J\r", keep_newlines=True) == "tail:\nline 2\\x1b[2J\\r"
