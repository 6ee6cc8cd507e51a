"""When is a device "under load"? (whitepaper §5.3: answer handshakes with cookie replies then).

Contract: the shell calls ``LoadDetector.observe(handshakes, now)`` once per drain of the UDP
socket, with the number of handshake messages (initiations and responses) that drain held,
and sets ``device.under_load`` to the result. Pure: no clock, no I/O.

Two signals, either one turns load on for ``hold`` seconds:
- a backlog: ``burst`` or more handshake messages waiting in one drain. wireguard-go's signal
  is the same idea (its handshake queue is an eighth full);
- a rate: more than ``rate`` handshake messages within one second, even if each drain is
  small. Handshakes cost a Diffie-Hellman each; a flood paced just below what we can drain
  would otherwise keep the CPU busy on them without ever tripping the backlog signal.
  Honest peers handshake once every two minutes each, so this is far above their need.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoadDetector:
    burst: int = 8
    rate: int = 64
    hold: float = 1.0
    _window_start: float = field(default=float("-inf"), init=False)
    _window_count: int = field(default=0, init=False)
    _until: float = field(default=float("-inf"), init=False)

    def observe(self, handshakes: int, now: float) -> bool:
        """Record one drain's handshake count; returns whether the device is under load."""
        if handshakes:
            if now - self._window_start >= 1.0:
                self._window_start, self._window_count = now, 0
            self._window_count += handshakes
            if handshakes >= self.burst or self._window_count > self.rate:
                self._until = now + self.hold
        return now < self._until
