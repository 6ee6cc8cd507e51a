"""virtio_net_hdr, GSO split and GRO coalesce, checked by recomputing every checksum."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import ones_complement_sum, pseudo_header_sum
from tunkit.packet.ip import (
    PROTO_TCP,
    PROTO_UDP,
    addresses,
    build_ipv4,
    build_ipv6,
    locate_l4,
    parse_ipv4,
)
from tunkit.packet.tcp import ACK, CWR, FIN, PSH, SYN, build_tcp_segment, parse_tcp
from tunkit.packet.udp import build_udp, parse_udp
from tunkit.packet.vnet import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    NO_OFFLOAD,
    NUMPY_STAMP_MIN_SEGMENTS,
    VirtioNetHdr,
    complete_checksum,
    decode_vnet_hdr,
    encode_vnet_hdr,
    gro_coalesce,
    gso_split,
    gso_split_into,
    split_size,
)

V4 = (b"\x0a\x09\x00\x01", b"\x0a\x09\x00\x07")
V6 = (bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02"))
TS_OPTS = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)


def valid(pkt: bytes) -> bool:
    version, proto, l4, end = locate_l4(pkt)
    if version == 4 and ones_complement_sum(pkt[:l4]) != 0xFFFF:
        return False
    src, dst = addresses(pkt)
    return ones_complement_sum(pkt[l4:end], pseudo_header_sum(src, dst, proto, end - l4)) == 0xFFFF


def super_packet(
    version: int, payload: bytes, *, flags: int = ACK | PSH, seq: int = 1000, opts: bytes = TS_OPTS,
    ident: int = 0x1234, partial: bool = True, mss: int = 1448,
) -> tuple[VirtioNetHdr, bytes]:
    """A super-packet as the kernel hands it over: NEEDS_CSUM, pseudo-header partial sum."""
    src, dst = V4 if version == 4 else V6
    seg = bytearray(build_tcp_segment(src, dst, 40312, 80, payload, seq=seq, ack=77, flags=flags, options=opts))
    if partial:
        struct.pack_into("!H", seg, 16, pseudo_header_sum(src, dst, PROTO_TCP, len(seg)))
    if version == 4:
        pkt, l4, gso = build_ipv4(src, dst, PROTO_TCP, seg, identification=ident), 20, GSO_TCPV4
    else:
        pkt, l4, gso = build_ipv6(src, dst, PROTO_TCP, seg), 40, GSO_TCPV6
    hdr_len = l4 + 20 + len(opts)
    return VirtioNetHdr(NEEDS_CSUM if partial else 0, gso, hdr_len, mss, l4, 16), pkt


def test_vnet_hdr_round_trip() -> None:
    raw = encode_vnet_hdr(NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 72, 1428, 40, 16)
    assert raw == bytes([1, 0x84]) + struct.pack("<HHHH", 72, 1428, 40, 16)
    hdr = decode_vnet_hdr(raw + b"rest")
    assert hdr == VirtioNetHdr(1, 0x84, 72, 1428, 40, 16)
    assert hdr.encode() == raw
    with pytest.raises(MalformedPacketError):
        decode_vnet_hdr(raw[:9])


@pytest.mark.parametrize("version", [4, 6])
def test_gso_split_64k(version: int) -> None:
    hdr_len = (20 if version == 4 else 40) + 32
    payload = bytes((i * 13 + 7) & 0xFF for i in range(65535 - hdr_len))  # a 64 KiB packet
    seq0 = 0xFFFFF000  # wraps inside the packet
    hdr, pkt = super_packet(version, payload, flags=ACK | PSH | FIN | CWR, seq=seq0, ident=0xFFFE)
    segs = gso_split(hdr, pkt)
    assert len(segs) == -(-len(payload) // 1448)
    got = b""
    for i, seg in enumerate(segs):
        assert valid(seg), f"segment {i} has a bad checksum"
        _, _, l4, end = locate_l4(seg)
        assert end == len(seg)
        tcp = parse_tcp(seg, l4)
        assert tcp.seq == (seq0 + i * 1448) & 0xFFFFFFFF
        assert tcp.ack == 77 and tcp.options == TS_OPTS
        expect = ACK
        if i == 0:
            expect |= CWR
        if i == len(segs) - 1:
            expect |= PSH | FIN
        assert tcp.flags == expect
        body = seg[l4 + tcp.header_length :]
        assert len(body) == (1448 if i < len(segs) - 1 else len(payload) - 1448 * (len(segs) - 1))
        if version == 4:
            assert parse_ipv4(seg).identification == (0xFFFE + i) & 0xFFFF
            assert parse_ipv4(seg).total_length == len(seg)
        else:
            assert struct.unpack_from("!H", seg, 4)[0] == len(seg) - 40
        got += body
    assert got == payload
    out = bytearray(split_size(hdr, pkt))
    spans = gso_split_into(hdr, pkt, out)
    assert [bytes(out[o : o + n]) for o, n in spans] == segs


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([4, 6]), st.integers(0, 9000), st.integers(1, 3000), st.booleans(), st.sampled_from([b"", TS_OPTS]), st.integers(0, 2**32 - 1))
def test_gso_split_any_sizes(version: int, size: int, mss: int, partial: bool, opts: bytes, seq: int) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(size))
    hdr, pkt = super_packet(version, payload, mss=mss, partial=partial, opts=opts, seq=seq)
    segs = gso_split(hdr, pkt)
    assert all(valid(s) for s in segs)
    hl = hdr.hdr_len
    assert b"".join(s[hl:] for s in segs) == payload
    assert [parse_tcp(s, hdr.csum_start).seq for s in segs] == [(seq + i * mss) & 0xFFFFFFFF for i in range(len(segs))]
    out = bytearray(split_size(hdr, pkt))
    assert [bytes(out[o : o + n]) for o, n in gso_split_into(hdr, pkt, out)] == segs


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("count", [2, NUMPY_STAMP_MIN_SEGMENTS + 3])
def test_gso_split_udp_l4(version: int, count: int) -> None:
    src, dst = V4 if version == 4 else V6
    size = 1200
    payload = bytes(range(256)) * (size * count // 256) + b"tail"
    dgram = bytearray(build_udp(src, dst, 5000, 6000, payload))
    struct.pack_into("!H", dgram, 6, pseudo_header_sum(src, dst, PROTO_UDP, len(dgram)))
    pkt = build_ipv4(src, dst, PROTO_UDP, dgram) if version == 4 else build_ipv6(src, dst, PROTO_UDP, dgram)
    l4 = 20 if version == 4 else 40
    segs = gso_split(VirtioNetHdr(NEEDS_CSUM, GSO_UDP_L4, l4 + 8, size, l4, 6), pkt)
    assert len(segs) == -(-len(payload) // size)
    for i, seg in enumerate(segs):
        assert valid(seg)
        udp = parse_udp(seg, l4)
        assert udp.length == len(seg) - l4
        assert seg[l4 + 8 :] == payload[i * size : (i + 1) * size]


def test_gso_none_completes_checksum() -> None:
    _hdr, pkt = super_packet(4, b"small payload")
    plain = VirtioNetHdr(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16)
    [seg] = gso_split(plain, pkt)
    assert valid(seg) and not valid(pkt)
    assert gso_split(NO_OFFLOAD, pkt) == [pkt]
    buf = bytearray(pkt)
    complete_checksum(plain, buf)
    assert bytes(buf) == seg
    with pytest.raises(MalformedPacketError):
        complete_checksum(VirtioNetHdr(NEEDS_CSUM, 0, 0, 0, len(pkt), 16), bytearray(pkt))


def test_gso_split_refuses_bad_metadata() -> None:
    _hdr, pkt = super_packet(4, bytes(5000))
    for bad in (
        VirtioNetHdr(NEEDS_CSUM, GSO_UDP, 52, 1448, 20, 16),
        VirtioNetHdr(NEEDS_CSUM, GSO_TCPV6, 52, 1448, 20, 16),
        VirtioNetHdr(NEEDS_CSUM, GSO_UDP_L4, 52, 1448, 20, 6),
        VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 52, 0, 20, 16),
        VirtioNetHdr(NEEDS_CSUM, 9, 52, 1448, 20, 16),
    ):
        with pytest.raises(MalformedPacketError):
            gso_split(bad, pkt)


@settings(max_examples=300)
@given(st.integers(0, 255), st.integers(0, 2000), st.binary(max_size=200))
def test_fuzz_gso_split(gso_type: int, mss: int, raw: bytes) -> None:
    with contextlib.suppress(MalformedPacketError):
        gso_split(VirtioNetHdr(NEEDS_CSUM, gso_type, 0, mss, 20, 16), raw)


@pytest.mark.parametrize("version", [4, 6])
def test_gro_coalesce_reconstructs_super_packet(version: int) -> None:
    payload = bytes((i * 5) & 0xFF for i in range(60000))
    hdr, pkt = super_packet(version, payload, flags=ACK | PSH, partial=True)
    segs = gso_split(hdr, pkt)
    merged = gro_coalesce(segs)
    assert len(merged) == 1
    mhdr, mpkt = merged[0]
    assert mhdr == VirtioNetHdr(NEEDS_CSUM, hdr.gso_type, hdr.hdr_len, 1448, hdr.csum_start, 16)
    assert mpkt == pkt  # same header (partial sum included) and payload
    assert gso_split(mhdr, mpkt) == segs


def _segments(version: int, count: int, *, seq: int = 1, size: int = 1000, flags: int = ACK, port: int = 80) -> list[bytes]:
    src, dst = V4 if version == 4 else V6
    build = build_ipv4 if version == 4 else build_ipv6
    out = []
    for i in range(count):
        body = bytes([i & 0xFF]) * size
        out.append(build(src, dst, PROTO_TCP, build_tcp_segment(src, dst, 4000, port, body, seq=seq + i * size, flags=flags)))
    return out


def test_gro_passes_through_what_it_must_not_merge() -> None:
    syn = _segments(4, 1, size=0, flags=SYN)
    a = _segments(4, 3)
    other_flow = _segments(4, 2, port=443)
    gap = _segments(4, 2, seq=1 + 3000 + 500)  # not contiguous with a
    fin = _segments(4, 1, seq=1 + 3000, flags=ACK | FIN)
    result = gro_coalesce(syn + a + other_flow + gap + fin)
    kinds = [(h.gso_type, len(p)) for h, p in result]
    assert kinds == [
        (GSO_NONE, len(syn[0])),
        (GSO_TCPV4, 40 + 3000),
        (GSO_TCPV4, 40 + 2000),
        (GSO_TCPV4, 40 + 2000),
        (GSO_NONE, len(fin[0])),
    ]
    for h, p in result:
        if h.gso_type == GSO_NONE:
            assert valid(p)
        else:
            assert all(valid(s) for s in gso_split(h, p))


def test_gro_respects_size_rules_and_cap() -> None:
    short_then_full = _segments(4, 1, size=500) + _segments(4, 2, seq=501)
    result = gro_coalesce(short_then_full)
    assert [h.gso_type for h, _ in result] == [GSO_NONE, GSO_TCPV4]
    many = _segments(6, 70, size=1400)
    result = gro_coalesce(many)
    assert all(len(p) <= 65535 for _, p in result)
    assert sum(len(p) - 60 for _, p in result) == 70 * 1400
    assert len(result) == 2


def test_gro_udp_only_when_asked() -> None:
    src, dst = V4
    dgrams = [
        build_ipv4(src, dst, PROTO_UDP, build_udp(src, dst, 1, 2, bytes([i]) * 800), identification=i) for i in range(4)
    ]
    assert all(h.gso_type == GSO_NONE for h, _ in gro_coalesce(dgrams))
    [(hdr, pkt)] = gro_coalesce(dgrams, coalesce_udp=True)
    assert (hdr.gso_type, hdr.gso_size, hdr.csum_offset) == (GSO_UDP_L4, 800, 6)
    assert gso_split(hdr, pkt) == [bytes(d) for d in dgrams]


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_fuzz_gro(packets: list[bytes]) -> None:
    result = gro_coalesce(packets, coalesce_udp=True)
    assert sum(1 for h, _ in result if h.gso_type == GSO_NONE) <= len(packets)


def test_gro_cwr_only_on_first_segment() -> None:
    cwr = _segments(4, 4, flags=ACK | CWR)
    plain = _segments(4, 4)
    merged = gro_coalesce([cwr[0], plain[1], cwr[2], plain[3]])  # CWR opens a group, never joins
    assert [(h.gso_type, len(p)) for h, p in merged] == [(GSO_TCPV4, 2040), (GSO_TCPV4, 2040)]
    assert all(p[33] & CWR for _, p in merged)
    assert [s[20:] for s in gso_split(*merged[1])] == [cwr[2][20:], plain[3][20:]]  # ids differ
