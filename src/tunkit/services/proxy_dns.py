"""The fake-IP DNS server of ``tunkit proxy``: UDP and TCP, forwarding, and a small resolver.

Contract:

* :class:`DnsServer` listens on UDP and TCP at every ``--dns-listen`` address.  Each query is
  decided by the pure :class:`tunkit.proxy.dns.FakeDnsResolver`: fake answers are sent at once;
  forwarded queries go to ``--dns-upstream`` from a marked socket (UDP, retried over TCP when
  truncated) on a small worker pool, so a slow upstream never blocks fake answers.  Without an
  upstream, forwarded queries get SERVFAIL.
* :meth:`DnsServer.submit` takes queries hijacked from the TUN (any address, port 53) and
  calls back with the answer; it never blocks the caller.
* :meth:`DnsServer.serve_tcp_connection` serves one DNS-over-TCP stream (also hijacked ones).
* :meth:`DnsServer.resolve` turns a domain into a real address through the upstream resolver
  (for ``direct`` flows to a fake IP), with a cache honouring the answer's TTL (at least 5 s).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from tunkit.errors import RemoteProtocolError, TunkitError
from tunkit.proxy.dns import DnsTcpFramer, Drop, Forward, Reply
from tunkit.services.proxy_sockets import OutboundSockets
from tunkit.services.proxy_state import ProxyState

log = logging.getLogger("tunkit.proxy.dns")

FORWARD_TIMEOUT = 3.0


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def servfail_for(query: bytes) -> bytes | None:
    try:
        msg = dns.message.from_wire(query)
    except Exception:
        return None
    response = dns.message.make_response(msg)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


class DnsServer:
    def __init__(self, state: ProxyState, sockets: OutboundSockets,
                 listen: list[tuple[str, int]], upstream: tuple[str, int] | None) -> None:
        self.state = state
        self.sockets = sockets
        self.listen = listen
        self.upstream = upstream
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dns-forward")
        self._sockets: list[socket.socket] = []
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._cache_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for host, port in self.listen:
            udp = socket.socket(_family(host), socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((host, port))
            tcp = socket.socket(_family(host), socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, port))
            tcp.listen(128)
            self._sockets += [udp, tcp]
            threading.Thread(target=self._udp_loop, args=(udp,), daemon=True,
                             name=f"dns-udp-{host}").start()
            threading.Thread(target=self._tcp_accept_loop, args=(tcp,), daemon=True,
                             name=f"dns-tcp-{host}").start()

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- deciding --------------------------------------------------------------------------

    def decide(self, query: bytes) -> Reply | Forward | Drop:
        with self.state.lock:
            self.state.count("dns_queries")
            return self.state.resolver.answer(query, time.time())

    def answer_blocking(self, query: bytes) -> bytes | None:
        try:
            decision = self.decide(query)
        except TunkitError as err:
            log.warning("DNS query failed: %s", err)
            return servfail_for(query)
        if isinstance(decision, Reply):
            return decision.wire
        if isinstance(decision, Drop):
            return None
        return self.forward(decision.wire)

    def submit(self, query: bytes, reply: Callable[[bytes], None]) -> None:
        decision = self.decide(query)
        if isinstance(decision, Reply):
            reply(decision.wire)
        elif isinstance(decision, Forward):
            self.pool.submit(self._forward_and_reply, decision.wire, reply)

    def _forward_and_reply(self, query: bytes, reply: Callable[[bytes], None]) -> None:
        answer = self.forward(query)
        if answer is not None:
            reply(answer)

    # -- forwarding ------------------------------------------------------------------------

    def forward(self, query: bytes) -> bytes | None:
        with self.state.lock:
            self.state.count("dns_forwarded")
        if self.upstream is None:
            return servfail_for(query)
        host, port = self.upstream
        try:
            answer = self._forward_udp(query, host, port)
            if answer is not None and len(answer) > 2 and answer[2] & 0x02:  # TC: truncated
                answer = self._forward_tcp(query, host, port) or answer
            return answer if answer is not None else servfail_for(query)
        except OSError as err:
            log.info("DNS forward to %s:%d failed: %s", host, port, err)
            return servfail_for(query)

    def _forward_udp(self, query: bytes, host: str, port: int) -> bytes | None:
        sock = self.sockets.new_socket(_family(host), socket.SOCK_DGRAM)
        try:
            sock.settimeout(FORWARD_TIMEOUT)
            sock.connect((host, port))
            sock.send(query)
            deadline = time.monotonic() + FORWARD_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    return None
                if len(data) >= 2 and data[:2] == query[:2]:
                    return data
            return None
        finally:
            sock.close()

    def _forward_tcp(self, query: bytes, host: str, port: int) -> bytes | None:
        sock = self.sockets.connect_tcp(host, port, FORWARD_TIMEOUT)
        try:
            sock.settimeout(FORWARD_TIMEOUT)
            sock.sendall(DnsTcpFramer.frame(query))
            framer = DnsTcpFramer()
            while True:
                data = sock.recv(65535)
                if not data:
                    return None
                framer.receive_data(data)
                message = framer.next_message()
                if message is not None:
                    return message
        finally:
            sock.close()

    # -- serving ---------------------------------------------------------------------------

    def _udp_loop(self, sock: socket.socket) -> None:
        while not self.state.stopping.is_set():
            try:
                query, addr = sock.recvfrom(65535)
            except OSError:
                return

            def reply(answer: bytes, addr: tuple[str, int] = addr) -> None:
                with contextlib.suppress(OSError):
                    sock.sendto(answer, addr)

            try:
                self.submit(query, reply)
            except RuntimeError:  # executor shut down
                return
            except Exception as err:  # a failing store must not kill the server
                log.warning("DNS query failed: %s", err)
                failure = servfail_for(query)
                if failure is not None:
                    reply(failure)

    def _tcp_accept_loop(self, sock: socket.socket) -> None:
        while not self.state.stopping.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve_tcp_connection, args=(conn,), daemon=True,
                             name="dns-tcp-conn").start()

    def serve_tcp_connection(self, conn: socket.socket) -> None:
        framer = DnsTcpFramer()
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65535)
                if not data:
                    return
                framer.receive_data(data)
                while (message := framer.next_message()) is not None:
                    answer = self.answer_blocking(message)
                    if answer is not None:
                        conn.sendall(DnsTcpFramer.frame(answer))
        except (OSError, RemoteProtocolError):
            return
        finally:
            conn.close()

    # -- resolving for direct flows --------------------------------------------------------

    def cached(self, domain: str, want_v6: bool = False) -> str | None:
        """The address :meth:`resolve` would return from its cache, or None (never blocks)."""
        key = f"{domain}/{'6' if want_v6 else '4'}"
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    def resolve(self, domain: str, want_v6: bool = False) -> str | None:
        """A real address of ``domain`` from the upstream resolver, or None."""
        now = time.monotonic()
        key = f"{domain}/{'6' if want_v6 else '4'}"
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        rdtype = dns.rdatatype.AAAA if want_v6 else dns.rdatatype.A
        query = dns.message.make_query(domain, rdtype)
        query.flags |= dns.flags.RD
        wire = self.forward(query.to_wire()) if self.upstream is not None else None
        address, ttl = None, 5
        if wire is not None:
            try:
                response = dns.message.from_wire(wire)
                for rrset in response.answer:
                    if rrset.rdtype == rdtype:
                        address = str(next(iter(rrset)))
                        ttl = max(ttl, int(rrset.ttl))
                        break
            except Exception:
                address = None
        with self._cache_lock:
            self._cache[key] = (now + ttl, address)
        return address
