"""ICMPv4 and ICMPv6 messages: parse, echo, errors, and neighbor discovery (RFC 792, 4443, 4861).

Contract: ``parse_icmp`` reads the 8-byte common header (type, code, checksum, 4 bytes) and
exposes echo identifier/sequence.  Builders return complete, checksummed ICMP messages
(``build_icmp*``) or complete IP packets (``*_packet``).  ICMPv6 checksums always include
the pseudo-header, so ICMPv6 builders take the addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer, internet_checksum, pseudo_header_sum
from tunkit.packet.ip import PROTO_ICMP, PROTO_ICMPV6, build_ipv4, build_ipv6

ICMP_ECHO_REPLY: Final = 0
ICMP_DEST_UNREACH: Final = 3
ICMP_ECHO_REQUEST: Final = 8
ICMP_TIME_EXCEEDED: Final = 11
ICMP_CODE_FRAG_NEEDED: Final = 4

ICMPV6_DEST_UNREACH: Final = 1
ICMPV6_PACKET_TOO_BIG: Final = 2
ICMPV6_TIME_EXCEEDED: Final = 3
ICMPV6_ECHO_REQUEST: Final = 128
ICMPV6_ECHO_REPLY: Final = 129
ICMPV6_NEIGHBOR_SOLICIT: Final = 135
ICMPV6_NEIGHBOR_ADVERT: Final = 136
ND_OPT_SOURCE_LLADDR: Final = 1
ND_OPT_TARGET_LLADDR: Final = 2
NA_FLAG_ROUTER: Final = 0x80
NA_FLAG_SOLICITED: Final = 0x40
NA_FLAG_OVERRIDE: Final = 0x20

ICMP_HEADER_LEN: Final = 8
IPV4_MIN_MTU: Final = 576
IPV6_MIN_MTU: Final = 1280
_HDR = struct.Struct("!BBHHH")

ICMP_TYPE_NAMES: Final = {
    ICMP_ECHO_REPLY: "echo-reply", ICMP_DEST_UNREACH: "dest-unreachable",
    ICMP_ECHO_REQUEST: "echo-request", ICMP_TIME_EXCEEDED: "time-exceeded",
}
ICMPV6_TYPE_NAMES: Final = {
    ICMPV6_DEST_UNREACH: "dest-unreachable", ICMPV6_PACKET_TOO_BIG: "packet-too-big",
    ICMPV6_TIME_EXCEEDED: "time-exceeded", ICMPV6_ECHO_REQUEST: "echo-request",
    ICMPV6_ECHO_REPLY: "echo-reply", 133: "router-solicitation", 134: "router-advertisement",
    ICMPV6_NEIGHBOR_SOLICIT: "neighbor-solicitation",
    ICMPV6_NEIGHBOR_ADVERT: "neighbor-advertisement",
}


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """Common ICMP/ICMPv6 header; ``ident``/``seq`` are the two 16-bit words after it."""

    type: int
    code: int
    checksum: int
    ident: int
    seq: int
    body: bytes


def parse_icmp(buf: Buffer, offset: int = 0, end: int | None = None) -> IcmpMessage:
    """Parse the ICMP or ICMPv6 message at ``buf[offset:end]``."""
    end = len(buf) if end is None else end
    if offset < 0 or end - offset < ICMP_HEADER_LEN or end > len(buf):
        raise MalformedPacketError(f"ICMP message truncated ({end - offset} bytes)")
    t, c, csum, ident, seq = _HDR.unpack_from(buf, offset)
    return IcmpMessage(t, c, csum, ident, seq, bytes(buf[offset + ICMP_HEADER_LEN : end]))


def build_icmp(type_: int, code: int, rest: bytes, body: Buffer = b"") -> bytes:
    """ICMPv4 message with checksum; ``rest`` is the 4 bytes after the checksum."""
    raw = bytearray(struct.pack("!BBH", type_, code, 0) + rest)
    raw += body
    struct.pack_into("!H", raw, 2, internet_checksum(raw))
    return bytes(raw)


def build_icmpv6(src: bytes, dst: bytes, type_: int, code: int, rest: bytes, body: Buffer = b"") -> bytes:
    """ICMPv6 message with checksum over the pseudo-header."""
    raw = bytearray(struct.pack("!BBH", type_, code, 0) + rest)
    raw += body
    initial = pseudo_header_sum(src, dst, PROTO_ICMPV6, len(raw))
    struct.pack_into("!H", raw, 2, internet_checksum(raw, initial))
    return bytes(raw)


def build_icmp_echo(type_: int, ident: int, seq: int, data: Buffer = b"") -> bytes:
    """ICMPv4 echo request (8) or reply (0) message."""
    return build_icmp(type_, 0, struct.pack("!HH", ident, seq), data)


def build_icmpv6_echo(src: bytes, dst: bytes, type_: int, ident: int, seq: int, data: Buffer = b"") -> bytes:
    """ICMPv6 echo request (128) or reply (129) message."""
    return build_icmpv6(src, dst, type_, 0, struct.pack("!HH", ident, seq), data)


def echo_request_packet(src: bytes, dst: bytes, ident: int, seq: int, data: Buffer = b"") -> bytes:
    """Complete IPv4 or IPv6 (by address length) echo request packet."""
    if len(src) == 4:
        return build_ipv4(src, dst, PROTO_ICMP, build_icmp_echo(ICMP_ECHO_REQUEST, ident, seq, data))
    msg = build_icmpv6_echo(src, dst, ICMPV6_ECHO_REQUEST, ident, seq, data)
    return build_ipv6(src, dst, PROTO_ICMPV6, msg)


def dest_unreachable_packet(src: bytes, original: Buffer, code: int, *, mtu: int = 0) -> bytes:
    """ICMPv4 dest-unreachable (or frag-needed with ``mtu``) from ``src`` to the sender of
    the IPv4 packet ``original``, quoting as much of it as fits in 576 bytes."""
    if len(original) < 20:
        raise MalformedPacketError("original IPv4 packet too short to quote")
    dst = bytes(original[12:16])
    quote = original[: IPV4_MIN_MTU - 20 - ICMP_HEADER_LEN]
    msg = build_icmp(ICMP_DEST_UNREACH, code, struct.pack("!HH", 0, mtu), quote)
    return build_ipv4(src, dst, PROTO_ICMP, msg)


def dest_unreachable_v6_packet(src: bytes, original: Buffer, code: int) -> bytes:
    """ICMPv6 dest-unreachable from ``src`` to the sender of ``original`` (quoted to 1280)."""
    if len(original) < 40:
        raise MalformedPacketError("original IPv6 packet too short to quote")
    dst = bytes(original[8:24])
    quote = original[: IPV6_MIN_MTU - 40 - ICMP_HEADER_LEN]
    msg = build_icmpv6(src, dst, ICMPV6_DEST_UNREACH, code, bytes(4), quote)
    return build_ipv6(src, dst, PROTO_ICMPV6, msg)


def packet_too_big_packet(src: bytes, original: Buffer, mtu: int) -> bytes:
    """ICMPv6 packet-too-big from ``src`` to the sender of ``original``."""
    if len(original) < 40:
        raise MalformedPacketError("original IPv6 packet too short to quote")
    dst = bytes(original[8:24])
    quote = original[: IPV6_MIN_MTU - 40 - ICMP_HEADER_LEN]
    msg = build_icmpv6(src, dst, ICMPV6_PACKET_TOO_BIG, 0, struct.pack("!I", mtu), quote)
    return build_ipv6(src, dst, PROTO_ICMPV6, msg)


def neighbor_solicitation_target(msg: IcmpMessage) -> bytes:
    """Target address of a neighbor solicitation (the 16 bytes after the reserved word)."""
    if msg.type != ICMPV6_NEIGHBOR_SOLICIT or len(msg.body) < 16:
        raise MalformedPacketError("not a neighbor solicitation")
    return msg.body[:16]


def build_neighbor_advertisement(
    src: bytes, dst: bytes, target: bytes, mac: bytes, *, solicited: bool = True, router: bool = False,
) -> bytes:
    """Neighbor advertisement for ``target`` at ``mac`` (target link-layer address option)."""
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_SOLICITED if solicited else 0) | (NA_FLAG_ROUTER if router else 0)
    body = target + struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + mac
    return build_icmpv6(src, dst, ICMPV6_NEIGHBOR_ADVERT, 0, struct.pack("!B3x", flags), body)
