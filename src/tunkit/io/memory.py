"""In-memory fakes of the I/O seams (:mod:`tunkit.io.interfaces`) for unit tests.

Contract:

* :func:`memory_device_pair` returns two connected :class:`MemoryPacketDevice` objects: a
  packet written to one is read, whole and unchanged, from the other, in order.
* :func:`memory_socket_pair` returns two connected :class:`MemoryDatagramSocket` objects
  with fake addresses; ``sendto`` on one is ``recvfrom_into`` on the other, with the sender's
  address. Datagrams to an unknown address are counted in ``dropped`` and lost, like UDP.
* Reads in non-blocking mode (the default) raise ``BlockingIOError`` when nothing is queued;
  blocking reads wait up to ``timeout`` seconds and then raise ``TimeoutError``.
* Each object has a real ``fileno()`` (the read end of a pipe that holds one byte per queued
  packet), so fakes work with ``select``/``selectors``/asyncio ``add_reader``.
* :class:`MemoryNetlink` records every call in ``calls`` and keeps a small model of links,
  addresses, MTUs, routes and rules, with the same validation and errors as ``Netlink``.

Thread-safe: one reader and any number of writers may use an object concurrently.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from typing import Any

from tunkit.errors import ConfigError, DeviceError
from tunkit.io.interfaces import Address, Buffer
from tunkit.io.netlink import Route, Rule, parse_address, parse_interface, parse_network


class _Queue:
    """A packet queue with a pollable fd: one byte in a pipe per queued packet."""

    def __init__(self, capacity: int) -> None:
        self.items: collections.deque[tuple[bytes, Any]] = collections.deque()
        self.capacity = capacity
        self.cond = threading.Condition()
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.closed = False

    def put(self, data: bytes, meta: Any) -> bool:
        with self.cond:
            if self.closed or len(self.items) >= self.capacity:
                return False
            self.items.append((data, meta))
            os.write(self.wfd, b"\0")
            self.cond.notify()
            return True

    def get(self, blocking: bool, timeout: float | None) -> tuple[bytes, Any]:
        with self.cond:
            if not self.items:
                if not blocking:
                    raise BlockingIOError("no packet queued")
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self.items and not self.closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError("no packet within timeout")
                    self.cond.wait(remaining)
                if not self.items:
                    raise OSError("queue closed")
            item = self.items.popleft()
            with contextlib.suppress(BlockingIOError):
                os.read(self.rfd, 1)
            return item

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify_all()
        os.close(self.rfd)
        os.close(self.wfd)


# --------------------------------------------------------------------------- packet devices


class MemoryPacketDevice:
    """One end of an in-memory point-to-point packet device (a fake TUN)."""

    def __init__(self, name: str, *, mtu: int = 65535, capacity: int = 4096) -> None:
        self.name = name
        self.mtu = mtu
        self.peer: MemoryPacketDevice | None = None
        self._inbox = _Queue(capacity)
        self.blocking = False
        self.timeout: float | None = 5.0
        self.written: list[bytes] = []
        """Every packet written here, for assertions."""
        self.dropped = 0
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(9, f"memory device {self.name} is closed")

    def read_into(self, buf: bytearray | memoryview, queue: int = 0) -> int:
        self._check_open()
        data, _ = self._inbox.get(self.blocking, self.timeout)
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        return n

    def read(self, queue: int = 0) -> bytes:
        self._check_open()
        data, _ = self._inbox.get(self.blocking, self.timeout)
        return data

    def write(self, data: Buffer, queue: int = 0) -> int:
        self._check_open()
        packet = bytes(data)
        if len(packet) > self.mtu:
            raise OSError(90, f"packet of {len(packet)} bytes exceeds MTU {self.mtu}")  # EMSGSIZE
        self.written.append(packet)
        if self.peer is None or not self.peer._inbox.put(packet, None):
            self.dropped += 1
        return len(packet)

    def writev(self, parts: list[Buffer], queue: int = 0) -> int:
        return self.write(b"".join(bytes(p) for p in parts), queue)

    def inject(self, packet: Buffer) -> None:
        """Queue ``packet`` to be read from this device (as if the kernel sent it)."""
        self._inbox.put(bytes(packet), None)

    def pending(self) -> int:
        return len(self._inbox.items)

    def fileno(self, queue: int = 0) -> int:
        self._check_open()
        return self._inbox.rfd

    def set_blocking(self, flag: bool) -> None:
        self.blocking = flag

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbox.close()

    def __enter__(self) -> MemoryPacketDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def memory_device_pair(name_a: str = "mem0", name_b: str = "mem1", *, mtu: int = 65535
                       ) -> tuple[MemoryPacketDevice, MemoryPacketDevice]:
    a, b = MemoryPacketDevice(name_a, mtu=mtu), MemoryPacketDevice(name_b, mtu=mtu)
    a.peer, b.peer = b, a
    return a, b


# --------------------------------------------------------------------------- datagram sockets


class MemoryNetwork:
    """A fake UDP network: sockets bound to addresses, datagrams routed by address."""

    def __init__(self) -> None:
        self.sockets: dict[Address, MemoryDatagramSocket] = {}
        self.lock = threading.Lock()
        self._next_port = 40000

    def bind(self, sock: MemoryDatagramSocket, address: Address) -> Address:
        with self.lock:
            host, port = address
            if port == 0:
                port = self._next_port
                self._next_port += 1
            address = (host, port)
            if address in self.sockets:
                raise OSError(98, f"address in use: {address}")  # EADDRINUSE
            self.sockets[address] = sock
            return address

    def deliver(self, data: bytes, src: Address, dst: Address) -> bool:
        with self.lock:
            target = self.sockets.get(dst)
        return target is not None and target._inbox.put(data, src)

    def unbind(self, address: Address) -> None:
        with self.lock:
            self.sockets.pop(address, None)


class MemoryDatagramSocket:
    """A fake UDP socket on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, address: Address, *, capacity: int = 4096) -> None:
        self.network = network
        self._inbox = _Queue(capacity)
        self.address = network.bind(self, address)
        self.blocking = True
        self.timeout: float | None = 5.0
        self.sent: list[tuple[bytes, Address]] = []
        self.dropped = 0
        self.closed = False

    def sendto(self, data: Buffer, address: Address, /) -> int:
        if self.closed:
            raise OSError(9, "socket is closed")
        payload = bytes(data)
        dst = (str(address[0]), int(address[1]))
        self.sent.append((payload, dst))
        if not self.network.deliver(payload, self.address, dst):
            self.dropped += 1
        return len(payload)

    def recvfrom_into(self, buf: bytearray | memoryview, nbytes: int = 0, /) -> tuple[int, Address]:
        if self.closed:
            raise OSError(9, "socket is closed")
        data, src = self._inbox.get(self.blocking, self.timeout)
        limit = len(buf) if nbytes == 0 else min(nbytes, len(buf))
        n = min(len(data), limit)
        buf[:n] = data[:n]
        return n, src

    def recvfrom(self, bufsize: int, /) -> tuple[bytes, Address]:
        buf = bytearray(bufsize)
        n, src = self.recvfrom_into(buf)
        return bytes(buf[:n]), src

    def getsockname(self) -> Address:
        return self.address

    def fileno(self) -> int:
        return self._inbox.rfd

    def setblocking(self, flag: bool, /) -> None:
        self.blocking = flag

    def settimeout(self, timeout: float | None, /) -> None:
        self.blocking = timeout != 0
        self.timeout = timeout

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.network.unbind(self.address)
            self._inbox.close()

    def __enter__(self) -> MemoryDatagramSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def memory_socket_pair(addr_a: Address = ("192.0.2.1", 51820), addr_b: Address = ("192.0.2.2", 51820)
                       ) -> tuple[MemoryDatagramSocket, MemoryDatagramSocket]:
    """Two sockets on a fresh network; ``a.sendto(x, b.getsockname())`` reaches ``b``."""
    net = MemoryNetwork()
    return MemoryDatagramSocket(net, addr_a), MemoryDatagramSocket(net, addr_b)


# --------------------------------------------------------------------------- netlink


class MemoryNetlink:
    """Records calls and models links/addresses/routes/rules like :class:`Netlink` does."""

    def __init__(self, links: dict[str, int] | None = None, netns: str | None = None) -> None:
        self.netns = netns
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.links: dict[str, dict[str, Any]] = {}
        for name, mtu in (links or {"lo": 65536}).items():
            self._new_link(name, mtu)
        self.routes: list[Route] = []
        self.rules: list[Rule] = []
        self.closed = False

    def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((method, args, kwargs))

    def _new_link(self, name: str, mtu: int = 1500) -> None:
        if not name or len(name.encode()) > 15:
            raise ConfigError(f"invalid interface name: {name!r} (1-15 bytes, no '/' or spaces)")
        if name in self.links:
            raise DeviceError(f"create link {name}: already exists")
        index = 1 + max((link["index"] for link in self.links.values()), default=0)
        mac = f"02:00:00:00:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"
        self.links[name] = {"index": index, "up": False, "mtu": mtu, "addrs": [], "mac": mac}

    def _link(self, name: str) -> dict[str, Any]:
        try:
            return self.links[name]
        except KeyError:
            where = f" in namespace {self.netns}" if self.netns else ""
            raise DeviceError(f"no such device: {name}{where}") from None

    def add_link(self, name: str, mtu: int = 1500) -> None:
        """Test helper: make ``name`` exist (as a created TUN would)."""
        self._record("add_link", name, mtu=mtu)
        self._new_link(name, mtu)

    def link_exists(self, name: str) -> bool:
        self._record("link_exists", name)
        return name in self.links

    def link_index(self, name: str) -> int:
        self._record("link_index", name)
        return int(self._link(name)["index"])

    def list_links(self) -> list[str]:
        return list(self.links)

    def set_up(self, name: str) -> None:
        self._record("set_up", name)
        self._link(name)["up"] = True

    def set_down(self, name: str) -> None:
        self._record("set_down", name)
        self._link(name)["up"] = False

    def is_up(self, name: str) -> bool:
        return bool(self._link(name)["up"])

    def set_mtu(self, name: str, mtu: int) -> None:
        self._record("set_mtu", name, mtu)
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise ConfigError(f"invalid MTU: {mtu!r} (68..65535)")
        self._link(name)["mtu"] = mtu

    def get_mtu(self, name: str) -> int:
        return int(self._link(name)["mtu"])

    def get_mac(self, name: str) -> str:
        return str(self._link(name)["mac"])

    def add_address(self, name: str, cidr: str, *, nodad: bool = False) -> None:
        self._record("add_address", name, cidr, nodad=nodad)
        iface = parse_interface(cidr)
        addrs = self._link(name)["addrs"]
        text = f"{iface.ip}/{iface.network.prefixlen}"
        if text in addrs:
            raise DeviceError(f"add address {cidr} to {name}: already exists")
        addrs.append(text)

    def del_address(self, name: str, cidr: str) -> None:
        self._record("del_address", name, cidr)
        iface = parse_interface(cidr)
        addrs = self._link(name)["addrs"]
        text = f"{iface.ip}/{iface.network.prefixlen}"
        if text not in addrs:
            raise DeviceError(f"delete address {cidr} from {name}: no such object")
        addrs.remove(text)

    def list_addresses(self, name: str) -> list[str]:
        return sorted(self._link(name)["addrs"], key=lambda c: (":" in c, c))

    def _route(self, dst_cidr: str, dev: str | None, via: str | None, table: int | None,
               metric: int | None) -> Route:
        net = parse_network(dst_cidr)
        if dev is not None:
            self._link(dev)
        if via is not None:
            parse_address(via)
        return Route(dst=str(net), dev=dev, via=via, table=254 if table is None else table,
                     metric=metric)

    def add_route(self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
                  table: int | None = None, metric: int | None = None) -> None:
        self._record("add_route", dst_cidr, dev=dev, via=via, table=table, metric=metric)
        if dev is None and via is None:
            raise ConfigError(f"route {dst_cidr}: give a device, a gateway, or both")
        route = self._route(dst_cidr, dev, via, table, metric)
        if route in self.routes:
            raise DeviceError(f"add route {dst_cidr}: already exists")
        self.routes.append(route)

    def del_route(self, dst_cidr: str, *, dev: str | None = None, via: str | None = None,
                  table: int | None = None, metric: int | None = None) -> None:
        self._record("del_route", dst_cidr, dev=dev, via=via, table=table, metric=metric)
        route = self._route(dst_cidr, dev, via, table, metric)
        if route not in self.routes:
            raise DeviceError(f"delete route {dst_cidr}: no such object")
        self.routes.remove(route)

    def list_routes(self, table: int | None = None, family: int = socket.AF_INET) -> list[Route]:
        want = 254 if table is None else table
        v6 = family == socket.AF_INET6
        return [r for r in self.routes if r.table == want and (":" in r.dst) == v6]

    def _rule(self, fwmark: int | None, fwmask: int | None, table: int | None,
              priority: int | None, suppress_prefixlength: int | None, invert: bool,
              family: int) -> Rule:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ConfigError(f"invalid address family: {family!r}")
        if table is None:
            raise ConfigError("a policy rule needs a table")
        mask = fwmask if fwmask is not None else (0xFFFFFFFF if fwmark is not None else None)
        return Rule(priority=32000 if priority is None else priority, table=table, fwmark=fwmark,
                    fwmask=mask, suppress_prefixlength=suppress_prefixlength, invert=invert,
                    family=family)

    def add_rule(self, *, fwmark: int | None = None, fwmask: int | None = None,
                 table: int | None = None, priority: int | None = None,
                 suppress_prefixlength: int | None = None, invert: bool = False,
                 family: int = socket.AF_INET) -> None:
        self._record("add_rule", fwmark=fwmark, fwmask=fwmask, table=table, priority=priority,
                     suppress_prefixlength=suppress_prefixlength, invert=invert, family=family)
        self.rules.append(self._rule(fwmark, fwmask, table, priority, suppress_prefixlength,
                                     invert, family))

    def del_rule(self, *, fwmark: int | None = None, fwmask: int | None = None,
                 table: int | None = None, priority: int | None = None,
                 suppress_prefixlength: int | None = None, invert: bool = False,
                 family: int = socket.AF_INET) -> None:
        self._record("del_rule", fwmark=fwmark, fwmask=fwmask, table=table, priority=priority,
                     suppress_prefixlength=suppress_prefixlength, invert=invert, family=family)
        rule = self._rule(fwmark, fwmask, table, priority, suppress_prefixlength, invert, family)
        if rule not in self.rules:
            raise DeviceError(f"delete rule (table {table}, priority {priority}): no such object")
        self.rules.remove(rule)

    def list_rules(self, family: int = socket.AF_INET) -> list[Rule]:
        return sorted((r for r in self.rules if r.family == family), key=lambda r: r.priority)

    def create_veth(self, a: str, b: str, peer_netns: str | None = None) -> None:
        self._record("create_veth", a, b, peer_netns=peer_netns)
        self._new_link(a)
        if peer_netns is None:
            self._new_link(b)

    def delete_link(self, name: str) -> None:
        self._record("delete_link", name)
        self._link(name)
        del self.links[name]
        self.routes = [r for r in self.routes if r.dev != name]

    def move_to_netns(self, name: str, netns: str) -> None:
        self._record("move_to_netns", name, netns)
        self._link(name)
        del self.links[name]

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> MemoryNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def method_names(self) -> list[str]:
        """The names of the recorded calls, in order (for compact assertions)."""
        return [c[0] for c in self.calls]
