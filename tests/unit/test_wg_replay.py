"""RFC 6479 replay window: 8128 usable bits, like wireguard-go's replay package."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunkit.wireguard.constants import REJECT_AFTER_MESSAGES
from tunkit.wireguard.replay import WINDOW_SIZE, ReplayWindow


def test_window_size() -> None:
    assert WINDOW_SIZE == 8128


def test_sequence_like_wireguard_go_tests() -> None:
    w = ReplayWindow()
    t = w.check_and_update
    assert t(0) and not t(0)
    assert t(1) and t(3) and t(2) and not t(2) and not t(1)
    assert t(WINDOW_SIZE + 3)  # window moves; 3 is now exactly at the edge
    assert not t(3)  # already seen
    assert t(4)  # last - 4 == WINDOW_SIZE - 1 ... still inside
    assert not t(2)  # last - 2 > WINDOW_SIZE: too old
    assert t(WINDOW_SIZE + 10)
    assert not t(WINDOW_SIZE + 10)
    assert t(10 * WINDOW_SIZE)  # big jump clears the ring
    assert not t(10 * WINDOW_SIZE - WINDOW_SIZE - 1)
    assert t(10 * WINDOW_SIZE - WINDOW_SIZE)
    assert not t(REJECT_AFTER_MESSAGES)
    assert t(REJECT_AFTER_MESSAGES - 1)


def test_out_of_order_within_window_all_accepted_once() -> None:
    w = ReplayWindow()
    order = list(range(2000))[::-1]
    assert all(w.check_and_update(c) for c in order)
    assert not any(w.check_and_update(c) for c in order)


@given(st.lists(st.integers(min_value=0, max_value=50_000), max_size=300))
def test_matches_a_naive_model(counters: list[int]) -> None:
    w = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for c in counters:
        expected = c not in seen and (top < 0 or c > top or top - c <= WINDOW_SIZE)
        # the naive model forgets nothing; the ring only differs for too-old counters,
        # which both reject
        assert w.check_and_update(c) == expected, c
        if expected:
            seen.add(c)
            top = max(top, c)
