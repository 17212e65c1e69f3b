"""Published ports (``-p``): parsing, binding on the host, relaying into the container's netns.

A tcp connection or udp datagram to ``host_ip:host_port`` is relayed to
``127.0.0.1:container_port`` by a thread that entered only the container's network namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import (
    ContainerRunError,
    InvalidRunOptionError,
)

log = logging.getLogger(__name__)


PUBLISH_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortMapping:
    """``-p [IP:]HOST:CONTAINER[/tcp|udp]``: connections (tcp) or datagrams (udp) to
    ``host_ip:host_port`` on the host are relayed to ``127.0.0.1:container_port`` inside the
    container's network namespace."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        """docker's ``ps`` form: ``127.0.0.1:8080->80/tcp``."""
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.container_port}/{self.protocol}"


def parse_publish(text: str) -> PortMapping:
    """docker's ``-p/--publish [IP:]HOST:CONTAINER[/tcp|udp]`` (IPv6 addresses in brackets;
    the protocol defaults to tcp)."""
    import ipaddress

    spec, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:.]+\]|[0-9.]+):)?([0-9]{1,5}):([0-9]{1,5})", spec)
    if m is None:
        raise InvalidRunOptionError(
            f"invalid --publish {text[:80]!r}: expected [IP:]HOST:CONTAINER[/tcp|udp]",
            hint="e.g. -p 8080:80, -p 127.0.0.1:6379:6379 or -p 5353:53/udp",
        )
    if proto not in PUBLISH_PROTOCOLS:
        raise InvalidRunOptionError(
            f"invalid --publish {text[:80]!r}: protocol {proto[:20]!r} is not tcp or udp",
            hint="end the mapping with /tcp (the default) or /udp, e.g. -p 5353:53/udp",
        )
    ip = (m.group(1) or "0.0.0.0").strip("[]")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidRunOptionError(
            f"invalid --publish {text[:80]!r}: {ip!r} is not an IP address",
            hint="e.g. -p 127.0.0.1:8080:80",
        ) from None
    host, container = int(m.group(2)), int(m.group(3))
    for port in (host, container):
        if not 1 <= port <= 65535:
            raise InvalidRunOptionError(
                f"invalid --publish {text[:80]!r}: port {port} is not in 1-65535",
                hint="e.g. -p 8080:80",
            )
    return PortMapping(ip, host, container, proto)


def listen(mapping: PortMapping) -> socket.socket:
    """The host's socket for a published port (listening for tcp, bound for udp); a port in
    use is named with its protocol."""
    family = socket.AF_INET6 if ":" in mapping.host_ip else socket.AF_INET
    udp = mapping.protocol == "udp"
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if not udp:
            # Not for udp: there SO_REUSEADDR lets two sockets share a port, so one in use by
            # another SO_REUSEADDR holder would not be refused.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((mapping.host_ip, mapping.host_port))
        if not udp:
            sock.listen(128)
    except OSError as e:
        sock.close()
        raise ContainerRunError(
            f"cannot publish port {mapping.host_ip}:{mapping.host_port}/{mapping.protocol}: "
            f"{e.strerror or e}",
            hint="the port is in use or not allowed: pick another host port with -p",
        ) from None
    return sock


def check_ports(ports: Sequence[PortMapping]) -> None:
    """Refuse duplicate host ports and ports already in use, before anything is created
    (tcp and udp are separate port spaces, as for docker)."""
    seen: set[tuple[str, int, str]] = set()
    for p in ports:
        key = (p.host_ip, p.host_port, p.protocol)
        if key in seen:
            raise InvalidRunOptionError(
                f"host port {p.host_ip}:{p.host_port}/{p.protocol} is published twice",
                hint="give each -p its own host port",
            )
        seen.add(key)
    for p in ports:
        listen(p).close()


UDP_IDLE_SECONDS = 90.0  # a client mapping unused this long is dropped (docker's proxy: 90 s)


UDP_MAX_CLIENTS = 256  # client mappings (an fd each) per published udp port; past it, the least


# recently used one is dropped
_UDP_MAX_DATAGRAM = 65535


class PortForwarder:
    """Relays a published port into the container's network namespace: for tcp each accepted
    connection, for udp each client's datagrams. The container side is a socket created by a
    thread that entered only the container's network namespace (``setns`` on its own thread),
    so no bridge, veth or NAT is needed and ``--net none`` keeps its loopback-only namespace."""

    def __init__(
        self,
        listeners: list[tuple[PortMapping, socket.socket]],
        pid_file: Path | None = None,
        *,
        udp_idle: float = UDP_IDLE_SECONDS,
        udp_max_clients: int = UDP_MAX_CLIENTS,
    ) -> None:
        """``pid_file``: where runc writes the init's pid (foreground runs), read at the first
        connection when :meth:`enter` was not called."""
        import threading

        self._netns = -1
        self._lock = threading.Lock()
        self._listeners = listeners
        self._pid_file = pid_file
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._udp_idle = udp_idle
        self._udp_max_clients = udp_max_clients
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)  # wakes the udp relays on close
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        for mapping, sock in self._listeners:
            if mapping.protocol == "tcp":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        for t in self._threads:
            if t.name == "publish-udp":
                t.join()  # it closes its client sockets; then the host port is free again
        for _, sock in self._listeners:
            sock.close()
        with self._lock:
            old, self._netns = self._netns, -1
        if old >= 0:
            os.close(old)
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _netns_fd(self) -> int:
        """A duplicate of the current network namespace fd (-1: none yet)."""
        with self._lock:
            if self._netns < 0 and self._pid_file is not None:
                with contextlib.suppress(OSError, ValueError):
                    pid = int(self._pid_file.read_text().strip())
                    self._netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            return os.dup(self._netns) if self._netns >= 0 else -1

    def enter(self, pid: int) -> None:
        """Relay into the network namespace of ``pid`` (a container's init, also a restarted
        one) from now on."""
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        with self._lock:
            old, self._netns = self._netns, fd
        if old >= 0:
            os.close(old)

    def start(self) -> None:
        import threading

        self._threads = [
            threading.Thread(
                target=self._accept if mapping.protocol == "tcp" else self._udp,
                args=(mapping, sock),
                name=f"publish-{mapping.protocol}",
                daemon=True,
            )
            for mapping, sock in self._listeners
        ]
        for t in self._threads:
            t.start()

    def _enter_netns(self) -> bool:
        """Move the calling thread (only) into the container's network namespace."""
        netns = self._netns_fd()  # a restart replaces self._netns meanwhile
        if netns < 0:
            return False  # the container is not up yet
        try:
            entered = self._libc.setns(netns, _CLONE_NEWNET) == 0
        finally:
            os.close(netns)
        if not entered:
            log.warning("publish: setns: errno %d", ctypes.get_errno())
        return bool(entered)

    def _accept(self, mapping: PortMapping, sock: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(
                target=self._relay, args=(mapping, client), name="relay", daemon=True
            ).start()

    def _relay(self, mapping: PortMapping, client: socket.socket) -> None:
        import threading

        with client:
            if not self._enter_netns():
                return  # the client sees the connection close
            try:
                upstream = socket.create_connection(("127.0.0.1", mapping.container_port), 10)
            except OSError as e:
                log.info("publish: port %d in the container: %s", mapping.container_port, e)
                return
            with upstream:
                upstream.settimeout(None)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()

    def _udp_socket(self, mapping: PortMapping) -> socket.socket | None:
        """A udp socket of the container's network namespace connected to
        ``127.0.0.1:PORT`` (connected: only the container's replies from that port arrive);
        made on a short-lived thread so the relay's own thread stays in the host's namespace."""
        import threading

        made: list[socket.socket] = []

        def make() -> None:
            if not self._enter_netns():
                return
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as e:  # EMFILE: out of fds, the datagram is dropped
                log.warning("publish: udp socket in the container: %s", e)
                return
            try:
                s.connect(("127.0.0.1", mapping.container_port))
            except OSError as e:
                s.close()
                log.info("publish: udp port %d in the container: %s", mapping.container_port, e)
                return
            s.setblocking(False)
            made.append(s)

        t = threading.Thread(target=make, name="publish-netns", daemon=True)
        t.start()
        t.join()
        return made[0] if made else None

    def _udp(self, mapping: PortMapping, host: socket.socket) -> None:
        """One published udp port: each client address gets its own socket in the container
        (so replies find their client); a mapping idle for ``udp_idle`` seconds is dropped, and
        past ``udp_max_clients`` the least recently used one is."""
        clients = _UdpClients(self._udp_idle, self._udp_max_clients)
        host.setblocking(False)
        try:
            while True:
                expiry = clients.next_expiry(time.monotonic())
                poller = select.poll()  # not select(): more than 1024 fds are possible here
                upstreams = {s.fileno(): s for s in clients.sockets()}
                for fd in (self._stop_r, host.fileno(), *upstreams):
                    poller.register(fd, select.POLLIN)
                ready = [fd for fd, _ in poller.poll(None if expiry is None else expiry * 1000)]
                if self._stop_r in ready:
                    return
                now = time.monotonic()
                for fd in ready:
                    if fd == host.fileno():
                        self._udp_from_client(mapping, host, clients, now)
                    elif fd in upstreams:
                        self._udp_from_container(host, clients, upstreams[fd], now)
                for s in clients.expire(now):
                    s.close()
        finally:
            for s in clients.close_all():
                s.close()

    def _udp_from_client(
        self, mapping: PortMapping, host: socket.socket, clients: _UdpClients, now: float
    ) -> None:
        try:
            data, addr = host.recvfrom(_UDP_MAX_DATAGRAM)
        except OSError:
            return  # e.g. an ICMP error of an earlier reply: nothing to relay
        upstream = clients.get(addr, now)
        if upstream is None:
            upstream = self._udp_socket(mapping)
            if upstream is None:
                return  # the container is not up (yet): udp drops the datagram
            evicted = clients.add(addr, upstream, now)
            if evicted is not None:
                evicted.close()
        with contextlib.suppress(OSError):  # nobody listens in the container (yet): dropped
            upstream.send(data)

    def _udp_from_container(
        self, host: socket.socket, clients: _UdpClients, upstream: socket.socket, now: float
    ) -> None:
        try:
            data = upstream.recv(_UDP_MAX_DATAGRAM)
        except OSError:
            return  # ECONNREFUSED: nothing listens on the port in the container
        addr = clients.touch(upstream, now)
        if addr is not None:
            with contextlib.suppress(OSError):
                host.sendto(data, addr)


class _UdpClients:
    """The client address → container-side socket table of one published udp port, in least
    recently used order, bounded in size and in idle time."""

    def __init__(self, idle: float, max_clients: int) -> None:
        import collections

        self._idle = idle
        self._max = max(1, max_clients)
        self._by_addr: collections.OrderedDict[Any, tuple[socket.socket, float]] = (
            collections.OrderedDict()
        )
        self._addr_of: dict[socket.socket, Any] = {}

    def __len__(self) -> int:
        return len(self._by_addr)

    def sockets(self) -> list[socket.socket]:
        return list(self._addr_of)

    def get(self, addr: Any, now: float) -> socket.socket | None:
        entry = self._by_addr.get(addr)
        if entry is None:
            return None
        self._by_addr[addr] = (entry[0], now)
        self._by_addr.move_to_end(addr)
        return entry[0]

    def touch(self, sock: socket.socket, now: float) -> Any:
        """A reply came through ``sock``: its client address (None: gone meanwhile)."""
        addr = self._addr_of.get(sock)
        if addr is not None:
            self.get(addr, now)
        return addr

    def add(self, addr: Any, sock: socket.socket, now: float) -> socket.socket | None:
        """Map ``addr`` to ``sock``; the socket evicted to stay within the bound, if any."""
        evicted = None
        if len(self._by_addr) >= self._max:
            _, (evicted, _) = self._by_addr.popitem(last=False)
            del self._addr_of[evicted]
        self._by_addr[addr] = (sock, now)
        self._addr_of[sock] = addr
        return evicted

    def expire(self, now: float) -> list[socket.socket]:
        """Drop the mappings idle for longer than the idle time; their sockets."""
        gone = []
        while self._by_addr:
            addr, (sock, last) = next(iter(self._by_addr.items()))
            if now - last < self._idle:
                break
            del self._by_addr[addr]
            del self._addr_of[sock]
            gone.append(sock)
        return gone

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the oldest mapping expires (None: no mapping, wait for a client)."""
        if not self._by_addr:
            return None
        _, last = next(iter(self._by_addr.values()))
        return max(0.0, last + self._idle - now)

    def close_all(self) -> list[socket.socket]:
        socks = list(self._addr_of)
        self._by_addr.clear()
        self._addr_of.clear()
        return socks


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF, then half-close, so each direction ends on its own."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


_CLONE_NEWNET = 0x40000000
