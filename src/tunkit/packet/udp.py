"""UDP header: parse and build with checksum (RFC 768; a computed 0 is sent as 0xffff).

Contract: ``parse_udp`` raises :class:`MalformedPacketError` when the header is truncated or
its length field disagrees with the bytes available.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer, internet_checksum, pseudo_header_sum
from tunkit.packet.ip import PROTO_UDP

UDP_HEADER_LEN: Final = 8
CHECKSUM_OFFSET: Final = 6
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpHeader:
    src_port: int
    dst_port: int
    length: int = UDP_HEADER_LEN
    checksum: int = 0


def parse_udp(buf: Buffer, offset: int = 0, end: int | None = None) -> UdpHeader:
    """Parse the UDP header at ``buf[offset:]``; ``length`` must fit in ``end - offset``."""
    end = len(buf) if end is None else end
    if offset < 0 or end - offset < UDP_HEADER_LEN or end > len(buf):
        raise MalformedPacketError(f"UDP header truncated ({end - offset} bytes)")
    sport, dport, length, csum = _UDP.unpack_from(buf, offset)
    if length < UDP_HEADER_LEN or offset + length > end:
        raise MalformedPacketError(f"UDP length {length} (available {end - offset})")
    return UdpHeader(sport, dport, length, csum)


def udp_checksum(src: bytes, dst: bytes, datagram: Buffer) -> int:
    """Checksum for a datagram whose checksum field is zero; 0 is mapped to 0xffff."""
    csum = internet_checksum(datagram, pseudo_header_sum(src, dst, PROTO_UDP, len(datagram)))
    return csum or 0xFFFF


def build_udp(src: bytes, dst: bytes, src_port: int, dst_port: int, payload: Buffer = b"") -> bytes:
    """UDP header + payload with a valid checksum (mandatory for IPv6, used for v4 too)."""
    raw = bytearray(_UDP.pack(src_port, dst_port, UDP_HEADER_LEN + len(payload), 0))
    raw += payload
    struct.pack_into("!H", raw, CHECKSUM_OFFSET, udp_checksum(src, dst, raw))
    return bytes(raw)
