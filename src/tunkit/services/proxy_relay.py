"""TCP side of ``tunkit proxy``: the listener on the TUN address and per-connection setup.

Contract:

* :class:`TcpRelayServer` listens on the TUN address (the NAT loop delivers every captured
  flow there).  For each accepted connection it recovers the original
  ``(source, destination)`` from the NAT table by the peer address, maps a fake destination to
  its domain, asks the rules for a target, dials it (:mod:`tunkit.services.proxy_dial`) and
  hands both sockets to the splice relay.
* Everything per connection runs on one reactor thread (the
  :class:`tunkit.services.proxy_splice.SpliceRelay` epoll loop): accept, NAT lookup, rules, a
  non-blocking connect and handshake, then the relay.  Only what must block (resolving a
  name for a direct flow or an upstream given by name, DNS over TCP) goes to an
  :class:`ElasticPool` of reused threads.
* A failed upstream resets the application's connection (RST, not a hang) and releases the
  NAT mapping.  Connections to port 53 are served by the DNS server (hijacked DNS over TCP).
  Flows are registered for the status endpoint, with byte counts from the relay.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import select
import socket
import time
from collections.abc import Callable

from tunkit.errors import RemoteProtocolError
from tunkit.proxy.rules import DIRECT, Upstream
from tunkit.services.proxy_dial import (
    Dialer,
    Flow,
    NonBlockingDial,
    UpstreamError,
    literal_address,
)
from tunkit.services.proxy_dns import DnsServer
from tunkit.services.proxy_pool import ElasticPool
from tunkit.services.proxy_splice import SpliceRelay, abort_socket
from tunkit.services.proxy_state import ProxyState
from tunkit.services.proxy_tun import Decision

log = logging.getLogger("tunkit.proxy.relay")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address



class TcpRelayServer:
    def __init__(self, state: ProxyState, dialer: Dialer, dns: DnsServer | None) -> None:
        self.state = state
        self.dialer = dialer
        self.dns = dns
        self.listeners: list[socket.socket] = []
        self.pool = ElasticPool("proxy-conn")
        self.splice = SpliceRelay(self.note_bytes, self.note_closed)
        self.decisions: Callable[[bytes, int], Decision | None] | None = None
        """The TUN loop's SYN-time decisions (:meth:`TunNatLoop.take_decision`), if wired."""

    def note_bytes(self, flow_id: int, up: int, down: int) -> None:
        with self.state.lock:
            self.state.flows.add_bytes(flow_id, up, down)

    def note_closed(self, flow_id: int) -> None:
        with self.state.lock:
            self.state.flows.close(flow_id)

    def bind(self) -> int:
        """Bind the listener(s) on the TUN address(es); returns the port."""
        state = self.state
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND: the address may be settling
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accept()
        sock.bind((str(state.tun_ip4), 0))
        sock.listen(4096)
        port = int(sock.getsockname()[1])
        self.listeners.append(sock)
        if state.tun_ip6 is not None:
            sock6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock6.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
            sock6.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock6.bind((str(state.tun_ip6), port))
            sock6.listen(4096)
            self.listeners.append(sock6)
        state.listen_port = port
        return port

    def start(self) -> None:
        self.splice.start()
        for sock in self.listeners:
            sock.setblocking(False)
            self.splice.call_soon(functools.partial(self.splice.watch, sock.fileno(),
                                                    select.EPOLLIN, _Listener(self, sock)))

    def close(self) -> None:
        self.splice.close()  # first: a listener shut down under the reactor fails accept()
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    # -- per connection (reactor thread) ---------------------------------------------------

    def on_accept(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Recover the flow, decide, and dial without blocking (or hand over to a thread)."""
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        fake_ip = socket.inet_pton(family, peer[0].split("%")[0])
        decision = self.decisions(fake_ip, peer[1]) if self.decisions is not None else None
        if decision is not None:  # decided by the TUN loop at the SYN: nothing to look up
            with self.state.lock:
                self.state.count("tcp_accepted")
            mapping, domain, target, upstream = decision
            flow: Flow = (mapping, domain)
        else:
            recovered = self._recover(conn, fake_ip, peer[1])
            if recovered is None:
                return
            flow = recovered
            mapping, domain = flow
            target, upstream = self.state.decide(domain, mapping.key.dst_address,
                                                 mapping.key.dst_port, "tcp")
        key = mapping.key
        if key.dst_port == 53 and self.dns is not None:
            self.pool.submit(self.dns.serve_tcp_connection, conn)
            return
        host = domain if domain is not None else socket.inet_ntop(family, key.dst_ip)
        address = literal_address(upstream, host, key.dst_port)
        if address is None and upstream.scheme == DIRECT and self.dns is not None:
            resolved = self.dns.cached(host)  # no thread hop when the answer is cached
            if resolved is not None:
                address = (resolved, key.dst_port)
        if address is None:  # a name to resolve first: that blocks, use a thread
            self.pool.submit(self._serve_blocking, conn, flow, target, upstream, host)
            return
        NonBlockingDial(self, conn, flow, target, upstream, host, address).start()

    def _recover(self, conn: socket.socket, fake_ip: bytes, fake_port: int) -> Flow | None:
        state = self.state
        with state.lock:
            table = state.nat_for(4 if len(fake_ip) == 4 else 6)
            mapping = table.lookup_by_fake(fake_ip, fake_port) if table is not None else None
            if mapping is None:
                state.count("tcp_upstream_failed")
                log.info("accepted %s:%d with no NAT mapping; reset",
                         ipaddress.ip_address(fake_ip), fake_port)
                abort_socket(conn)
                return None
            state.count("tcp_accepted")
            _, domain = state.domain_of(mapping.key.dst_address)
        return mapping, domain

    def failed(self, conn: socket.socket, flow: Flow, target: str, err: object) -> None:
        mapping, domain = flow
        key = mapping.key
        log.info("tcp %s:%d -> %s:%d (%s) via %s failed: %s", key.src_address, key.src_port,
                 key.dst_address, key.dst_port, domain or "-", target, err)
        with self.state.lock:
            self.state.count("tcp_upstream_failed")
        abort_socket(conn)
        self.state.release_nat(mapping)

    def open_flow(self, flow: Flow, target: str) -> int:
        mapping, domain = flow
        key = mapping.key
        if len(key.src_ip) == 4:
            src = f"{socket.inet_ntop(socket.AF_INET, key.src_ip)}:{key.src_port}"
            dst = f"{socket.inet_ntop(socket.AF_INET, key.dst_ip)}:{key.dst_port}"
        else:
            src = f"{socket.inet_ntop(socket.AF_INET6, key.src_ip)}:{key.src_port}"
            dst = f"[{socket.inet_ntop(socket.AF_INET6, key.dst_ip)}]:{key.dst_port}"
        with self.state.lock:
            return self.state.flows.open("tcp", src, dst, domain, target, time.time())

    def _serve_blocking(self, conn: socket.socket, flow: Flow, target: str,
                        upstream: Upstream, host: str) -> None:
        try:
            up_sock, early = self.dialer.dial(upstream, host, flow[0].key.dst_port)
        except (UpstreamError, RemoteProtocolError) as err:
            self.failed(conn, flow, target, err)
            return
        flow_id = self.open_flow(flow, target)
        try:
            if early:
                conn.sendall(early)
                self.note_bytes(flow_id, 0, len(early))
        except OSError:
            abort_socket(conn)
            abort_socket(up_sock)
            self.note_closed(flow_id)
            return
        self.splice.add(conn, up_sock, flow_id)




class _Listener:
    def __init__(self, server: TcpRelayServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock

    def on_event(self, events: int) -> None:
        for _ in range(64):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and friends: try again on the next event
                log.warning("accept failed: %s", err)
                return
            self.server.on_accept(conn, peer)


