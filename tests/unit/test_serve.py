"""serve.py's parsers, without sockets: Range (RFC 9110 §14.2), Accept, listen addresses,
htpasswd lines and Authorization headers."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from fastdist import oci
from fastdist.serve import (
    Authenticator,
    ServeError,
    _accepted,
    _parse_range,
    _safe,
    _Unsatisfiable,
    parse_listen,
)


@pytest.mark.parametrize(
    ("header", "size", "want"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=2-", 10, (2, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=5-100", 10, (5, 9)),
        ("bytes=5-2", 10, None),  # invalid: ignored, the whole blob
        ("bytes=0-1,3-4", 10, None),  # several ranges: may be ignored
        ("bytes=-", 10, None),
        ("lines=0-1", 10, None),
        ("bytes=" + "9" * 30 + "-", 10, None),  # absurd numbers do not parse
    ],
)
def test_range_header_cases(header: str | None, size: int, want: object) -> None:
    assert _parse_range(header, size) == want


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-1", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(_Unsatisfiable):
        _parse_range(header, size)


def test_accept_header_lists_types_and_wildcards_take_anything() -> None:
    assert _accepted("") is None
    assert _accepted("*/*") is None
    assert _accepted(f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX};q=0.5") == {
        oci.OCI_MANIFEST,
        oci.OCI_INDEX,
    }
    assert _accepted(f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX}; q=0") == {oci.OCI_MANIFEST}


@pytest.mark.parametrize(
    ("listen", "want"),
    [("127.0.0.1:5000", ("127.0.0.1", 5000)), ("[::1]:0", ("::1", 0)), (":80", ("0.0.0.0", 80))],
)
def test_listen_addresses(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


@pytest.mark.parametrize("listen", ["5000", "host:", "host:99999", "host:http"])
def test_bad_listen_addresses_are_serve_errors(listen: str) -> None:
    with pytest.raises(ServeError):
        parse_listen(listen)


def test_log_strings_are_escaped_and_cut() -> None:
    assert _safe("a\x1b[31mb\\c\u202e") == "a\\x1b[31mb\\c\\u202e"
    assert len(_safe("x" * 10000)) < 300


def _basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_sha_htpasswd_and_malformed_authorization_headers(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    sha = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    f.write_text(f"# comment\n\nu:{{SHA}}{sha}\n")
    auth = Authenticator(str(f))
    assert auth.check(_basic("u", "pw"))
    for header in (None, "", "Basic", "Basic !!!", _basic("u", "px"), "Bearer pw", "Digest x"):
        assert not auth.check(header), header
    assert Authenticator().check(None)  # no auth configured: everyone in


def test_empty_htpasswd_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    f.write_text("# nobody\n")
    with pytest.raises(ServeError):
        Authenticator(str(f))


def test_bcrypt_lines_need_the_bcrypt_package_or_verify_with_it(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    # htpasswd -bnB u pw (apache2-utils): cost 5.
    f.write_text("u:$2y$05$Zv3vQ0jz1m3Jg9lG0kE4OuW7Gx3m6Q9a5K8vX5yY1bS7m1cH3d9bC\n")
    try:
        import bcrypt  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        with pytest.raises(ServeError) as e:
            Authenticator(str(f))
        assert e.value.hint is not None
        assert "htpasswd -s" in e.value.hint
    else:  # pragma: no cover - only where the optional package is installed
        assert not Authenticator(str(f)).check(_basic("u", "wrong"))
