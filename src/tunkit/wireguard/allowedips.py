"""Cryptokey routing table: longest-prefix match over IPv4 and IPv6 prefixes.

Contract:

* ``AllowedIPs[T]`` maps prefixes to values (in practice: peers). ``lookup(addr)`` takes the raw
  4- or 16-byte address straight from a packet header and returns the value of the longest
  matching prefix, or ``None``. It is the per-packet hot path: one ``int.from_bytes`` plus one
  dict probe per *distinct prefix length in use* (typically a handful), longest first.
* Values are compared by identity, as wireguard-go compares peer pointers: two equal but distinct
  peer objects own separate entries. ``None`` cannot be stored (it means "no match").
* ``insert`` masks host bits (``10.0.0.1/24`` becomes ``10.0.0.0/24``) like wg does, and moves an
  existing prefix to the new value.
* ``entries_for(value)`` answers in O(entries of that value), so ``wg show`` on a table with
  thousands of prefixes over dozens of peers stays cheap.
* Pure: no I/O; not safe for concurrent use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

from tunkit.errors import ConfigError

T = TypeVar("T")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NetworkLike = IPNetwork | ipaddress.IPv4Interface | ipaddress.IPv6Interface | str

_BITS = {4: 32, 6: 128}
_DIGITS = frozenset("0123456789")

# (version, prefix length, masked network as int)
_Key = tuple[int, int, int]


def parse_prefix(text: str, *, require_length: bool = False) -> IPNetwork:
    """Parse ``addr[/len]`` like wg does, masking host bits; raise ConfigError if malformed.

    Without ``/len`` the prefix is a host route (/32 or /128) unless ``require_length``.
    Netmask notation, zones (``%eth0``), signs and spaces are rejected.
    """
    addr_text, slash, length_text = text.partition("/")
    if "%" in addr_text:
        raise ConfigError(f"invalid IP prefix {text!r}: zones are not allowed")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ConfigError(f"invalid IP prefix {text!r}: bad address") from None
    bits = _BITS[addr.version]
    if not slash:
        if require_length:
            raise ConfigError(f"invalid IP prefix {text!r}: missing /length")
        length = bits
    else:
        if not length_text or len(length_text) > 3 or not set(length_text) <= _DIGITS:
            raise ConfigError(f"invalid IP prefix {text!r}: bad length")
        length = int(length_text)
        if length > bits:
            raise ConfigError(f"invalid IP prefix {text!r}: length above {bits}")
    return _network(addr.version, int(addr), length, strict=False)


def _network(version: int, number: int, length: int, *, strict: bool = True) -> IPNetwork:
    # ip_network((int, len)) would guess the version from the int's size: build explicitly.
    if version == 4:
        return ipaddress.IPv4Network((number, length), strict=strict)
    return ipaddress.IPv6Network((number, length), strict=strict)


def _as_network(network: NetworkLike) -> IPNetwork:
    if isinstance(network, str):
        return parse_prefix(network)
    if isinstance(network, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return network.network
    if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return network
    raise TypeError(f"expected an IPv4Network or IPv6Network, got {type(network).__name__}")


class _Family:
    """All prefixes of one IP version: one dict per prefix length, keyed by masked address."""

    __slots__ = ("bits", "by_length", "probes", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.bits = _BITS[version]
        self.by_length: dict[int, dict[int, object]] = {}
        # (mask, table) for every length in use, longest first: the lookup loop.
        self.probes: list[tuple[int, dict[int, object]]] = []

    def mask(self, length: int) -> int:
        full = (1 << self.bits) - 1
        return full ^ (full >> length)

    def rebuild_probes(self) -> None:
        self.probes = [
            (self.mask(length), self.by_length[length])
            for length in sorted(self.by_length, reverse=True)
        ]


class AllowedIPs(Generic[T]):
    """Longest-prefix-match table for IPv4 and IPv6; see the module docstring."""

    __slots__ = ("_families", "_owners", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4 = _Family(4)
        self._v6 = _Family(6)
        self._families = {4: self._v4, 6: self._v6}
        # id(value) -> ordered set of keys it owns (dict used as an insertion-ordered set)
        self._owners: dict[int, dict[_Key, None]] = {}

    # ---- hot path -------------------------------------------------------------------------

    def lookup(self, addr: bytes | bytearray | memoryview) -> T | None:
        """Value of the longest prefix containing the raw 4- or 16-byte address, else None."""
        size = len(addr)
        if size == 4:
            probes = self._v4.probes
        elif size == 16:
            probes = self._v6.probes
        else:
            return None
        number = int.from_bytes(addr, "big")
        for mask, table in probes:
            found = table.get(number & mask)
            if found is not None:
                return found  # type: ignore[return-value]
        return None

    def lookup_ip(self, addr: IPAddress) -> T | None:
        """Like :meth:`lookup` for an ``ipaddress`` object."""
        return self.lookup(addr.packed)

    # ---- mutation -------------------------------------------------------------------------

    def insert(self, network: NetworkLike, value: T) -> None:
        """Route ``network`` (host bits masked) to ``value``; an existing prefix moves to it."""
        if value is None:
            raise TypeError("None cannot be stored in AllowedIPs")
        net = _as_network(network)
        family = self._families[net.version]
        length = net.prefixlen
        key_int = int(net.network_address)
        table = family.by_length.get(length)
        if table is None:
            table = family.by_length[length] = {}
            family.rebuild_probes()
        key = (net.version, length, key_int)
        previous = table.get(key_int)
        if previous is not None:
            if previous is value:
                return
            self._forget_owner(previous, key)
        table[key_int] = value
        self._owners.setdefault(id(value), {})[key] = None

    def remove(self, network: NetworkLike) -> bool:
        """Drop the exact prefix (host bits masked). Returns whether it was present."""
        net = _as_network(network)
        key = (net.version, net.prefixlen, int(net.network_address))
        value = self._pop_key(key)
        if value is None:
            return False
        self._forget_owner(value, key)
        return True

    def remove_value(self, value: T) -> int:
        """Drop every prefix routed to ``value``. Returns how many were removed."""
        keys = self._owners.pop(id(value), None)
        if not keys:
            return 0
        for key in keys:
            self._pop_key(key)
        return len(keys)

    def clear(self) -> None:
        for family in self._families.values():
            family.by_length.clear()
            family.probes = []
        self._owners.clear()

    # ---- queries --------------------------------------------------------------------------

    def entries_for(self, value: T) -> list[IPNetwork]:
        """Prefixes routed to ``value``: IPv4 first, then by address, then by length."""
        keys = sorted(self._owners.get(id(value), ()), key=lambda k: (k[0], k[2], k[1]))
        return [_network(version, number, length) for version, length, number in keys]

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._owners.values())

    def __iter__(self) -> Iterator[tuple[IPNetwork, T]]:
        """Every (prefix, value), IPv4 first, each family longest prefix first."""
        for family in (self._v4, self._v6):
            for length in sorted(family.by_length, reverse=True):
                for key_int, value in family.by_length[length].items():
                    yield _network(family.version, key_int, length), value  # type: ignore[misc]

    # ---- internals ------------------------------------------------------------------------

    def _pop_key(self, key: _Key) -> object | None:
        version, length, key_int = key
        family = self._families[version]
        table = family.by_length.get(length)
        if table is None:
            return None
        value = table.pop(key_int, None)
        if not table:
            del family.by_length[length]
            family.rebuild_probes()
        return value

    def _forget_owner(self, value: object, key: _Key) -> None:
        keys = self._owners.get(id(value))
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._owners[id(value)]
