"""Fake-IP pool: domain <-> address over a prefix, LRU, optionally persisted (PROTOCOLS.md §5).

Promises:

* Domains are normalised: lower-cased, one trailing dot stripped.  One domain has one address
  and one address one domain, at all times.
* Addresses come from a sequential cursor over the usable hosts of ``prefix`` (IPv4: not the
  network and broadcast addresses; IPv6: not the subnet-router anycast address; never an address in ``reserved``) that wraps around.
* At most ``capacity`` pairs live at once.  When full, the least recently used pair is evicted
  (its domain and its address both forgotten) before the cursor picks the next free address.
  Keeping ``capacity`` below the number of usable hosts (the default is half of them, at most
  65536) means an evicted address is not reused at once, so an app that still caches it
  has time to let it go.
* With a :class:`PoolStore`, every new pair, eviction and cursor move is written through at once;
  ``touch`` updates of ``last_used`` are batched until :meth:`FakeIpPool.flush`.  Opening a
  pool on a store saved with the same prefix restores it (same domain -> same address after a
  restart); a store saved with a different prefix is reset.  If the store raises
  (:class:`tunkit.proxy.store.PoolStoreError`), the in-memory pool already holds the new
  pair: DNS keeps working while the state file lags behind.
* Pure: ``now`` is an argument; the store is the only persistence, behind a Protocol.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tunkit.errors import ConfigError, LocalProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_CAPACITY = 65536


@dataclass(frozen=True)
class PoolEntry:
    domain: str
    ip: str
    last_used: float


@dataclass(frozen=True)
class StoredPool:
    prefix: str
    cursor: int
    entries: Sequence[PoolEntry]


class PoolStore(Protocol):
    """Persistence of one pool.  Implementations: :class:`tunkit.proxy.store.SqlitePoolStore`."""

    def load(self) -> StoredPool | None:
        """The saved pool, or None if nothing was saved."""
        ...

    def reset(self, prefix: str) -> None:
        """Forget every entry; remember ``prefix`` with cursor 0."""
        ...

    def write(self, upserts: Sequence[PoolEntry], deletes: Sequence[str], cursor: int) -> None:
        """Apply entry upserts (by domain), deletions (by domain) and the cursor atomically."""
        ...


def _as_ip(ip: str | bytes | IPAddress) -> IPAddress:
    # ip_address() of an address object would format and re-parse it: several times slower
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip
    return ipaddress.ip_address(ip)


def normalise_domain(domain: str) -> str:
    """Lower-case and strip one trailing dot: ``"WWW.Example.COM."`` -> ``"www.example.com"``."""
    name = domain.lower()
    return name[:-1] if name.endswith(".") else name


@dataclass(frozen=True)
class PoolStats:
    size: int
    capacity: int
    allocated_total: int
    evicted_total: int


class FakeIpPool:
    """See the module docstring."""

    def __init__(
        self,
        prefix: str | IPNetwork,
        reserved: Sequence[str | IPAddress] = (),
        capacity: int | None = None,
        store: PoolStore | None = None,
    ) -> None:
        try:
            net = ipaddress.ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
            reserved_ips = {ipaddress.ip_address(r) for r in reserved}
        except ValueError as err:
            raise ConfigError(f"fake-IP prefix: {err}") from None
        self.prefix: IPNetwork = net
        self._base = int(net.network_address)
        first, last = 0, net.num_addresses - 1
        if net.version == 4 and net.prefixlen <= 30:
            first, last = 1, net.num_addresses - 2
        elif net.version == 6 and net.prefixlen <= 126:
            first = 1  # the subnet-router anycast address (RFC 4291 §2.6.1)
        self._first = first
        self._n_hosts = last - first + 1
        self._reserved = {int(ip) - self._base for ip in reserved_ips if ip in net}
        usable = self._n_hosts - sum(1 for o in self._reserved if first <= o <= last)
        if usable <= 0:
            raise ConfigError(f"fake-IP prefix {net} has no usable address")
        if capacity is None:
            capacity = max(1, min(DEFAULT_MAX_CAPACITY, usable // 2))
        if not 1 <= capacity <= usable:
            raise ConfigError(f"fake-IP capacity {capacity} must be within 1..{usable} for {net}")
        self.capacity = capacity
        self._cursor = 0  # index into the usable host range, next candidate
        self._by_domain: OrderedDict[str, tuple[IPAddress, float]] = OrderedDict()
        self._by_ip: dict[IPAddress, str] = {}
        self._dirty: set[str] = set()
        self._allocated_total = 0
        self._evicted_total = 0
        self._store = store
        if store is not None:
            self._restore(store)

    # -- queries -------------------------------------------------------------------------

    def contains(self, ip: str | bytes | IPAddress) -> bool:
        """Whether ``ip`` (text, packed bytes or ``ipaddress``) lies in the pool's prefix (whether or not it is allocated)."""
        try:
            return _as_ip(ip) in self.prefix
        except ValueError:
            return False

    def domain_for(self, ip: str | bytes | IPAddress) -> str | None:
        """The domain holding ``ip`` (text, packed bytes or ``ipaddress``), None if none."""
        try:
            return self._by_ip.get(_as_ip(ip))
        except ValueError:
            return None

    def __len__(self) -> int:
        return len(self._by_domain)

    @property
    def stats(self) -> PoolStats:
        return PoolStats(len(self._by_domain), self.capacity, self._allocated_total,
                         self._evicted_total)

    # -- updates -------------------------------------------------------------------------

    def ip_for(self, domain: str, now: float) -> IPAddress:
        """The address of ``domain``, allocating (and maybe evicting the LRU pair) if new."""
        name = normalise_domain(domain)
        if not name:
            raise LocalProtocolError("the root domain cannot have a fake address")
        known = self._by_domain.get(name)
        if known is not None:
            self._by_domain[name] = (known[0], now)
            self._by_domain.move_to_end(name)
            self._dirty.add(name)
            return known[0]
        deletes: list[str] = []
        if len(self._by_domain) >= self.capacity:
            old_name, (old_ip, _) = self._by_domain.popitem(last=False)
            del self._by_ip[old_ip]
            self._dirty.discard(old_name)
            deletes.append(old_name)
            self._evicted_total += 1
        ip = self._next_free_ip()
        self._by_domain[name] = (ip, now)
        self._by_ip[ip] = name
        self._allocated_total += 1
        if self._store is not None:
            self._store.write([PoolEntry(name, str(ip), now)], deletes, self._cursor)
        return ip

    def touch(self, key: str | bytes | IPAddress, now: float) -> bool:
        """Mark a domain (or the domain of an address) as used at ``now``; False if unknown."""
        name: str | None
        if isinstance(key, str) and not self.contains(key):
            name = normalise_domain(key)
        else:
            name = self.domain_for(key)
        if name is None or name not in self._by_domain:
            return False
        self._by_domain[name] = (self._by_domain[name][0], now)
        self._by_domain.move_to_end(name)
        self._dirty.add(name)
        return True

    def flush(self) -> int:
        """Write batched ``last_used`` updates to the store; returns how many were written."""
        if self._store is None or not self._dirty:
            self._dirty.clear()
            return 0
        rows = [PoolEntry(n, str(self._by_domain[n][0]), self._by_domain[n][1]) for n in self._dirty]
        self._store.write(rows, [], self._cursor)
        self._dirty.clear()
        return len(rows)

    # -- internals -----------------------------------------------------------------------

    def _next_free_ip(self) -> IPAddress:
        # Terminates: fewer than ``capacity <= usable`` addresses are in use here.
        while True:
            offset = self._first + self._cursor
            self._cursor = (self._cursor + 1) % self._n_hosts
            if offset in self._reserved:
                continue
            ip = self._ip_at(offset)
            if ip not in self._by_ip:
                return ip

    def _ip_at(self, offset: int) -> IPAddress:
        if self.prefix.version == 4:
            return ipaddress.IPv4Address(self._base + offset)
        return ipaddress.IPv6Address(self._base + offset)

    def _restore(self, store: PoolStore) -> None:
        saved = store.load()
        if saved is None or saved.prefix != str(self.prefix):
            store.reset(str(self.prefix))
            return
        self._cursor = saved.cursor % self._n_hosts if saved.cursor >= 0 else 0
        rows = sorted(saved.entries, key=lambda e: e.last_used)
        dropped: list[str] = []
        for row in rows:
            try:
                ip = ipaddress.ip_address(row.ip)
            except ValueError:
                dropped.append(row.domain)
                continue
            name = normalise_domain(row.domain)
            offset = int(ip) - self._base
            if (ip not in self.prefix or offset in self._reserved or ip in self._by_ip
                    or name in self._by_domain or not self._first <= offset < self._first + self._n_hosts):
                dropped.append(row.domain)
                continue
            self._by_domain[name] = (ip, row.last_used)
            self._by_ip[ip] = name
        while len(self._by_domain) > self.capacity:  # capacity shrank since the save
            old_name, (old_ip, _) = self._by_domain.popitem(last=False)
            del self._by_ip[old_ip]
            dropped.append(old_name)
        if dropped:
            store.write([], dropped, self._cursor)
