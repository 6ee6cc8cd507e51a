"""tcp_split_into lays out exactly what gso_split produces, at any stride; plan_tcp_split
refuses what it cannot split and never crashes on hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_packet_vnet import TS_OPTS, super_packet

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import internet_checksum
from tunkit.packet.tcpsplit import plan_tcp_split, tcp_split_into
from tunkit.packet.vnet import GSO_NONE, GSO_TCPV4, GSO_UDP_L4, gso_split

FLAGS = [0x10, 0x18, 0x19, 0x90, 0x98, 0xD9]  # ACK with PSH, FIN, CWR, ECE mixes


def rows_of(version: int, payload: bytes, mss: int, opts: bytes, flags: int, extra: int,
            ident: int = 0x1234, seq: int = 1000) -> tuple[list[bytes], list[bytes]]:
    hdr, packet = super_packet(version, payload, mss=mss, opts=opts, flags=flags, ident=ident,
                               seq=seq)
    split = plan_tcp_split(hdr.gso_type, hdr.gso_size, packet)
    assert split is not None
    stride = split.min_stride() + 4 * extra
    out = bytearray(b"\xee" * (split.count * stride))  # stale bytes must not leak
    tcp_split_into(split, packet, out, stride)
    got = []
    for i in range(split.count):
        size = split.full_size if i < split.count - 1 else split.last_size
        got.append(bytes(out[i * stride : i * stride + size]))
        assert not any(out[i * stride + size : (i + 1) * stride])  # zero padding
    return got, gso_split(hdr, packet)


@settings(max_examples=150, deadline=None)
@given(version=st.sampled_from([4, 6]), size=st.integers(0, 9000), mss=st.integers(1, 3000),
       opts=st.sampled_from([b"", TS_OPTS]), flags=st.sampled_from(FLAGS),
       extra=st.integers(0, 5), ident=st.integers(0, 0xFFFF),
       seq=st.integers(0, 0xFFFFFFFF))
def test_matches_gso_split(version: int, size: int, mss: int, opts: bytes, flags: int,
                           extra: int, ident: int, seq: int) -> None:
    payload = bytes((i * 13 + 5) & 0xFF for i in range(size))
    got, expected = rows_of(version, payload, mss, opts, flags, extra, ident, seq)
    assert got == expected


@pytest.mark.parametrize("version", [4, 6])
def test_64k_super_packet_has_valid_checksums(version: int) -> None:
    l4 = 20 if version == 4 else 40
    payload = bytes((i * 7) & 0xFF for i in range(65535 - l4 - 32))
    got, expected = rows_of(version, payload, 1368, TS_OPTS, 0x18, 0)
    assert got == expected and len(got) == 48
    for seg in got:
        if version == 4:
            assert internet_checksum(seg[:20]) == 0


def test_not_tcp_gso_is_refused_or_left_to_the_slow_path() -> None:
    hdr, packet = super_packet(4, b"x" * 3000, mss=1000)
    assert plan_tcp_split(GSO_NONE, 1000, packet) is None
    with pytest.raises(MalformedPacketError):
        plan_tcp_split(4, 1000, packet)  # TCPV6 on an IPv4 packet
    assert plan_tcp_split(GSO_UDP_L4, 1000, packet) is None
    with pytest.raises(MalformedPacketError):
        plan_tcp_split(GSO_TCPV4, 0, packet)
    split = plan_tcp_split(hdr.gso_type, hdr.gso_size, packet)
    assert split is not None
    with pytest.raises(ValueError):
        tcp_split_into(split, packet, bytearray(10), split.min_stride())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), gso=st.sampled_from([1, 4, 5, 0x81]),
       mss=st.integers(0, 2000))
def test_hostile_input_raises_our_error_or_plans(data: bytes, gso: int, mss: int) -> None:
    try:
        split = plan_tcp_split(gso, mss, data)
    except MalformedPacketError:
        return
    if split is not None:
        out = bytearray(split.count * split.min_stride())
        tcp_split_into(split, data, out, split.min_stride())
