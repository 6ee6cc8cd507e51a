"""NAT manager of the system-stack proxy: (fake source IP, port) pairs over a whole prefix.

The proxy rewrites each captured flow ``A:a -> D:d`` into ``fake_ip:fake_port -> listener``, so
the kernel delivers it to our own listener, and rewrites the replies back (PROTOCOLS.md §4).
This module owns the mapping ``NatKey(proto, A, a, D, d) <-> (fake_ip, fake_port)``.

Addresses are packed ``bytes`` (4 or 16), as the packet layer reads and
:func:`tunkit.packet.rewrite.rewrite_flow` writes them: the per-packet lookups hash bytes, not
``ipaddress`` objects (whose hash is several times slower).  :meth:`NatKey.of` and
:attr:`NatMapping.fake_address` convert for people and tests.

Promises:

* Lookups are O(1) both ways (a forward dict and a reverse dict).
* Allocation is O(1) amortised: a cursor walks the never-used space, every usable host of the
  prefix times every port of ``port_range``, host-major so consecutive flows get different
  addresses; after that, pairs come from a FIFO free list, oldest-freed first.  Usable hosts
  exclude ``reserved``, the IPv4 network/broadcast and the IPv6 subnet-router anycast address.
* A pair that is live, including one in its TIME_WAIT-like grace after FIN/RST, is never handed
  out again.  A pair only returns to the free list when its mapping has expired.
* When nothing is free (or ``capacity`` live mappings exist) :class:`NatExhausted` is raised and
  counted in :attr:`NatStats.exhausted`; it never collides.
* :meth:`NatTable.expire` costs O(expired + stale heap entries): a heap ordered by deadline,
  with lazily refreshed deadlines, so traffic on a flow does not push heap entries.
* Pure: time is the ``now`` argument.  Not safe for concurrent use.

TCP state per mapping (driven by :meth:`NatTable.note_packet`; ``outbound`` is True for packets
from the application, False for the replies):

============  =====================================  ======================
state         entered on                             deadline
============  =====================================  ======================
OPENING       allocation                             ``opening`` (75 s)
ESTABLISHED   an ACK in the reply direction          ``established`` idle
HALF_CLOSED   a FIN in one direction                 ``half_closed`` idle
TIME_WAIT     FIN both ways (or RST)                 ``fin_grace`` / ``rst_grace`` fixed
============  =====================================  ======================

A SYN without ACK from the application on a TIME_WAIT mapping reopens it (port reuse by the
client).  UDP mappings stay ESTABLISHED with the ``udp`` idle timeout.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from tunkit.errors import ConfigError, LocalProtocolError, TunkitError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
_FIN_SYN_RST = TCP_FIN | TCP_SYN | TCP_RST


class NatExhausted(TunkitError):
    """No (fake IP, port) pair is free, or the live-mapping capacity is reached."""


class NatState(Enum):
    OPENING = "opening"
    ESTABLISHED = "established"
    HALF_CLOSED = "half-closed"
    TIME_WAIT = "time-wait"


class NatKey(NamedTuple):
    """The original flow as the application sent it.  Addresses are packed bytes."""

    proto: str
    """``"tcp"`` or ``"udp"``."""
    src_ip: bytes
    src_port: int
    dst_ip: bytes
    dst_port: int

    @classmethod
    def of(
        cls, proto: str, src: str | IPAddress, src_port: int, dst: str | IPAddress, dst_port: int
    ) -> NatKey:
        """Build a key from textual or ``ipaddress`` addresses."""
        return cls(proto, ipaddress.ip_address(src).packed, src_port,
                   ipaddress.ip_address(dst).packed, dst_port)

    @property
    def src_address(self) -> IPAddress:
        return ipaddress.ip_address(self.src_ip)

    @property
    def dst_address(self) -> IPAddress:
        return ipaddress.ip_address(self.dst_ip)


@dataclass(frozen=True)
class NatTimeouts:
    """Seconds.  Defaults follow RFC 5382 (TCP) and RFC 4787 (UDP) where they say something."""

    opening: float = 75.0
    established: float = 7440.0
    half_closed: float = 240.0
    fin_grace: float = 60.0
    rst_grace: float = 2.0
    udp: float = 60.0


@dataclass(eq=False, slots=True)
class NatMapping:
    """One live mapping.  Identity is the object; read fields, do not write them."""

    key: NatKey
    fake_ip: bytes
    """Packed fake source address."""
    fake_port: int
    created: float
    last_seen: float
    deadline: float
    state: NatState = NatState.OPENING
    fin_outbound: bool = False
    fin_inbound: bool = False
    live: bool = True
    """False once expired: the pair may belong to another flow now."""
    _scheduled: float = field(default=0.0, repr=False)
    _slot: int = field(default=0, repr=False)

    @property
    def fake_address(self) -> IPAddress:
        return ipaddress.ip_address(self.fake_ip)


@dataclass(frozen=True)
class NatStats:
    live: int
    """Mappings currently in the table (including TIME_WAIT)."""
    allocated_total: int
    exhausted: int
    """How many allocations failed with :class:`NatExhausted`."""
    expired: int
    space: int
    """Number of (ip, port) pairs the prefix and port range provide."""


class NatTable:
    """Allocator and translation table; see the module docstring for the contract."""

    def __init__(
        self,
        prefix: str | IPNetwork,
        *,
        reserved: Sequence[str | IPAddress] = (),
        port_range: tuple[int, int] = (10000, 65535),
        capacity: int | None = None,
        timeouts: NatTimeouts | None = None,
    ) -> None:
        try:
            net = ipaddress.ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
            reserved_ips = {ipaddress.ip_address(r) for r in reserved}
        except ValueError as err:
            raise ConfigError(f"NAT prefix: {err}") from None
        lo_port, hi_port = port_range
        if not 1 <= lo_port <= hi_port <= 65535:
            raise ConfigError(f"NAT port range {lo_port}-{hi_port} is not within 1-65535")
        self.prefix: IPNetwork = net
        self.timeouts = timeouts or NatTimeouts()
        self._base = int(net.network_address)
        self._addr_len = 4 if net.version == 4 else 16
        first, last = 0, net.num_addresses - 1
        if net.version == 4 and net.prefixlen <= 30:
            first, last = 1, net.num_addresses - 2  # not the network and broadcast addresses
        elif net.version == 6 and net.prefixlen <= 126:
            first = 1  # not the subnet-router anycast address (RFC 4291 §2.6.1)
        self._first_host = first
        self._n_hosts = last - first + 1
        self._reserved_offsets = {
            int(ip) - self._base for ip in reserved_ips if ip.version == net.version and ip in net
        }
        usable = self._n_hosts - sum(1 for o in self._reserved_offsets if first <= o <= last)
        if usable <= 0:
            raise ConfigError(f"NAT prefix {net} has no usable address left after reservations")
        self._port_lo = lo_port
        self._n_ports = hi_port - lo_port + 1
        self._space = self._n_hosts * self._n_ports
        self.space = usable * self._n_ports
        self.capacity = capacity
        self._cursor = 0
        self._free: deque[int] = deque()
        self._forward: dict[NatKey, NatMapping] = {}
        self._reverse: dict[tuple[bytes, int], NatMapping] = {}
        self._heap: list[tuple[float, int, NatMapping]] = []
        self._seq = 0
        self._allocated_total = 0
        self._exhausted = 0
        self._expired = 0

    # -- lookups -------------------------------------------------------------------------

    def lookup(self, key: NatKey) -> NatMapping | None:
        return self._forward.get(key)

    def lookup_by_fake(self, fake_ip: bytes | IPAddress, fake_port: int) -> NatMapping | None:
        """The mapping owning ``(fake_ip, fake_port)`` (packed bytes or an ``ipaddress``)."""
        if not isinstance(fake_ip, bytes):
            fake_ip = fake_ip.packed
        return self._reverse.get((fake_ip, fake_port))

    def __len__(self) -> int:
        return len(self._forward)

    def lookup_or_allocate(self, key: NatKey, now: float) -> NatMapping:
        """The live mapping for ``key``, or a new one.  Raises :class:`NatExhausted`."""
        mapping = self._forward.get(key)
        if mapping is not None:
            return mapping
        if key.proto not in ("tcp", "udp"):
            raise LocalProtocolError(f"NAT protocol must be tcp or udp, not {key.proto!r}")
        if self.capacity is not None and len(self._forward) >= self.capacity:
            self._exhausted += 1
            raise NatExhausted(f"NAT capacity of {self.capacity} live mappings reached")
        slot = self._take_slot()
        if slot is None:
            self._exhausted += 1
            raise NatExhausted(f"NAT space of {self.prefix} ports {self._port_lo}+ exhausted")
        host, port = self._slot_to_pair(slot)
        timeout = self.timeouts.udp if key.proto == "udp" else self.timeouts.opening
        mapping = NatMapping(
            key=key,
            fake_ip=self._host_ip(host),
            fake_port=port,
            created=now,
            last_seen=now,
            deadline=now + timeout,
            state=NatState.ESTABLISHED if key.proto == "udp" else NatState.OPENING,
            _slot=slot,
        )
        self._forward[key] = mapping
        self._reverse[(mapping.fake_ip, port)] = mapping
        self._push(mapping, mapping.deadline)
        self._allocated_total += 1
        return mapping

    # -- state ---------------------------------------------------------------------------

    def note_packet(
        self, mapping: NatMapping, now: float, tcp_flags: int = 0, *, outbound: bool = True
    ) -> None:
        """Advance ``mapping`` for one packet seen at ``now`` (see the state table)."""
        if not mapping.live:
            return
        mapping.last_seen = now
        if (mapping.state is NatState.ESTABLISHED and not tcp_flags & _FIN_SYN_RST
                and mapping.key.proto == "tcp"):
            self._set_deadline(mapping, now + self.timeouts.established)  # most packets
            return
        t = self.timeouts
        if mapping.key.proto != "tcp":
            self._set_deadline(mapping, now + t.udp)
            return
        if tcp_flags & TCP_RST:
            self._enter_time_wait(mapping, now + t.rst_grace)
            return
        state = mapping.state
        if state is NatState.TIME_WAIT:
            if outbound and tcp_flags & TCP_SYN and not tcp_flags & TCP_ACK:
                mapping.fin_outbound = mapping.fin_inbound = False
                mapping.state = NatState.OPENING
                self._set_deadline(mapping, now + t.opening)
            return
        if tcp_flags & TCP_FIN:
            if outbound:
                mapping.fin_outbound = True
            else:
                mapping.fin_inbound = True
            if mapping.fin_outbound and mapping.fin_inbound:
                self._enter_time_wait(mapping, now + t.fin_grace)
                return
            mapping.state = NatState.HALF_CLOSED
            self._set_deadline(mapping, now + t.half_closed)
            return
        if state is NatState.OPENING:
            if not outbound and tcp_flags & TCP_ACK:
                mapping.state = NatState.ESTABLISHED
                self._set_deadline(mapping, now + t.established)
            else:
                self._set_deadline(mapping, now + t.opening)
        elif state is NatState.ESTABLISHED:
            self._set_deadline(mapping, now + t.established)
        else:
            self._set_deadline(mapping, now + t.half_closed)

    def release(self, mapping: NatMapping, now: float) -> None:
        """Close ``mapping`` from our side (upstream failed, reject): a short grace, then free."""
        if mapping.live:
            self._enter_time_wait(mapping, now + self.timeouts.rst_grace)

    def expire(self, now: float) -> list[NatMapping]:
        """Remove and return every mapping whose deadline is ``<= now``; free their pairs."""
        expired: list[NatMapping] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, mapping = heapq.heappop(heap)
            if not mapping.live or when != mapping._scheduled:
                continue  # stale entry: removed, or rescheduled to an earlier deadline
            if mapping.deadline > now:
                self._push(mapping, mapping.deadline)
                continue
            self._remove(mapping)
            expired.append(mapping)
        self._expired += len(expired)
        return expired

    def next_deadline(self) -> float | None:
        """Earliest time :meth:`expire` may have work (possibly early, never late)."""
        return self._heap[0][0] if self._heap else None

    @property
    def stats(self) -> NatStats:
        return NatStats(
            live=len(self._forward),
            allocated_total=self._allocated_total,
            exhausted=self._exhausted,
            expired=self._expired,
            space=self.space,
        )

    # -- internals -----------------------------------------------------------------------

    def _take_slot(self) -> int | None:
        while self._cursor < self._space:
            slot = self._cursor
            self._cursor += 1
            host = self._first_host + slot % self._n_hosts
            if host not in self._reserved_offsets:
                return slot
        if self._free:
            return self._free.popleft()
        return None

    def _slot_to_pair(self, slot: int) -> tuple[int, int]:
        return self._first_host + slot % self._n_hosts, self._port_lo + slot // self._n_hosts

    def _host_ip(self, host_offset: int) -> bytes:
        return (self._base + host_offset).to_bytes(self._addr_len, "big")

    def _enter_time_wait(self, mapping: NatMapping, deadline: float) -> None:
        mapping.state = NatState.TIME_WAIT
        self._set_deadline(mapping, deadline)

    def _set_deadline(self, mapping: NatMapping, deadline: float) -> None:
        mapping.deadline = deadline
        if deadline < mapping._scheduled:
            self._push(mapping, deadline)

    def _push(self, mapping: NatMapping, deadline: float) -> None:
        mapping._scheduled = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, mapping))

    def _remove(self, mapping: NatMapping) -> None:
        mapping.live = False
        del self._forward[mapping.key]
        del self._reverse[(mapping.fake_ip, mapping.fake_port)]
        self._free.append(mapping._slot)
