"""The TUN side of ``tunkit proxy``: the system-stack NAT loop (PROTOCOLS.md §4).

Contract:

* :class:`TunNatLoop` owns one vnet_hdr TUN fd and runs in one thread.  For every packet:

  - TCP from the application ``A:a -> D:d``: on a SYN it decides the flow (rules, fake-IP
    domain), allocates a NAT pair ``F:f`` and rewrites the packet to ``F:f -> L:lp`` (our
    listener), later packets reuse the mapping.  A rejected flow, an exhausted NAT, a fake IP
    with no domain, or a non-SYN packet without a mapping is answered with an RST at once.
  - TCP from the listener ``L:lp -> F:f``: rewritten back to ``D:d -> A:a``.
  - Rewrites are in place with incremental checksums (RFC 1624), on whole GSO super-packets
    (the vnet header is written back unchanged; NEEDS_CSUM packets get the partial-sum
    update).  The checksum deltas of both directions are computed once per mapping, so a
    packet costs two slice assignments and two one's-complement additions.
  - UDP to port 53: handed to the DNS server (hijack), whose answer is written back as a packet.
  - Other UDP: handed to the UDP session manager (rejected flows get ICMP port unreachable).
  - Anything else (ICMP, fragments) is dropped and counted.
* With a multi-queue TUN, one thread runs :meth:`TunNatLoop.run` per queue: the kernel work
  behind each TUN write (the whole receive path of the rewritten packet) then runs on
  several CPUs.  New flows are set up under ``state.lock``; the translation cache is shared.
  NAT expiry runs at most once a second, from the queue 0 thread.
* A translation cache keyed by raw address bytes keeps the per-packet path free of
  ``ipaddress`` objects; it mirrors the pure :class:`NatTable` under ``state.lock``.
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
from typing import Any

from tunkit.errors import MalformedPacketError, TunkitError
from tunkit.io.tun import TunDevice
from tunkit.packet.icmp import dest_unreachable_packet, dest_unreachable_v6_packet
from tunkit.packet.ip import PROTO_TCP, PROTO_UDP, build_ip, ipv6_upper_layer
from tunkit.packet.tcp import build_tcp_segment
from tunkit.packet.vnet import GSO_NONE, NEEDS_CSUM, decode_vnet_hdr, gso_split
from tunkit.proxy.nat import NatExhausted, NatKey, NatMapping
from tunkit.proxy.rules import REJECT
from tunkit.services.proxy_state import ProxyState

log = logging.getLogger("tunkit.proxy")

VNET_LEN = 10
ZERO_VNET = bytes(VNET_LEN)
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

# A precomputed rewrite, one per direction of a mapping:
# (mapping, new src+dst addresses, new src+dst ports, full-checksum delta, address delta)
Rewrite = tuple[NatMapping, bytes, bytes, int, int]
FwdEntry = Rewrite
"""Keyed by the app's (src bytes, src port, dst bytes, dst port): to ``F:f -> L:lp``."""
RevEntry = Rewrite
"""Keyed by (fake ip bytes, fake port): back to ``D:d -> A:a``."""


def _fold(value: int) -> int:
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def _delta(old: bytes, new: bytes) -> int:
    """One's-complement sum of ``~old + new`` over 16-bit words (RFC 1624 eqn. 3 terms)."""
    total = 0
    for i in range(0, len(old), 2):
        total += (~((old[i] << 8) | old[i + 1]) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def make_rewrite(mapping: NatMapping, old_addrs: bytes, old_ports: bytes, new_addrs: bytes,
                 new_ports: bytes) -> Rewrite:
    """Everything a packet of this direction needs: new fields and checksum deltas."""
    addr_delta = _delta(old_addrs, new_addrs)
    return (mapping, new_addrs, new_ports, _fold(addr_delta + _delta(old_ports, new_ports)),
            addr_delta)


def apply_rewrite(pkt: memoryview, l4: int, rw: Rewrite, partial: bool) -> None:
    """Rewrite addresses and ports of an IPv4/IPv6 TCP packet in place, checksums fixed
    incrementally with the precomputed deltas (partial: NEEDS_CSUM pseudo-header sum)."""
    _, addrs, ports, full, addr_delta = rw
    csum = (pkt[l4 + 16] << 8) | pkt[l4 + 17]
    # NEEDS_CSUM: the field is the non-inverted pseudo-header sum; only addresses are in it
    csum = _fold(csum + addr_delta) if partial else ~_fold((~csum & 0xFFFF) + full) & 0xFFFF
    pkt[l4 + 16] = csum >> 8
    pkt[l4 + 17] = csum & 0xFF
    pkt[l4 : l4 + 4] = ports
    if len(addrs) == 8:
        pkt[12:20] = addrs
        ip = ~_fold((~((pkt[10] << 8) | pkt[11]) & 0xFFFF) + addr_delta) & 0xFFFF
        pkt[10] = ip >> 8
        pkt[11] = ip & 0xFF
    else:
        pkt[8:40] = addrs

UdpSink = Callable[[Any, int, Any, int, bytes], None]
"""``(app ip, app port, dst ip, dst port, payload)``; never blocks."""
DnsSink = Callable[[bytes, Callable[[bytes], None]], None]
"""``(query, reply callback)``; never blocks."""


def _ip(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


class _QueueFd(threading.local):
    """``.fd``: the queue fd of the calling loop thread (queue 0 for any other thread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd


class TunNatLoop:
    def __init__(self, state: ProxyState, tun: TunDevice, *, udp_sink: UdpSink | None,
                 dns_sink: DnsSink | None) -> None:
        self.state = state
        self.tun = tun
        self.fd = tun.fileno()
        self._local = _QueueFd(self.fd)
        self.udp_sink = udp_sink
        self.dns_sink = dns_sink
        self.fwd: dict[tuple[bytes, int, bytes, int], FwdEntry] = {}
        self.rev: dict[tuple[bytes, int], RevEntry] = {}
        self.listen4 = state.tun_ip4.packed
        self.listen6 = state.tun_ip6.packed if state.tun_ip6 is not None else b""
        self.lport = state.listen_port

    # -- writing ---------------------------------------------------------------------------

    def write_packet(self, packet: bytes) -> None:
        """Write one plain IP packet (no offload) into the TUN; thread-safe."""
        try:
            os.writev(self.fd, [ZERO_VNET, packet])
        except OSError as err:
            self.state.count("tun_dropped")
            log.debug("TUN write failed: %s", err)

    # -- the loop --------------------------------------------------------------------------

    def run(self, queue: int = 0) -> None:
        """Serve one queue of the TUN (several threads may run one queue each)."""
        state = self.state
        buf = bytearray(65535 + 256)
        mv = memoryview(buf)
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
            if not ready:
                continue
            for _ in range(512):
                try:
                    n = os.readv(fd, [buf])
                except BlockingIOError:
                    break
                except OSError as err:
                    if state.stopping.is_set():
                        return
                    log.warning("TUN read failed: %s", err)
                    break
                try:
                    self.on_packet(mv, n, now)
                except (MalformedPacketError, ValueError, IndexError, struct.error) as err:
                    state.count("tun_dropped")
                    log.debug("dropped a malformed packet: %s", err)
                except OSError as err:  # writing back (ENOBUFS, ...): drop, keep the loop
                    state.count("tun_dropped")
                    log.debug("TUN write failed: %s", err)

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
        self.fwd.pop((k.src_ip, k.src_port, k.dst_ip, k.dst_port), None)
        self.rev.pop((mapping.fake_ip, mapping.fake_port), None)

    def on_packet(self, mv: memoryview, n: int, now: float) -> None:
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
        sport, dport = _HH.unpack_from(pkt, l4)
        tflags = pkt[l4 + 13]
        partial = bool(mv[0] & NEEDS_CSUM)
        state = self.state
        if src == listen and sport == self.lport:
            rev = self.rev.get((dst, dport))
            if rev is None:
                state.count("tun_dropped")
                return
            apply_rewrite(pkt, l4, rev, partial)
            with state.lock:
                table = state.nat4 if len(src) == 4 else state.nat6
                assert table is not None
                table.note_packet(rev[0], now, tflags, outbound=False)
            os.write(self._local.fd, mv[:n])
            return
        key = (src, sport, dst, dport)
        fwd = self.fwd.get(key)
        if fwd is None:
            if tflags & _RST:
                return
            if not tflags & _SYN or tflags & _ACK:
                self.send_rst(pkt, l4, src, sport, dst, dport, tflags)
                return
            fwd = self.open_flow(src, sport, dst, dport)
            if fwd is None:
                self.send_rst(pkt, l4, src, sport, dst, dport, tflags)
                return
        apply_rewrite(pkt, l4, fwd, partial)
        with state.lock:
            table = state.nat4 if len(src) == 4 else state.nat6
            assert table is not None
            table.note_packet(fwd[0], now, tflags, outbound=True)
        os.write(self._local.fd, mv[:n])

    def open_flow(self, src: bytes, sport: int, dst: bytes, dport: int) -> FwdEntry | None:
        """Decide and allocate a new flow; None means: answer with an RST."""
        state = self.state
        app_ip, dst_ip = _ip(src), _ip(dst)
        with state.lock:
            is_fake, domain = state.domain_of(dst_ip)
            if dport == 53 and self.dns_sink is not None:
                target = "dns"
            elif is_fake and domain is None:
                log.info("tcp %s:%d -> %s:%d: fake IP without a domain, reset", app_ip, sport,
                         dst_ip, dport)
                target = REJECT
            else:
                target, _ = state.decide(domain, dst_ip, dport, "tcp")
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
        app_ports = _HH.pack(sport, dport)
        fake_ports = _HH.pack(mapping.fake_port, self.lport)
        entry = make_rewrite(mapping, src + dst, app_ports, mapping.fake_ip + listen, fake_ports)
        self.fwd[(src, sport, dst, dport)] = entry
        self.rev[(mapping.fake_ip, mapping.fake_port)] = make_rewrite(
            mapping, listen + mapping.fake_ip, _HH.pack(self.lport, mapping.fake_port),
            dst + src, _HH.pack(dport, sport))
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
