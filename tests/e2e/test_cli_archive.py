"""Through the real CLI (issue 14): ``tag``, ``save -o -`` piped into ``load`` on a fresh store,
and ``run`` of the loaded image under runc; bad input to save/load is ``error:``/``hint:``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry


def _argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fastdist", "--root", str(root), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FASTDIST_ROOT", None)
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo / "python"), env.get("PYTHONPATH", "")) if p
    )
    return env


@pytest.mark.runc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_saved_to_stdout_loaded_from_stdin_the_image_runs(
    fastdist: FastdistCLI, busybox: PushedImage, tmp_path: Path
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    r = fastdist("tag", busybox.ref, "example.test/moved:v2")
    assert r.rc == 0, r.stderr
    fresh = tmp_path / "fresh"
    save = subprocess.Popen(
        _argv(fastdist.root, "save", "-o", "-", "example.test/moved:v2"),
        stdout=subprocess.PIPE,
        env=_env(),
    )
    load = subprocess.run(
        _argv(fresh, "load"),
        stdin=save.stdout,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
        check=False,
    )
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(timeout=180) == 0
    assert load.returncode == 0, load.stderr
    assert load.stdout.strip() == f"loaded example.test/moved:v2: {busybox.digest}"
    run = subprocess.run(
        _argv(fresh, "run", "--rm", "example.test/moved:v2", "cat", "/srv/motd"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from the app layer\n"


def test_load_of_a_file_that_is_no_archive_is_an_error_with_a_hint(
    fastdist: FastdistCLI, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    r = fastdist("load", "-i", str(junk))
    assert r.rc != 0
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: archive:"), r.stderr
    assert lines[1].startswith("hint: ")
    assert len(lines) == 2


def test_save_of_a_missing_image_is_an_error_and_writes_nothing(
    fastdist: FastdistCLI, tmp_path: Path
) -> None:
    out = tmp_path / "out.tar"
    r = fastdist("save", "-o", str(out), "example.test/absent:1")
    assert r.rc == 7
    assert r.stderr.startswith("error: ")
    assert not out.exists()
    assert os.listdir(tmp_path) == ["store"]


def test_push_prints_what_it_did_and_the_pushed_image_pulls_back(
    fastdist: FastdistCLI, busybox: PushedImage, registry: LocalRegistry
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    dest = f"{registry.host}/e2e/pushed-copy:v1"
    r = fastdist("push", busybox.ref, dest)
    assert r.rc == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        f"{dest}: {busybox.digest} (0 uploaded, {len(busybox.image.layers) + 1} mounted, "
        "0 already there)"
    )
    assert fastdist("rmi", busybox.ref).rc == 0
    assert fastdist("pull", "-q", dest).stdout.strip() == busybox.digest


def _events(stdout: str) -> list[dict[str, object]]:
    import json

    lines = stdout.splitlines()
    assert lines, "no events"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def _check_push_events(events: list[dict[str, object]], pushed: PushedImage, dest: str) -> str:
    """The stream of ``push --json``: per blob one final event with its outcome (and
    nothing after it for that blob), then the manifest, then the tag; returns the one
    outcome every blob had."""
    img = pushed.image
    blobs = {img.config_descriptor.digest, *(x.descriptor.digest for x in img.layers)}
    finals = [e for e in events if e["phase"] in ("exists", "done") and e["digest"] in blobs]
    assert sorted(str(e["digest"]) for e in finals) == sorted(blobs)  # one each, none twice
    outcomes = {e["message"] for e in finals}
    assert len(outcomes) == 1
    assert outcomes <= {"exists", "mounted", "uploaded"}
    for e in events:
        if e["digest"] in blobs:
            assert e["phase"] in ("uploading", "exists", "done"), e
    manifest = [i for i, e in enumerate(events) if e["message"] == "manifest"]
    assert len(manifest) == 1
    m = events[manifest[0]]
    assert (m["phase"], m["digest"]) == ("done", pushed.digest)
    assert m["media_type"] == pushed.image.descriptor.media_type
    assert max(events.index(e) for e in finals) < manifest[0]
    last = events[-1]
    assert manifest[0] == len(events) - 2
    assert (last["phase"], last["digest"]) == ("done", None)
    assert (last["name"], last["image_digest"]) == (dest, pushed.digest)
    return str(outcomes.pop())


def test_push_json_is_one_event_per_line_blob_outcomes_then_manifest_then_tag(
    fastdist: FastdistCLI, busybox: PushedImage, registry: LocalRegistry
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    dest = f"{registry.host}/e2e/pushed-json:v1"
    r = fastdist("push", "--json", busybox.ref, dest)
    assert r.rc == 0, r.stderr
    assert _check_push_events(_events(r.stdout), busybox, dest) == "mounted"
    r = fastdist("push", "--json", busybox.ref, dest)
    assert r.rc == 0, r.stderr
    assert _check_push_events(_events(r.stdout), busybox, dest) == "exists"
    # Under another registry's name there is nothing to mount from, and a HEAD in a new
    # repository does not see blobs linked only to others: every blob is uploaded.
    assert fastdist("tag", busybox.ref, "example.test/e2e/bb:1").rc == 0
    other = f"{registry.host}/e2e/pushed-json-upload:v1"
    r = fastdist("push", "--json", "example.test/e2e/bb:1", other)
    assert r.rc == 0, r.stderr
    assert _check_push_events(_events(r.stdout), busybox, other) == "uploaded"


def test_push_of_an_index_missing_a_platform_notes_it_and_all_refuses_with_a_hint(
    fastdist: FastdistCLI, registry: LocalRegistry, pusher: Pusher
) -> None:
    from fastdist.oci import Platform
    from fastdist.testing.images import (
        File,
        build_image,
        build_index,
        build_layer,
        push_image,
        tar_entries,
    )

    host = registry.host
    index = build_index(
        [
            build_image(
                [build_layer(tar_entries([File(f"etc/{arch}", arch)]))],
                platform=Platform("linux", arch),
            )
            for arch in ("amd64", "arm64")
        ]
    )
    ref = f"{host}/e2e/multi:v1"
    push_image(pusher, ref, index)
    assert fastdist("pull", "-q", "--platform", "linux/arm64", ref).rc == 0
    r = fastdist("push", "--all", ref, f"{host}/e2e/multi-all:v1")
    assert r.rc == 7
    assert r.stderr.startswith("error: ")
    assert "linux/amd64" in r.stderr
    assert "\nhint: pull each of them (fastdist pull --platform P" in r.stderr
    assert "Traceback" not in r.stderr
    r = fastdist("push", ref, f"{host}/e2e/multi-one:v1")
    assert r.rc == 0, r.stderr
    assert f"note: platform linux/amd64 of {ref} is not present" in r.stderr
    assert index.images[1].descriptor.digest in r.stdout
