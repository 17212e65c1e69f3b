"""The pull display around ``run`` and on signals, through the real CLI: on a terminal (a pty
pair) the display ends before the container starts, and a pull stopped by Ctrl-C or SIGTERM
says so and leaves no staging directory (issue 17.2, 17.8)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clikit import CLI_TIMEOUT, cli_argv, cli_env, run_cli
from fakeregistry import FakeRegistry, Fault
from fastdist.testing.images import Dir, File, build_image, build_layer, tar_entries

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

ESC = "\x1b"
root_and_runc = [
    pytest.mark.root,
    pytest.mark.runc,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
]


def _on_a_terminal(root: Path, *args: str) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a fresh pty; everything it wrote, and rc."""
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen(
            cli_argv(root, *args),
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=cli_env(COLUMNS="120", LINES="40"),
            start_new_session=True,
        )
    finally:
        os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError as e:  # EIO: every writer closed the pty (the process ended)
                if e.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=CLI_TIMEOUT)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.registry
@pytest.mark.root
@pytest.mark.runc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)")
def test_run_on_a_terminal_keeps_the_containers_output_intact(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    # The sleep is the container's behaviour: a display still live would redraw over "hi".
    script = "echo hi; sleep 1.2; echo bye"
    rc, out = _on_a_terminal(fastdist.root, "run", "--rm", busybox.ref, "sh", "-c", script)
    assert rc == 0, out
    assert f"{busybox.ref}: done" in out  # the pull was shown, and ended
    head, sep, tail = out.partition("hi\r\n")
    assert sep, out
    assert tail == "bye\r\n", repr(out)  # nothing drawn after the container started
    assert "pulling" not in head.rpartition(f"{busybox.ref}: done")[2]

    # The image is present now: no pull, so no display at all.
    rc, out = _on_a_terminal(fastdist.root, "run", "--rm", busybox.ref, "sh", "-c", script)
    assert rc == 0, out
    assert out == "hi\r\nbye\r\n", repr(out)


@pytest.mark.registry
@pytest.mark.root
@pytest.mark.runc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)")
def test_run_detached_on_a_terminal_prints_only_the_id(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    rc, out = _on_a_terminal(fastdist.root, "run", "-d", "--id", "quiet1", busybox.ref, "true")
    assert rc == 0, out
    assert out == "quiet1\r\n", repr(out)


# --- signals during a pull ------------------------------------------------------------------
BIG = 4 << 20


def _slow_registry(reg: FakeRegistry) -> tuple[str, str]:
    """An image whose big layer drips slowly; its reference and the big layer's digest."""
    data = os.urandom(BIG)
    layer = build_layer(tar_entries([Dir("big"), File("big/blob.bin", data)]))
    image = build_image([layer], cmd=["sh"])
    for digest, blob in image.blobs().items():
        reg.blobs[digest] = blob
    reg.add_manifest("slow/image", image.manifest, image.descriptor.media_type, "v1")
    reg.add_fault(
        Fault(path_contains=layer.descriptor.digest, drip=0.01, drip_chunk=8192, times=-1)
    )
    return f"{reg.host}/slow/image:v1", layer.descriptor.digest


def _staging(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("snapshots/*/staging/*"))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlayfs streams into staging)")
@pytest.mark.parametrize(
    ("sig", "rc", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_signal_during_a_pull_cleans_staging_and_says_so(
    fastdist: FastdistCLI, sig: signal.Signals, rc: int, word: str
) -> None:
    with FakeRegistry() as reg:
        ref, digest = _slow_registry(reg)
        proc = fastdist.popen("pull", "--snapshotter", "overlayfs", ref)
        try:
            assert reg.wait_sent(digest, 256 << 10), "the download never got going"
            assert _staging(fastdist.root), "the layer streams into a staging directory"
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == rc, err
    assert f"error: {word}\n" in err
    assert "Traceback" not in err
    assert _staging(fastdist.root) == []
    assert not re.search(r": done$", out.splitlines()[-1] if out else "")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a small tmpfs)")
def test_a_full_disk_mid_pull_says_what_to_free_and_that_the_download_resumes(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(store)], check=True
    )
    try:
        # Zeros compress to almost nothing: the free-space check before the pull passes, and
        # the unpack runs out of room half way.
        layer = build_layer(tar_entries([Dir("big"), File("big/zeros", bytes(6 << 20))]))
        image = build_image([layer], cmd=["sh"])
        with FakeRegistry() as reg:
            for digest, blob in image.blobs().items():
                reg.blobs[digest] = blob
            reg.add_manifest("full/disk", image.manifest, image.descriptor.media_type, "v1")
            r = run_cli(store, "pull", "--snapshotter", "native", f"{reg.host}/full/disk:v1")
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
    assert r.returncode == 7, r.stderr  # StoreError
    assert "Traceback" not in r.stderr
    error, hint = r.stderr.splitlines()[-2:]
    assert error.startswith("error: "), r.stderr
    assert "No space left on device" in error, r.stderr
    assert hint.startswith(f"hint: the filesystem of the store ({store}) is full"), r.stderr
    assert "fastdist prune" in hint
    assert "resumes" in hint
