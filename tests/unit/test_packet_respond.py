"""Responders: echo replies (v4/v6, TUN and TAP), ARP replies, neighbor advertisements."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.packet.checksum import ones_complement_sum, pseudo_header_sum
from tunkit.packet.ether import (
    ARP_REPLY,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    build_arp_request,
    build_ether,
    parse_arp,
    parse_ether,
)
from tunkit.packet.icmp import (
    ICMPV6_NEIGHBOR_ADVERT,
    ICMPV6_NEIGHBOR_SOLICIT,
    ND_OPT_SOURCE_LLADDR,
    build_icmpv6,
    echo_request_packet,
    parse_icmp,
)
from tunkit.packet.ip import PROTO_ICMPV6, build_ipv6, locate_l4
from tunkit.packet.respond import arp_reply_for, echo_reply_for, ether_echo_reply_for, tap_reply_for

A, B = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 7])
A6 = bytes.fromhex("fd00" + "00" * 13 + "01")
B6 = bytes.fromhex("fd00" + "00" * 13 + "02")
MAC_US, MAC_THEM = bytes.fromhex("02000000aa01"), bytes.fromhex("02000000bb02")


def icmp_valid(pkt: bytes) -> bool:
    version, proto, l4, end = locate_l4(pkt)
    if version == 4:
        return ones_complement_sum(pkt[:20]) == 0xFFFF and ones_complement_sum(pkt[l4:end]) == 0xFFFF
    ph = pseudo_header_sum(pkt[8:24], pkt[24:40], proto, end - l4)
    return ones_complement_sum(pkt[l4:end], ph) == 0xFFFF


def test_echo_reply_v4() -> None:
    req = echo_request_packet(A, B, 12, 1, b"ping data " * 5)
    reply = echo_reply_for(req)
    assert reply is not None and icmp_valid(reply)
    assert reply[12:20] == B + A and reply[8] == 64
    msg = parse_icmp(reply, 20)
    assert (msg.type, msg.code, msg.ident, msg.seq, msg.body) == (0, 0, 12, 1, b"ping data " * 5)
    assert len(reply) == len(req)


def test_echo_reply_v6() -> None:
    reply = echo_reply_for(echo_request_packet(A6, B6, 99, 7, b"x" * 56))
    assert reply is not None and icmp_valid(reply)
    assert reply[8:40] == B6 + A6
    msg = parse_icmp(reply, 40)
    assert (msg.type, msg.ident, msg.seq) == (129, 99, 7)


def test_no_reply_for_others() -> None:
    req = bytearray(echo_request_packet(A, B, 1, 1, b"abc"))
    req[-1] ^= 1  # bad checksum
    assert echo_reply_for(req) is None
    assert echo_reply_for(echo_reply_for(echo_request_packet(A, B, 1, 1)) or b"") is None  # a reply
    assert echo_reply_for(echo_request_packet(A, bytes([224, 0, 0, 1]), 1, 1)) is None
    assert echo_reply_for(b"garbage") is None


def test_arp_reply() -> None:
    frame = build_arp_request(MAC_THEM, A, B)
    reply = arp_reply_for(frame, MAC_US, lambda ip: ip == B)
    assert reply is not None
    eth, off = parse_ether(reply)
    assert (eth.dst, eth.src) == (MAC_THEM, MAC_US)
    arp = parse_arp(reply, off)
    assert (arp.op, arp.sender_mac, arp.sender_ip, arp.target_mac, arp.target_ip) == (ARP_REPLY, MAC_US, B, MAC_THEM, A)
    assert arp_reply_for(frame, MAC_US, lambda ip: False) is None
    assert arp_reply_for(build_arp_request(MAC_THEM, A, A), MAC_US) is None  # gratuitous


def test_ether_echo_reply() -> None:
    frame = build_ether(MAC_US, MAC_THEM, ETHERTYPE_IPV4, echo_request_packet(A, B, 3, 4, b"hi"))
    reply = ether_echo_reply_for(frame, MAC_US)
    assert reply is not None
    assert reply[:14] == MAC_THEM + MAC_US + b"\x08\x00"
    assert icmp_valid(reply[14:])
    frame6 = build_ether(MAC_US, MAC_THEM, ETHERTYPE_IPV6, echo_request_packet(A6, B6, 3, 4, b"hi"))
    reply6 = tap_reply_for(frame6, MAC_US)
    assert reply6 is not None and icmp_valid(reply6[14:])


def _solicitation(src: bytes, target: bytes) -> bytes:
    dst = bytes.fromhex("ff0200000000000000000001ff") + target[-3:]
    body = target + struct.pack("!BB", ND_OPT_SOURCE_LLADDR, 1) + MAC_THEM
    ns = build_icmpv6(src, dst, ICMPV6_NEIGHBOR_SOLICIT, 0, bytes(4), body)
    pkt = build_ipv6(src, dst, PROTO_ICMPV6, ns, hop_limit=255)
    return build_ether(b"\x33\x33\xff" + target[-3:], MAC_THEM, ETHERTYPE_IPV6, pkt)


def test_neighbor_solicitation_answered() -> None:
    reply = tap_reply_for(_solicitation(A6, B6), MAC_US)
    assert reply is not None
    assert reply[:14] == MAC_THEM + MAC_US + b"\x86\xdd"
    pkt = reply[14:]
    assert icmp_valid(pkt)
    assert pkt[7] == 255 and pkt[8:40] == B6 + A6
    msg = parse_icmp(pkt, 40)
    assert msg.type == ICMPV6_NEIGHBOR_ADVERT
    assert msg.ident >> 8 == 0x60  # solicited + override
    assert msg.body == B6 + b"\x02\x01" + MAC_US


def test_duplicate_address_detection_not_answered() -> None:
    assert tap_reply_for(_solicitation(bytes(16), B6), MAC_US) is None
    assert tap_reply_for(_solicitation(A6, B6), MAC_US, lambda ip: ip != B6) is None


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_responders_never_raise(raw: bytes) -> None:
    echo_reply_for(raw)
    tap_reply_for(raw, MAC_US)
    tap_reply_for(MAC_US + MAC_THEM + b"\x86\xdd" + b"\x60" + raw, MAC_US)
