"""Run Debian's ``docker-registry`` (CNCF distribution) on a free loopback port."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import requests

from ..errors import FastdistError

log = logging.getLogger(__name__)

_CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""
_AUTH = """auth:
  htpasswd:
    realm: fastdist-test
    path: {path}
"""
_TLS = """  tls:
    certificate: {cert}
    key: {key}
"""


def free_port() -> int:
    """A currently unused loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalRegistry:
    """A ``docker-registry serve`` process with its own storage, for tests, benchmarks and demos.

    Use as a context manager; ``host`` is ``127.0.0.1:PORT``. Plain HTTP, or TLS with ``tls``
    (a certificate and its key, PEM files: ``http.tls`` in the registry's config). With
    ``users`` (name → password), every request needs Basic auth checked against an htpasswd
    file of bcrypt lines made by ``htpasswd -Bbn`` (Debian's ``apache2-utils``): the
    registry's ``auth.htpasswd``.
    """

    def __init__(
        self,
        storage: Path | None = None,
        binary: str = "docker-registry",
        *,
        tls: tuple[Path, Path] | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        exe = shutil.which(binary)
        if exe is None:
            raise FastdistError(
                f"{binary} not found on PATH",
                hint="install Debian's registry: apt-get install docker-registry",
            )
        self._exe = exe
        self._own_storage = storage is None
        self._dir = Path(tempfile.mkdtemp(prefix="fastdist-registry-"))
        self.storage = storage or self._dir / "storage"
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.tls = tls
        self.users = dict(users or {})
        if self.users and shutil.which("htpasswd") is None:
            raise FastdistError(
                "htpasswd not found on PATH",
                hint="install Debian's apache2-utils: apt-get install apache2-utils",
            )

    def start(self, timeout: float = 30.0) -> LocalRegistry:
        self.storage.mkdir(parents=True, exist_ok=True)
        cfg = self._dir / "config.yml"
        text = _CONFIG.format(storage=self.storage, port=self.port)
        if self.tls is not None:
            text += _TLS.format(cert=self.tls[0], key=self.tls[1])
        if self.users:
            htpasswd = self._dir / "htpasswd"
            lines = [
                subprocess.run(
                    ["htpasswd", "-Bbn", user, password],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=60,
                ).stdout.strip()
                for user, password in self.users.items()
            ]
            htpasswd.write_text("\n".join(lines) + "\n")
            text += _AUTH.format(path=htpasswd)
        cfg.write_text(text)
        logf = open(self._dir / "registry.log", "wb")  # noqa: SIM115 (owned by the process)
        self._proc = subprocess.Popen(
            [self._exe, "serve", str(cfg)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            close_fds=True,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
        logf.close()
        deadline = time.monotonic() + timeout
        url = f"{'https' if self.tls else 'http'}://{self.host}/v2/"
        while True:
            if self._proc.poll() is not None:
                raise FastdistError(
                    f"docker-registry exited with status {self._proc.returncode}: "
                    + (self._dir / "registry.log").read_text(errors="replace")[-2000:]
                )
            try:
                if self.tls is not None:
                    # Trust is the test's business: a listening TLS port means it is up.
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        break
                elif requests.get(url, timeout=1).status_code in ((401,) if self.users else (200,)):
                    break
            except (requests.RequestException, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise FastdistError(f"docker-registry did not answer on {url} in {timeout}s")
            time.sleep(0.05)  # polling a process we just started, not synchronising tests
        log.debug("registry up on %s (storage %s)", self.host, self.storage)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
