"""UdpTransport's zero-copy paths across a veth pair: send_packed (one buffer, GSO chunks)
and receive_into (GRO reads into a caller's buffer), v4 and v6."""

from __future__ import annotations

import os
import time

import pytest

from tunkit.io.udp import UdpTransport
from tunkit.lab import Lab

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


@pytest.fixture
def pair():
    with Lab("tkpk") as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        lab.link(a, b, "192.168.62.1/24", "192.168.62.2/24", v6=("fd62::1/64", "fd62::2/64"))
        yield lab, a, b


@pytest.mark.parametrize("server", ["192.168.62.2", "fd62::2"])
def test_send_packed_and_receive_into_round_trip(pair, server):
    _lab, a, b = pair
    with b.inside():
        receiver = UdpTransport(0)
    with a.inside():
        sender = UdpTransport(0)
    try:
        size = 1452
        datagrams = [bytes([i % 256]) * (size - 4) + i.to_bytes(4, "big") for i in range(100)]
        datagrams.append(b"short tail")
        sender.send_packed(b"".join(datagrams), size, (server, receiver.port))
        assert sender.tx_datagrams == 101
        # 65000 // 1452 = 44 datagrams per GSO send: 44 + 44 + 13
        assert sender.tx_syscalls == 3, sender.tx_syscalls
        got: list[bytes] = []
        sources = set()
        buffer = memoryview(bytearray(65535 + 64))
        deadline = time.monotonic() + 3.0
        while len(got) < len(datagrams) and time.monotonic() < deadline:
            read = receiver.receive_into(buffer)
            if read is None:
                time.sleep(0.01)
                continue
            nbytes, segment, source = read
            sources.add(source)
            step = segment or nbytes
            got += [bytes(buffer[k : min(k + step, nbytes)]) for k in range(0, nbytes, step)]
        assert got == datagrams
        client = "192.168.62.1" if "." in server else "fd62::1"
        assert sources == {(client, sender.port)}
    finally:
        sender.close()
        receiver.close()
