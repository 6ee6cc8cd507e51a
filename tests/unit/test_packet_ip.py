"""IPv4/IPv6 headers: round trips, field access, extension headers, fuzz."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import ones_complement_sum
from tunkit.packet.ip import (
    NO_L4,
    PROTO_DSTOPTS,
    PROTO_FRAGMENT,
    PROTO_HOPOPTS,
    PROTO_TCP,
    PROTO_UDP,
    IPv4Header,
    IPv6Header,
    addresses,
    build_ipv4,
    build_ipv6,
    ip_version,
    l4_offset,
    locate_l4,
    parse_ipv4,
    parse_ipv6,
)

addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)


@given(
    addr4, addr4, st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF),
    st.integers(0, 7), st.integers(0, 0x1FFF), st.integers(0, 255),
    st.integers(0, 10).map(lambda n: bytes(range(n * 4))), st.binary(max_size=64),
)
def test_ipv4_round_trip(
    src: bytes, dst: bytes, proto: int, tos: int, ident: int, flags: int, frag: int, ttl: int,
    options: bytes, payload: bytes,
) -> None:
    hdr = IPv4Header(
        src=src, dst=dst, protocol=proto, total_length=20 + len(options) + len(payload), tos=tos,
        identification=ident, flags=flags, fragment_offset=frag, ttl=ttl, options=options,
    )
    raw = hdr.build()
    assert ones_complement_sum(raw) == 0xFFFF
    parsed = parse_ipv4(raw + payload)
    assert parsed == IPv4Header(**{**_fields(hdr), "checksum": struct.unpack_from("!H", raw, 10)[0]})
    assert parsed.build() == raw
    assert ip_version(raw) == 4


def _fields(h: IPv4Header) -> dict[str, object]:
    return {name: getattr(h, name) for name in h.__slots__}


@given(addr6, addr6, st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFFF), st.integers(0, 255), st.binary(max_size=64))
def test_ipv6_round_trip(src: bytes, dst: bytes, nh: int, tc: int, flow: int, hops: int, payload: bytes) -> None:
    pkt = build_ipv6(src, dst, nh, payload, hop_limit=hops, traffic_class=tc, flow_label=flow)
    hdr = parse_ipv6(pkt)
    assert hdr == IPv6Header(src, dst, nh, len(payload), tc, flow, hops)
    assert hdr.build() == pkt[:40]
    assert addresses(pkt) == (src, dst)


def test_locate_l4_v4_with_options() -> None:
    hdr = IPv4Header(src=b"\x0a\0\0\1", dst=b"\x0a\0\0\2", protocol=PROTO_UDP, total_length=32, options=b"\x01" * 4)
    pkt = hdr.build() + bytes(8)
    assert locate_l4(pkt) == (4, PROTO_UDP, 24, 32)
    assert l4_offset(pkt) == 24
    # trailing link padding beyond total length is ignored
    assert locate_l4(pkt + b"pad")[3] == 32


def test_locate_l4_v4_non_first_fragment() -> None:
    pkt = bytearray(build_ipv4(b"\1\2\3\4", b"\5\6\7\x08", PROTO_TCP, bytes(24)))
    struct.pack_into("!H", pkt, 6, 0x2000 | 100)
    assert locate_l4(pkt)[1] == NO_L4


def test_ipv6_extension_headers_skipped() -> None:
    hop = bytes([PROTO_DSTOPTS, 0]) + bytes(6)
    dst_opts = bytes([PROTO_FRAGMENT, 1]) + bytes(14)
    frag_first = bytes([PROTO_TCP, 0]) + struct.pack("!H", 0x0001) + bytes(4)
    payload = hop + dst_opts + frag_first + bytes(20)
    pkt = build_ipv6(bytes(16), bytes(16), PROTO_HOPOPTS, payload)
    assert locate_l4(pkt) == (6, PROTO_TCP, 40 + 8 + 16 + 8, len(pkt))
    later = bytes([PROTO_TCP, 0]) + struct.pack("!H", 8 << 3) + bytes(4)
    pkt2 = build_ipv6(bytes(16), bytes(16), PROTO_FRAGMENT, later + bytes(20))
    assert locate_l4(pkt2)[1] == NO_L4


def test_ipv6_extension_header_chain_is_bounded() -> None:
    chain = (bytes([PROTO_DSTOPTS, 0]) + bytes(6)) * 20
    pkt = build_ipv6(bytes(16), bytes(16), PROTO_DSTOPTS, chain)
    with pytest.raises(MalformedPacketError, match="extension headers"):
        locate_l4(pkt)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x45", b"\x45" + bytes(18), b"\x44" + bytes(19), b"\x4f" + bytes(19),
     bytes.fromhex("4500ffff") + bytes(16), b"\x60" + bytes(38), bytes.fromhex("60000000ffff") + bytes(34), b"\x70" * 40],
)
def test_malformed_headers_raise_our_error(raw: bytes) -> None:
    with pytest.raises(MalformedPacketError):
        locate_l4(raw)


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_ip_parsers(raw: bytes) -> None:
    for parse in (parse_ipv4, parse_ipv6, locate_l4, ip_version, addresses, l4_offset):
        with contextlib.suppress(MalformedPacketError):
            parse(raw)


@settings(max_examples=300)
@given(st.sampled_from([b"\x45", b"\x46", b"\x60"]), st.binary(max_size=120))
def test_fuzz_ip_parsers_plausible_start(first: bytes, rest: bytes) -> None:
    raw = first + rest
    for parse in (parse_ipv4, parse_ipv6, locate_l4):
        with contextlib.suppress(MalformedPacketError):
            parse(raw)
