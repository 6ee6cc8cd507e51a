"""TCP, UDP, ICMP/ICMPv6 and Ethernet/ARP: build/parse round trips, checksums, fuzz."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.packet import ether, icmp
from tunkit.packet.checksum import ones_complement_sum, pseudo_header_sum
from tunkit.packet.ip import PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, locate_l4
from tunkit.packet.tcp import (
    ACK,
    FIN,
    PSH,
    SYN,
    TcpHeader,
    build_tcp_segment,
    flag_string,
    parse_tcp,
)
from tunkit.packet.udp import UdpHeader, build_udp, parse_udp

addrs = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)
port = st.integers(0, 0xFFFF)


def l4_valid(src: bytes, dst: bytes, proto: int, segment: bytes) -> bool:
    return ones_complement_sum(segment, pseudo_header_sum(src, dst, proto, len(segment))) == 0xFFFF


@given(addrs, port, port, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255),
       st.integers(0, 10).map(lambda n: b"\x01" * (n * 4)), st.binary(max_size=300))
def test_tcp_round_trip(ab: tuple[bytes, bytes], sp: int, dp: int, seq: int, ack: int, flags: int, opts: bytes, payload: bytes) -> None:
    src, dst = ab
    seg = build_tcp_segment(src, dst, sp, dp, payload, seq=seq, ack=ack, flags=flags, options=opts)
    assert l4_valid(src, dst, PROTO_TCP, seg)
    hdr = parse_tcp(seg)
    assert (hdr.src_port, hdr.dst_port, hdr.seq, hdr.ack, hdr.flags, hdr.options) == (sp, dp, seq, ack, flags, opts)
    assert seg[hdr.header_length :] == payload
    assert TcpHeader(sp, dp, seq, ack, flags, hdr.window, 0, 0, opts).build(src, dst, payload) == seg


@given(addrs, port, port, st.binary(max_size=300))
def test_udp_round_trip(ab: tuple[bytes, bytes], sp: int, dp: int, payload: bytes) -> None:
    src, dst = ab
    dgram = build_udp(src, dst, sp, dp, payload)
    assert l4_valid(src, dst, PROTO_UDP, dgram)
    hdr = parse_udp(dgram)
    assert hdr == UdpHeader(sp, dp, 8 + len(payload), hdr.checksum)
    assert hdr.checksum != 0


def test_flag_strings() -> None:
    assert flag_string(SYN) == "S"
    assert flag_string(SYN | ACK) == "S."
    assert flag_string(PSH | ACK) == "P."
    assert flag_string(FIN | ACK) == "F."
    assert flag_string(ACK) == "."


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=100))
def test_icmp_echo_round_trip(ident: int, seq: int, data: bytes) -> None:
    msg = icmp.build_icmp_echo(icmp.ICMP_ECHO_REQUEST, ident, seq, data)
    assert ones_complement_sum(msg) == 0xFFFF
    parsed = icmp.parse_icmp(msg)
    assert (parsed.type, parsed.code, parsed.ident, parsed.seq, parsed.body) == (8, 0, ident, seq, data)


def test_icmpv6_echo_packet_checksum() -> None:
    src, dst = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
    pkt = icmp.echo_request_packet(src, dst, 7, 3, b"hello")
    _, proto, l4, end = locate_l4(pkt)
    assert proto == PROTO_ICMPV6
    assert l4_valid(src, dst, PROTO_ICMPV6, pkt[l4:end])


def test_dest_unreachable_quotes_original() -> None:
    original = icmp.echo_request_packet(b"\x0a\0\0\1", b"\x0a\0\0\2", 1, 1, bytes(1000))
    err = icmp.dest_unreachable_packet(b"\x0a\0\0\xfe", original, icmp.ICMP_CODE_FRAG_NEEDED, mtu=1400)
    assert len(err) == 576
    msg = icmp.parse_icmp(err, 20)
    assert (msg.type, msg.code, msg.seq) == (3, 4, 1400)
    assert msg.body == original[: 576 - 28]
    assert ones_complement_sum(err[20:]) == 0xFFFF
    v6 = icmp.echo_request_packet(bytes(15) + b"\1", bytes(15) + b"\2", 1, 1, bytes(2000))
    ptb = icmp.packet_too_big_packet(bytes(15) + b"\3", v6, 1280)
    assert len(ptb) == 1280
    assert l4_valid(bytes(15) + b"\3", bytes(15) + b"\1", PROTO_ICMPV6, ptb[40:])
    unreach = icmp.dest_unreachable_v6_packet(bytes(15) + b"\3", v6, 4)
    assert icmp.parse_icmp(unreach, 40).type == icmp.ICMPV6_DEST_UNREACH


def test_arp_round_trip_and_reply() -> None:
    mac_a, mac_b = bytes.fromhex("02aabbccdd01"), bytes.fromhex("02aabbccdd02")
    req = ether.build_arp_request(mac_a, b"\x0a\0\0\1", b"\x0a\0\0\7")
    eth, off = ether.parse_ether(req)
    assert (eth.dst, eth.src, eth.ethertype, off) == (ether.BROADCAST_MAC, mac_a, ether.ETHERTYPE_ARP, 14)
    arp = ether.parse_arp(req, off)
    assert arp == ether.ArpPacket(ether.ARP_REQUEST, mac_a, b"\x0a\0\0\1", bytes(6), b"\x0a\0\0\7")
    reply = ether.build_arp_reply(arp, mac_b)
    assert reply[:14] == mac_a + mac_b + b"\x08\x06"
    assert ether.parse_arp(reply, 14) == ether.ArpPacket(ether.ARP_REPLY, mac_b, b"\x0a\0\0\7", mac_a, b"\x0a\0\0\1")


def test_vlan_tag_skipped() -> None:
    frame = bytes(12) + b"\x81\x00\x00\x05\x86\xdd" + bytes(40)
    eth, off = ether.parse_ether(frame)
    assert (eth.ethertype, off) == (ether.ETHERTYPE_IPV6, 18)


@pytest.mark.parametrize("raw", [b"", bytes(7), bytes(19), b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x60\x00" + bytes(6), b"\x00" * 12 + b"\x40" + bytes(7)])
def test_truncated_transport_raises(raw: bytes) -> None:
    with pytest.raises(MalformedPacketError):
        parse_tcp(raw)


@settings(max_examples=500)
@given(st.binary(max_size=80), st.integers(0, 20))
def test_fuzz_transport_and_ether_parsers(raw: bytes, offset: int) -> None:
    for parse in (parse_tcp, parse_udp, icmp.parse_icmp, ether.parse_arp):
        with contextlib.suppress(MalformedPacketError):
            parse(raw, offset)
    with contextlib.suppress(MalformedPacketError):
        ether.parse_ether(raw)
    with contextlib.suppress(MalformedPacketError):
        icmp.neighbor_solicitation_target(icmp.parse_icmp(raw))
