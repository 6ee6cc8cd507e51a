"""Dialing upstreams for ``tunkit proxy``: blocking (:class:`Dialer`) and on the reactor
(:class:`NonBlockingDial`).

Contract: both connect through the configured upstream (SOCKS5 ``CONNECT`` by domain name for
fake IPs, with optional user/password; HTTP ``CONNECT``; or direct) using the pure handshake
state machines of :mod:`tunkit.proxy`, from marked sockets (:class:`OutboundSockets`).

* :class:`Dialer` blocks (it may resolve names): use it on a pool thread.
* :class:`NonBlockingDial` runs on the reactor thread when no name lookup is needed
  (:func:`literal_address`): non-blocking connect, handshake on readiness events, a deadline
  of :data:`HANDSHAKE_TIMEOUT`; success hands both sockets to the splice relay, failure
  resets the application's connection (RST), never a hang.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import select
import socket
import time
from typing import TYPE_CHECKING

from tunkit.errors import TunkitError
from tunkit.proxy import httpconnect, socks5
from tunkit.proxy.nat import NatMapping
from tunkit.proxy.rules import DIRECT, REJECT, Upstream
from tunkit.proxy.sansio import NeedData
from tunkit.services.proxy_dns import DnsServer
from tunkit.services.proxy_sockets import OutboundSockets
from tunkit.services.proxy_splice import abort_socket

if TYPE_CHECKING:
    from tunkit.services.proxy_relay import TcpRelayServer

log = logging.getLogger("tunkit.proxy.relay")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HANDSHAKE_TIMEOUT = 10.0

Flow = tuple[NatMapping, str | None]
"""(mapping, domain or None); the mapping's key holds the app and destination addresses."""

_abort = abort_socket


class UpstreamError(TunkitError):
    """The upstream could not be reached or refused the connection."""


def _recv_some(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise UpstreamError("upstream closed the connection during the handshake")
    return data


def socks5_handshake(sock: socket.socket, client: socks5.Socks5Client, what: str) -> object:
    """Drive ``client`` over the blocking ``sock`` to its end: the final event on success,
    :class:`UpstreamError` (naming ``what``) on a refusal or a closed connection."""
    sock.sendall(client.initial_bytes())
    while True:
        event = client.next_event()
        out = client.data_to_send()
        if out:
            sock.sendall(out)
        if isinstance(event, NeedData):
            client.receive_data(_recv_some(sock))
            continue
        if isinstance(event, socks5.Failed):
            raise UpstreamError(f"SOCKS5 {what}: {event.message}")
        return event


class Dialer:
    def __init__(self, sockets: OutboundSockets, dns: DnsServer | None) -> None:
        self.sockets = sockets
        self.dns = dns

    def dial(self, upstream: Upstream, host: str, port: int) -> tuple[socket.socket, bytes]:
        """A socket connected through ``upstream`` to ``host:port`` and any early bytes."""
        scheme = upstream.scheme
        if scheme == REJECT:
            raise UpstreamError("rejected by the rules")
        if scheme == DIRECT:
            address = host
            try:
                ipaddress.ip_address(host)
            except ValueError:
                resolved = self.dns.resolve(host) if self.dns is not None else None
                if resolved is None:
                    raise UpstreamError(f"cannot resolve {host} for a direct connection") from None
                address = resolved
            try:
                return self.sockets.connect_tcp(address, port), b""
            except (ConnectionError, OSError) as err:
                raise UpstreamError(str(err)) from None
        try:
            sock = self.sockets.connect_tcp(upstream.host, upstream.port)
        except (ConnectionError, OSError) as err:
            raise UpstreamError(f"{upstream}: {err}") from None
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            if scheme == "socks5":
                early = self._socks5(sock, upstream, host, port)
            else:
                early = self._http_connect(sock, upstream, host, port)
            sock.settimeout(None)
            return sock, early
        except (OSError, TunkitError) as err:
            sock.close()
            if isinstance(err, UpstreamError):
                raise
            raise UpstreamError(f"{upstream}: {err}") from None

    @staticmethod
    def _socks5(sock: socket.socket, upstream: Upstream, host: str, port: int) -> bytes:
        client = socks5.Socks5Client(socks5.Command.CONNECT, host, port,
                                     username=upstream.username, password=upstream.password)
        socks5_handshake(sock, client, f"{host}:{port}")
        return client.trailing_data

    @staticmethod
    def _http_connect(sock: socket.socket, upstream: Upstream, host: str, port: int) -> bytes:
        client = httpconnect.HttpConnectClient(host, port, username=upstream.username,
                                               password=upstream.password)
        sock.sendall(client.initial_bytes())
        while True:
            event = client.next_event()
            if isinstance(event, NeedData):
                client.receive_data(_recv_some(sock))
                continue
            if isinstance(event, httpconnect.Failed):
                raise UpstreamError(f"HTTP CONNECT {host}:{port}: {event.status} {event.reason}")
            return client.trailing_data


def literal_address(upstream: Upstream, host: str, port: int) -> tuple[str, int] | None:
    """Where to connect without a name lookup, or None if a lookup is needed."""
    if upstream.scheme == DIRECT:
        target, target_port = host, port
    else:
        target, target_port = upstream.host, upstream.port
    return (target, target_port) if _is_ip_literal(target) else None


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(text: str) -> bool:
    """Cached: the same upstream address (or domain) comes up for every connection."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class NonBlockingDial:
    """A non-blocking upstream dial on the reactor: connect, then the SOCKS5 or HTTP CONNECT
    handshake (pure state machines), then the splice relay.  Times out after
    :data:`HANDSHAKE_TIMEOUT`; any failure resets the application's connection."""

    def __init__(self, server: TcpRelayServer, conn: socket.socket, flow: Flow, target: str,
                 upstream: Upstream, host: str, address: tuple[str, int]) -> None:
        self.server = server
        self.reactor = server.splice
        self.conn = conn
        self.flow = flow
        self.target = target
        self.upstream = upstream
        self.host = host
        self.address = address
        self.sock: socket.socket | None = None
        self.client: socks5.Socks5Client | httpconnect.HttpConnectClient | None = None
        self.finished = False

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        try:
            sock = self.server.dialer.sockets.new_socket(
                family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except TunkitError as err:
            self.fail(err)
            return
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.fail(os.strerror(code))
            return
        self.reactor.watch(sock.fileno(), select.EPOLLOUT, self)
        self.reactor.call_at(time.monotonic() + HANDSHAKE_TIMEOUT, self.on_timeout)

    def on_timeout(self) -> None:
        if not self.finished:
            self.fail("timed out")

    def on_event(self, events: int) -> None:
        sock = self.sock
        assert sock is not None
        if self.client is None:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail(f"cannot connect to {self.address[0]}:{self.address[1]}: "
                          f"{os.strerror(code)}")
                return
            up = self.upstream
            port = self.flow[0].key.dst_port
            if up.scheme == DIRECT:
                self.succeed(b"")
                return
            try:
                if up.scheme == "socks5":
                    self.client = socks5.Socks5Client(socks5.Command.CONNECT, self.host, port,
                                                      username=up.username, password=up.password)
                else:
                    self.client = httpconnect.HttpConnectClient(
                        self.host, port, username=up.username, password=up.password)
                self.send(self.client.initial_bytes())
            except (OSError, TunkitError) as err:
                self.fail(err)
                return
            self.reactor.rewatch(sock.fileno(), select.EPOLLIN)
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.fail(err)
            return
        if not data:
            self.fail("upstream closed the connection during the handshake")
            return
        try:
            self.advance(data)
        except (OSError, TunkitError) as err:
            self.fail(err)

    def advance(self, data: bytes) -> None:
        client = self.client
        if isinstance(client, socks5.Socks5Client):
            client.receive_data(data)
            while True:
                event = client.next_event()
                out = client.data_to_send()
                if out:
                    self.send(out)
                if isinstance(event, NeedData):
                    return
                if isinstance(event, socks5.Failed):
                    self.fail(f"SOCKS5 {self.host}: {event.message}")
                    return
                self.succeed(client.trailing_data)
                return
        assert isinstance(client, httpconnect.HttpConnectClient)
        client.receive_data(data)
        reply = client.next_event()
        if isinstance(reply, NeedData):
            return
        if isinstance(reply, httpconnect.Failed):
            self.fail(f"HTTP CONNECT {self.host}: {reply.status} {reply.reason}")
            return
        self.succeed(client.trailing_data)

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        if self.sock.send(data) != len(data):  # a few hundred bytes into an empty buffer
            raise UpstreamError("handshake write did not complete")

    def succeed(self, early: bytes) -> None:
        self.finished = True
        sock = self.sock
        assert sock is not None
        self.reactor.unwatch(sock.fileno())
        flow_id = self.server.open_flow(self.flow, self.target)
        if early:
            try:
                self.conn.sendall(early)  # blocking socket, empty buffer: immediate
            except OSError:
                _abort(self.conn)
                _abort(sock)
                self.server.note_closed(flow_id)
                return
            self.server.note_bytes(flow_id, 0, len(early))
        self.reactor.start_relay(self.conn, sock, flow_id)

    def fail(self, err: object) -> None:
        if self.finished:
            return
        self.finished = True
        if self.sock is not None:
            self.reactor.unwatch(self.sock.fileno())
            _abort(self.sock)
        self.server.failed(self.conn, self.flow, self.target, err)
