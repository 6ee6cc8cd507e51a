"""Sockets the proxy opens towards the outside world, marked so they never loop into the TUN.

Contract: every socket made by :class:`OutboundSockets` carries ``SO_MARK`` (when a mark is
configured; ``--auto-route`` sends marked traffic to the main table) and/or is bound to the
``--interface`` device with ``SO_BINDTODEVICE``.  Upstream proxies, direct connections, DNS
forwarding and UDP relaying all use it, so no packet of the proxy itself re-enters the TUN.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from tunkit.errors import DeviceError

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


class OutboundSockets:
    def __init__(self, mark: int | None = None, interface: str | None = None) -> None:
        self.mark = mark
        self.interface = interface

    def new_socket(self, family: int, kind: int) -> socket.socket:
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
        try:
            if self.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
            if self.interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
        except OSError as err:
            sock.close()
            raise DeviceError(f"cannot mark an outbound socket: {err.strerror}") from None
        return sock

    def connect_tcp(self, host: str, port: int, timeout: float = 10.0) -> socket.socket:
        """A connected, blocking TCP socket to ``host:port`` (a name is resolved by the system)."""
        try:
            version = ipaddress.ip_address(host).version
            addresses: list[tuple[int, Any]] = [
                (socket.AF_INET6 if version == 6 else socket.AF_INET, (host, port))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as err:
                raise ConnectionError(f"cannot resolve {host}: {err}") from None
            addresses = [(info[0], info[4][:2]) for info in infos]
        last: OSError | None = None
        for family, addr in addresses:
            sock = self.new_socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(addr)
            except OSError as err:
                sock.close()
                last = err
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise ConnectionError(f"cannot connect to {host}:{port}: {last}")
