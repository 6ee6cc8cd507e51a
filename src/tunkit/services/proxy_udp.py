"""UDP side of ``tunkit proxy``: endpoint-independent sessions, SOCKS5 UDP ASSOCIATE or direct.

Contract:

* :meth:`UdpRelay.submit` is called by the TUN loop with one captured datagram and never
  blocks: datagrams are queued to one worker thread that owns every upstream socket.
* A direct datagram to a fake IP needs the name's real address: from the resolver's cache at
  once, otherwise the datagram waits (at most :data:`MAX_PARKED` per name) while a pool
  thread asks the upstream resolver, so a slow name never holds up other flows.
* Sessions are keyed by the application's source (``tunkit.proxy.udp.UdpSessionTable``):
  idle timeout and a cap (the least recently used session is evicted).  A session keeps one
  upstream association per rules target: a marked UDP socket for ``direct`` or a SOCKS5
  ``UDP ASSOCIATE`` (control TCP connection + UDP socket; fake IPs are sent *by name*).
* Replies become IP/UDP packets ``remote -> app`` built by the packet layer and written into
  the TUN; a reply from a real address the application reached through a fake IP is given the
  fake IP as source again.  Rejected datagrams get an ICMP port unreachable.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tunkit.errors import MalformedPacketError, TunkitError
from tunkit.packet.icmp import dest_unreachable_packet, dest_unreachable_v6_packet
from tunkit.packet.ip import PROTO_UDP, build_ip
from tunkit.packet.udp import build_udp
from tunkit.proxy import socks5
from tunkit.proxy.rules import DIRECT, REJECT, Upstream
from tunkit.proxy.udp import UdpSession, UdpSessionTable, build_udp_reply
from tunkit.services.proxy_dial import socks5_handshake
from tunkit.services.proxy_dns import DnsServer
from tunkit.services.proxy_pool import ElasticPool
from tunkit.services.proxy_sockets import OutboundSockets
from tunkit.services.proxy_state import ProxyState

log = logging.getLogger("tunkit.proxy.udp")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Submission = tuple[IPAddress, int, IPAddress, int, bytes]
MAX_PARKED = 64
"""Datagrams kept per name while its address is being resolved; later ones are dropped."""


@dataclass(eq=False)
class _Assoc:
    """One upstream association of a session for one target."""

    session: UdpSession
    kind: str
    """``direct`` or ``socks5``."""
    sock: socket.socket
    control: socket.socket | None = None
    relay: tuple[str, int] | None = None
    back: dict[tuple[str, int], tuple[IPAddress, int]] = field(default_factory=dict)
    """(address as the remote is seen, port) -> (address the app used, port)."""
    by_port: dict[int, tuple[IPAddress, int]] = field(default_factory=dict)
    flow_id: int = 0
    """Its entry in the flow registry (status endpoint)."""


@dataclass(eq=False)
class _Parked:
    """A direct datagram waiting for its destination name's address."""

    assoc: _Assoc
    dst_ip: IPAddress
    dst_port: int
    payload: bytes


class UdpRelay:
    def __init__(self, state: ProxyState, sockets: OutboundSockets, dns: DnsServer | None,
                 write_packet: Callable[[bytes], None]) -> None:
        self.state = state
        self.sockets = sockets
        self.dns = dns
        self.write_packet = write_packet
        self.table = UdpSessionTable(idle_timeout=state.config.udp_timeout,
                                     max_sessions=state.config.udp_max_sessions)
        self.selector = selectors.DefaultSelector()
        self._queue: collections.deque[Submission] = collections.deque(maxlen=4096)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, daemon=True, name="proxy-udp")
        self._resolvers = ElasticPool("proxy-udp-dns")
        # (name, want v6) -> datagrams waiting for its address (worker thread only)
        self._parked: dict[tuple[str, bool], list[_Parked]] = {}
        self._resolved: collections.deque[tuple[tuple[str, bool], str | None]] = (
            collections.deque())

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.state.stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def stats(self) -> dict[str, int]:
        t = self.table
        return {"sessions": len(t), "max_sessions": t.max_sessions, "created": t.created_total,
                "evicted": t.evicted, "expired": t.expired}

    def submit(self, app_ip: IPAddress, app_port: int, dst_ip: IPAddress, dst_port: int,
               payload: bytes) -> None:
        self._queue.append((app_ip, app_port, dst_ip, dst_port, payload))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_expire = time.monotonic() + 1.0
        while not self.state.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.5):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                assoc, is_control = key.data
                if is_control:
                    self._on_control(assoc)
                else:
                    self._on_reply(assoc)
            while self._resolved:
                self._on_resolved(*self._resolved.popleft())
            while self._queue:
                try:
                    self._on_datagram(*self._queue.popleft())
                except (TunkitError, OSError) as err:
                    log.info("UDP datagram dropped: %s", err)
            now = time.monotonic()
            if now >= next_expire:
                next_expire = now + 1.0
                for session in self.table.expire(now):
                    self._close_session(session)
        for session in self.table.expire(float("inf")):
            self._close_session(session)

    def _on_datagram(self, app_ip: IPAddress, app_port: int, dst_ip: IPAddress, dst_port: int,
                     payload: bytes) -> None:
        state = self.state
        with state.lock:
            is_fake, domain = state.domain_of(dst_ip)
            if is_fake and domain is None:
                target, upstream = REJECT, Upstream(REJECT)
            else:
                target, upstream = state.decide(domain, dst_ip, dst_port, "udp")
        if upstream.scheme == REJECT or upstream.scheme == "http":
            self._unreachable(app_ip, app_port, dst_ip, dst_port, payload)
            return
        now = time.monotonic()
        opened = self.table.open(app_ip, app_port, now)
        if opened.evicted is not None:
            self._close_session(opened.evicted)
        session = opened.session
        assocs: dict[str, _Assoc] = session.context if isinstance(session.context, dict) else {}
        session.context = assocs
        assoc = assocs.get(target)
        if assoc is None:
            assoc = self._open_assoc(session, upstream, app_ip.version)
            assocs[target] = assoc
            shown = f"[{dst_ip}]:{dst_port}" if dst_ip.version == 6 else f"{dst_ip}:{dst_port}"
            with state.lock:
                assoc.flow_id = state.flows.open("udp", f"{app_ip}:{app_port}", shown, domain,
                                                 target, time.time())
        host = domain if domain is not None else str(dst_ip)
        if assoc.kind == DIRECT:
            address = host
            if domain is not None:
                if self.dns is None:
                    raise TunkitError(f"cannot resolve {domain}: no resolver")
                want_v6 = dst_ip.version == 6
                cached = self.dns.cached(domain, want_v6)
                if cached is None:  # resolve on a pool thread; the datagram waits
                    self._park(_Parked(assoc, dst_ip, dst_port, payload), domain, want_v6)
                    return
                address = cached
            self._send_direct(assoc, address, dst_ip, dst_port, payload)
        else:
            assoc.by_port[dst_port] = (dst_ip, dst_port)
            assoc.back[(host, dst_port)] = (dst_ip, dst_port)
            assoc.sock.send(socks5.encode_udp_datagram(host, dst_port, payload))
            self._sent_up(assoc, len(payload))

    def _send_direct(self, assoc: _Assoc, address: str, dst_ip: IPAddress, dst_port: int,
                     payload: bytes) -> None:
        assoc.back[(address, dst_port)] = (dst_ip, dst_port)
        assoc.by_port[dst_port] = (dst_ip, dst_port)
        assoc.sock.sendto(payload, (address, dst_port))
        self._sent_up(assoc, len(payload))

    def _sent_up(self, assoc: _Assoc, size: int) -> None:
        self.table.note_upstream(assoc.session, size, time.monotonic())
        with self.state.lock:
            self.state.count("udp_datagrams_up")
            self.state.flows.add_bytes(assoc.flow_id, up=size)

    def _park(self, parked: _Parked, domain: str, want_v6: bool) -> None:
        key = (domain, want_v6)
        waiting = self._parked.get(key)
        if waiting is None:
            self._parked[key] = [parked]
            self._resolvers.submit(self._resolve, key)
        elif len(waiting) < MAX_PARKED:
            waiting.append(parked)
        else:
            with self.state.lock:
                self.state.count("udp_dropped_resolving")

    def _resolve(self, key: tuple[str, bool]) -> None:
        """On a pool thread: ask the resolver, hand the answer to the worker."""
        address = None
        try:
            address = self.dns.resolve(*key) if self.dns is not None else None
        finally:
            self._resolved.append((key, address))
            self._wake()

    def _on_resolved(self, key: tuple[str, bool], address: str | None) -> None:
        for parked in self._parked.pop(key, []):
            assoc = parked.assoc
            if assoc.sock.fileno() < 0:  # its session ended meanwhile
                continue
            if address is None:
                log.info("UDP datagram dropped: cannot resolve %s", key[0])
                continue
            try:
                self._send_direct(assoc, address, parked.dst_ip, parked.dst_port, parked.payload)
            except OSError as err:
                log.info("UDP datagram dropped: %s", err)

    def _open_assoc(self, session: UdpSession, upstream: Upstream, version: int) -> _Assoc:
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        if upstream.scheme == DIRECT:
            sock = self.sockets.new_socket(family, socket.SOCK_DGRAM)
            sock.bind(("::" if version == 6 else "0.0.0.0", 0))
            sock.setblocking(False)
            assoc = _Assoc(session, DIRECT, sock)
            self.selector.register(sock, selectors.EVENT_READ, (assoc, False))
            return assoc
        control = self.sockets.connect_tcp(upstream.host, upstream.port, timeout=5.0)
        try:
            control.settimeout(5.0)
            client = socks5.Socks5Client(socks5.Command.UDP_ASSOCIATE, "0.0.0.0", 0,
                                         username=upstream.username, password=upstream.password)
            event = socks5_handshake(control, client, "UDP ASSOCIATE")
            assert isinstance(event, socks5.UdpAssociated)
            relay_host = event.relay_host
            if ipaddress.ip_address(relay_host).is_unspecified:
                relay_host = control.getpeername()[0]
            relay = (relay_host, event.relay_port)
            sock = self.sockets.new_socket(
                socket.AF_INET6 if ":" in relay_host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((control.getsockname()[0], 0))
            sock.connect(relay)
            sock.setblocking(False)
            control.setblocking(False)
        except BaseException:
            control.close()
            raise
        assoc = _Assoc(session, "socks5", sock, control, relay)
        self.selector.register(sock, selectors.EVENT_READ, (assoc, False))
        self.selector.register(control, selectors.EVENT_READ, (assoc, True))
        return assoc

    def _on_control(self, assoc: _Assoc) -> None:
        try:
            data = assoc.control.recv(4096) if assoc.control else b""
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the association ends with its TCP connection
            self._close_assoc(assoc)
            if isinstance(assoc.session.context, dict):
                for name, other in list(assoc.session.context.items()):
                    if other is assoc:
                        del assoc.session.context[name]

    def _on_reply(self, assoc: _Assoc) -> None:
        for _ in range(64):
            try:
                data, addr = assoc.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if assoc.kind == DIRECT:
                host, port, payload = addr[0], addr[1], data
            else:
                try:
                    datagram = socks5.decode_udp_datagram(data)
                except MalformedPacketError:
                    continue
                if datagram.frag:
                    continue
                host, port, payload = datagram.host, datagram.port, datagram.payload
            self._deliver(assoc, host, port, payload)

    def _deliver(self, assoc: _Assoc, host: str, port: int, payload: bytes) -> None:
        session = assoc.session
        seen = assoc.back.get((host, port))
        if seen is None:
            seen = assoc.by_port.get(port)
        if seen is None:
            try:
                seen = (ipaddress.ip_address(host), port)
            except ValueError:
                return
        remote_ip, remote_port = seen
        if remote_ip.version != session.src_ip.version:
            return
        try:
            packet = build_udp_reply(session.src_ip, session.src_port, remote_ip, remote_port,
                                     payload)
        except TunkitError:
            return
        self.write_packet(packet)
        self.table.note_downstream(session, len(payload), time.monotonic())
        with self.state.lock:
            self.state.count("udp_datagrams_down")
            self.state.flows.add_bytes(assoc.flow_id, down=len(payload))

    def _unreachable(self, app_ip: IPAddress, app_port: int, dst_ip: IPAddress, dst_port: int,
                     payload: bytes) -> None:
        if app_ip.version != dst_ip.version:
            return
        original = build_ip(app_ip.packed, dst_ip.packed, PROTO_UDP,
                            build_udp(app_ip.packed, dst_ip.packed, app_port, dst_port,
                                      payload[:64]))
        if dst_ip.version == 4:
            self.write_packet(dest_unreachable_packet(dst_ip.packed, original, 3))
        else:
            self.write_packet(dest_unreachable_v6_packet(dst_ip.packed, original, 4))

    def _close_assoc(self, assoc: _Assoc) -> None:
        if assoc.flow_id:
            with self.state.lock:
                self.state.flows.close(assoc.flow_id)
            assoc.flow_id = 0
        for sock in (assoc.sock, assoc.control):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()

    def _close_session(self, session: UdpSession) -> None:
        if isinstance(session.context, dict):
            for assoc in session.context.values():
                self._close_assoc(assoc)
            session.context = None
        self.table.close(session)
