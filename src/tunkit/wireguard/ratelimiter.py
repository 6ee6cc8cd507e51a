"""Per-source token-bucket rate limiter for handshake messages under load (whitepaper §5.3).

Same policy and arithmetic as wireguard-go: each source key has a bucket of 5 packet-costs
refilled at 20 packets per second; a new key starts with one cost spent, and a packet passes
only while *more* than one cost is left (so 4 back-to-back packets pass, then 20/s).  Keys are opaque bytes; :func:`source_key` makes one from an ``(host, port)`` endpoint
(the IPv4 address, or the /64 of an IPv6 address, so one host cannot dodge the limit by
rotating ports or interface identifiers).  Idle entries are dropped by
:meth:`RateLimiter.collect_garbage`, which the owner calls from its timer
(:meth:`RateLimiter.next_deadline`).  Times are ``now`` seconds from the caller.
"""

from __future__ import annotations

import ipaddress

from .constants import RATELIMIT_BURST, RATELIMIT_GC_INTERVAL, RATELIMIT_PACKETS_PER_SECOND

_NS = 1_000_000_000


def source_key(endpoint: tuple[object, ...]) -> bytes:
    """The rate-limit key for a datagram source: IPv4 address or IPv6 /64."""
    host = endpoint[0] if endpoint else ""
    try:
        ip = ipaddress.ip_address(str(host))
    except ValueError:
        return str(host).encode()
    packed = ip.packed
    return packed if ip.version == 4 else packed[:8]


class RateLimiter:
    __slots__ = ("_cost", "_entries", "_max_tokens", "_next_gc")

    def __init__(
        self, packets_per_second: int = RATELIMIT_PACKETS_PER_SECOND, burst: int = RATELIMIT_BURST
    ) -> None:
        self._cost = _NS // packets_per_second
        self._max_tokens = self._cost * burst
        self._entries: dict[bytes, list[int]] = {}  # key -> [tokens_ns, last_ns]
        self._next_gc: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def allow(self, key: bytes, now: float) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        now_ns = int(now * _NS)
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = [self._max_tokens - self._cost, now_ns]
            if self._next_gc is None:
                self._next_gc = now + RATELIMIT_GC_INTERVAL
            return True
        tokens = min(entry[0] + max(now_ns - entry[1], 0), self._max_tokens)
        entry[1] = now_ns
        if tokens > self._cost:
            entry[0] = tokens - self._cost
            return True
        entry[0] = tokens
        return False

    def next_deadline(self) -> float | None:
        return self._next_gc

    def collect_garbage(self, now: float) -> None:
        """Forget sources idle for more than a second."""
        now_ns = int(now * _NS)
        limit = int(RATELIMIT_GC_INTERVAL * _NS)
        stale = [k for k, (_, last) in self._entries.items() if now_ns - last > limit]
        for key in stale:
            del self._entries[key]
        self._next_gc = now + RATELIMIT_GC_INTERVAL if self._entries else None
