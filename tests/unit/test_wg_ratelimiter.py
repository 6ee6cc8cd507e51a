"""Token bucket: 20 packets/s per source, burst 5, garbage-collected after 1 s idle."""

from __future__ import annotations

from tunkit.wireguard.ratelimiter import RateLimiter, source_key


def test_burst_then_refill() -> None:
    rl = RateLimiter()
    key = b"\x0a\0\0\x01"
    # wireguard-go semantics: a bucket of 5 tokens, created with one spent, and a packet
    # passes only while *more* than one token is left: 4 back-to-back packets pass.
    assert [rl.allow(key, 0.0) for _ in range(6)] == [True] * 4 + [False] * 2
    assert rl.allow(b"other", 0.0)  # independent bucket
    assert rl.allow(key, 0.04)  # 1 + 0.8 tokens > 1
    assert not rl.allow(key, 0.04)
    assert not rl.allow(key, 0.05)  # exactly 1 token: not more than the cost
    assert rl.allow(key, 0.051)
    assert not rl.allow(key, 0.052)


def test_garbage_collection() -> None:
    rl = RateLimiter()
    rl.allow(b"a", 0.0)
    assert rl.next_deadline() == 1.0
    rl.allow(b"b", 0.9)
    rl.collect_garbage(1.5)
    assert len(rl) == 1 and rl.next_deadline() == 2.5
    rl.collect_garbage(3.0)
    assert len(rl) == 0 and rl.next_deadline() is None


def test_source_key() -> None:
    assert source_key(("10.1.2.3", 5)) == bytes([10, 1, 2, 3])
    assert source_key(("2001:db8:1:2::5", 5)) == source_key(("2001:db8:1:2:ffff::9", 7))
    assert len(source_key(("2001:db8::1", 5))) == 8
