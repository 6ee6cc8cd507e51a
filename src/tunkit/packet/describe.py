"""One-line, human-readable packet summaries (the ``tunkit sniff`` output).

Contract: ``describe_packet(packet, link)`` never raises.  ``link`` is ``"ip"`` (TUN: the
packet starts with an IPv4/IPv6 header) or ``"ether"`` (TAP: an Ethernet frame).
Examples::

    ICMP 10.9.0.1 -> 10.9.0.7 len=84 echo-request id=12 seq=1
    TCP 10.9.0.1:40312 -> 10.9.0.7:80 [S] len=60
    UDP [fd00::1]:53 -> [fd00::2]:5353 len=76
    ICMPv6 fd00::1 -> fd00::2 len=104 echo-reply id=7 seq=3
    ARP who-has 10.9.0.7 tell 10.9.0.1
    IPv4 proto=47 10.0.0.1 -> 10.0.0.2 len=64
    malformed (IPv4 total length 9999 (buffer 60)) len=60

``len`` is the IP packet length (the IPv4 total length, or 40 + the IPv6 payload length).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer
from tunkit.packet.ether import (
    ARP_REPLY,
    ARP_REQUEST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    format_mac,
    parse_arp,
    parse_ether,
)
from tunkit.packet.icmp import ICMP_TYPE_NAMES, ICMPV6_TYPE_NAMES, parse_icmp
from tunkit.packet.ip import NO_L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, locate_l4
from tunkit.packet.tcp import flag_string, parse_tcp
from tunkit.packet.udp import parse_udp

_ECHO_TYPES = frozenset({0, 8, 128, 129})


def describe_packet(packet: Buffer, link: Literal["ip", "ether"] = "ip") -> str:
    """One-line summary of ``packet``; malformed input gives ``malformed (reason) len=N``."""
    try:
        if link == "ether":
            return _describe_frame(packet)
        return _describe_ip(packet)
    except MalformedPacketError as err:
        return f"malformed ({err}) len={len(packet)}"
    except Exception as err:  # a summary must never take the sniffer down
        return f"malformed ({type(err).__name__}: {err}) len={len(packet)}"


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _endpoint(raw: bytes, port: int) -> str:
    return f"{_addr(raw)}:{port}" if len(raw) == 4 else f"[{_addr(raw)}]:{port}"


def _describe_ip(pkt: Buffer) -> str:
    version, proto, l4, end = locate_l4(pkt)
    if version == 4:
        src, dst = bytes(pkt[12:16]), bytes(pkt[16:20])
        family = "IPv4"
    else:
        src, dst = bytes(pkt[8:24]), bytes(pkt[24:40])
        family = "IPv6"
    if proto == PROTO_TCP:
        tcp = parse_tcp(pkt, l4, end)
        return (
            f"TCP {_endpoint(src, tcp.src_port)} -> {_endpoint(dst, tcp.dst_port)} "
            f"[{flag_string(tcp.flags)}] len={end}"
        )
    if proto == PROTO_UDP:
        udp = parse_udp(pkt, l4, end)
        return f"UDP {_endpoint(src, udp.src_port)} -> {_endpoint(dst, udp.dst_port)} len={end}"
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        msg = parse_icmp(pkt, l4, end)
        v6 = proto == PROTO_ICMPV6
        names = ICMPV6_TYPE_NAMES if v6 else ICMP_TYPE_NAMES
        line = f"{'ICMPv6' if v6 else 'ICMP'} {_addr(src)} -> {_addr(dst)} len={end} "
        line += names.get(msg.type, f"type={msg.type}")
        if msg.type in _ECHO_TYPES:
            line += f" id={msg.ident} seq={msg.seq}"
        elif msg.code:
            line += f" code={msg.code}"
        return line
    if proto == NO_L4:
        return f"{family} fragment {_addr(src)} -> {_addr(dst)} len={end}"
    key = "proto" if version == 4 else "next-header"
    return f"{family} {key}={proto} {_addr(src)} -> {_addr(dst)} len={end}"


def _describe_frame(frame: Buffer) -> str:
    eth, off = parse_ether(frame)
    if eth.ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return _describe_ip(memoryview(frame)[off:])
    if eth.ethertype == ETHERTYPE_ARP:
        arp = parse_arp(frame, off)
        if arp.op == ARP_REQUEST:
            return f"ARP who-has {_addr(arp.target_ip)} tell {_addr(arp.sender_ip)}"
        if arp.op == ARP_REPLY:
            return f"ARP reply {_addr(arp.sender_ip)} is-at {format_mac(arp.sender_mac)}"
        return f"ARP op={arp.op} {_addr(arp.sender_ip)} -> {_addr(arp.target_ip)}"
    return (
        f"ether type={eth.ethertype:#06x} {format_mac(eth.src)} -> {format_mac(eth.dst)} "
        f"len={len(frame)}"
    )
