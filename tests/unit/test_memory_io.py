"""The in-memory fakes behave like the real devices they stand in for."""

from __future__ import annotations

import select
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunkit.errors import ConfigError, DeviceError
from tunkit.io.interfaces import DatagramSocket, LinkConfigurator, PacketDevice
from tunkit.io.memory import (
    MemoryDatagramSocket,
    MemoryNetlink,
    MemoryNetwork,
    memory_device_pair,
    memory_socket_pair,
)
from tunkit.io.netlink import Netlink, Route, Rule


def test_fakes_satisfy_the_protocols() -> None:
    a, b = memory_device_pair()
    s1, s2 = memory_socket_pair()
    assert isinstance(a, PacketDevice)
    assert isinstance(s1, DatagramSocket)
    assert isinstance(MemoryNetlink(), LinkConfigurator)
    # and the real facade has the same surface (checked on the class, no socket needed)
    for name in ("add_route", "add_rule", "move_to_netns", "list_addresses", "create_veth"):
        assert callable(getattr(Netlink, name))
    for obj in (a, b, s1, s2):
        obj.close()


def test_device_pair_delivers_packets_in_order_into_the_callers_buffer() -> None:
    a, b = memory_device_pair()
    a.write(b"\x45first")
    a.writev([b"\x45", b"sec", bytearray(b"ond")])
    buf = bytearray(100)
    n = b.read_into(buf)
    assert bytes(buf[:n]) == b"\x45first"
    n = b.read_into(memoryview(buf)[10:])
    assert bytes(buf[10 : 10 + n]) == b"\x45second"
    assert a.written == [b"\x45first", b"\x45second"]
    with pytest.raises(BlockingIOError):
        b.read_into(buf)
    b.write(b"back")
    assert a.read() == b"back"


def test_device_fileno_is_pollable() -> None:
    a, b = memory_device_pair()
    assert select.select([b.fileno()], [], [], 0)[0] == []
    a.write(b"x")
    assert select.select([b.fileno()], [], [], 0)[0] == [b.fileno()]
    b.read()
    assert select.select([b.fileno()], [], [], 0)[0] == []


def test_device_truncates_to_buffer_and_enforces_mtu() -> None:
    a, b = memory_device_pair(mtu=1500)
    a.write(bytes(range(200)))
    buf = bytearray(10)
    assert b.read_into(buf) == 10
    assert bytes(buf) == bytes(range(10))
    with pytest.raises(OSError):
        a.write(bytes(1501))


def test_blocking_read_waits_for_a_writer_thread() -> None:
    a, b = memory_device_pair()
    b.set_blocking(True)
    t = threading.Timer(0.05, lambda: a.write(b"late"))
    t.start()
    assert b.read() == b"late"
    t.join()
    b.timeout = 0.01
    with pytest.raises(TimeoutError):
        b.read()


def test_closed_device_refuses_io_and_peer_counts_drops() -> None:
    a, b = memory_device_pair()
    b.close()
    a.write(b"lost")
    assert a.dropped == 1
    with pytest.raises(OSError):
        b.read()


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
def test_device_round_trip_any_packets(packets: list[bytes]) -> None:
    a, b = memory_device_pair()
    for p in packets:
        a.write(p)
    assert [b.read() for _ in packets] == packets
    a.close()
    b.close()


def test_socket_pair_carries_datagrams_with_source_address() -> None:
    s1, s2 = memory_socket_pair()
    s1.sendto(b"hello", s2.getsockname())
    buf = bytearray(64)
    n, src = s2.recvfrom_into(buf)
    assert (bytes(buf[:n]), src) == (b"hello", ("192.0.2.1", 51820))
    s2.sendto(b"reply", src)
    assert s1.recvfrom(64) == (b"reply", ("192.0.2.2", 51820))
    s1.sendto(b"nowhere", ("203.0.113.9", 9))
    assert s1.dropped == 1
    assert s1.sent[-1] == (b"nowhere", ("203.0.113.9", 9))


def test_socket_network_ephemeral_ports_and_conflicts() -> None:
    net = MemoryNetwork()
    s1 = MemoryDatagramSocket(net, ("10.0.0.1", 0))
    s2 = MemoryDatagramSocket(net, ("10.0.0.1", 0))
    assert s1.getsockname() != s2.getsockname()
    with pytest.raises(OSError):
        MemoryDatagramSocket(net, s1.getsockname())
    s2.setblocking(False)
    with pytest.raises(BlockingIOError):
        s2.recvfrom_into(bytearray(10))
    s1.close()
    s2.sendto(b"x", s1.getsockname())
    assert s2.dropped == 1


def test_memory_netlink_records_and_models_state() -> None:
    nl = MemoryNetlink({"lo": 65536, "tun0": 1500})
    nl.set_up("tun0")
    nl.set_mtu("tun0", 1420)
    nl.add_address("tun0", "10.9.0.1/24")
    nl.add_address("tun0", "fd09::1/64", nodad=True)
    nl.add_route("10.10.0.0/16", dev="tun0", table=51820)
    nl.add_rule(fwmark=0x51820, table=51820, priority=100, invert=True)
    nl.add_rule(table=254, priority=99, suppress_prefixlength=0)
    assert nl.method_names() == [
        "set_up", "set_mtu", "add_address", "add_address", "add_route", "add_rule", "add_rule",
    ]
    assert nl.is_up("tun0") and nl.get_mtu("tun0") == 1420
    assert nl.list_addresses("tun0") == ["10.9.0.1/24", "fd09::1/64"]
    assert nl.list_routes(table=51820) == [Route("10.10.0.0/16", "tun0", None, 51820, None)]
    assert nl.list_routes() == []
    assert nl.list_rules() == [
        Rule(99, 254, None, None, 0, False, socket.AF_INET),
        Rule(100, 51820, 0x51820, 0xFFFFFFFF, None, True, socket.AF_INET),
    ]
    nl.del_rule(table=254, priority=99, suppress_prefixlength=0)
    assert len(nl.list_rules()) == 1
    nl.delete_link("tun0")
    assert not nl.link_exists("tun0")
    assert nl.list_routes(table=51820) == []


def test_memory_netlink_errors_match_the_real_facade() -> None:
    nl = MemoryNetlink()
    with pytest.raises(DeviceError, match="no such device: tun9"):
        nl.set_up("tun9")
    with pytest.raises(ConfigError, match="invalid CIDR"):
        nl.add_address("lo", "10.0.0.300/24")
    with pytest.raises(ConfigError, match="invalid CIDR"):
        nl.add_route("10.0.0.1/24", dev="lo")  # host bits set
    with pytest.raises(ConfigError):
        nl.set_mtu("lo", 10)
    nl.add_address("lo", "127.0.0.2/8")
    with pytest.raises(DeviceError, match="already exists"):
        nl.add_address("lo", "127.0.0.2/8")
    with pytest.raises(ConfigError):
        nl.add_link("x" * 16)


@given(st.text(max_size=40))
def test_cidr_validation_never_crashes(text: str) -> None:
    nl = MemoryNetlink()
    try:
        nl.add_address("lo", text)
    except ConfigError as exc:
        assert str(exc).startswith("invalid CIDR")
        assert nl.list_addresses("lo") == []
    else:
        assert len(nl.list_addresses("lo")) == 1
