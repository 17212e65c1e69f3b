"""Untrusted strings (image configs, index platforms, registry answers, runc messages) reach the
terminal only through the sanitiser, on every output path of the CLI (design.md §7, issue 11.4)."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import TYPE_CHECKING, Any

import pytest

from fastdist.oci import Platform
from fastdist.testing.images import BuiltLayer, build_image, build_index

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

pytestmark = pytest.mark.registry

# Retitle the window (OSC 0 … BEL), clear the screen (CSI), an 8-bit CSI, a bidi override.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"
# The oracle, independent of fastdist.termsafe: C0 (but newline), DEL, C1, bidi controls.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)
ESCAPED = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202e"


def _clean(*outputs: str) -> None:
    for text in outputs:
        raw = RAW_CONTROL.findall(text)
        assert not raw, f"raw control characters {raw!r} in {text!r}"


@pytest.fixture(scope="session")
def hostile(push: Any, busybox_layer: BuiltLayer) -> PushedImage:
    """Cmd, labels and the config's platform variant carry terminal escapes (and a NUL)."""
    host = Platform.host()
    image = build_image(
        [busybox_layer],
        # A single-platform image: the variant lands in the config, which `images` shows.
        platform=Platform(host.os, host.architecture, f"v{HOSTILE}"),
        cmd=["echo", f"cmd{HOSTILE}"],
        labels={f"key{HOSTILE}": f"value{HOSTILE}\x00"},
    )
    pushed: PushedImage = push("hostile:1", image)
    return pushed


def test_hostile_image_strings_are_escaped_in_pull_images_inspect_and_check(
    fastdist: FastdistCLI, hostile: PushedImage
) -> None:
    pulled = fastdist("pull", hostile.ref)
    assert pulled.rc == 0, pulled.stderr
    images = fastdist("images")
    inspect = fastdist("inspect", hostile.ref)
    check = fastdist("check", "-v")
    for r in (images, inspect, check):
        assert r.rc == 0, r.stderr
    _clean(pulled.stdout, pulled.stderr, images.stdout, images.stderr, inspect.stdout)
    _clean(inspect.stderr, check.stdout, check.stderr)
    doc = json.loads(inspect.stdout)  # JSON escapes them, and the values survive intact
    assert doc["config"]["config"]["Labels"] == {f"key{HOSTILE}": f"value{HOSTILE}\x00"}
    assert doc["config"]["config"]["Cmd"] == ["echo", f"cmd{HOSTILE}"]
    assert ESCAPED in images.stdout  # the PLATFORM column shows the variant, escaped


def test_an_index_offering_hostile_platforms_is_reported_escaped(
    fastdist: FastdistCLI, push: Any, busybox_layer: BuiltLayer
) -> None:
    images = [
        build_image([busybox_layer], platform=Platform("linux", f"arm{HOSTILE}")),
        build_image([busybox_layer], platform=Platform(f"os{HOSTILE}\x00", "amd64")),
    ]
    index = build_index(images)
    pushed = push("hostile-index:1", index)
    r = fastdist("pull", "--platform", "linux/s390x", pushed.ref)
    assert r.rc == 4, r.stderr  # PlatformNotFoundError
    _clean(r.stdout, r.stderr)
    assert "the index offers" in r.stderr
    assert f"linux/arm{ESCAPED}" in r.stderr
    assert f"os{ESCAPED}\\x00/amd64" in r.stderr


def test_a_redirect_location_in_an_error_is_shown_escaped(fastdist: FastdistCLI) -> None:
    from fakeregistry import FakeRegistry, Fault

    # Header values travel as latin-1: ESC and BEL fit, the bidi override does not.
    hostile = "\x1b]0;pwned\x07\x1b[2J"
    with FakeRegistry() as reg:
        reg.add_image("evil/redirect")
        # The manifest GET is redirected to a scheme fastdist refuses: the error quotes it.
        reg.add_fault(
            Fault(
                path_contains="/manifests/", redirect_to=f"ftp://evil.example/{hostile}", times=-1
            )
        )
        r = fastdist("pull", f"{reg.host}/evil/redirect:latest")
    assert r.rc == 3, r.stderr
    assert "Traceback" not in r.stderr
    _clean(r.stdout, r.stderr)
    assert "ftp://evil.example/\\x1b]0;pwned\\x07\\x1b[2J" in r.stderr


@pytest.mark.root
@pytest.mark.runc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)")
def test_ps_command_and_a_runc_error_quoting_an_entrypoint_are_shown_escaped(
    fastdist: FastdistCLI, hostile: PushedImage, push: Any, busybox_layer: BuiltLayer
) -> None:
    assert fastdist("pull", "-q", hostile.ref).rc == 0
    ran = fastdist("run", "--id", "hostile1", hostile.ref)  # the image's Cmd: echo …
    assert ran.rc == 0, ran.stderr
    ps = fastdist("ps", "-a")
    assert ps.rc == 0, ps.stderr
    _clean(ps.stdout, ps.stderr)
    assert f"cmd{ESCAPED}"[:30] in ps.stdout

    bad = push(
        "hostile-entrypoint:1",
        build_image([busybox_layer], entrypoint=[f"/bin/no{HOSTILE}\x00such"]),
    )
    r = fastdist("run", "--rm", bad.ref)
    assert r.rc == 8, r.stderr  # ContainerRunError: runc quotes the path it could not exec
    assert "Traceback" not in r.stderr
    # What fastdist prints. (runc itself also writes its fatal line to the container's stderr,
    # which a foreground run shares with the terminal: that line is runc's, not ours.)
    ours = [line for line in r.stderr.splitlines() if line.startswith(("error: ", "hint: "))]
    assert ours[0].startswith("error: runc could not run container")
    assert "\\x00such" in ours[0]
    _clean(r.stdout, *ours)
