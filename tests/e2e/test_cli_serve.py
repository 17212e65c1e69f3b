"""``fastdist serve`` end to end: the real CLI serves a pulled image, stops on SIGTERM with exit
status 0, and reports bad options as ``error:``/``hint:`` without a traceback."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from conftest import FastdistCLI, PushedImage

CLI_TIMEOUT = 180

pytestmark = pytest.mark.registry


def test_serve_answers_pulls_and_stops_gracefully_on_sigterm(
    fastdist: FastdistCLI, busybox: PushedImage
) -> None:
    assert fastdist("pull", "-q", busybox.ref).rc == 0
    proc = fastdist.popen("serve", "--listen", "127.0.0.1:0")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving ROOT read-only on http://127.0.0.1:PORT"
        assert "read-only on http://127.0.0.1:" in line, line
        url = line.split(" on ", 1)[1].strip()
        host, path_tag = busybox.ref.split("/", 1)
        path, tag = path_tag.rsplit(":", 1) if ":" in path_tag else (path_tag, "latest")
        r = requests.get(f"{url}/v2/{path}/manifests/{tag}", params={"ns": host})
        assert r.status_code == 200
        assert r.headers["Docker-Content-Digest"] == busybox.digest
        layer = busybox.image.layers[0]
        with requests.get(f"{url}/v2/{path}/blobs/{layer.descriptor.digest}", stream=True) as b:
            first = next(b.iter_content(4096))
            proc.send_signal(signal.SIGTERM)  # an in-flight download is finished, not cut
            body = first + b"".join(b.iter_content(65536))
        assert body == layer.blob
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert f"/v2/{path}/blobs/{layer.descriptor.digest}" in err  # the access log
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "invalid listen address"),
        (["--tls-cert", "/nonexistent.pem"], "cannot load TLS certificate"),
        (["--htpasswd", "/nonexistent"], "cannot read htpasswd file"),
    ],
)
def test_serve_bad_options_are_errors_not_tracebacks(
    fastdist: FastdistCLI, args: list[str], message: str
) -> None:
    res = fastdist("serve", *args)
    assert res.rc == 2
    assert f"error: {message}" in res.stderr
    assert "Traceback" not in res.stderr
