"""UDP side of the proxy: endpoint-independent sessions and reply-packet building (§4 item 7).

A session is keyed by the application's (source IP, source port) only, whatever the destination
(endpoint-independent mapping, RFC 4787 REQ-1): one upstream association (a SOCKS5 UDP
ASSOCIATE or a direct socket) serves every destination of that source, as apps such as QUIC,
STUN and games expect.

Promises of :class:`UdpSessionTable`:

* O(1) lookup; sessions kept in least-recently-used order.
* Idle timeout (default 60 s, RFC 4787 REQ-5 asks for >= 2 min only for well-known ports; we
  trade that for memory): :meth:`UdpSessionTable.expire` costs O(expired).
* A cap on live sessions (default 16384).  When full, opening a new session **evicts the least
  recently used one** (returned to the caller, which closes its upstream socket) rather than
  refusing: an idle session is cheaper to lose than a new flow.  ``evicted`` counts them.
* Pure: ``now`` is an argument; the ``context`` slot holds the caller's per-session object.

:func:`build_udp_reply` makes the packet to write into the TUN for a datagram that came back
from ``remote``: source = remote, destination = the application's endpoint (addresses swapped
with respect to the captured packet), built by :mod:`tunkit.packet` with checksums.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from tunkit.errors import LocalProtocolError
from tunkit.packet.ip import PROTO_UDP, build_ip
from tunkit.packet.udp import build_udp

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SessionKey = tuple[IPAddress, int]


@dataclass(eq=False, slots=True)
class UdpSession:
    src_ip: IPAddress
    src_port: int
    created: float
    last_seen: float
    bytes_up: int = 0
    bytes_down: int = 0
    context: object | None = field(default=None, repr=False)
    """Whatever the caller attaches (e.g. its upstream socket or association)."""

    @property
    def key(self) -> SessionKey:
        return (self.src_ip, self.src_port)


@dataclass(frozen=True)
class UdpOpened:
    session: UdpSession
    created: bool
    """True if the session is new (the caller sets up its upstream)."""
    evicted: UdpSession | None
    """A session removed to make room (the caller tears down its upstream)."""


class UdpSessionTable:
    def __init__(self, *, idle_timeout: float = 60.0, max_sessions: int = 16384) -> None:
        if idle_timeout <= 0 or max_sessions < 1:
            raise LocalProtocolError("UDP idle timeout and max sessions must be positive")
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[SessionKey, UdpSession] = OrderedDict()
        self.created_total = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, src_ip: IPAddress, src_port: int) -> UdpSession | None:
        return self._sessions.get((src_ip, src_port))

    def open(self, src_ip: IPAddress, src_port: int, now: float) -> UdpOpened:
        """The session of this source (refreshed), creating it (maybe evicting) if needed."""
        key = (src_ip, src_port)
        session = self._sessions.get(key)
        if session is not None:
            self._refresh(session, now)
            return UdpOpened(session, False, None)
        evicted = None
        if len(self._sessions) >= self.max_sessions:
            _, evicted = self._sessions.popitem(last=False)
            self.evicted += 1
        session = UdpSession(src_ip, src_port, now, now)
        self._sessions[key] = session
        self.created_total += 1
        return UdpOpened(session, True, evicted)

    def note_upstream(self, session: UdpSession, size: int, now: float) -> None:
        """A datagram of ``size`` payload bytes went from the app to the upstream."""
        session.bytes_up += size
        self._refresh(session, now)

    def note_downstream(self, session: UdpSession, size: int, now: float) -> None:
        """A datagram of ``size`` payload bytes came back for the app."""
        session.bytes_down += size
        self._refresh(session, now)

    def close(self, session: UdpSession) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    def expire(self, now: float) -> list[UdpSession]:
        """Remove and return the sessions idle for ``idle_timeout`` or more."""
        expired: list[UdpSession] = []
        limit = now - self.idle_timeout
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if oldest.last_seen > limit:
                break
            self._sessions.popitem(last=False)
            expired.append(oldest)
        self.expired += len(expired)
        return expired

    def next_deadline(self) -> float | None:
        if not self._sessions:
            return None
        return next(iter(self._sessions.values())).last_seen + self.idle_timeout

    def _refresh(self, session: UdpSession, now: float) -> None:
        # ``now`` may not go backwards for the LRU order to equal the idle order.
        session.last_seen = max(session.last_seen, now)
        self._sessions.move_to_end(session.key)


def build_udp_reply(
    app_ip: IPAddress, app_port: int, remote_ip: IPAddress, remote_port: int, payload: bytes,
    *, ttl: int = 64,
) -> bytes:
    """IP + UDP packet ``remote -> app`` carrying ``payload``, checksums filled in."""
    if app_ip.version != remote_ip.version:
        raise LocalProtocolError(f"cannot reply from {remote_ip} to {app_ip}: IP versions differ")
    limit = 65535 - 8 - (20 if app_ip.version == 4 else 0)
    if len(payload) > limit:
        raise LocalProtocolError(f"UDP payload of {len(payload)} bytes exceeds {limit}")
    src, dst = remote_ip.packed, app_ip.packed
    return build_ip(src, dst, PROTO_UDP, build_udp(src, dst, remote_port, app_port, payload),
                    ttl=ttl)
