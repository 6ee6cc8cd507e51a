"""The proxy's TUN NAT loop on synthetic packets, with a datagram socketpair as the TUN.

No root: the loop is fed packets directly and its writes are read back from the pair.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import internet_checksum, pseudo_header_sum
from tunkit.packet.ip import PROTO_TCP, PROTO_UDP, build_ipv4
from tunkit.packet.tcp import ACK, RST, SYN, build_tcp_segment
from tunkit.packet.udp import build_udp
from tunkit.packet.vnet import GSO_TCPV4, NEEDS_CSUM, encode_vnet_hdr
from tunkit.proxy.rules import parse_upstream_url
from tunkit.services.proxy_state import ProxyConfig, ProxyState, parse_hostport, split_prefix
from tunkit.services.proxy_tun import TunNatLoop

APP = ipaddress.IPv4Address("10.0.0.5").packed
LISTENER_PORT = 40000


class FakeTun:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self, queue: int = 0) -> int:
        return self.fd


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TunNatLoop, socket.socket, list[tuple]]]:
    rules = tmp_path / "rules"
    rules.write_text("domain-keyword blocked reject\nport 7 direct\n")
    state = ProxyState(ProxyConfig(upstream=parse_upstream_url("socks5://127.0.0.1:1080"),
                                   rules_file=str(rules)))
    state.listen_port = LISTENER_PORT
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.settimeout(1)
    calls: list[tuple] = []
    loop = TunNatLoop(state, FakeTun(ours.fileno()),  # type: ignore[arg-type]
                      udp_sink=lambda *a: calls.append(("udp", *a)),
                      dns_sink=lambda q, reply: calls.append(("dns", q, reply)))
    yield loop, theirs, calls
    ours.close()
    theirs.close()


def feed(loop: TunNatLoop, packet: bytes, vnet: bytes = bytes(10)) -> None:
    buf = bytearray(vnet + packet)
    loop.on_packet(memoryview(buf), len(buf), 1.0)


def written(tun: socket.socket) -> tuple[bytes, bytes]:
    data = tun.recv(70000)
    return data[:10], data[10:]


def tcp_valid(packet: bytes) -> bool:
    ihl = (packet[0] & 0xF) * 4
    seg = packet[ihl:]
    return internet_checksum(seg, pseudo_header_sum(packet[12:16], packet[16:20], PROTO_TCP,
                                                    len(seg))) == 0


def syn(dst: bytes, dport: int = 80, sport: int = 1234, flags: int = SYN, seq: int = 1000,
        ack: int = 0, payload: bytes = b"") -> bytes:
    return build_ipv4(APP, dst, PROTO_TCP, build_tcp_segment(APP, dst, sport, dport, payload,
                                                             seq=seq, ack=ack, flags=flags))


def fake_ip(loop: TunNatLoop, domain: str) -> bytes:
    return loop.state.pool4.ip_for(domain, 0.0).packed


def test_syn_goes_to_the_listener_and_replies_come_back(setup) -> None:
    loop, tun, _ = setup
    dst = fake_ip(loop, "a.test")
    feed(loop, syn(dst))
    _, out = written(tun)
    assert tcp_valid(out)
    fake_src = ipaddress.IPv4Address(out[12:16])
    assert fake_src in ipaddress.ip_network("198.19.0.0/16")  # the NAT half of the prefix
    assert out[16:20] == ipaddress.IPv4Address("198.18.0.1").packed
    sport, dport = struct.unpack_from("!HH", out, 20)
    assert dport == LISTENER_PORT
    mapping = loop.state.nat4.lookup_by_fake(out[12:16], sport)
    assert mapping is not None and mapping.key.dst_ip == dst
    # the kernel's SYN-ACK from the listener comes out of the TUN: back to the app
    reply = build_ipv4(out[16:20], out[12:16], PROTO_TCP, build_tcp_segment(
        out[16:20], out[12:16], LISTENER_PORT, sport, seq=5, ack=1001, flags=SYN | ACK))
    feed(loop, reply)
    _, back = written(tun)
    assert tcp_valid(back)
    assert back[12:16] == dst and back[16:20] == APP
    assert struct.unpack_from("!HH", back, 20) == (80, 1234)
    # later packets of the flow reuse the same mapping
    feed(loop, syn(dst, flags=ACK, seq=1001, ack=6, payload=b"GET / HTTP/1.1\r\n\r\n"))
    _, again = written(tun)
    assert again[12:16] == out[12:16] and struct.unpack_from("!H", again, 20)[0] == sport
    assert tcp_valid(again)


def test_reject_rule_answers_syn_with_rst(setup) -> None:
    loop, tun, _ = setup
    dst = fake_ip(loop, "www.blocked.test")
    feed(loop, syn(dst, seq=777))
    _, rst = written(tun)
    assert tcp_valid(rst)
    assert rst[12:16] == dst and rst[16:20] == APP
    seq, ack = struct.unpack_from("!II", rst, 24)
    assert rst[33] == RST | ACK and seq == 0 and ack == 778
    assert loop.state.counters["tcp_rejected"] == 1
    assert len(loop.state.nat4) == 0


def test_fake_ip_without_domain_and_stale_packets_get_rst(setup) -> None:
    loop, tun, _ = setup
    unknown = ipaddress.IPv4Address("198.18.9.9").packed
    feed(loop, syn(unknown))
    _, rst = written(tun)
    assert rst[33] & RST
    dst = fake_ip(loop, "b.test")
    feed(loop, syn(dst, flags=ACK, seq=10, ack=4242))  # no mapping (e.g. after a restart)
    _, rst = written(tun)
    assert rst[33] == RST and struct.unpack_from("!I", rst, 24)[0] == 4242
    assert tcp_valid(rst)


def test_gso_super_packet_with_partial_checksum(setup) -> None:
    loop, tun, _ = setup
    dst = fake_ip(loop, "c.test")
    feed(loop, syn(dst))
    _, out = written(tun)
    sport = struct.unpack_from("!H", out, 20)[0]
    payload = bytes(range(256)) * 200  # 51200 bytes: one TSO super-packet
    seg = bytearray(build_tcp_segment(out[16:20], out[12:16], LISTENER_PORT, sport, payload,
                                      seq=1, ack=1, flags=ACK))
    partial = pseudo_header_sum(out[16:20], out[12:16], PROTO_TCP, len(seg))
    struct.pack_into("!H", seg, 16, partial)
    packet = build_ipv4(out[16:20], out[12:16], PROTO_TCP, seg)
    vnet = encode_vnet_hdr(NEEDS_CSUM, GSO_TCPV4, 40, 1448, 20, 16)
    feed(loop, packet, vnet)
    hdr, back = written(tun)
    assert hdr == vnet  # the offload header goes back unchanged
    assert back[12:16] == dst and back[16:20] == APP
    assert struct.unpack_from("!H", back, 36)[0] == pseudo_header_sum(dst, APP, PROTO_TCP,
                                                                       len(seg))
    assert back[40:] == payload


def test_udp_goes_to_the_session_manager_and_dns_is_hijacked(setup) -> None:
    loop, tun, calls = setup
    dst = fake_ip(loop, "echo.test")
    feed(loop, build_ipv4(APP, dst, PROTO_UDP, build_udp(APP, dst, 5555, 7, b"hello")))
    assert calls[0][0] == "udp" and calls[0][2:] == (5555, ipaddress.IPv4Address(dst), 7,
                                                     b"hello")
    resolver = ipaddress.IPv4Address("10.9.9.9").packed
    feed(loop, build_ipv4(APP, resolver, PROTO_UDP, build_udp(APP, resolver, 6666, 53, b"q")))
    kind, query, reply = calls[1]
    assert kind == "dns" and query == b"q"
    reply(b"answer")
    _, packet = written(tun)
    assert packet[12:16] == resolver and packet[16:20] == APP
    assert struct.unpack_from("!HH", packet, 20) == (53, 6666) and packet[28:] == b"answer"
    udp = packet[20:]
    assert internet_checksum(udp, pseudo_header_sum(resolver, APP, PROTO_UDP, len(udp))) == 0


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(junk=st.binary(max_size=120), first=st.sampled_from([0x45, 0x46, 0x60, 0x00]),
       proto=st.sampled_from([6, 17, 1, 0]))
def test_garbage_raises_only_what_the_loop_catches(setup, junk: bytes, first: int,
                                                   proto: int) -> None:
    loop, tun, _ = setup
    packet = bytearray([first]) + bytearray(junk)
    if len(packet) > 9:
        packet[9] = proto
    buf = bytearray(bytes(10) + packet)
    # TunNatLoop.run counts and drops these; anything else would kill the loop
    with contextlib.suppress(MalformedPacketError, ValueError, IndexError, struct.error):
        loop.on_packet(memoryview(buf), len(buf), 1.0)
    tun.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while tun.recv(70000):
            pass
    tun.settimeout(1)


def test_prefix_split_and_hostport() -> None:
    _whole, pool, nat = split_prefix("198.18.0.0/15")
    assert (str(pool), str(nat)) == ("198.18.0.0/16", "198.19.0.0/16")
    assert parse_hostport("10.0.0.1", 53) == ("10.0.0.1", 53)
    assert parse_hostport("[fc00::1]:5353", 53) == ("fc00::1", 5353)
    with pytest.raises(Exception, match="invalid"):
        parse_hostport("example.com:53", 53)
