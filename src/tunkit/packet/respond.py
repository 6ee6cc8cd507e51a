"""Answers that make ``ping`` work through a TUN/TAP without a real host behind it.

Contract (all pure: bytes in, bytes or None out, never raises on bad input):

* ``echo_reply_for(packet)``: for an IPv4 ICMP echo request or an IPv6 ICMPv6 echo request
  with a valid checksum, the echo reply (addresses swapped, fresh IP header with TTL/hop
  limit 64, ICMP checksums recomputed, ICMPv6 over the pseudo-header); otherwise None.
  Requests to multicast/broadcast destinations are not answered.
* ``arp_reply_for(frame, our_mac, answer_for)``: an ARP reply frame for a who-has whose
  target IP satisfies ``answer_for``; otherwise None.
* ``ether_echo_reply_for(frame, our_mac)``: the TAP form of ``echo_reply_for``, and for an
  ICMPv6 neighbor solicitation a neighbor advertisement (hop limit 255, RFC 4861), so IPv6
  ping over TAP works.  ``tap_reply_for`` combines it with ARP.
"""

from __future__ import annotations

from collections.abc import Callable

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer, ones_complement_sum, pseudo_header_sum
from tunkit.packet.ether import (
    ARP_REQUEST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    build_arp_reply,
    build_ether,
    parse_arp,
    parse_ether,
)
from tunkit.packet.icmp import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_NEIGHBOR_SOLICIT,
    ND_OPT_SOURCE_LLADDR,
    build_icmp,
    build_icmpv6,
    build_neighbor_advertisement,
    neighbor_solicitation_target,
    parse_icmp,
)
from tunkit.packet.ip import PROTO_ICMP, PROTO_ICMPV6, build_ipv4, build_ipv6, locate_l4

AnswerFor = Callable[[bytes], bool]


def _answer_all(_ip: bytes) -> bool:
    return True


def _is_multicast(addr: bytes) -> bool:
    if len(addr) == 4:
        return addr[0] >= 224 or addr == b"\xff\xff\xff\xff"
    return addr[0] == 0xFF


def echo_reply_for(packet: Buffer) -> bytes | None:
    """The echo reply for an ICMP/ICMPv6 echo request, else None."""
    try:
        return _echo_reply(packet)
    except MalformedPacketError:
        return None


def _echo_reply(packet: Buffer) -> bytes | None:
    version, proto, l4, end = locate_l4(packet)
    if version == 4 and proto == PROTO_ICMP:
        src, dst = bytes(packet[12:16]), bytes(packet[16:20])
        msg = parse_icmp(packet, l4, end)
        if msg.type != ICMP_ECHO_REQUEST or msg.code != 0 or _is_multicast(dst):
            return None
        if ones_complement_sum(memoryview(packet)[l4:end]) != 0xFFFF:
            return None
        reply = build_icmp(ICMP_ECHO_REPLY, 0, bytes(packet[l4 + 4 : l4 + 8]), msg.body)
        ident = int.from_bytes(packet[4:6], "big")
        return build_ipv4(dst, src, PROTO_ICMP, reply, identification=ident, flags=0)
    if version == 6 and proto == PROTO_ICMPV6:
        src, dst = bytes(packet[8:24]), bytes(packet[24:40])
        msg = parse_icmp(packet, l4, end)
        if msg.type != ICMPV6_ECHO_REQUEST or msg.code != 0 or _is_multicast(dst):
            return None
        pseudo = pseudo_header_sum(src, dst, PROTO_ICMPV6, end - l4)
        if ones_complement_sum(memoryview(packet)[l4:end], pseudo) != 0xFFFF:
            return None
        reply = build_icmpv6(dst, src, ICMPV6_ECHO_REPLY, 0, bytes(packet[l4 + 4 : l4 + 8]), msg.body)
        return build_ipv6(dst, src, PROTO_ICMPV6, reply)
    return None


def arp_reply_for(frame: Buffer, our_mac: bytes, answer_for: AnswerFor = _answer_all) -> bytes | None:
    """ARP reply frame ("target is at our_mac") for a who-has we should answer, else None."""
    try:
        eth, off = parse_ether(frame)
        if eth.ethertype != ETHERTYPE_ARP:
            return None
        arp = parse_arp(frame, off)
    except MalformedPacketError:
        return None
    if arp.op != ARP_REQUEST or arp.target_ip == arp.sender_ip or not answer_for(arp.target_ip):
        return None
    return build_arp_reply(arp, our_mac)


def ether_echo_reply_for(frame: Buffer, our_mac: bytes, answer_for: AnswerFor = _answer_all) -> bytes | None:
    """Echo reply (or neighbor advertisement) frame for a TAP frame, else None."""
    try:
        eth, off = parse_ether(frame)
        if eth.ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
            return None
        packet = memoryview(frame)[off:]
        reply = _echo_reply(packet)
        if reply is not None:
            return build_ether(eth.src, our_mac, eth.ethertype, reply)
        if eth.ethertype == ETHERTYPE_IPV6:
            return _neighbor_advert(packet, eth.src, our_mac, answer_for)
    except MalformedPacketError:
        return None
    return None


def _neighbor_advert(packet: memoryview, their_mac: bytes, our_mac: bytes, answer_for: AnswerFor) -> bytes | None:
    version, proto, l4, end = locate_l4(packet)
    if version != 6 or proto != PROTO_ICMPV6 or packet[7] != 255:
        return None
    msg = parse_icmp(packet, l4, end)
    if msg.type != ICMPV6_NEIGHBOR_SOLICIT or msg.code != 0:
        return None
    src = bytes(packet[8:24])
    target = neighbor_solicitation_target(msg)
    if src == bytes(16) or target == src or _is_multicast(target) or not answer_for(target):
        return None  # duplicate address detection, or not ours to answer
    mac = _source_lladdr(msg.body[16:]) or their_mac
    na = build_neighbor_advertisement(target, src, target, our_mac, solicited=True)
    return build_ether(mac, our_mac, ETHERTYPE_IPV6, build_ipv6(target, src, PROTO_ICMPV6, na, hop_limit=255))


def _source_lladdr(options: bytes) -> bytes | None:
    i = 0
    while i + 2 <= len(options):
        kind, length = options[i], options[i + 1] * 8
        if length == 0:
            return None
        if kind == ND_OPT_SOURCE_LLADDR and length >= 8 and i + 8 <= len(options):
            return options[i + 2 : i + 8]
        i += length
    return None


def tap_reply_for(frame: Buffer, our_mac: bytes, answer_for: AnswerFor = _answer_all) -> bytes | None:
    """ARP reply, echo reply or neighbor advertisement for a TAP frame, else None."""
    return arp_reply_for(frame, our_mac, answer_for) or ether_echo_reply_for(frame, our_mac, answer_for)
