"""NAT rewrite: every checksum stays valid (checked by recomputing), in full and partial mode."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import ones_complement_sum, pseudo_header_sum
from tunkit.packet.icmp import echo_request_packet
from tunkit.packet.ip import PROTO_TCP, PROTO_UDP, addresses, build_ip, locate_l4
from tunkit.packet.rewrite import apply_flow_rewrite, precompute_flow_rewrite, rewrite_flow
from tunkit.packet.tcp import ACK, build_tcp_segment
from tunkit.packet.udp import build_udp
from tunkit.packet.vnet import GSO_TCPV4, NEEDS_CSUM, VirtioNetHdr, complete_checksum, gso_split

a4 = st.binary(min_size=4, max_size=4)
a6 = st.binary(min_size=16, max_size=16)
port = st.integers(1, 0xFFFF)
maybe = st.booleans()


def checksums_valid(pkt: bytes | bytearray) -> bool:
    version, proto, l4, end = locate_l4(pkt)
    if version == 4 and ones_complement_sum(pkt[:l4]) != 0xFFFF:
        return False
    src, dst = addresses(pkt)
    if proto == PROTO_UDP and version == 4 and pkt[l4 + 6 : l4 + 8] == b"\0\0":
        return True
    return ones_complement_sum(pkt[l4:end], pseudo_header_sum(src, dst, proto, end - l4)) == 0xFFFF


def make(proto: int, src: bytes, dst: bytes, sp: int, dp: int, payload: bytes) -> bytearray:
    if proto == PROTO_TCP:
        l4 = build_tcp_segment(src, dst, sp, dp, payload, seq=1, ack=2, flags=ACK)
    else:
        l4 = build_udp(src, dst, sp, dp, payload)
    return bytearray(build_ip(src, dst, proto, l4))


@settings(max_examples=200)
@given(st.sampled_from([4, 6]), st.sampled_from([PROTO_TCP, PROTO_UDP]), st.data(), port, port, port, port,
       maybe, maybe, maybe, maybe, st.binary(max_size=200))
def test_rewrite_keeps_checksums_valid(
    version: int, proto: int, data: st.DataObject, sp: int, dp: int, nsp: int, ndp: int,
    c_src: bool, c_sp: bool, c_dst: bool, c_dp: bool, payload: bytes,
) -> None:
    addr = a4 if version == 4 else a6
    src, dst, nsrc, ndst = (data.draw(addr) for _ in range(4))
    pkt = make(proto, src, dst, sp, dp, payload)
    rewrite_flow(
        pkt, nsrc if c_src else None, nsp if c_sp else None, ndst if c_dst else None, ndp if c_dp else None
    )
    assert checksums_valid(pkt)
    expect = make(proto, nsrc if c_src else src, ndst if c_dst else dst, nsp if c_sp else sp, ndp if c_dp else dp, payload)
    _, _, l4, _ = locate_l4(pkt)
    csum_at = l4 + (16 if proto == PROTO_TCP else 6)
    # same bytes as building the rewritten packet from scratch, checksum representation aside
    assert pkt[:csum_at] + pkt[csum_at + 2 :] == expect[:csum_at] + expect[csum_at + 2 :]


def test_udp_v4_zero_checksum_stays_zero() -> None:
    pkt = make(PROTO_UDP, b"\x0a\0\0\1", b"\x0a\0\0\2", 1000, 53, b"query")
    pkt[26:28] = b"\0\0"
    rewrite_flow(pkt, b"\xc6\x12\0\5", 4000, b"\xc6\x12\0\1", 5353)
    assert pkt[26:28] == b"\0\0"
    assert ones_complement_sum(pkt[:20]) == 0xFFFF
    assert pkt[12:24] == b"\xc6\x12\0\5\xc6\x12\0\1" + struct.pack("!HH", 4000, 5353)


def test_icmpv6_address_rewrite() -> None:
    pkt = bytearray(echo_request_packet(bytes(15) + b"\1", bytes(15) + b"\2", 9, 9, b"x" * 33))
    rewrite_flow(pkt, new_dst=b"\xfd" + bytes(14) + b"\7")
    assert checksums_valid(pkt)
    with pytest.raises(MalformedPacketError):
        rewrite_flow(pkt, new_src_port=1)


@pytest.mark.parametrize("version", [4, 6])
def test_partial_checksum_packet(version: int) -> None:
    """NEEDS_CSUM: the field holds the pseudo-header sum; after rewrite + completion the
    checksum is valid, and equals a packet built directly with the new flow."""
    size = 4 if version == 4 else 16
    src, dst = b"\x0a" * size, b"\x14" * size
    nsrc, ndst = b"\xc6" * size, b"\x01" * size
    pkt = make(PROTO_TCP, src, dst, 1111, 80, b"payload!" * 20)
    _, _, l4, end = locate_l4(pkt)
    struct.pack_into("!H", pkt, l4 + 16, pseudo_header_sum(src, dst, PROTO_TCP, end - l4))
    rewrite_flow(pkt, nsrc, 2222, ndst, 8080, partial_csum=True)
    assert struct.unpack_from("!H", pkt, l4 + 16)[0] == pseudo_header_sum(nsrc, ndst, PROTO_TCP, end - l4)
    complete_checksum(VirtioNetHdr(NEEDS_CSUM, 0, 0, 0, l4, 16), pkt)
    assert checksums_valid(pkt)
    assert pkt == make(PROTO_TCP, nsrc, ndst, 2222, 8080, b"payload!" * 20)


def test_partial_checksum_gso_super_packet_splits_valid() -> None:
    src, dst = b"\x0a\0\0\1", b"\x0a\0\0\2"
    payload = bytes(range(256)) * 200
    pkt = make(PROTO_TCP, src, dst, 40000, 80, payload)
    struct.pack_into("!H", pkt, 36, pseudo_header_sum(src, dst, PROTO_TCP, len(pkt) - 20))
    rewrite_flow(pkt, b"\xc6\x12\0\x09", 50000, b"\xc6\x12\0\1", 7000, partial_csum=True)
    segs = gso_split(VirtioNetHdr(NEEDS_CSUM, GSO_TCPV4, 40, 1448, 20, 16), pkt)
    assert len(segs) == -(-len(payload) // 1448)
    for seg in segs:
        assert checksums_valid(seg)
        assert seg[12:24] == b"\xc6\x12\0\x09\xc6\x12\0\x01" + struct.pack("!HH", 50000, 7000)
    assert b"".join(s[40:] for s in segs) == payload


def test_wrong_address_length() -> None:
    pkt = make(PROTO_TCP, b"\1\1\1\1", b"\2\2\2\2", 1, 2, b"")
    with pytest.raises(ValueError):
        rewrite_flow(pkt, new_src=bytes(16))


@settings(max_examples=500)
@given(st.binary(max_size=100), st.sampled_from([b"\x45", b"\x60", b""]))
def test_fuzz_rewrite(raw: bytes, first: bytes) -> None:
    buf = bytearray(first + raw)
    size = 16 if buf[:1] and buf[0] >> 4 == 6 else 4
    with contextlib.suppress(MalformedPacketError):
        rewrite_flow(buf, bytes(size), 1, None, 2)


def test_non_first_fragment_and_other_protocols_change_addresses_only() -> None:
    pkt = make(PROTO_TCP, b"\1\1\1\1", b"\2\2\2\2", 1, 2, bytes(40))
    struct.pack_into("!H", pkt, 6, 100)  # fragment offset 100: no TCP header here
    pkt[10:12] = b"\0\0"
    struct.pack_into("!H", pkt, 10, 0xFFFF - ones_complement_sum(pkt[:20]))
    body = bytes(pkt[20:])
    rewrite_flow(pkt, new_dst=b"\3\3\3\3")
    assert ones_complement_sum(pkt[:20]) == 0xFFFF and bytes(pkt[20:]) == body
    with pytest.raises(MalformedPacketError):
        rewrite_flow(pkt, new_dst_port=9)
    gre = bytearray(build_ip(b"\1\1\1\1", b"\2\2\2\2", 47, bytes(8)))
    rewrite_flow(gre, new_src=b"\4\4\4\4")
    assert ones_complement_sum(gre[:20]) == 0xFFFF and gre[12:16] == b"\4\4\4\4"


@settings(max_examples=300)
@given(st.sampled_from([4, 6]), st.data(), port, port, port, port, st.binary(max_size=200),
       st.integers(0, 0xFF), maybe)
def test_precomputed_flow_rewrite_matches_building_the_new_packet(
    version: int, data: st.DataObject, sp: int, dp: int, nsp: int, ndp: int, payload: bytes,
    flags: int, partial: bool,
) -> None:
    addr = a4 if version == 4 else a6
    src, dst, nsrc, ndst = (data.draw(addr) for _ in range(4))
    pkt = make(PROTO_TCP, src, dst, sp, dp, payload)
    pkt[(20 if version == 4 else 40) + 13] = flags
    _, _, l4, end = locate_l4(pkt)
    if partial:
        struct.pack_into("!H", pkt, l4 + 16, pseudo_header_sum(src, dst, PROTO_TCP, end - l4))
    else:
        pkt[l4 + 16 : l4 + 18] = b"\0\0"
        struct.pack_into("!H", pkt, l4 + 16, 0xFFFF ^ ones_complement_sum(
            pkt[l4:end], pseudo_header_sum(src, dst, PROTO_TCP, end - l4)))
    rw = precompute_flow_rewrite(src + dst, struct.pack("!HH", sp, dp), nsrc + ndst,
                                 struct.pack("!HH", nsp, ndp))
    apply_flow_rewrite(memoryview(pkt), l4, rw, partial)
    if partial:
        assert struct.unpack_from("!H", pkt, l4 + 16)[0] == pseudo_header_sum(
            nsrc, ndst, PROTO_TCP, end - l4)
        complete_checksum(VirtioNetHdr(NEEDS_CSUM, 0, 0, 0, l4, 16), pkt)
    assert checksums_valid(pkt)
    expect = make(PROTO_TCP, nsrc, ndst, nsp, ndp, payload)
    expect[l4 + 13] = flags
    assert pkt[: l4 + 16] == expect[: l4 + 16] and pkt[l4 + 18 :] == expect[l4 + 18 :]


def test_precomputed_flow_rewrite_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        precompute_flow_rewrite(bytes(8), bytes(4), bytes(32), bytes(4))
    with pytest.raises(ValueError):
        precompute_flow_rewrite(bytes(8), bytes(3), bytes(8), bytes(4))
