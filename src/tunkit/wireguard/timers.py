"""The per-peer timers of whitepaper §6 as plain deadlines (no clock reads, no threads).

:class:`PeerTimers` stores one absolute deadline (``now``-based seconds, or None) per
:class:`Timer`.  The peer calls the ``on_*`` hooks when the matching event happens, and
:meth:`PeerTimers.pop_expired` when its owner's ``next_deadline()`` has passed; the peer then
performs the action of each expired timer.  The hooks mirror wireguard-go's timers.go:

=========================  ====================================  ===========================
timer                      armed by                              on expiry the peer
=========================  ====================================  ===========================
RETRANSMIT_HANDSHAKE       initiation sent: REKEY_TIMEOUT+jitter  retries, or gives up after
                                                                 MAX_TIMER_HANDSHAKES
SEND_KEEPALIVE             data received: KEEPALIVE_TIMEOUT       sends a keepalive
NEW_HANDSHAKE              data sent: KEEPALIVE+REKEY_TIMEOUT     starts a new handshake
                           +jitter (cleared by any received
                           authenticated packet)
ZERO_KEY_MATERIAL          session derived: 3*REJECT_AFTER_TIME   forgets all keys
PERSISTENT_KEEPALIVE       any authenticated packet in or out     sends a keepalive
=========================  ====================================  ===========================

Jitter comes from the injected ``rng`` (0..333 ms, as wireguard-go).
"""

from __future__ import annotations

import enum

from .constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER_TIME,
)
from .crypto import Rng


class Timer(enum.IntEnum):
    RETRANSMIT_HANDSHAKE = 0
    SEND_KEEPALIVE = 1
    NEW_HANDSHAKE = 2
    ZERO_KEY_MATERIAL = 3
    PERSISTENT_KEEPALIVE = 4


_ALL = tuple(Timer)
_JITTER_STEPS = round(REKEY_TIMEOUT_JITTER_MAX * 1000) + 1  # 0..333 ms inclusive


def jitter(rng: Rng) -> float:
    """A random 0..0.333 s retry jitter."""
    return (int.from_bytes(rng(4), "little") % _JITTER_STEPS) / 1000.0


def _jitter_batch(rng: Rng) -> list[float]:
    raw = rng(64)
    return [
        (int.from_bytes(raw[i : i + 4], "little") % _JITTER_STEPS) / 1000.0 for i in range(0, 64, 4)
    ]


class PeerTimers:
    __slots__ = (
        "_jitters",
        "deadlines",
        "handshake_attempts",
        "need_another_keepalive",
        "rng",
        "sent_last_minute_handshake",
    )

    def __init__(self, rng: Rng) -> None:
        self.rng = rng
        self._jitters: list[float] = []
        self.deadlines: list[float | None] = [None] * len(_ALL)
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False

    def jitter(self) -> float:
        """0..0.333 s; drawn from the rng 16 at a time (data-sent arms a timer per packet)."""
        if not self._jitters:
            self._jitters = _jitter_batch(self.rng)
        return self._jitters.pop()

    def pending(self, timer: Timer) -> bool:
        return self.deadlines[timer] is not None

    def deadline(self, timer: Timer) -> float | None:
        return self.deadlines[timer]

    def set(self, timer: Timer, when: float) -> None:
        self.deadlines[timer] = when

    def cancel(self, timer: Timer) -> None:
        self.deadlines[timer] = None

    def cancel_all(self) -> None:
        self.deadlines = [None] * len(_ALL)

    def next_deadline(self) -> float | None:
        pending = [d for d in self.deadlines if d is not None]
        return min(pending) if pending else None

    def pop_expired(self, now: float) -> list[Timer]:
        """Expired timers in a fixed order, each disarmed."""
        expired = []
        deadlines = self.deadlines
        for timer in _ALL:
            when = deadlines[timer]
            if when is not None and when <= now:
                deadlines[timer] = None
                expired.append(timer)
        return expired

    # -- event hooks (wireguard-go timers.go names) ------------------------------------------

    def on_data_sent(self, now: float) -> None:
        if self.deadlines[Timer.NEW_HANDSHAKE] is None:
            self.deadlines[Timer.NEW_HANDSHAKE] = (
                now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter()
            )

    def on_data_received(self, now: float) -> None:
        if self.deadlines[Timer.SEND_KEEPALIVE] is None:
            self.deadlines[Timer.SEND_KEEPALIVE] = now + KEEPALIVE_TIMEOUT
        else:
            self.need_another_keepalive = True

    def on_any_authenticated_packet_sent(self) -> None:
        self.deadlines[Timer.SEND_KEEPALIVE] = None

    def on_any_authenticated_packet_received(self) -> None:
        self.deadlines[Timer.NEW_HANDSHAKE] = None

    def on_any_authenticated_packet_traversal(self, now: float, persistent_keepalive: int) -> None:
        if persistent_keepalive > 0:
            self.deadlines[Timer.PERSISTENT_KEEPALIVE] = now + persistent_keepalive

    def on_handshake_initiated(self, now: float) -> None:
        self.deadlines[Timer.RETRANSMIT_HANDSHAKE] = now + REKEY_TIMEOUT + self.jitter()

    def on_handshake_complete(self) -> None:
        self.deadlines[Timer.RETRANSMIT_HANDSHAKE] = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def on_session_derived(self, now: float) -> None:
        self.deadlines[Timer.ZERO_KEY_MATERIAL] = now + ZERO_KEYS_AFTER_TIME
