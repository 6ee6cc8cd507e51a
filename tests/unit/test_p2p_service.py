"""The p2p service over in-memory devices (SOCK_SEQPACKET pairs) and loopback TCP: no root."""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunkit.p2p.negotiation import Mode
from tunkit.services.certs import generate_certs
from tunkit.services.p2p import P2PConfig, P2PService, TlsFiles

VNET0 = bytes(10)


@dataclass
class FakeDevice:
    """One end of a seqpacket pair behaves like a TUN fd; the test holds the 'kernel' end."""

    name: str
    fd: int
    kernel: socket.socket

    def fileno(self) -> int:
        return self.fd

    def read_into(self, buf: bytearray | memoryview) -> int:
        return os.readv(self.fd, [buf])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return os.write(self.fd, data)

    def writev(self, parts: list[bytes | bytearray | memoryview]) -> int:  # type: ignore[override]
        return os.writev(self.fd, parts)


def fake_device(name: str) -> FakeDevice:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = a.detach()
    b.settimeout(5)
    return FakeDevice(name, fd, b)


class Running:
    def __init__(self, service: P2PService) -> None:
        self.service = service
        self.thread = threading.Thread(target=service.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.service.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FakeDevice, FakeDevice, Running, Running]]:
    server_mode, client_mode, tls = request.param
    files: tuple[TlsFiles, TlsFiles] | None = None
    if tls:
        p = generate_certs(tmp_path)
        files = (TlsFiles(str(p["server.pem"]), str(p["server.key"]), str(p["ca.pem"])),
                 TlsFiles(str(p["client.pem"]), str(p["client.key"]), str(p["ca.pem"])))
    dev_s, dev_c = fake_device("s0"), fake_device("c0")
    srv = P2PService(P2PConfig(server=True, port=0, bind="127.0.0.1", mode=server_mode,
                               tls=files[0] if files else None, stats_interval=0), dev_s)
    rs = Running(srv)
    assert srv.ready.wait(5)
    cli = P2PService(P2PConfig(server=False, host="127.0.0.1", port=srv.bound_port or 0,
                               mode=client_mode, tls=files[1] if files else None,
                               stats_interval=0), dev_c)
    rc = Running(cli)
    yield dev_s, dev_c, rs, rc
    rc.close()
    rs.close()
    for d in (dev_s, dev_c):
        os.close(d.fd)
        d.kernel.close()


def _packet(i: int, size: int) -> bytes:
    body = bytes((i * 7 + k) & 0xFF for k in range(size - 1))
    return b"\x45" + body


@pytest.mark.parametrize(
    "pair",
    [(Mode.COMPAT, Mode.COMPAT, False), (Mode.AUTO, Mode.AUTO, False),
     (Mode.AUTO, Mode.COMPAT, False), (Mode.FAST, Mode.FAST, False), (Mode.AUTO, Mode.AUTO, True)],
    indirect=True, ids=["compat", "auto-fast", "auto-server-compat-client", "fast", "tls"],
)
def test_packets_cross_both_ways(pair: tuple[FakeDevice, FakeDevice, Running, Running]) -> None:
    dev_s, dev_c, rs, _rc = pair
    # client -> server first (a simpletun-style client may speak first)
    for i in range(50):
        dev_c.kernel.send(VNET0 + _packet(i, 60 + i * 20))
    got = [dev_s.kernel.recv(70000) for _ in range(50)]
    assert got == [VNET0 + _packet(i, 60 + i * 20) for i in range(50)]
    for i in range(50):
        dev_s.kernel.send(VNET0 + _packet(i, 1500))
    got = [dev_c.kernel.recv(70000) for _ in range(50)]
    assert got == [VNET0 + _packet(i, 1500) for i in range(50)]
    assert rs.service.counters.rx_packets == 50 and rs.service.counters.tx_packets == 50


@pytest.mark.parametrize("pair", [(Mode.FAST, Mode.FAST, False)], indirect=True, ids=["fast"])
def test_fast_mode_carries_64k_super_packets(pair: tuple[FakeDevice, FakeDevice, Running, Running]) -> None:
    dev_s, dev_c, _, _ = pair
    hdr = struct.pack("<BBHHHH", 1, 1, 52, 1448, 20, 16)
    big = _packet(3, 65000)
    dev_c.kernel.send(hdr + big)
    assert dev_s.kernel.recv(70000) == hdr + big


def test_simpletun_peer_bytes_exact_against_compat_server() -> None:
    dev = fake_device("s0")
    srv = P2PService(P2PConfig(server=True, port=0, bind="127.0.0.1", mode=Mode.AUTO,
                               stats_interval=0), dev)
    run = Running(srv)
    try:
        assert srv.ready.wait(5)
        peer = socket.create_connection(("127.0.0.1", srv.bound_port or 0), timeout=5)
        pkt = _packet(1, 84)
        peer.sendall(struct.pack("!H", len(pkt)) + pkt)
        assert dev.kernel.recv(2000) == VNET0 + pkt
        dev.kernel.send(VNET0 + _packet(2, 100))
        assert peer.recv(2, socket.MSG_WAITALL) == b"\x00\x64"
        assert peer.recv(100, socket.MSG_WAITALL) == _packet(2, 100)
        # a bad length closes this connection; the server keeps listening
        peer.sendall(b"\xff\xff" + b"x" * 10)
        assert peer.recv(10) == b""
        peer.close()
        again = socket.create_connection(("127.0.0.1", srv.bound_port or 0), timeout=5)
        again.sendall(struct.pack("!H", len(pkt)) + pkt)
        assert dev.kernel.recv(2000) == VNET0 + pkt
        again.close()
    finally:
        run.close()
        os.close(dev.fd)
        dev.kernel.close()


def test_udp_server_learns_and_follows_the_client_address() -> None:
    dev = fake_device("s0")
    srv = P2PService(P2PConfig(server=True, port=0, bind="127.0.0.1", udp=True, stats_interval=0),
                     dev)
    run = Running(srv)
    try:
        assert srv.ready.wait(5)
        port = srv.bound_port or 0
        first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        first.settimeout(5)
        first.sendto(_packet(1, 100), ("127.0.0.1", port))
        assert dev.kernel.recv(2000) == VNET0 + _packet(1, 100)
        dev.kernel.send(VNET0 + _packet(2, 200))
        assert first.recv(2000) == _packet(2, 200)
        second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the client moved
        second.settimeout(5)
        second.sendto(b"", ("127.0.0.1", port))  # keepalive: address only, nothing written
        second.sendto(_packet(3, 300), ("127.0.0.1", port))
        assert dev.kernel.recv(2000) == VNET0 + _packet(3, 300)
        dev.kernel.send(VNET0 + _packet(4, 400))
        assert second.recv(2000) == _packet(4, 400)
        first.sendto(b"x" * 1600, ("127.0.0.1", port))  # over the MTU: dropped, not written
        first.sendto(_packet(5, 50), ("127.0.0.1", port))
        assert dev.kernel.recv(2000) == VNET0 + _packet(5, 50)
        assert srv.counters.rx_packets == 3 and srv.counters.dropped >= 1
        first.close()
        second.close()
    finally:
        run.close()
        os.close(dev.fd)
        dev.kernel.close()


def test_client_backoff_is_exponential_and_capped(caplog: pytest.LogCaptureFixture) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every connect is refused at once
    dev = fake_device("c0")
    cli = P2PService(P2PConfig(server=False, host="127.0.0.1", port=port, stats_interval=0,
                               backoff_initial=0.05, backoff_max=0.2), dev)
    caplog.set_level("INFO", logger="tunkit.p2p")
    run = Running(cli)
    deadline = time.monotonic() + 10
    while len(re.findall(r"retrying in", caplog.text)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    run.close()
    os.close(dev.fd)
    dev.kernel.close()
    delays = [float(m) for m in re.findall(r"retrying in ([\d.]+)s", caplog.text)]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]


def test_compat_backpressure_never_blocks_the_other_direction() -> None:
    """A peer that stops reading fills our socket: the device is then left unread, yet frames
    from the peer still reach the device, and afterwards every queued packet arrives intact."""
    dev = fake_device("s0")
    srv = P2PService(P2PConfig(server=True, port=0, bind="127.0.0.1", mode=Mode.COMPAT,
                               stats_interval=0), dev)
    run = Running(srv)
    peer = socket.socket()
    try:
        assert srv.ready.wait(5)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        peer.connect(("127.0.0.1", srv.bound_port or 0))
        peer.settimeout(20)
        dev.kernel.settimeout(0.02)
        sent: list[bytes] = []
        misses = 0
        while misses < 25 and len(sent) < 20000:
            pkt = _packet(len(sent), 1400)
            try:
                dev.kernel.send(VNET0 + pkt)
            except TimeoutError:
                misses += 1
                continue
            misses = 0
            sent.append(pkt)
        assert misses == 25, "the service never stopped reading the device"
        dev.kernel.settimeout(20)
        inbound = _packet(99, 300)
        peer.sendall(struct.pack("!H", len(inbound)) + inbound)
        assert dev.kernel.recv(2000) == VNET0 + inbound
        got: list[bytes] = []
        while len(got) < len(sent):
            (length,) = struct.unpack("!H", peer.recv(2, socket.MSG_WAITALL))
            got.append(peer.recv(length, socket.MSG_WAITALL))
        assert got == sent
        assert srv.counters.tx_packets == len(sent) and srv.counters.rx_packets == 1
    finally:
        peer.close()
        run.close()
        os.close(dev.fd)
        dev.kernel.close()


def test_frames_that_arrive_with_the_negotiation_are_not_held_back() -> None:
    """Several simpletun frames in the peer's very first write all reach the device at once,
    without waiting for more bytes from the peer."""
    dev = fake_device("s0")
    srv = P2PService(P2PConfig(server=True, port=0, bind="127.0.0.1", mode=Mode.AUTO,
                               stats_interval=0), dev)
    run = Running(srv)
    try:
        assert srv.ready.wait(5)
        peer = socket.create_connection(("127.0.0.1", srv.bound_port or 0), timeout=5)
        pkts = [_packet(i, 60 + 40 * i) for i in range(4)]
        peer.sendall(b"".join(struct.pack("!H", len(p)) + p for p in pkts))
        assert [dev.kernel.recv(2000) for _ in pkts] == [VNET0 + p for p in pkts]
        peer.close()
    finally:
        run.close()
        os.close(dev.fd)
        dev.kernel.close()
