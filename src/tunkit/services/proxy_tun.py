"""The TUN side of ``tunkit proxy``: the system-stack NAT loop (PROTOCOLS.md §4).

Contract:

* :class:`TunNatLoop` owns a vnet_hdr TUN.  :meth:`TunNatLoop.attach` serves a queue from a
  reactor (the relay's epoll thread: packets are drained up to :data:`DRAIN` per readiness
  event, NAT expiry runs once a second from a timer); :meth:`TunNatLoop.run` serves a queue
  on a thread of its own.  For every packet:

  - TCP from the application ``A:a -> D:d``: on a SYN it decides the flow (rules, fake-IP
    domain), allocates a NAT pair ``F:f`` and rewrites the packet to ``F:f -> L:lp`` (our
    listener), later packets reuse the mapping.  A rejected flow, an exhausted NAT, a fake IP
    with no domain, or a non-SYN packet without a mapping is answered with an RST at once.
    The decision (target, upstream, domain) is kept for the relay, which takes it at
    accept() (:meth:`TunNatLoop.take_decision`) instead of deciding again.
  - TCP from the listener ``L:lp -> F:f``: rewritten back to ``D:d -> A:a``.
  - Rewrites are in place with incremental checksums (RFC 1624), on whole GSO super-packets
    (the vnet header is written back unchanged; NEEDS_CSUM packets get the partial-sum
    update).  Both directions' rewrites are precomputed once per mapping
    (:func:`tunkit.packet.rewrite.precompute_flow_rewrite`), and looked up by the packet's
    raw 4-tuple bytes: IPv4 TCP without options (nearly every packet) costs one slice, one
    dict lookup, the rewrite and the write.
  - UDP to port 53: handed to the DNS server (hijack), whose answer is written back as a packet.
  - Other UDP: handed to the UDP session manager (rejected flows get ICMP port unreachable).
  - Anything else (ICMP, fragments) is dropped and counted.
* New flows are set up, and NAT state advanced, under ``state.lock``; the translation cache
  mirrors the pure :class:`NatTable` and is shared by every queue.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from tunkit.errors import MalformedPacketError, TunkitError
from tunkit.io.tun import TunDevice
from tunkit.packet.icmp import dest_unreachable_packet, dest_unreachable_v6_packet
from tunkit.packet.ip import PROTO_TCP, PROTO_UDP, build_ip, ipv6_upper_layer
from tunkit.packet.rewrite import FlowRewrite, apply_flow_rewrite, precompute_flow_rewrite
from tunkit.packet.tcp import build_tcp_segment
from tunkit.packet.vnet import GSO_NONE, NEEDS_CSUM, decode_vnet_hdr, gso_split
from tunkit.proxy.nat import NatExhausted, NatKey, NatMapping
from tunkit.proxy.rules import REJECT, Upstream
from tunkit.services.proxy_state import ProxyState

log = logging.getLogger("tunkit.proxy")

VNET_LEN = 10
ZERO_VNET = bytes(VNET_LEN)
DRAIN = 64
"""Packets read per readiness event before the reactor serves its other fds."""
_HH = struct.Struct("!HH")
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

Entry = tuple[NatMapping, FlowRewrite, bool]
"""A mapping, the precomputed rewrite of one of its directions, and whether that direction
is outbound (from the application)."""


class Decision(NamedTuple):
    """What the TUN loop decided at the SYN, for the relay to use at accept()."""

    mapping: NatMapping
    domain: str | None
    target: str
    upstream: Upstream


UdpSink = Callable[[Any, int, Any, int, bytes], None]
"""``(app ip, app port, dst ip, dst port, payload)``; never blocks."""
DnsSink = Callable[[bytes, Callable[[bytes], None]], None]
"""``(query, reply callback)``; never blocks."""


def _ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


class _QueueFd(threading.local):
    """``.fd``: the queue fd of the calling loop thread (queue 0 for any other thread);
    ``.buf``/``.mv``: that thread's packet buffer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(65535 + 256)
        self.mv = memoryview(self.buf)


class TunNatLoop:
    def __init__(self, state: ProxyState, tun: TunDevice, *, udp_sink: UdpSink | None,
                 dns_sink: DnsSink | None) -> None:
        self.state = state
        self.tun = tun
        self.fd = tun.fileno()
        self._local = _QueueFd(self.fd)
        self.udp_sink = udp_sink
        self.dns_sink = dns_sink
        self.flows: dict[bytes, Entry] = {}
        """Keyed by a packet's raw 4-tuple ``src + dst + sport + dport`` (as in the headers):
        the app's ``A D a d`` (to ``F:f -> L:lp``) and the listener's ``L F lp f`` (back to
        ``D:d -> A:a``)."""
        self.decisions: dict[tuple[bytes, int], Decision] = {}
        """Keyed by (fake ip bytes, fake port): taken by the relay at accept()."""
        self.listen4 = state.tun_ip4.packed
        self.listen6 = state.tun_ip6.packed if state.tun_ip6 is not None else b""
        self.lport = state.listen_port
        self.nat4 = state.nat4

    # -- writing ---------------------------------------------------------------------------

    def write_packet(self, packet: bytes) -> None:
        """Write one plain IP packet (no offload) into the TUN; thread-safe."""
        try:
            os.writev(self.fd, [ZERO_VNET, packet])
        except OSError as err:
            self.state.count("tun_dropped")
            log.debug("TUN write failed: %s", err)

    # -- the loop --------------------------------------------------------------------------

    def attach(self, reactor: Reactor, queue: int = 0) -> None:
        """Serve ``queue`` from ``reactor``'s thread (call on that thread): no thread of its
        own, so no GIL hand-over between the NAT and the relay for every packet."""
        fd = self.tun.fileno(queue)
        os.set_blocking(fd, False)
        self._local.fd = fd
        reactor.watch(fd, select.EPOLLIN, _TunWatcher(self, fd))

        def tick() -> None:
            if self.state.stopping.is_set():
                return
            now = time.monotonic()
            self.expire(now)
            reactor.call_at(now + 1.0, tick)

        reactor.call_at(time.monotonic() + 1.0, tick)

    def drain(self, fd: int, limit: int = DRAIN) -> bool:
        """Read and handle up to ``limit`` packets; False once the queue is empty."""
        state = self.state
        local = self._local
        buf, mv = local.buf, local.mv
        now = time.monotonic()
        on_packet = self.on_packet
        for _ in range(limit):
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                return False
            except OSError as err:
                if not state.stopping.is_set():
                    log.warning("TUN read failed: %s", err)
                return False
            try:
                on_packet(mv, n, now)
            except (MalformedPacketError, ValueError, IndexError, struct.error) as err:
                state.count("tun_dropped")
                log.debug("dropped a malformed packet: %s", err)
            except OSError as err:  # writing back (ENOBUFS, ...): drop, keep the loop
                state.count("tun_dropped")
                log.debug("TUN write failed: %s", err)
        return True

    def run(self, queue: int = 0) -> None:
        """Serve one queue of the TUN on the calling thread, until ``state.stopping``."""
        state = self.state
        fd = self.tun.fileno(queue)
        self._local.fd = fd
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        next_expire = time.monotonic() + 1.0
        while not state.stopping.is_set():
            ready = poller.poll(250)
            now = time.monotonic()
            if now >= next_expire and queue == 0:
                self.expire(now)
                next_expire = now + 1.0
            if ready:
                while self.drain(fd, 512):
                    pass

    def expire(self, now: float) -> None:
        state = self.state
        with state.lock:
            for table in (state.nat4, state.nat6):
                if table is None:
                    continue
                for mapping in table.expire(now):
                    self._forget(mapping)
            state.pool4.flush()
            if state.pool6 is not None:
                state.pool6.flush()

    def _forget(self, mapping: NatMapping) -> None:
        k = mapping.key
        listen = self.listen4 if len(k.src_ip) == 4 else self.listen6
        self.flows.pop(k.src_ip + k.dst_ip + _HH.pack(k.src_port, k.dst_port), None)
        self.flows.pop(listen + mapping.fake_ip + _HH.pack(self.lport, mapping.fake_port), None)
        decision = self.decisions.get((mapping.fake_ip, mapping.fake_port))
        if decision is not None and decision.mapping is mapping:
            del self.decisions[(mapping.fake_ip, mapping.fake_port)]

    def take_decision(self, fake_ip: bytes, fake_port: int) -> Decision | None:
        """The SYN-time decision for the flow the listener accepted from ``fake_ip:port``."""
        decision = self.decisions.pop((fake_ip, fake_port), None)
        if decision is None or not decision.mapping.live:
            return None
        return decision

    def on_packet(self, mv: memoryview, n: int, now: float) -> None:
        """One packet read from the TUN (``mv[:n]``, vnet header first)."""
        if (n >= VNET_LEN + 40 and mv[10] == 0x45 and mv[19] == PROTO_TCP
                and not (mv[16] & 0x1F or mv[17])):
            # The common case, IPv4 TCP without options: the 4-tuple is one slice.
            self.state.counters["tun_packets"] += 1
            entry = self.flows.get(mv[22:34].tobytes())
            if entry is not None:
                mapping, rw, outbound = entry
                apply_flow_rewrite(mv[VNET_LEN:n], 20, rw, bool(mv[0] & NEEDS_CSUM))
                with self.state.lock:
                    self.nat4.note_packet(mapping, now, mv[43], outbound=outbound)
                os.write(self._local.fd, mv[:n])
                return
            self.on_new_tcp(mv, n, mv[VNET_LEN:n], 20, bytes(mv[22:26]), bytes(mv[26:30]),
                            self.listen4, now)
            return
        if n < VNET_LEN + 20:
            self.state.count("tun_dropped")
            return
        self.state.counters["tun_packets"] += 1
        pkt = mv[VNET_LEN:n]
        version = pkt[0] >> 4
        if version == 4:
            l4 = (pkt[0] & 0xF) * 4
            proto = pkt[9]
            if _HH.unpack_from(pkt, 6)[0] & 0x1FFF:
                self.state.count("tun_dropped")
                return
            src, dst = bytes(pkt[12:16]), bytes(pkt[16:20])
            listen = self.listen4
        elif version == 6 and self.listen6:
            proto, l4 = ipv6_upper_layer(pkt, len(pkt))
            src, dst = bytes(pkt[8:24]), bytes(pkt[24:40])
            listen = self.listen6
        else:
            self.state.count("tun_dropped")
            return
        if proto == PROTO_TCP:
            if l4 + 20 > len(pkt):
                raise MalformedPacketError("truncated TCP header")
            self.on_tcp(mv, n, pkt, l4, src, dst, listen, now)
        elif proto == PROTO_UDP:
            if mv[1] != GSO_NONE:
                for seg in gso_split(decode_vnet_hdr(mv), pkt):
                    seg_mv = memoryview(bytearray(seg))
                    off = (seg[0] & 0xF) * 4 if version == 4 else ipv6_upper_layer(seg, len(seg))[1]
                    self.on_udp(seg_mv, off, src, dst)
                return
            self.on_udp(pkt, l4, src, dst)
        else:
            self.state.count("tun_dropped")

    # -- TCP -------------------------------------------------------------------------------

    def on_tcp(self, mv: memoryview, n: int, pkt: memoryview, l4: int, src: bytes, dst: bytes,
               listen: bytes, now: float) -> None:
        """Any TCP packet (IPv6, IPv4 with options): ``pkt`` is ``mv[VNET_LEN:n]``."""
        entry = self.flows.get(src + dst + pkt[l4 : l4 + 4].tobytes())
        if entry is None:
            self.on_new_tcp(mv, n, pkt, l4, src, dst, listen, now)
            return
        mapping, rw, outbound = entry
        apply_flow_rewrite(pkt, l4, rw, bool(mv[0] & NEEDS_CSUM))
        state = self.state
        with state.lock:
            table = state.nat4 if len(src) == 4 else state.nat6
            assert table is not None
            table.note_packet(mapping, now, pkt[l4 + 13], outbound=outbound)
        os.write(self._local.fd, mv[:n])

    def on_new_tcp(self, mv: memoryview, n: int, pkt: memoryview, l4: int, src: bytes,
                   dst: bytes, listen: bytes, now: float) -> None:
        """A TCP packet of no known flow: a SYN opens one, anything else gets an RST."""
        sport, dport = _HH.unpack_from(pkt, l4)
        tflags = pkt[l4 + 13]
        if src == listen and sport == self.lport:  # our listener to a forgotten flow
            self.state.count("tun_dropped")
            return
        if tflags & _RST:
            return
        if not tflags & _SYN or tflags & _ACK:
            self.send_rst(pkt, l4, src, sport, dst, dport, tflags)
            return
        if self.open_flow(src, sport, dst, dport) is None:
            self.send_rst(pkt, l4, src, sport, dst, dport, tflags)
            return
        self.on_tcp(mv, n, pkt, l4, src, dst, listen, now)

    def open_flow(self, src: bytes, sport: int, dst: bytes, dport: int) -> Entry | None:
        """Decide and allocate a new flow; None means: answer with an RST."""
        state = self.state
        app_ip, dst_ip = _ip(src), _ip(dst)
        with state.lock:
            is_fake, domain = state.domain_of(dst_ip)
            upstream = state.config.upstream
            if dport == 53 and self.dns_sink is not None:
                target = "dns"
            elif is_fake and domain is None:
                log.info("tcp %s:%d -> %s:%d: fake IP without a domain, reset", app_ip, sport,
                         dst_ip, dport)
                target = REJECT
            else:
                target, upstream = state.decide(domain, dst_ip, dport, "tcp")
            if target == REJECT:
                state.count("tcp_rejected")
                return None
            if is_fake:
                pool = state.pool_for(dst_ip)
                if pool is not None:
                    pool.touch(dst_ip, time.time())
            table = state.nat_for(dst_ip.version)
            if table is None:
                return None
            try:
                mapping = table.lookup_or_allocate(NatKey("tcp", src, sport, dst, dport),
                                                   time.monotonic())
            except NatExhausted as err:
                log.warning("%s", err)
                return None
        listen = self.listen4 if len(src) == 4 else self.listen6
        app_ports, fake_ports = _HH.pack(sport, dport), _HH.pack(mapping.fake_port, self.lport)
        back_ports = _HH.pack(self.lport, mapping.fake_port)
        entry = (mapping, precompute_flow_rewrite(src + dst, app_ports, mapping.fake_ip + listen,
                                                  fake_ports), True)
        self.flows[src + dst + app_ports] = entry
        self.flows[listen + mapping.fake_ip + back_ports] = (mapping, precompute_flow_rewrite(
            listen + mapping.fake_ip, back_ports, dst + src, _HH.pack(dport, sport)), False)
        self.decisions[(mapping.fake_ip, mapping.fake_port)] = Decision(mapping, domain, target,
                                                                        upstream)
        return entry

    def send_rst(self, pkt: memoryview, l4: int, src: bytes, sport: int, dst: bytes,
                 dport: int, tflags: int) -> None:
        seq, ack = struct.unpack_from("!II", pkt, l4 + 4)
        if tflags & _ACK:
            rst_seq, rst_ack, flags = ack, 0, _RST
        else:
            total = _HH.unpack_from(pkt, 2)[0] if len(src) == 4 else 40 + _HH.unpack_from(pkt, 4)[0]
            payload = max(0, total - l4 - (pkt[l4 + 12] >> 4) * 4)
            seg_len = payload + (1 if tflags & _SYN else 0) + (1 if tflags & _FIN else 0)
            rst_seq, rst_ack, flags = 0, (seq + seg_len) & 0xFFFFFFFF, _RST | _ACK
        segment = build_tcp_segment(dst, src, dport, sport, seq=rst_seq, ack=rst_ack, flags=flags,
                                    window=0)
        self.state.count("rst_sent")
        self.write_packet(build_ip(dst, src, PROTO_TCP, segment))

    # -- UDP -------------------------------------------------------------------------------

    def on_udp(self, pkt: memoryview, l4: int, src: bytes, dst: bytes) -> None:
        if l4 + 8 > len(pkt):
            raise MalformedPacketError("truncated UDP header")
        sport, dport, length = struct.unpack_from("!HHH", pkt, l4)
        end = min(len(pkt), l4 + max(8, length))
        payload = bytes(pkt[l4 + 8 : end])
        if dport == 53 and self.dns_sink is not None:
            self.state.count("dns_hijacked")

            def reply(answer: bytes, app: bytes = src, resolver: bytes = dst,
                      port: int = sport) -> None:
                from tunkit.packet.udp import build_udp

                self.write_packet(build_ip(resolver, app, PROTO_UDP,
                                           build_udp(resolver, app, 53, port, answer)))

            self.dns_sink(payload, reply)
            return
        if self.udp_sink is None:
            self.send_unreachable(bytes(pkt), dst)
            return
        try:
            self.udp_sink(_ip(src), sport, _ip(dst), dport, payload)
        except TunkitError as err:
            log.debug("UDP from %s: %s", _ip(src), err)
            self.send_unreachable(bytes(pkt), dst)

    def send_unreachable(self, original: bytes, from_ip: bytes) -> None:
        if len(from_ip) == 4:
            self.write_packet(dest_unreachable_packet(from_ip, original, 3))
        else:
            self.write_packet(dest_unreachable_v6_packet(from_ip, original, 4))


class Reactor(Protocol):
    def watch(self, fd: int, mask: int, watcher: Any) -> None: ...
    def call_at(self, deadline: float, fn: Callable[[], None]) -> None: ...


class _TunWatcher:
    __slots__ = ("fd", "loop")

    def __init__(self, loop: TunNatLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd

    def on_event(self, events: int) -> None:
        # level-triggered: what is left after DRAIN packets comes back on the next poll
        self.loop.drain(self.fd)
