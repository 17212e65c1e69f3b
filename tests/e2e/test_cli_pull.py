"""``fastdist pull / images / inspect / rmi / prune / unpack`` through the real CLI (a subprocess)
against Debian's docker-registry: output formats, store effects and error reporting."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fastdist import oci
from fastdist.sizes import human_size as _human
from fastdist.testing.images import BuiltLayer, build_image
from fastdist.testing.registry import free_port

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry
BUSYBOX = Path("/bin/busybox")


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _blob_lines(stdout: str) -> dict[str, list[str]]:
    """The plain display's ``<kind>-sha256:<12 hex>: <phase>[ (<size>)]`` lines, per blob."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        label, sep, phase = line.partition(": ")
        if sep and "-sha256:" in label and " " not in label:
            rows.setdefault(label, []).append(phase.partition(" (")[0])
    return rows


def _blob_sizes(stdout: str) -> dict[str, set[str]]:
    """The sizes the plain display printed per blob (``… (1.0 MiB)``)."""
    sizes: dict[str, set[str]] = {}
    for line in stdout.splitlines():
        label, sep, rest = line.partition(": ")
        if sep and "-sha256:" in label and rest.endswith(")") and " (" in rest:
            sizes.setdefault(label, set()).add(rest.partition(" (")[2][:-1])
    return sizes


def _table(stdout: str) -> tuple[list[str], list[dict[str, str]]]:
    """Split a left-aligned table by its header's column starts (cells may contain spaces)."""
    lines = stdout.splitlines()
    header = lines[0]
    names = re.split(r"\s{2,}", header.strip())  # "IMAGE ID" is one column
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        cells = [
            line[s : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, s in enumerate(starts)
        ]
        rows.append(dict(zip(names, cells, strict=False)))
    return names, rows


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ")


# --- pull output ----------------------------------------------------------------------------
def test_pull_on_a_pipe_prints_one_plain_line_per_phase_and_every_blob_ends_done(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    r = fastdist("pull", busybox.ref)
    assert r.rc == 0, r.stderr
    assert "\x1b[" not in r.stdout  # no terminal redraws when stdout is not a TTY
    lines = r.stdout.splitlines()
    assert lines[0] == f"{busybox.ref}: resolving"
    assert lines[-1] == f"{busybox.ref}: {busybox.digest}"
    # One summary line before the digest: blobs, bytes, time and rate.
    summary = re.fullmatch(
        rf"{re.escape(busybox.ref)}: fetched (\d+) blob\(s\), (.+) in ([\d.]+) s \((.+)/s\)",
        lines[-2],
    )
    assert summary, lines[-2]
    assert int(summary.group(1)) == 2 + len(busybox.image.layers)  # manifest, config, layers
    assert summary.group(2) == _human(busybox.size)
    rows = _blob_lines(r.stdout)
    image = busybox.image
    expected = {f"manifest-sha256:{_short(busybox.digest)}"}
    expected.add(f"config-sha256:{_short(image.config_descriptor.digest)}")
    expected |= {f"layer-sha256:{_short(x.descriptor.digest)}" for x in image.layers}
    assert set(rows) == expected
    for label, phases in rows.items():
        assert phases[-1] == "done", (label, phases)
        assert len(phases) == len(set(phases)), f"{label} repeated a phase: {phases}"
    sizes = _blob_sizes(r.stdout)
    for layer in image.layers:
        label = f"layer-sha256:{_short(layer.descriptor.digest)}"
        assert rows[label] == ["downloading", "unpacking", "done"]
        assert sizes[label] == {_human(layer.descriptor.size)}  # on downloading and done


def test_second_pull_reports_every_blob_as_already_there(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    r = fastdist("pull", busybox.ref)
    assert r.rc == 0, r.stderr
    rows = _blob_lines(r.stdout)
    for layer in busybox.image.layers:
        assert rows[f"layer-sha256:{_short(layer.descriptor.digest)}"] == ["exists"]


def test_pull_quiet_prints_only_the_digest(fastdist: FastdistCLI, busybox: PushedImage) -> None:
    r = fastdist("pull", "-q", busybox.ref)
    assert r.rc == 0, r.stderr
    assert r.stdout == busybox.digest + "\n"
    assert r.stderr == ""


def test_pull_json_emits_one_event_object_per_line(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    r = fastdist("pull", "--json", busybox.ref)
    assert r.rc == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events, "no events"
    for ev in events:
        assert set(ev) >= {"time", "phase", "digest", "media_type", "current", "total", "message"}
    assert events[0]["phase"] == "resolving"
    assert events[0]["message"] == busybox.ref
    resolved = [e for e in events if e["phase"] == "resolved"]
    assert [e["digest"] for e in resolved] == [busybox.digest]
    assert resolved[0]["media_type"] == oci.OCI_MANIFEST
    for layer in busybox.image.layers:
        mine = [e for e in events if e["digest"] == layer.descriptor.digest]
        phases = [e["phase"] for e in mine]
        assert "downloading" in phases
        assert phases[-1] == "done"
        assert mine[-1]["current"] == mine[-1]["total"] == layer.descriptor.size
    config = [e for e in events if e["digest"] == busybox.image.config_descriptor.digest]
    assert config[-1]["phase"] == "done"
    assert events[-1]["phase"] == "done"
    assert events[-1]["digest"] is None
    assert busybox.digest in events[-1]["message"]
    assert events[-1]["name"] == busybox.ref  # the image recorded, as fields of their own
    assert events[-1]["image_digest"] == busybox.digest


def test_pull_json_reports_a_failure_as_the_last_event(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    repo = busybox.ref.rpartition(":")[0]
    r = fastdist("pull", "--json", f"{repo}:no-such-tag")
    assert r.rc == 3
    events = [json.loads(line) for line in r.stdout.splitlines()]
    last = events[-1]
    assert last["phase"] == "failed"
    assert last["digest"] is None
    assert last["exit_code"] == 3
    assert "MANIFEST_UNKNOWN" in last["error"]
    assert last["hint"] == "check the repository name and the tag or digest"
    _no_traceback(r.stderr)  # people still read error: and hint: on stderr


# --- images / inspect / rmi / prune / unpack --------------------------------------------------
@pytest.fixture(scope="session")
def hello(push: Any, busybox_layer: BuiltLayer) -> PushedImage:
    """A second image in another repository."""
    pushed: PushedImage = push("hello:1", build_image([busybox_layer], cmd=["echo", "hello"]))
    return pushed


def test_images_lists_ref_id_created_and_whole_image_size_within_120_columns(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    r = fastdist("images")
    assert r.rc == 0, r.stderr
    names, rows = _table(r.stdout)
    assert names == ["REF", "IMAGE ID", "CREATED", "SIZE", "UNPACKED", "PLATFORM"]
    assert max(len(line) for line in r.stdout.splitlines()) <= 120
    [row] = rows
    assert row["REF"] == busybox.ref
    config_id = busybox.image.config_descriptor.digest
    assert row["IMAGE ID"] == _short(config_id)  # docker's IMAGE ID: the config digest, short
    assert re.fullmatch(r"\d+[dhm]? ago", row["CREATED"]), row["CREATED"]  # 2026-01-01
    # The whole image (manifest + config + compressed layers), not just the manifest.
    assert row["SIZE"] == _human(busybox.size)
    assert busybox.size > BUSYBOX.stat().st_size // 3
    unpacked_value, unit = row["UNPACKED"].split()
    assert unit == "MiB"
    assert float(unpacked_value) >= BUSYBOX.stat().st_size / (1 << 20) * 0.9

    assert fastdist("images", "-q").stdout == _short(config_id) + "\n"
    assert fastdist("images", "-q", "--no-trunc").stdout == config_id + "\n"

    wide = fastdist("images", "--digests", "--no-trunc")
    names, [row] = _table(wide.stdout)
    assert names[:3] == ["REF", "TYPE", "DIGEST"]
    assert row["TYPE"] == oci.OCI_MANIFEST
    assert row["DIGEST"] == busybox.digest
    assert row["IMAGE ID"] == config_id
    short = fastdist("images", "--digests")
    assert _table(short.stdout)[1][0]["DIGEST"] == busybox.digest[:19]


def test_images_json_and_repository_filter(
    fastdist: FastdistCLI, busybox: PushedImage, hello: PushedImage
) -> None:
    for ref in (busybox.ref, hello.ref):
        assert fastdist("pull", "-q", ref).rc == 0
    r = fastdist("images", "--format", "json")
    assert r.rc == 0, r.stderr
    listed = [json.loads(line) for line in r.stdout.splitlines()]
    by_name = {x["name"]: x for x in listed}
    assert set(by_name) == {busybox.ref, hello.ref}
    entry = by_name[busybox.ref]
    assert entry["id"] == busybox.image.config_descriptor.digest
    assert entry["digest"] == busybox.digest
    assert entry["media_type"] == oci.OCI_MANIFEST
    assert entry["size"] == busybox.size
    assert entry["created"] == "2026-01-01T00:00:00Z"
    assert entry["unpacked_size"] > 0

    repo = busybox.ref.rpartition(":")[0]
    only = fastdist("images", "-q", "--no-trunc", repo)
    assert only.stdout == busybox.image.config_descriptor.digest + "\n"
    assert fastdist("images", "-q", "--no-trunc", busybox.ref).stdout == only.stdout
    assert fastdist("images", "-q", f"{repo}:other-tag").stdout == ""
    bad = fastdist("images", "Not/Valid")
    assert bad.rc == 2
    _no_traceback(bad.stderr)


def test_inspect_prints_record_manifest_and_config_as_json(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    r = fastdist("inspect", busybox.ref)
    assert r.rc == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == busybox.ref
    assert doc["target"]["digest"] == busybox.digest
    assert doc["size"] == busybox.size
    assert [x["digest"] for x in doc["manifest"]["layers"]] == [
        x.descriptor.digest for x in busybox.image.layers
    ]
    assert doc["config"]["rootfs"]["diff_ids"] == [x.diff_id for x in busybox.image.layers]
    assert doc["config"]["config"]["Cmd"] == ["sh"]
    assert doc["config"]["config"]["WorkingDir"] == "/srv"
    assert len(doc["chain_ids"]) == len(busybox.image.layers)


def test_rmi_forgets_the_image_and_prune_then_frees_its_blobs_and_snapshots(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    blobs_dir = fastdist.root / "content" / "blobs" / "sha256"
    n_layers = len(busybox.image.layers)
    assert len(os.listdir(blobs_dir)) == 2 + n_layers  # manifest, config, layers

    r = fastdist("rmi", busybox.ref)
    assert r.rc == 0, r.stderr
    assert r.stdout == f"removed {busybox.ref}\n"
    images = fastdist("images")
    assert images.rc == 0
    assert images.stdout.splitlines()[0].startswith("REF")
    assert images.stdout.splitlines()[1:] == []
    assert fastdist("images", "-q").stdout == ""
    assert len(os.listdir(blobs_dir)) == 2 + n_layers  # rmi alone keeps the content

    p = fastdist("prune")
    assert p.rc == 0, p.stderr
    assert p.stdout.startswith(f"removed {2 + n_layers} blob(s), {n_layers} snapshot(s), ")
    assert "freed " in p.stdout
    assert os.listdir(blobs_dir) == []
    layers = [d for d in (fastdist.root / "snapshots").glob("*/layers/*") if d.is_dir()]
    assert layers == []

    again = fastdist("prune")
    assert again.stdout.startswith("removed 0 blob(s), 0 snapshot(s), ")


def test_prune_keeps_what_a_listed_image_uses(fastdist: FastdistCLI, busybox: PushedImage) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    p = fastdist("prune")
    assert p.rc == 0
    assert p.stdout.startswith("removed 0 blob(s), 0 snapshot(s), ")
    r = fastdist("unpack", busybox.ref, str(fastdist.root.parent / "out"))
    assert r.rc == 0, r.stderr  # every blob is still there and verifies


def test_unpack_writes_the_flattened_root_filesystem(
    fastdist: FastdistCLI, busybox: PushedImage, tmp_path: Path
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    dest = tmp_path / "rootfs"
    r = fastdist("unpack", busybox.ref, str(dest))
    assert r.rc == 0, r.stderr
    assert str(dest) in r.stdout
    assert (dest / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.stat(dest / "bin/busybox").st_mode & 0o777 == 0o755
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert "app:x:1000:1000:app:/home/app:/bin/sh\n" in (dest / "etc/passwd").read_text()
    assert "extra:x:2000:nobody,app\n" in (dest / "etc/group").read_text()
    assert (dest / "srv/motd").read_text() == "hello from the app layer\n"  # the second layer
    assert os.stat(dest / "tmp").st_mode & 0o7777 == 0o1777
    if os.geteuid() == 0:
        st = os.stat(dest / "home/app")
        assert (st.st_uid, st.st_gid) == (1000, 1000)

    again = fastdist("unpack", busybox.ref, str(dest))
    assert again.rc != 0
    _no_traceback(again.stderr)
    assert "not empty" in again.stderr


def test_unpack_into_a_file_and_a_root_that_is_a_file_are_errors_not_tracebacks(
    fastdist: FastdistCLI, busybox: PushedImage, tmp_path: Path
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    f = tmp_path / "a-file"
    f.write_text("x")
    r = fastdist("unpack", busybox.ref, str(f))
    assert r.rc != 0
    _no_traceback(r.stderr)
    assert f"unpack destination {f}: is not a directory" in r.stderr
    assert "\nhint: " in r.stderr
    r = fastdist("--root", str(f), "images")  # the later --root wins
    assert r.rc == 7  # StoreError
    _no_traceback(r.stderr)
    assert f"store root {f} is not a directory" in r.stderr
    assert "\nhint: " in r.stderr
    assert f.read_text() == "x"


def test_unpack_help_says_the_destination_is_private(fastdist: FastdistCLI) -> None:
    r = fastdist("unpack", "--help")
    assert r.rc == 0
    assert "0700" in r.stdout
    assert "--keep-root-mode" in r.stdout


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["Bad::Ref", "library/UPPER", "host:5000/a@sha256:1234", ""])
def test_invalid_reference_exits_2_with_error_and_hint(fastdist: FastdistCLI, ref: str) -> None:
    r = fastdist("pull", ref)
    assert r.rc == 2
    _no_traceback(r.stderr)
    assert "invalid reference" in r.stderr
    assert "\nhint: " in r.stderr
    assert r.stdout == ""


def test_unknown_tag_is_a_registry_not_found_error_naming_the_url(
    fastdist: FastdistCLI, busybox: PushedImage, registry: LocalRegistry, tmp_path: Path
) -> None:
    # Credentials for the registry are configured: they must never show in a message.
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    secret = "s3cr3t-pa55word"
    auth = base64.b64encode(f"someone:{secret}".encode()).decode()
    host = registry.host
    (docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    repo = busybox.ref.rpartition(":")[0]
    r = fastdist("pull", f"{repo}:no-such-tag", env={"DOCKER_CONFIG": str(docker_config)})
    assert r.rc == 3  # RegistryError
    _no_traceback(r.stderr)
    assert f"http://{host}/v2/e2e/busybox/manifests/no-such-tag" in r.stderr
    assert "404" in r.stderr
    assert "MANIFEST_UNKNOWN" in r.stderr
    assert secret not in r.stderr + r.stdout
    assert auth not in r.stderr + r.stdout
    assert fastdist("images", "-q").stdout == ""  # nothing recorded


def test_debug_shows_the_http_log_and_a_traceback(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    repo = busybox.ref.rpartition(":")[0]
    r = fastdist("--debug", "pull", f"{repo}:no-such-tag")
    assert r.rc == 3
    assert "DEBUG" in r.stderr
    assert "GET /v2/e2e/busybox/manifests/no-such-tag" in r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert "NotFoundError" in r.stderr
    # The traceback comes first; the user-facing error and its hint close the output.
    last = r.stderr.rstrip().splitlines()[-2:]
    assert last[0].startswith("error: ")
    assert last[1] == "hint: check the repository name and the tag or digest"


def test_pull_from_a_port_where_nothing_listens_is_a_clear_registry_error(
    fastdist: FastdistCLI,
) -> None:
    port = free_port()
    r = fastdist("pull", f"127.0.0.1:{port}/nothing/here:1")
    assert r.rc == 3
    _no_traceback(r.stderr)
    first, hint = r.stderr.splitlines()[:2]
    assert f"127.0.0.1:{port}" in first
    assert first.endswith(": connection refused")  # the root cause, not urllib3's nested reprs
    assert hint.startswith(f"hint: is a registry reachable at 127.0.0.1:{port}?")
    assert fastdist("images", "-q").stdout == ""


def test_inspect_and_rmi_of_an_unknown_image_are_store_errors(fastdist: FastdistCLI) -> None:
    for cmd in ("inspect", "rmi"):
        r = fastdist(cmd, "127.0.0.1:1/never/pulled:1")
        assert r.rc == 7  # StoreError (ImageNotFoundError)
        _no_traceback(r.stderr)
        assert "127.0.0.1:1/never/pulled:1" in r.stderr


def test_output_is_complete_on_a_pipe_and_a_closed_pipe_is_not_an_error(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    # The command ends with os._exit after flushing (cli.run): what it printed must still
    # arrive whole, and a reader that went away must not turn into a traceback.
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    listed = fastdist("inspect", busybox.ref)
    assert listed.rc == 0
    assert json.loads(listed.stdout)["target"]["digest"] == busybox.digest

    proc = fastdist.popen("pull", "-q", busybox.ref)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # before it writes a byte: writing the digest gets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err, err


def test_prune_keeps_a_recent_partial_download_unless_told_its_age(
    fastdist: FastdistCLI,
) -> None:
    fastdist.root.mkdir(mode=0o700)  # an existing root must be private (else refused)
    ingest = fastdist.root / "content" / "ingest" / ("ab" * 32)
    ingest.mkdir(parents=True)
    (ingest / "data").write_bytes(b"half a layer")
    assert fastdist("prune").rc == 0
    assert (ingest / "data").exists()  # its pull may still resume
    assert fastdist("prune", "--partial-age", "1h").rc == 0
    assert (ingest / "data").exists()
    gone = fastdist("prune", "--partial-age", "0")
    assert gone.rc == 0, gone.stderr
    assert not ingest.exists()
    assert "1 leftover(s)" in gone.stdout
    bad = fastdist("prune", "--partial-age", "soon")
    assert bad.rc == 2
    assert "not a duration" in bad.stderr
