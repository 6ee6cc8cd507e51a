"""TAI64N encoding and whitening."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunkit.wireguard.tai64n import is_after, tai64n, unix_time


def test_epoch_encoding() -> None:
    assert tai64n(0.0) == bytes.fromhex("400000000000000a") + bytes(4)
    assert tai64n(1.0)[:8] == bytes.fromhex("400000000000000b")


def test_nanoseconds_are_whitened_to_2_pow_24() -> None:
    stamp = tai64n(100.5)
    nanos = int.from_bytes(stamp[8:], "big")
    assert nanos % (1 << 24) == 0 and 500_000_000 - (1 << 24) < nanos <= 500_000_000
    assert tai64n(100.5) == tai64n(100.5 + 0.001)  # same 16.7 ms bucket
    assert is_after(tai64n(100.6), tai64n(100.5))
    assert abs(unix_time(stamp) - 100.5) < 0.017


@given(st.floats(min_value=0, max_value=2**40), st.floats(min_value=0.02, max_value=1000))
def test_monotonic(t: float, dt: float) -> None:
    assert is_after(tai64n(t + dt), tai64n(t))
