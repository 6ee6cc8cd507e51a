"""Checksums: RFC 1071 known answer, agreement with a reference fold loop, RFC 1624."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import (
    NUMPY_THRESHOLD,
    incremental_update,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
    segment_sums,
    strided_sums,
)


def reference_sum(data: bytes) -> int:
    """The textbook RFC 1071 loop, the oracle for the fast paths."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_known_ipv4_header() -> None:
    # a classic example header (checksum field zeroed), checksum 0xb861
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(hdr) == 0xB861


def test_all_zero_and_all_ones() -> None:
    assert ones_complement_sum(b"") == 0
    assert ones_complement_sum(bytes(100)) == 0
    assert ones_complement_sum(b"\xff" * 4000) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, NUMPY_THRESHOLD - 1, NUMPY_THRESHOLD, NUMPY_THRESHOLD + 3, 65535])
def test_both_paths_match_reference(size: int) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))
    assert ones_complement_sum(data) == reference_sum(data)


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.integers(0, 0xFFFF))
def test_sum_matches_reference(data: bytes, initial: int) -> None:
    expected = reference_sum(data + b"\0" * (len(data) % 2) + initial.to_bytes(2, "big"))
    assert ones_complement_sum(data, initial) == expected
    assert ones_complement_sum(memoryview(bytearray(data))) == reference_sum(data)


@settings(max_examples=300)
@given(st.binary(min_size=2, max_size=200), st.data())
def test_incremental_update_equals_recompute(data: bytes, draw: st.DataObject) -> None:
    # a non-zero constant word, as every real header has, keeps the sum away from -0
    data = b"\x45\x00" + data[: len(data) // 2 * 2]
    pos = draw.draw(st.integers(1, len(data) // 2 - 1)) * 2
    width = draw.draw(st.sampled_from([2, 4]))
    width = min(width, len(data) - pos)
    new = draw.draw(st.binary(min_size=width, max_size=width))
    old_csum = internet_checksum(data)
    changed = data[:pos] + new + data[pos + width :]
    updated = incremental_update(old_csum, data[pos : pos + width], new)
    assert updated == internet_checksum(changed)
    assert ones_complement_sum(changed, updated) == 0xFFFF


def test_pseudo_header_v4_and_v6() -> None:
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    expected = reference_sum(src + dst + bytes([0, 6]) + (1000).to_bytes(2, "big"))
    assert pseudo_header_sum(src, dst, 6, 1000) == expected
    s6, d6 = bytes(range(16)), bytes(range(16, 32))
    ph6 = s6 + d6 + (70000).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    assert pseudo_header_sum(s6, d6, 17, 70000) == reference_sum(ph6)
    with pytest.raises(MalformedPacketError):
        pseudo_header_sum(b"\0" * 5, b"\0" * 5, 6, 1)


@settings(max_examples=200)
@given(st.binary(max_size=600), st.data())
def test_segment_sums_any_slices(data: bytes, draw: st.DataObject) -> None:
    n = len(data)
    starts = draw.draw(st.lists(st.integers(0, n), max_size=12))
    ends = [draw.draw(st.integers(s, n)) for s in starts]
    got = segment_sums(data, starts, ends).tolist()
    assert got == [reference_sum(data[s:e]) for s, e in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("first,step,end", [(52, 1448, 65535), (40, 1000, 5000), (2, 6, 41), (3, 7, 100), (8, 8, 8), (0, 100, 50)])
def test_strided_sums(first: int, step: int, end: int) -> None:
    data = bytes((i * 31 + 11) & 0xFF for i in range(65535))
    got = strided_sums(data, first, step, end).tolist()
    starts = list(range(first, end, step)) or [first]
    assert got == [reference_sum(data[s : min(s + step, end)]) for s in starts]


def test_segment_sums_rejects_out_of_range() -> None:
    with pytest.raises(MalformedPacketError):
        segment_sums(b"abcd", [0], [5])
    assert segment_sums(b"abcd", np.array([], dtype=np.int64), []).size == 0
