"""PeerTimers: deadlines and the wireguard-go hook semantics, without a device."""

from __future__ import annotations

import random

from tunkit.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER_TIME,
)
from tunkit.wireguard.timers import PeerTimers, Timer, jitter


def test_constants() -> None:
    assert MAX_TIMER_HANDSHAKES == 18
    assert ZERO_KEYS_AFTER_TIME == 540.0


def test_jitter_range() -> None:
    rng = random.Random(1).randbytes
    values = [jitter(rng) for _ in range(2000)]
    assert min(values) >= 0 and max(values) <= 0.333 and len(set(values)) > 300
    timers = PeerTimers(rng)
    assert all(0 <= timers.jitter() <= 0.333 for _ in range(100))


def test_hooks() -> None:
    t = PeerTimers(random.Random(2).randbytes)
    assert t.next_deadline() is None
    t.on_data_sent(10.0)
    first = t.deadline(Timer.NEW_HANDSHAKE)
    assert first is not None and 25.0 <= first <= 25.334
    t.on_data_sent(11.0)  # does not push it back
    assert t.deadline(Timer.NEW_HANDSHAKE) == first
    t.on_any_authenticated_packet_received()
    assert not t.pending(Timer.NEW_HANDSHAKE)
    t.on_data_received(12.0)
    t.on_data_received(13.0)
    assert t.deadline(Timer.SEND_KEEPALIVE) == 12.0 + KEEPALIVE_TIMEOUT and t.need_another_keepalive
    t.on_any_authenticated_packet_sent()
    assert not t.pending(Timer.SEND_KEEPALIVE)
    t.on_any_authenticated_packet_traversal(14.0, 0)
    assert not t.pending(Timer.PERSISTENT_KEEPALIVE)
    t.on_any_authenticated_packet_traversal(14.0, 25)
    assert t.deadline(Timer.PERSISTENT_KEEPALIVE) == 39.0
    t.on_handshake_initiated(14.0)
    retry = t.deadline(Timer.RETRANSMIT_HANDSHAKE)
    assert retry is not None and 14.0 + REKEY_TIMEOUT <= retry <= 14.0 + REKEY_TIMEOUT + 0.333
    t.handshake_attempts = 3
    t.sent_last_minute_handshake = True
    t.on_handshake_complete()
    assert not t.pending(Timer.RETRANSMIT_HANDSHAKE)
    assert t.handshake_attempts == 0 and not t.sent_last_minute_handshake
    t.on_session_derived(20.0)
    assert t.next_deadline() == 39.0
    assert t.pop_expired(100.0) == [Timer.PERSISTENT_KEEPALIVE]
    assert t.pop_expired(560.0) == [Timer.ZERO_KEY_MATERIAL]
    assert t.next_deadline() is None
