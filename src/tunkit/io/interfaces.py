"""The I/O seams of tunkit, as ``typing.Protocol`` classes.

Services are written against these protocols, never against concrete classes, so a whole
service can run in a unit test on the in-memory fakes of :mod:`tunkit.io.memory`:

* :class:`PacketDevice`: a TUN/TAP device (one queue): one read or write = one packet.
* :class:`DatagramSocket`: a UDP-like socket: one send or receive = one datagram.
* :class:`LinkConfigurator`: the netlink facade (:class:`tunkit.io.netlink.Netlink`).
* :class:`Firewall`: atomic nftables tables owned by us (:mod:`tunkit.io.nft`).

All are structural (``runtime_checkable``): anything with the methods qualifies.
"""

from __future__ import annotations

import socket
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview
Address = tuple[str, int]


@runtime_checkable
class PacketDevice(Protocol):
    """A packet device such as :class:`tunkit.io.tun.TunDevice`."""

    name: str

    def read_into(self, buf: bytearray | memoryview, queue: int = 0) -> int:
        """Read one packet into ``buf``; return its length. Non-blocking and empty:
        ``BlockingIOError``."""
        ...

    def write(self, data: Buffer, queue: int = 0) -> int:
        """Write one whole packet; return the bytes written."""
        ...

    def fileno(self, queue: int = 0) -> int:
        """An fd usable with select/poll/asyncio readers."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class DatagramSocket(Protocol):
    """The subset of ``socket.socket`` (SOCK_DGRAM) that tunkit services use."""

    def sendto(self, data: Buffer, address: Address, /) -> int: ...

    def recvfrom_into(self, buf: bytearray | memoryview, nbytes: int = 0, /) -> tuple[int, Address]:
        ...

    def getsockname(self) -> Address: ...

    def fileno(self) -> int: ...

    def setblocking(self, flag: bool, /) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class LinkConfigurator(Protocol):
    """What services need from netlink; implemented by ``Netlink`` and ``MemoryNetlink``."""

    def link_exists(self, name: str) -> bool: ...
    def link_index(self, name: str) -> int: ...
    def set_up(self, name: str) -> None: ...
    def set_down(self, name: str) -> None: ...
    def set_mtu(self, name: str, mtu: int) -> None: ...
    def get_mtu(self, name: str) -> int: ...
    def get_mac(self, name: str) -> str: ...
    def add_address(self, name: str, cidr: str, *, nodad: bool = False) -> None: ...
    def del_address(self, name: str, cidr: str) -> None: ...
    def list_addresses(self, name: str) -> list[str]: ...

    def add_route(self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
                  table: int | None = None, metric: int | None = None) -> None: ...

    def del_route(self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
                  table: int | None = None, metric: int | None = None) -> None: ...

    def add_rule(self, *, fwmark: int | None = None, fwmask: int | None = None,
                 table: int | None = None, priority: int | None = None,
                 suppress_prefixlength: int | None = None, invert: bool = False,
                 family: int = socket.AF_INET) -> None: ...

    def del_rule(self, *, fwmark: int | None = None, fwmask: int | None = None,
                 table: int | None = None, priority: int | None = None,
                 suppress_prefixlength: int | None = None, invert: bool = False,
                 family: int = socket.AF_INET) -> None: ...

    def create_veth(self, a: str, b: str, peer_netns: str | None = None) -> None: ...
    def delete_link(self, name: str) -> None: ...
    def move_to_netns(self, name: str, netns: str) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Firewall(Protocol):
    """Owns whole nftables tables: apply replaces a table atomically, remove deletes it."""

    def apply(self, table_name: str, ruleset_text: str) -> None: ...

    def remove(self, table_name: str) -> None: ...


__all__ = ["Address", "Buffer", "DatagramSocket", "Firewall", "LinkConfigurator", "PacketDevice"]
