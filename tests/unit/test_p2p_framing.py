"""simpletun (compat) and fast framing: exact bytes, bounds, incremental decoding, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunkit.errors import LocalProtocolError, RemoteProtocolError
from tunkit.p2p.framing import (
    NEED_DATA,
    FrameDecoder,
    FrameLengthError,
    compat_frame,
    compat_framing,
    fast_frame,
    fast_framing,
    pack_header_into,
    scan_frames,
)


def test_compat_frame_is_two_byte_big_endian_length_then_packet() -> None:
    packet = bytes(range(84))
    assert compat_frame(packet) == b"\x00\x54" + packet


def test_fast_frame_is_four_byte_big_endian_length() -> None:
    payload = b"\x01" * 65000
    frame = fast_frame(payload)
    assert frame[:4] == struct.pack("!I", 65000)
    assert frame[4:] == payload


def test_compat_bound_follows_mtu_and_tap() -> None:
    assert compat_framing(1500, tap=False).max_length == 1500
    assert compat_framing(1500, tap=True).max_length == 1518
    with pytest.raises(LocalProtocolError):
        compat_frame(b"x" * 1501)


@pytest.mark.parametrize("bad", [0, 1501, 0xFFFF])
def test_bad_compat_length_raises_remote_error(bad: int) -> None:
    dec = FrameDecoder(compat_framing(1500))
    dec.receive_data(struct.pack("!H", bad) + b"x" * 10)
    with pytest.raises(FrameLengthError):
        dec.next_frame()


def test_decoder_reassembles_byte_by_byte() -> None:
    packets = [b"a" * 60, b"b" * 1500, b"c"]
    stream = b"".join(compat_frame(p) for p in packets)
    dec = FrameDecoder(compat_framing(1500))
    out = []
    for i in range(len(stream)):
        dec.receive_data(stream[i : i + 1])
        while (frame := dec.next_frame()) is not NEED_DATA:
            out.append(frame)
    assert out == packets
    assert dec.take_remaining() == b""


def test_scan_frames_reports_offsets_and_incomplete_tail() -> None:
    stream = fast_frame(b"A" * 10) + fast_frame(b"B" * 5) + struct.pack("!I", 100) + b"C" * 50
    frames, nxt = scan_frames(fast_framing(), stream, 0, len(stream))
    assert frames == [(4, 10), (18, 5)]
    assert nxt == 23
    assert [stream[o : o + n] for o, n in frames] == [b"A" * 10, b"B" * 5]


def test_pack_header_into_frames_in_place() -> None:
    buf = bytearray(2 + 3)
    buf[2:] = b"xyz"
    pack_header_into(compat_framing(), buf, 0, 3)
    assert bytes(buf) == b"\x00\x03xyz"
    with pytest.raises(LocalProtocolError):
        pack_header_into(compat_framing(), buf, 0, 0)


@given(st.binary(max_size=4000), st.sampled_from(["compat", "fast"]))
def test_fuzz_scan_returns_or_raises_ours(data: bytes, kind: str) -> None:
    framing = compat_framing(1500) if kind == "compat" else fast_framing()
    try:
        frames, nxt = scan_frames(framing, data, 0, len(data))
    except RemoteProtocolError:
        return
    assert nxt <= len(data)
    for off, n in frames:
        assert 0 < n <= framing.max_length and off + n <= len(data)


@given(st.lists(st.binary(min_size=1, max_size=1500), max_size=20), st.integers(1, 97))
def test_fuzz_roundtrip_any_split(packets: list[bytes], chunk: int) -> None:
    stream = b"".join(compat_frame(p) for p in packets)
    dec = FrameDecoder(compat_framing(1500))
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        dec.receive_data(stream[i : i + chunk])
        while (frame := dec.next_frame()) is not NEED_DATA:
            assert isinstance(frame, bytes)
            out.append(frame)
    assert out == packets
