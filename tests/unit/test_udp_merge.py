"""merge_single_datagrams: userspace GRO over reads laid back to back in one buffer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunkit.io.udp import Read, merge_single_datagrams

A, B = ("192.0.2.1", 51820), ("192.0.2.2", 51820)


def lay_out(items: list[tuple[int, int, tuple[str, int]]]) -> list[Read]:
    """(nbytes, segment, source) reads placed back to back from offset 0."""
    reads, offset = [], 0
    for nbytes, segment, source in items:
        reads.append((offset, nbytes, segment, source))
        offset += nbytes
    return reads


def test_equal_singles_become_one_run_and_a_shorter_one_ends_it() -> None:
    reads = lay_out([(100, 0, A), (100, 0, A), (60, 0, A), (100, 0, A)])
    assert merge_single_datagrams(reads) == [(0, 260, 100, A), (260, 100, 0, A)]


def test_singles_join_a_gro_read_but_not_a_larger_one_or_another_source() -> None:
    reads = lay_out([(300, 100, A), (100, 0, A), (120, 0, A), (100, 0, B), (100, 0, B)])
    assert merge_single_datagrams(reads) == [
        (0, 400, 100, A), (400, 120, 0, A), (520, 200, 100, B)]


def test_gro_reads_of_one_size_join_but_not_of_another() -> None:
    reads = lay_out([(300, 100, A), (250, 100, A), (300, 100, A), (100, 0, A), (240, 120, A)])
    assert merge_single_datagrams(reads) == [
        (0, 550, 100, A), (550, 400, 100, A), (950, 240, 120, A)]


def test_a_gro_read_ending_short_and_zero_length_datagrams_stay_apart() -> None:
    reads = lay_out([(250, 100, A), (100, 0, A), (0, 0, A), (100, 0, A)])
    assert merge_single_datagrams(reads) == reads


def test_reads_that_are_not_contiguous_stay_apart() -> None:
    reads = [(0, 100, 0, A), (200, 100, 0, A)]
    assert merge_single_datagrams(reads) == reads


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.sampled_from([0, 0, 0, 100]),
                          st.sampled_from([A, B])), max_size=30))
def test_merging_keeps_every_datagram_in_order(items: list[tuple[int, int, tuple[str, int]]]
                                               ) -> None:
    items = [(n if seg == 0 else max(n, seg + 1), seg, src) for n, seg, src in items]

    def datagrams(reads: list[Read]) -> list[tuple[int, int, tuple[str, int]]]:
        out = []
        for offset, nbytes, segment, source in reads:
            size = segment or nbytes or 1
            for start in range(offset, offset + max(nbytes, 1), size):
                out.append((start, min(start + size, offset + nbytes) - start, source))
        return out

    reads = lay_out(items)
    merged = merge_single_datagrams(reads)
    assert datagrams(merged) == datagrams(reads)
    assert all(nbytes >= segment for _offset, nbytes, segment, _source in merged)
    assert len(merged) <= len(reads)
