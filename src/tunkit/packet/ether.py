"""Ethernet II frames and ARP for IPv4 over Ethernet (RFC 826), as seen on a TAP device.

Contract: ``parse_ether`` returns the header and the payload offset (an 802.1Q tag is
skipped and its ethertype reported).  ``parse_arp`` accepts only Ethernet/IPv4 ARP
(htype 1, ptype 0x0800, hlen 6, plen 4).  Builders return complete frames.
Frames shorter than 60 bytes are not padded: the kernel does not require it on a TAP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_VLAN: Final = 0x8100
ETHERTYPE_IPV6: Final = 0x86DD
ETHER_HEADER_LEN: Final = 14
BROADCAST_MAC: Final = b"\xff" * 6
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2
ARP_LEN: Final = 28

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    dst: bytes
    src: bytes
    ethertype: int

    def build(self) -> bytes:
        return _ETH.pack(self.dst, self.src, self.ethertype)


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP message."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    def build(self) -> bytes:
        return _ARP.pack(
            1, ETHERTYPE_IPV4, 6, 4, self.op, self.sender_mac, self.sender_ip,
            self.target_mac, self.target_ip,
        )


def parse_ether(frame: Buffer) -> tuple[EthernetHeader, int]:
    """``(header, payload_offset)``; one 802.1Q tag is skipped."""
    if len(frame) < ETHER_HEADER_LEN:
        raise MalformedPacketError(f"Ethernet frame of {len(frame)} bytes")
    dst, src, etype = _ETH.unpack_from(frame)
    off = ETHER_HEADER_LEN
    if etype == ETHERTYPE_VLAN:
        if len(frame) < off + 4:
            raise MalformedPacketError("truncated 802.1Q tag")
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    return EthernetHeader(dst, src, etype), off


def build_ether(dst: bytes, src: bytes, ethertype: int, payload: Buffer) -> bytes:
    """An Ethernet II frame."""
    return _ETH.pack(dst, src, ethertype) + bytes(payload)


def parse_arp(buf: Buffer, offset: int = 0) -> ArpPacket:
    """Parse an Ethernet/IPv4 ARP message at ``buf[offset:]``."""
    if offset < 0 or len(buf) - offset < ARP_LEN:
        raise MalformedPacketError(f"ARP message truncated ({len(buf) - offset} bytes)")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, offset)
    if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4):
        raise MalformedPacketError(f"ARP for htype={htype} ptype={ptype:#x}")
    return ArpPacket(op, sha, spa, tha, tpa)


def build_arp_reply(request: ArpPacket, our_mac: bytes) -> bytes:
    """Frame answering ``request``: ``request.target_ip`` is at ``our_mac``."""
    reply = ArpPacket(ARP_REPLY, our_mac, request.target_ip, request.sender_mac, request.sender_ip)
    return build_ether(request.sender_mac, our_mac, ETHERTYPE_ARP, reply.build())


def build_arp_request(our_mac: bytes, our_ip: bytes, target_ip: bytes) -> bytes:
    """Broadcast who-has ``target_ip`` frame."""
    req = ArpPacket(ARP_REQUEST, our_mac, our_ip, bytes(6), target_ip)
    return build_ether(BROADCAST_MAC, our_mac, ETHERTYPE_ARP, req.build())


def format_mac(mac: Buffer) -> str:
    return ":".join(f"{b:02x}" for b in bytes(mac))
