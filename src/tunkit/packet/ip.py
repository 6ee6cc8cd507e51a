"""IPv4 and IPv6 headers: parse, build, and fast field access for hot paths.

Contract:

* ``parse_ipv4`` / ``parse_ipv6`` return frozen dataclasses; ``.build()`` gives the header
  bytes back (IPv4: checksum recomputed unless told otherwise).
* ``locate_l4(buf)`` is the hot-path accessor: a tuple ``(version, proto, l4_offset, end)``
  using ``struct`` only, no allocation of dataclasses.  IPv6 extension headers (hop-by-hop,
  routing, fragment, destination options) are skipped, at most ``MAX_EXT_HEADERS`` of them.
  A non-first fragment (v4 or v6) has no transport header: ``proto`` is then ``NO_L4``.
* Every parser raises :class:`MalformedPacketError` on bad input, never IndexError or
  struct.error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer, internet_checksum

PROTO_HOPOPTS: Final = 0
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ROUTING: Final = 43
PROTO_FRAGMENT: Final = 44
PROTO_ICMPV6: Final = 58
PROTO_NONE: Final = 59
PROTO_DSTOPTS: Final = 60
NO_L4: Final = -1
"""``locate_l4`` protocol for a non-first fragment (no transport header in this packet)."""

IPV4_HEADER_LEN: Final = 20
IPV6_HEADER_LEN: Final = 40
MAX_EXT_HEADERS: Final = 8
FLAG_DF: Final = 0x2
FLAG_MF: Final = 0x1

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_H = struct.Struct("!H")
_EXT_HEADERS = frozenset({PROTO_HOPOPTS, PROTO_ROUTING, PROTO_FRAGMENT, PROTO_DSTOPTS})


def ip_version(buf: Buffer) -> int:
    """4 or 6, from the first nibble; raises for anything else."""
    if not buf:
        raise MalformedPacketError("empty packet")
    v = buf[0] >> 4
    if v not in (4, 6):
        raise MalformedPacketError(f"IP version {v}")
    return v


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header.  ``options`` must be a multiple of 4 bytes."""

    src: bytes
    dst: bytes
    protocol: int
    total_length: int = IPV4_HEADER_LEN
    tos: int = 0
    identification: int = 0
    flags: int = FLAG_DF
    fragment_offset: int = 0
    ttl: int = 64
    checksum: int = 0
    options: bytes = b""

    @property
    def header_length(self) -> int:
        return IPV4_HEADER_LEN + len(self.options)

    def build(self, *, compute_checksum: bool = True) -> bytes:
        """Header bytes; the checksum is computed unless ``compute_checksum`` is False."""
        if len(self.options) % 4 or len(self.options) > 40:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        ihl = self.header_length // 4
        raw = bytearray(
            _V4.pack(
                0x40 | ihl, self.tos, self.total_length, self.identification,
                (self.flags << 13) | self.fragment_offset, self.ttl, self.protocol,
                0 if compute_checksum else self.checksum, self.src, self.dst,
            )
        )
        raw += self.options
        if compute_checksum:
            _H.pack_into(raw, 10, internet_checksum(raw))
        return bytes(raw)


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The fixed 40-byte IPv6 header."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int = 0
    traffic_class: int = 0
    flow_label: int = 0
    hop_limit: int = 64

    header_length = IPV6_HEADER_LEN

    def build(self) -> bytes:
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return _V6.pack(first, self.payload_length, self.next_header, self.hop_limit, self.src, self.dst)


def parse_ipv4(buf: Buffer) -> IPv4Header:
    """Parse an IPv4 header; checks version, IHL and that total length fits the buffer."""
    if len(buf) < IPV4_HEADER_LEN:
        raise MalformedPacketError(f"IPv4 packet of {len(buf)} bytes")
    vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _V4.unpack_from(buf)
    if vihl >> 4 != 4:
        raise MalformedPacketError(f"not IPv4 (version {vihl >> 4})")
    hl = (vihl & 0xF) * 4
    if hl < IPV4_HEADER_LEN or hl > len(buf):
        raise MalformedPacketError(f"IPv4 header length {hl}")
    if total < hl or total > len(buf):
        raise MalformedPacketError(f"IPv4 total length {total} (buffer {len(buf)})")
    return IPv4Header(
        src=src, dst=dst, protocol=proto, total_length=total, tos=tos, identification=ident,
        flags=frag >> 13, fragment_offset=frag & 0x1FFF, ttl=ttl, checksum=csum,
        options=bytes(buf[IPV4_HEADER_LEN:hl]),
    )


def parse_ipv6(buf: Buffer) -> IPv6Header:
    """Parse the fixed IPv6 header; checks that the payload length fits the buffer."""
    if len(buf) < IPV6_HEADER_LEN:
        raise MalformedPacketError(f"IPv6 packet of {len(buf)} bytes")
    first, plen, nh, hops, src, dst = _V6.unpack_from(buf)
    if first >> 28 != 6:
        raise MalformedPacketError(f"not IPv6 (version {first >> 28})")
    if IPV6_HEADER_LEN + plen > len(buf):
        raise MalformedPacketError(f"IPv6 payload length {plen} (buffer {len(buf)})")
    return IPv6Header(
        src=src, dst=dst, next_header=nh, payload_length=plen,
        traffic_class=(first >> 20) & 0xFF, flow_label=first & 0xFFFFF, hop_limit=hops,
    )


def ipv6_upper_layer(buf: Buffer, end: int) -> tuple[int, int]:
    """Skip IPv6 extension headers: ``(protocol, offset)`` of the upper-layer header.

    A non-first fragment gives ``(NO_L4, offset after the fragment header)``.
    """
    nh = buf[6]
    off = IPV6_HEADER_LEN
    for _ in range(MAX_EXT_HEADERS):
        if nh not in _EXT_HEADERS:
            return nh, off
        if off + 8 > end:
            raise MalformedPacketError("truncated IPv6 extension header")
        if nh == PROTO_FRAGMENT:
            frag = _H.unpack_from(buf, off + 2)[0]
            nh = buf[off]
            off += 8
            if frag & 0xFFF8:
                return NO_L4, off
        else:
            nxt = buf[off]
            off += (buf[off + 1] + 1) * 8
            nh = nxt
        if off > end:
            raise MalformedPacketError("IPv6 extension header beyond the packet")
    raise MalformedPacketError(f"more than {MAX_EXT_HEADERS} IPv6 extension headers")


def locate_l4(buf: Buffer) -> tuple[int, int, int, int]:
    """``(version, proto, l4_offset, end)`` of an IP packet; ``end`` is where IP says it ends."""
    n = len(buf)
    if n == 0:
        raise MalformedPacketError("empty packet")
    v = buf[0] >> 4
    if v == 4:
        if n < IPV4_HEADER_LEN:
            raise MalformedPacketError(f"IPv4 packet of {n} bytes")
        hl = (buf[0] & 0xF) * 4
        total = _H.unpack_from(buf, 2)[0]
        if hl < IPV4_HEADER_LEN or total < hl or total > n:
            raise MalformedPacketError(f"IPv4 lengths ihl={hl} total={total} buffer={n}")
        if _H.unpack_from(buf, 6)[0] & 0x1FFF:
            return 4, NO_L4, hl, total
        return 4, buf[9], hl, total
    if v == 6:
        if n < IPV6_HEADER_LEN:
            raise MalformedPacketError(f"IPv6 packet of {n} bytes")
        end = IPV6_HEADER_LEN + _H.unpack_from(buf, 4)[0]
        if end > n:
            raise MalformedPacketError(f"IPv6 payload length beyond the buffer ({end} > {n})")
        proto, off = ipv6_upper_layer(buf, end)
        return 6, proto, off, end
    raise MalformedPacketError(f"IP version {v}")


def l4_offset(buf: Buffer) -> int:
    """Offset of the transport header (after IPv4 options / IPv6 extension headers)."""
    return locate_l4(buf)[2]


def addresses(buf: Buffer) -> tuple[bytes, bytes]:
    """``(src, dst)`` address bytes of an IPv4 or IPv6 packet."""
    v = ip_version(buf)
    if v == 4:
        if len(buf) < IPV4_HEADER_LEN:
            raise MalformedPacketError("truncated IPv4 header")
        return bytes(buf[12:16]), bytes(buf[16:20])
    if len(buf) < IPV6_HEADER_LEN:
        raise MalformedPacketError("truncated IPv6 header")
    return bytes(buf[8:24]), bytes(buf[24:40])


def build_ipv4(
    src: bytes, dst: bytes, protocol: int, payload: Buffer, *, ttl: int = 64,
    identification: int = 0, tos: int = 0, flags: int = FLAG_DF,
) -> bytes:
    """A complete IPv4 packet (no options) around ``payload``, header checksum filled in."""
    hdr = IPv4Header(
        src=src, dst=dst, protocol=protocol, total_length=IPV4_HEADER_LEN + len(payload),
        tos=tos, identification=identification, flags=flags, ttl=ttl,
    )
    return hdr.build() + bytes(payload)


def build_ipv6(
    src: bytes, dst: bytes, next_header: int, payload: Buffer, *, hop_limit: int = 64,
    traffic_class: int = 0, flow_label: int = 0,
) -> bytes:
    """A complete IPv6 packet (no extension headers) around ``payload``."""
    hdr = IPv6Header(
        src=src, dst=dst, next_header=next_header, payload_length=len(payload),
        traffic_class=traffic_class, flow_label=flow_label, hop_limit=hop_limit,
    )
    return hdr.build() + bytes(payload)


def build_ip(src: bytes, dst: bytes, protocol: int, payload: Buffer, *, ttl: int = 64) -> bytes:
    """IPv4 or IPv6 packet, chosen by the address length (4 or 16 bytes)."""
    if len(src) == 4:
        return build_ipv4(src, dst, protocol, payload, ttl=ttl)
    return build_ipv6(src, dst, protocol, payload, hop_limit=ttl)
