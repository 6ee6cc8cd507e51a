"""Message parse/build: exact layouts, errors on bad input, and hypothesis fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.wireguard import messages as m


def test_initiation_layout_round_trip() -> None:
    data = m.build_initiation(0x01020304, b"E" * 32, b"S" * 48, b"T" * 28, b"1" * 16, b"2" * 16)
    assert len(data) == 148
    assert data[:8] == b"\x01\0\0\0\x04\x03\x02\x01"
    assert data[8:40] == b"E" * 32 and data[40:88] == b"S" * 48 and data[88:116] == b"T" * 28
    assert data[116:132] == b"1" * 16 and data[132:] == b"2" * 16
    msg = m.parse_initiation(data)
    assert (msg.sender, msg.ephemeral, msg.mac1, msg.mac2) == (
        0x01020304,
        b"E" * 32,
        b"1" * 16,
        b"2" * 16,
    )


def test_response_layout_round_trip() -> None:
    data = m.build_response(7, 9, b"E" * 32, b"N" * 16, b"1" * 16)
    assert len(data) == 92 and data[:12] == b"\x02\0\0\0\x07\0\0\0\x09\0\0\0"
    msg = m.parse_response(data)
    assert (msg.sender, msg.receiver, msg.encrypted_nothing, msg.mac2) == (
        7,
        9,
        b"N" * 16,
        bytes(16),
    )


def test_cookie_reply_and_transport_header() -> None:
    data = m.build_cookie_reply(0xFFFFFFFF, b"n" * 24, b"c" * 32)
    assert len(data) == 64 and data[:8] == b"\x03\0\0\0\xff\xff\xff\xff"
    assert m.parse_cookie_reply(data).nonce == b"n" * 24
    header = m.build_transport_header(5, 2**64 - 1)
    assert header == b"\x04\0\0\0\x05\0\0\0" + b"\xff" * 8
    assert m.parse_transport_header(header + bytes(16)) == m.TransportHeader(5, 2**64 - 1)
    assert m.TRANSPORT_HEADER.unpack_from(header)[0] == m.TRANSPORT_TYPE_WORD


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\0\0",
        b"\x01\0\0\0" + bytes(143),  # one byte short
        b"\x01\0\0\0" + bytes(145),  # one byte long
        b"\x01\0\1\0" + bytes(144),  # reserved byte set
        b"\x05\0\0\0" + bytes(60),  # unknown type
        b"\x04\0\0\0" + bytes(27),  # transport shorter than 32
        b"\x00\0\0\0" + bytes(60),
    ],
)
def test_bad_messages_raise_malformed(data: bytes) -> None:
    with pytest.raises(m.MalformedMessageError):
        m.message_type(data)


def test_parser_rejects_other_types() -> None:
    with pytest.raises(m.MalformedMessageError):
        m.parse_response(b"\x01\0\0\0" + bytes(144))


PARSERS = [
    m.parse_initiation,
    m.parse_response,
    m.parse_cookie_reply,
    m.parse_transport_header,
    m.message_type,
]


@given(st.binary(max_size=200), st.sampled_from(PARSERS))
def test_fuzz_parsers_return_or_raise_our_error(data: bytes, parser: object) -> None:
    with contextlib.suppress(MalformedPacketError):
        parser(data)  # type: ignore[operator]


@given(st.sampled_from([(1, 148), (2, 92), (3, 64), (4, 32), (4, 100)]), st.data())
def test_fuzz_well_sized_messages_parse(kind_size: tuple[int, int], data: st.DataObject) -> None:
    kind, size = kind_size
    body = data.draw(st.binary(min_size=size - 4, max_size=size - 4))
    raw = bytes([kind, 0, 0, 0]) + body
    assert m.message_type(raw) == kind
    parser = {
        1: m.parse_initiation,
        2: m.parse_response,
        3: m.parse_cookie_reply,
        4: m.parse_transport_header,
    }[kind]
    parser(raw)
