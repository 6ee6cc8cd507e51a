"""TAI64N timestamps for handshake initiations (whitepaper §5.1, §5.4.2).

A timestamp is 12 bytes: big-endian u64 ``2**62 + 10 + unix_seconds`` then big-endian u32
nanoseconds.  Like wireguard-go and the kernel, the nanoseconds are rounded down to a multiple
of 2**24 ns (~16.7 ms) so that a timestamp does not leak a precise clock.  Because the encoding
is big-endian, "newer" is plain byte-string comparison: ``a > b``.
"""

from __future__ import annotations

import math
import struct

from .constants import TIMESTAMP_SIZE

_TAI64_BASE = 2**62 + 10
_WHITENER_MASK = (1 << 24) - 1
_TAI64N = struct.Struct(">QI")


def tai64n(unix_time: float) -> bytes:
    """Encode wall-clock seconds since the Unix epoch as a whitened TAI64N timestamp."""
    seconds = math.floor(unix_time)
    nanos = int((unix_time - seconds) * 1e9)
    nanos = min(nanos, 999_999_999) & ~_WHITENER_MASK
    return _TAI64N.pack(_TAI64_BASE + seconds, nanos)


def unix_time(timestamp: bytes) -> float:
    """Decode a TAI64N timestamp back to Unix seconds (for logs and tests)."""
    if len(timestamp) != TIMESTAMP_SIZE:
        raise ValueError("TAI64N timestamps are 12 bytes")
    seconds, nanos = _TAI64N.unpack(timestamp)
    return float(seconds - _TAI64_BASE + nanos / 1e9)


def is_after(timestamp: bytes, previous: bytes) -> bool:
    """True when ``timestamp`` is strictly newer than ``previous``."""
    return timestamp > previous
