"""UDP session table (idle expiry, LRU cap), reply packet bytes, and the flow registry."""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest

from tunkit.errors import LocalProtocolError
from tunkit.proxy.flows import FlowRegistry, format_status_json, format_status_text
from tunkit.proxy.udp import UdpSessionTable, build_udp_reply

A = ipaddress.IPv4Address("10.0.0.2")
B = ipaddress.IPv4Address("10.0.0.3")


def _sum16(data: bytes) -> int:
    """Independent RFC 1071 sum (not the packet layer's) to check the built packets."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_sessions_are_per_source_endpoint() -> None:
    table = UdpSessionTable()
    first = table.open(A, 5000, 0.0)
    assert first.created and first.evicted is None
    again = table.open(A, 5000, 1.0)
    assert again.session is first.session and not again.created
    other = table.open(A, 5001, 1.0)
    assert other.session is not first.session
    assert len(table) == 2 and table.created_total == 2


def test_idle_expiry_by_fake_clock() -> None:
    table = UdpSessionTable(idle_timeout=30)
    s1 = table.open(A, 1, 0.0).session
    s2 = table.open(A, 2, 10.0).session
    table.note_downstream(s1, 100, 20.0)  # s1 now due at 50
    assert table.next_deadline() == 40.0
    assert table.expire(39.9) == []
    assert table.expire(40.0) == [s2]
    assert table.expire(50.0) == [s1]
    assert table.expired == 2 and len(table) == 0 and s1.bytes_down == 100


def test_cap_evicts_least_recently_used() -> None:
    table = UdpSessionTable(max_sessions=2)
    s1 = table.open(A, 1, 0.0).session
    table.open(A, 2, 1.0)
    table.note_upstream(s1, 10, 2.0)
    opened = table.open(B, 3, 3.0)
    assert opened.created and opened.evicted is not None
    assert opened.evicted.key == (A, 2)
    assert table.get(A, 2) is None and table.get(A, 1) is s1
    assert table.evicted == 1 and len(table) == 2


def test_close_removes_session() -> None:
    table = UdpSessionTable()
    s = table.open(A, 1, 0.0).session
    table.close(s)
    assert table.get(A, 1) is None and table.expire(1e9) == []


def test_build_udp_reply_v4_bytes_and_checksums() -> None:
    remote = ipaddress.IPv4Address("93.184.216.34")
    packet = build_udp_reply(A, 5353, remote, 53, b"answer")
    assert len(packet) == 20 + 8 + 6
    assert packet[0] == 0x45 and packet[9] == 17
    assert packet[12:16] == remote.packed and packet[16:20] == A.packed
    assert struct.unpack("!H", packet[2:4])[0] == len(packet)
    assert _sum16(packet[:20]) == 0xFFFF
    sport, dport, length, _ = struct.unpack("!HHHH", packet[20:28])
    assert (sport, dport, length) == (53, 5353, 14) and packet[28:] == b"answer"
    pseudo = remote.packed + A.packed + struct.pack("!BBH", 0, 17, length)
    assert _sum16(pseudo + packet[20:]) == 0xFFFF


def test_build_udp_reply_v6() -> None:
    app = ipaddress.IPv6Address("fd00::2")
    remote = ipaddress.IPv6Address("2001:db8::53")
    packet = build_udp_reply(app, 40000, remote, 53, b"x" * 11)
    assert packet[0] >> 4 == 6 and packet[6] == 17
    assert packet[8:24] == remote.packed and packet[24:40] == app.packed
    length = struct.unpack("!H", packet[44:46])[0]
    assert length == 19
    pseudo = remote.packed + app.packed + struct.pack("!I3xB", length, 17)
    assert _sum16(pseudo + packet[40:]) == 0xFFFF


def test_build_udp_reply_rejects_mixed_versions_and_oversize() -> None:
    with pytest.raises(LocalProtocolError):
        build_udp_reply(A, 1, ipaddress.IPv6Address("::1"), 1, b"")
    with pytest.raises(LocalProtocolError):
        build_udp_reply(A, 1, B, 1, bytes(65508))


def test_flow_registry_and_formatters() -> None:
    flows = FlowRegistry()
    f1 = flows.open("tcp", "10.0.0.2:40000", "198.18.0.5:443", "example.com", "corp", 100.0)
    f2 = flows.open("udp", "10.0.0.2:5353", "8.8.8.8:53", None, "direct", 101.0)
    flows.add_bytes(f1, up=500, down=3 * 1024 * 1024)
    flows.add_bytes(f2, up=40)
    snap = flows.snapshot()
    assert [f.flow_id for f in snap] == [f1, f2]
    assert snap[0].bytes_down == 3 * 1024 * 1024
    text = format_status_text(snap, 110.0, {"nat": {"live": 1, "exhausted": 0}})
    assert "nat: live=1 exhausted=0" in text
    assert "example.com" in text and "3.0 MiB" in text and "10s" in text
    document = json.loads(format_status_json(snap, 110.0, {"pool": {"size": 3}}))
    assert document["pool"] == {"size": 3}
    assert document["flows"][1]["destination"] == "8.8.8.8:53"
    closed = flows.close(f1)
    assert closed is not None and closed.bytes_up == 500
    assert flows.close(f1) is None
    totals = flows.totals
    assert (totals.opened, totals.closed, totals.bytes_up) == (2, 1, 540)
    assert len(flows) == 1
