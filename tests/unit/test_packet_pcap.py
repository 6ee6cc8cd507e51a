"""pcap writer: exact header and record bytes."""

from __future__ import annotations

import io
import struct

from tunkit.packet.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapWriter


def test_global_header_nanoseconds_raw() -> None:
    buf = io.BytesIO()
    PcapWriter(buf, LINKTYPE_RAW)
    assert buf.getvalue() == bytes.fromhex("4d3cb2a1" "0200" "0400" "00000000" "00000000" "00000400" "65000000")


def test_global_header_microseconds_ethernet() -> None:
    buf = io.BytesIO()
    PcapWriter(buf, LINKTYPE_ETHERNET, nanosecond=False, snaplen=65535)
    assert buf.getvalue() == bytes.fromhex("d4c3b2a1" "0200" "0400" "00000000" "00000000" "ffff0000" "01000000")


def test_records() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_RAW, nanosecond=False)
    w.write(b"\x45" + bytes(19), 1700000000.25)
    w.write(b"abc", 1700000001.9999999)  # rounds up into the next second
    w.write_ns(b"xy", 1_700_000_002_123_456_789)
    raw = buf.getvalue()[24:]
    assert struct.unpack_from("<IIII", raw, 0) == (1700000000, 250000, 20, 20)
    assert raw[16:36] == b"\x45" + bytes(19)
    assert struct.unpack_from("<IIII", raw, 36) == (1700000002, 0, 3, 3)
    assert struct.unpack_from("<IIII", raw, 55) == (1700000002, 123456, 2, 2)
    assert w.packets_written == 3


def test_snaplen_truncates_but_keeps_original_length() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_RAW, snaplen=10)
    w.write(bytes(range(30)), 5.000000001)
    raw = buf.getvalue()[24:]
    assert struct.unpack_from("<IIII", raw) == (5, 1, 10, 30)
    assert raw[16:] == bytes(range(10))
