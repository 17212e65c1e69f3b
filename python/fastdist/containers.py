"""Container lifecycle: run an image in a fresh writable snapshot, then list, inspect, control and
remove containers (``Containers``, the service behind ``Client.run``/``container``/``containers``).

The order of one run: check the ``RunOptions`` (runc present, ports free, capabilities known) →
the image (pulled when missing) → bundle → container record → writable snapshot mounted as the
bundle's rootfs → spec → ``runc run`` (foreground) or the supervisor (detached). A failure before
the container ran undoes every step (:meth:`Container._cleanup`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import oci
from .errors import (
    ContainerNotFoundError,
    ContainerRunError,
    FastdistError,
    ImageNotFoundError,
    InUseError,
    PlatformNotFoundError,
    StoreError,
)
from .metadata import ContainerRecord, MetadataDB
from .oci import Platform
from .ports import PortMapping, check_ports
from .progress import Progress, no_progress
from .reference import names_only_an_id
from .runc import parse_signal
from .snapshots import Snapshotter, snapshotter_by_name
from .spec import RunOptions, check_options

if TYPE_CHECKING:
    from .client import Client, Image
    from .logs import LogEntry
    from .runc import Runtime


class Containers:
    """The containers of one store: made by :meth:`run`, found by :meth:`get` and :meth:`list`."""

    def __init__(self, client: Client) -> None:
        self._client = client  # for images (get, pull) and the lazily made runtime

    @property
    def runtime(self) -> Runtime:
        return self._client.runtime

    @property
    def metadata(self) -> MetadataDB:
        return self._client.metadata

    def run(
        self,
        ref: str,
        options: RunOptions,
        *,
        pull: bool = True,
        platform: str | Platform | None = None,
        progress: Progress = no_progress,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        on_interrupt: Callable[[str], None] | None = None,
    ) -> Container:
        """See :meth:`fastdist.client.Client.run`."""
        self.runtime.check()  # runc present, root: refuse before anything is created
        check_options(options)
        check_ports(options.ports)  # a port in use is named before anything is pulled or created
        img = self.image_for_run(ref, pull=pull, platform=platform, progress=progress)
        cid = options.id or self._generate_id()
        opts = options if options.id else dataclasses.replace(options, id=cid)
        config = img.config()
        chains = img.record.chain_ids
        snap = self.snapshotter_named(img.record.snapshotter)
        self.runtime.prepare(cid)  # InUseError when the id is taken: nothing created yet
        record = ContainerRecord(
            id=cid,
            image=img.name,
            snapshotter=snap.name,
            snapshot_key=cid,
            bundle=str(self.runtime.bundle(cid)),
            command=tuple(opts.command or ()),
            status="created",
            pid=None,
            exit_code=None,
            created=time.time(),
            log_path=str(self.runtime.bundle(cid) / "log") if opts.detach else None,
            rm=opts.rm,
        )
        container = Container(cid, img.name, self)
        try:
            self.metadata.containers.add(record)
            active = snap.prepare_active(cid, chains[-1] if chains else None)
            snap.mount(active, self.runtime.rootfs_dir(cid), readonly=False)
            spec = self.runtime.create(config, opts)
            args = tuple(spec["process"]["args"])
            self.metadata.containers.update_command(cid, args)
        except BaseException:
            container._cleanup(force=True)
            raise
        if opts.detach:
            try:
                state = self.runtime.start(cid)
            except BaseException:
                container._cleanup(force=True)
                raise
            self.metadata.containers.update_status(cid, "running", state.pid, None)
            return container
        try:
            code = self.runtime.run(
                cid, stdin=stdin, stdout=stdout, stderr=stderr, on_interrupt=on_interrupt
            )
        except ContainerRunError:
            # It never ran (runc could not create or start it, or no terminal for -t): a
            # "created" container nothing can start would only leak its mount and snapshot.
            container._cleanup(force=True)
            raise
        except BaseException:
            if opts.rm:
                container._cleanup(force=True)
            raise
        container.exit_code = code
        self.metadata.containers.update_status(cid, "stopped", None, code)
        if opts.rm:
            container.remove(force=True)
        return container

    def image_for_run(
        self,
        ref: str,
        *,
        pull: bool = True,
        platform: str | Platform | None = None,
        progress: Progress = no_progress,
    ) -> Image:
        """See :meth:`fastdist.client.Client.image_for_run`."""
        client = self._client
        want = _wanted(platform)
        try:
            img = client.get(ref)
        except ImageNotFoundError:
            if not pull or names_only_an_id(ref):
                raise  # an ID or digest names no registry image to pull
            return client.pull(ref, platform=platform, progress=progress)
        if want is None:
            return img
        found = img.config().platform
        if want.matches(found):
            return img
        # docker run --platform: a present image for another platform is not the one asked for.
        if not pull:
            raise PlatformNotFoundError(
                f"image {img.name} is built for {found.normalized()}, not {want.normalized()}",
                hint=f"pull it for that platform: fastdist pull --platform {want} {img.name}",
            )
        return client.pull(img.name, platform=want, progress=progress)

    def snapshotter_named(self, name: str | None) -> Snapshotter:
        """The snapshotter an image or container was recorded with (None: the client's)."""
        default = self._client.snapshotter
        if name is None or name == default.name:
            return default
        return snapshotter_by_name(name, self._client.root)

    def get(self, cid: str) -> Container:
        rec = self.metadata.containers.get(cid)
        if rec is None:
            raise ContainerNotFoundError(
                f"no such container: {cid}", hint="list them with: fastdist ps -a"
            )
        return Container(rec.id, rec.image, self)

    def list(self, all: bool = True) -> list[ContainerInfo]:
        """Every container with its live status; reaps stopped ``--rm`` containers."""
        out = []
        for rec in self.metadata.containers.list():
            try:
                state = self.runtime.state(rec.id)
                status, exit_code = state.status, state.exit_code
            except ContainerNotFoundError:
                status, exit_code = "missing", rec.exit_code
            if status == "stopped" and rec.rm:
                with contextlib.suppress(FastdistError):
                    Container(rec.id, rec.image, self).remove(force=True)
                continue
            if all or status == "running":
                ports = _bundle_ports(Path(rec.bundle))
                out.append(
                    ContainerInfo(
                        rec.id, rec.image, rec.command, status, exit_code, rec.created, ports
                    )
                )
        return out

    def _generate_id(self) -> str:
        """A readable unique id like ``swift-heron-3fa2``."""
        import secrets

        for _ in range(100):
            cid = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
            if self.metadata.containers.get(cid) is None and not self.runtime.bundle(cid).exists():
                return cid
        raise StoreError("could not generate a free container id")


def _wanted(platform: str | Platform | None) -> Platform | None:
    """The platform ``run`` asks for (None: this host's, or any)."""
    return oci.wanted_platform(platform)[0]


@dataclass
class Container:
    """A container created by ``Client.run``: its runc state, log and snapshot."""

    id: str
    image: str
    _containers: Containers
    exit_code: int | None = None

    @property
    def status(self) -> str:
        """created, running, paused or stopped (what runc and the exit record say)."""
        return self._containers.runtime.state(self.id).status

    def wait(self) -> int | None:
        """Block until a detached container exits; its exit status."""
        code = self._containers.runtime.wait(self.id)
        self.exit_code = code
        with contextlib.suppress(FastdistError):
            self._containers.metadata.containers.update_status(self.id, "stopped", None, code)
        return code

    def kill(self, sig: int | str = "KILL") -> None:
        """Send ``sig`` (default KILL, as docker) to the container's init process; a stopped
        container is an error."""

        parse_signal(sig)  # a bad name is a usage error, whatever the container's state
        state = self._containers.runtime.state(self.id)
        if state.status not in ("running", "paused", "created"):
            raise ContainerRunError(
                f"cannot kill container {self.id}: it is {state.status}",
                hint=f"see its output with: fastdist logs {self.id}",
            )
        self._containers.runtime.kill(self.id, sig)

    def start(self) -> None:
        """Start a stopped (or never started) container again, detached, on its own snapshot:
        what it wrote stays; its output goes to its log (docker's start without -a)."""
        rt = self._containers.runtime
        state = rt.state(self.id)
        if state.status in ("running", "paused"):
            raise InUseError(
                f"container {self.id} is already {state.status}",
                hint=f"stop it first (fastdist stop {self.id}), or use restart",
            )
        rt.delete(self.id)  # runc forgets the old run; the bundle and the mount stay
        new = rt.start(self.id)
        self.exit_code = None
        self._containers.metadata.containers.update_status(self.id, "running", new.pid, None)

    def restart(self, timeout: float = 10.0) -> None:
        """stop (TERM, then KILL after ``timeout``) and start again."""
        self.stop(timeout)
        self.start()

    def stop(self, timeout: float = 10.0) -> int | None:
        """TERM, then KILL after ``timeout`` seconds (docker's stop); the exit status."""
        code = self._containers.runtime.stop(self.id, timeout)
        self.exit_code = code
        with contextlib.suppress(FastdistError):
            self._containers.metadata.containers.update_status(self.id, "stopped", None, code)
        return code

    def exec(
        self,
        command: Sequence[str],
        *,
        tty: bool = False,
        interactive: bool = False,
        env: Sequence[str] = (),
        user: str | None = None,
        workdir: str | None = None,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> int:
        """Run ``command`` in the running container; its exit status."""
        return self._containers.runtime.exec(
            self.id,
            command,
            tty=tty,
            interactive=interactive,
            env=env,
            user=user,
            workdir=workdir,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )

    def inspect(self) -> dict[str, Any]:
        """docker-style inspect: state, exit code, times, the spec's process, mounts, ports."""
        c = self._containers
        rec = c.metadata.containers.get(self.id)
        if rec is None:
            raise ContainerNotFoundError(f"no such container: {self.id}")
        state = c.runtime.state(self.id)
        bundle = Path(rec.bundle)
        try:
            spec = json.loads((bundle / "config.json").read_bytes())
        except (OSError, ValueError):
            spec = {}
        process = spec.get("process", {})
        linux = spec.get("linux", {})
        exit_file = bundle / "exit"
        finished = exit_file.stat().st_mtime if exit_file.exists() else None
        return {
            "Id": rec.id,
            "Name": rec.id,
            "Image": rec.image,
            "Created": _iso(rec.created),
            "State": {
                "Status": state.status,
                "Running": state.status == "running",
                "Pid": state.pid or 0,
                "ExitCode": state.exit_code,
                "FinishedAt": _iso(finished) if finished is not None else None,
            },
            "Config": {
                "Cmd": list(process.get("args", rec.command)),
                "Env": list(process.get("env", [])),
                "WorkingDir": process.get("cwd"),
                "User": process.get("user"),
                "Tty": bool(process.get("terminal", False)),
                "Hostname": spec.get("hostname"),
            },
            "HostConfig": {
                "AutoRemove": rec.rm,
                "RestartPolicy": _bundle_meta(bundle).get("restart", {"name": "no"}),
                "LogConfig": {
                    "Type": "json-file",
                    "Config": {
                        "max-size": str(_bundle_meta(bundle).get("log_max_size", "")),
                        "max-file": "2",
                    },
                },
                "ReadonlyRootfs": bool(spec.get("root", {}).get("readonly", False)),
                "Capabilities": list(process.get("capabilities", {}).get("bounding", [])),
                "NoNewPrivileges": bool(process.get("noNewPrivileges", False)),
                "Seccomp": "default" if "seccomp" in linux else "unconfined",
                "NetworkMode": (
                    "none"
                    if any(n.get("type") == "network" for n in linux.get("namespaces", []))
                    else "host"
                ),
            },
            "Mounts": [
                {
                    "Type": m.get("type"),
                    "Source": m.get("source"),
                    "Destination": m.get("destination"),
                    "RW": "ro" not in m.get("options", []),
                }
                for m in spec.get("mounts", [])
                if m.get("type") == "bind"
            ],
            "Ports": _inspect_ports(_bundle_ports(bundle)),
            "RestartCount": _restart_count(bundle),
            "Snapshotter": rec.snapshotter,
            "Bundle": rec.bundle,
            "LogPath": rec.log_path,
        }

    def logs(self, follow: bool = False) -> Iterator[bytes]:
        """What a detached container wrote to stdout/stderr, in the order written."""
        return self._containers.runtime.logs(self.id, follow=follow)

    def log_entries(self, follow: bool = False, tail: int | None = None) -> Iterator[LogEntry]:
        """Its output line by line, each with its stream (stdout/stderr) and time."""
        return self._containers.runtime.log_entries(self.id, follow=follow, tail=tail)

    def remove(self, force: bool = False) -> None:
        """Delete the container, its bundle and its writable snapshot (``force``: kill first)."""
        state = self._containers.runtime.state(self.id)
        if state.status in ("running", "paused") and not force:
            raise InUseError(
                f"container {self.id} is {state.status}",
                hint=f"stop it first (fastdist kill {self.id}) or use rm -f",
            )
        self._cleanup(force=force)

    def _cleanup(self, force: bool) -> None:
        c = self._containers
        rec = c.metadata.containers.get(self.id)
        snap = c.snapshotter_named(rec.snapshotter if rec is not None else None)
        with contextlib.suppress(ContainerNotFoundError):
            c.runtime.delete(self.id, force=force)
        snap.unmount(c.runtime.rootfs_dir(self.id))
        with contextlib.suppress(ContainerNotFoundError):
            c.runtime.remove(self.id)
        with contextlib.suppress(StoreError):
            snap.remove_active(self.id)
        c.metadata.containers.delete(self.id)


@dataclass(frozen=True)
class ContainerInfo:
    """A row of ``fastdist ps``."""

    id: str
    image: str
    command: tuple[str, ...]
    status: str
    exit_code: int | None
    created: float
    ports: tuple[PortMapping, ...] = ()


_ADJECTIVES = (
    "brisk",
    "calm",
    "eager",
    "fast",
    "keen",
    "lucid",
    "nimble",
    "quiet",
    "rapid",
    "steady",
    "swift",
    "tidy",
    "vivid",
    "witty",
    "bold",
    "crisp",
)
_NOUNS = (
    "otter",
    "falcon",
    "lynx",
    "heron",
    "badger",
    "marten",
    "osprey",
    "puffin",
    "raven",
    "stoat",
    "tern",
    "wren",
    "ibex",
    "kestrel",
    "lemur",
    "gecko",
)


def _bundle_meta(bundle: Path) -> dict[str, Any]:
    try:
        meta = json.loads((bundle / "fastdist.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _bundle_ports(bundle: Path) -> tuple[PortMapping, ...]:
    """The published ports recorded in the bundle (none for an unreadable record)."""
    from .ports import PortMapping

    try:
        return tuple(PortMapping(**p) for p in _bundle_meta(bundle).get("ports", []))
    except TypeError:
        return ()


def _inspect_ports(ports: Sequence[PortMapping]) -> dict[str, list[dict[str, str]]]:
    """docker's ``Ports``: ``"CONTAINER/PROTO"`` → every host binding of it."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in ports:
        out.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port)}
        )
    return out


def _restart_count(bundle: Path) -> int:
    try:
        return int((bundle / "restarts").read_text().strip())
    except (OSError, ValueError):
        return 0


def _iso(t: float) -> str:
    """A UNIX time as docker prints it in inspect (RFC 3339, UTC)."""
    import datetime

    return (
        datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    )
