"""describe_packet: exact lines for each kind, and it never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.packet.describe import describe_packet
from tunkit.packet.ether import ETHERTYPE_IPV4, build_arp_request, build_ether
from tunkit.packet.icmp import ICMPV6_ECHO_REPLY, build_icmpv6_echo, echo_request_packet
from tunkit.packet.ip import PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, build_ipv4, build_ipv6
from tunkit.packet.tcp import ACK, SYN, build_tcp_segment
from tunkit.packet.udp import build_udp

A, B = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 7])
A6 = bytes.fromhex("fd00" + "00" * 13 + "01")
B6 = bytes.fromhex("fd00" + "00" * 13 + "02")


def test_icmp_echo_request() -> None:
    pkt = echo_request_packet(A, B, 12, 1, bytes(56))
    assert describe_packet(pkt) == "ICMP 10.9.0.1 -> 10.9.0.7 len=84 echo-request id=12 seq=1"


def test_tcp_syn() -> None:
    seg = build_tcp_segment(A, B, 40312, 80, flags=SYN, options=bytes([2, 4, 5, 180]) + b"\x01" * 16)
    assert describe_packet(build_ipv4(A, B, PROTO_TCP, seg)) == "TCP 10.9.0.1:40312 -> 10.9.0.7:80 [S] len=60"
    ack = build_ipv4(A, B, PROTO_TCP, build_tcp_segment(A, B, 1, 2, b"data", flags=ACK | SYN))
    assert describe_packet(ack) == "TCP 10.9.0.1:1 -> 10.9.0.7:2 [S.] len=44"


def test_udp_v6() -> None:
    pkt = build_ipv6(A6, B6, PROTO_UDP, build_udp(A6, B6, 53, 5353, bytes(28)))
    assert describe_packet(pkt) == "UDP [fd00::1]:53 -> [fd00::2]:5353 len=76"


def test_icmpv6_echo_reply() -> None:
    pkt = build_ipv6(A6, B6, PROTO_ICMPV6, build_icmpv6_echo(A6, B6, ICMPV6_ECHO_REPLY, 7, 3, bytes(56)))
    assert describe_packet(pkt) == "ICMPv6 fd00::1 -> fd00::2 len=104 echo-reply id=7 seq=3"


def test_arp_and_ether_wrapped_ip() -> None:
    frame = build_arp_request(bytes.fromhex("02aabbccdd01"), A, B)
    assert describe_packet(frame, "ether") == "ARP who-has 10.9.0.7 tell 10.9.0.1"
    wrapped = build_ether(bytes(6), bytes(6), ETHERTYPE_IPV4, echo_request_packet(A, B, 1, 2))
    assert describe_packet(wrapped, "ether") == "ICMP 10.9.0.1 -> 10.9.0.7 len=28 echo-request id=1 seq=2"
    assert describe_packet(bytes(12) + b"\x88\xcc" + bytes(10), "ether").startswith("ether type=0x88cc")


def test_unknown_protocol_and_malformed() -> None:
    assert describe_packet(build_ipv4(A, B, 47, bytes(44))) == "IPv4 proto=47 10.9.0.1 -> 10.9.0.7 len=64"
    assert describe_packet(b"\x45\x00\x00") == "malformed (IPv4 packet of 3 bytes) len=3"
    assert describe_packet(b"") == "malformed (empty packet) len=0"
    truncated_tcp = build_ipv4(A, B, PROTO_TCP, bytes(10))
    assert describe_packet(truncated_tcp).startswith("malformed (TCP header truncated")


@settings(max_examples=500)
@given(st.binary(max_size=100), st.sampled_from(["ip", "ether"]))
def test_never_raises(raw: bytes, link: str) -> None:
    line = describe_packet(raw, link)  # type: ignore[arg-type]
    assert isinstance(line, str) and "\n" not in line


def test_neighbor_solicitation_line() -> None:
    from tunkit.packet.icmp import ICMPV6_NEIGHBOR_SOLICIT, build_icmpv6

    ns = build_icmpv6(A6, B6, ICMPV6_NEIGHBOR_SOLICIT, 0, bytes(4), B6)
    assert describe_packet(build_ipv6(A6, B6, PROTO_ICMPV6, ns)) == "ICMPv6 fd00::1 -> fd00::2 len=64 neighbor-solicitation"
