"""Published ports: docker's -p syntax, ports in use, the udp relay's bounds (ports.py)."""

from __future__ import annotations

import os
import re
import socket

import pytest

from fastdist.errors import (
    ContainerRunError,
    InvalidRunOptionError,
)
from fastdist.ports import PortForwarder, PortMapping, _UdpClients, check_ports, parse_publish


# --- publish, restart, signals ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "mapping"),
    [
        ("8080:80", PortMapping("0.0.0.0", 8080, 80)),
        ("127.0.0.1:6379:6379/tcp", PortMapping("127.0.0.1", 6379, 6379)),
        ("[::1]:8443:443", PortMapping("::1", 8443, 443)),
        ("5353:53/udp", PortMapping("0.0.0.0", 5353, 53, "udp")),
        ("127.0.0.1:5353:53/UDP", PortMapping("127.0.0.1", 5353, 53, "udp")),
        ("[::1]:5353:53/udp", PortMapping("::1", 5353, 53, "udp")),
    ],
)
def test_publish_follows_docker_syntax(text: str, mapping: PortMapping) -> None:
    assert parse_publish(text) == mapping


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("99999:80", "port 99999 is not in 1-65535"),
        ("99999:80/udp", "port 99999 is not in 1-65535"),
        ("0:80", "port 0 is not in 1-65535"),
        ("80", "expected [IP:]HOST:CONTAINER"),
        ("a:b", "expected [IP:]HOST:CONTAINER"),
        ("1.2.3:80:80", "is not an IP address"),
        ("8080:80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("8080:80/", "protocol '' is not tcp or udp"),
        ("8080:80/udp/tcp", "protocol 'udp/tcp' is not tcp or udp"),
        ("", "expected [IP:]HOST:CONTAINER"),
    ],
)
def test_bad_publish_specs_are_usage_errors(bad: str, why: str) -> None:
    with pytest.raises(InvalidRunOptionError, match="invalid --publish") as e:
        parse_publish(bad)
    assert why in e.value.message
    assert e.value.hint


def test_published_ports_print_as_docker_ps_does() -> None:
    assert str(PortMapping("127.0.0.1", 8080, 80)) == "127.0.0.1:8080->80/tcp"
    assert str(PortMapping("::1", 5353, 53, "udp")) == "[::1]:5353->53/udp"


def test_check_ports_names_a_udp_port_in_use_and_keeps_tcp_and_udp_apart() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ContainerRunError, match=re.escape(f"port 127.0.0.1:{port}/udp: ")) as e:
            check_ports([PortMapping("127.0.0.1", port, 53, "udp")])
        assert e.value.hint
    with pytest.raises(
        InvalidRunOptionError, match=re.escape("127.0.0.1:1/udp is published twice")
    ):
        check_ports(
            [PortMapping("127.0.0.1", 1, 53, "udp"), PortMapping("127.0.0.1", 1, 54, "udp")]
        )
    # the same number over tcp and udp are two ports (docker publishes 53/tcp and 53/udp apart)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
    check_ports(
        [PortMapping("127.0.0.1", port, 53, "tcp"), PortMapping("127.0.0.1", port, 53, "udp")]
    )


def test_udp_clients_evict_the_least_recently_used_past_the_bound_and_expire_idle_ones() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        clients = _UdpClients(idle=90.0, max_clients=2)
        assert clients.next_expiry(0.0) is None
        assert clients.add(("10.0.0.1", 1), socks[0], 0.0) is None
        assert clients.add(("10.0.0.2", 2), socks[1], 1.0) is None
        assert clients.get(("10.0.0.1", 1), 2.0) is socks[0]  # now the most recently used
        assert clients.add(("10.0.0.3", 3), socks[2], 3.0) is socks[1]  # .2 was the oldest
        assert clients.get(("10.0.0.2", 2), 3.0) is None
        assert len(clients) == 2
        assert clients.touch(socks[2], 50.0) == ("10.0.0.3", 3)  # a reply keeps it alive
        assert clients.touch(socks[1], 50.0) is None  # an evicted socket maps to nobody
        assert clients.next_expiry(60.0) == pytest.approx(32.0)  # .1, last used at 2.0
        assert clients.expire(91.0) == []  # 89 s idle: kept
        assert clients.expire(92.0) == [socks[0]]
        assert clients.expire(139.0) == []
        assert clients.expire(140.0) == [socks[2]]
        assert len(clients) == 0
        assert clients.sockets() == []
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs CAP_SYS_ADMIN")
def test_udp_forwarder_relays_each_client_through_its_own_bounded_mapping() -> None:
    # The forwarder enters this process's own network namespace (setns needs root even so),
    # where a udp "container" server answers each datagram with the port it came from.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(30)
        mapping = PortMapping("127.0.0.1", 0, server.getsockname()[1], "udp")
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host.bind(("127.0.0.1", 0))
        host_port = host.getsockname()[1]
        forwarder = PortForwarder([(mapping, host)], udp_max_clients=2)
        forwarder.enter(os.getpid())
        forwarder.start()
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]

        def round_trip(c: socket.socket) -> int:
            """The container-side port ``c``'s datagram came from; checks the reply."""
            c.sendto(b"ping", ("127.0.0.1", host_port))
            data, peer = server.recvfrom(100)
            assert data == b"ping"
            server.sendto(str(peer[1]).encode(), peer)
            assert c.recv(100) == str(peer[1]).encode()  # the reply found its client
            return int(peer[1])

        try:
            for c in clients:
                c.settimeout(30)
            first = [round_trip(c) for c in clients[:2]]
            assert first[0] != first[1]  # one container-side socket per client
            assert round_trip(clients[0]) == first[0]  # kept while in use; now .1 is newest
            third = round_trip(clients[2])  # past the bound: client 1, least recently used, goes
            assert third not in first
            assert round_trip(clients[0]) == first[0]  # client 0 kept its mapping
            assert round_trip(clients[1]) not in first  # client 1 got a new one
        finally:
            forwarder.close()
            for c in clients:
                c.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", host_port))  # close() released the host port
