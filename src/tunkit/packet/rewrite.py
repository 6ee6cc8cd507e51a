"""In-place NAT rewrite of addresses and ports with incremental checksum fix-up (RFC 1624).

Contract: ``rewrite_flow(packet, ...)`` changes any of source address, source port,
destination address and destination port of an IPv4/IPv6 TCP or UDP packet held in a
writable buffer (bytearray or writable memoryview), and keeps every checksum valid:

* IPv4 header checksum: updated for the address change.
* TCP/UDP checksum (full mode, the default): updated for the addresses (they are in the
  pseudo-header) and the ports.  An IPv4 UDP checksum of 0 ("none") stays 0; a result of 0
  for UDP is stored as 0xffff.
* ``partial_csum=True`` is for a virtio_net_hdr packet with NEEDS_CSUM (including GSO
  super-packets).  Its L4 checksum field holds the *non-inverted* folded pseudo-header sum
  ``P`` and the kernel/device will later add the sum of every byte from ``csum_start`` and
  invert.  So only the pseudo-header part changes: ``P' = P - m + m'`` (one's complement)
  where m/m' are the old/new addresses.  Ports are not in the pseudo-header and need no fix:
  the final sum will read the new port bytes themselves.
* ICMP (v4) and ICMPv6 packets accept address changes only (ICMPv6 checksum covers the
  pseudo-header, so it is updated; ICMPv4 needs nothing beyond the IP header).  So do other
  protocols and non-first fragments (only the IPv4 header checksum changes); asking for a
  port change there raises :class:`MalformedPacketError`.

Hot path: ``struct``/slice operations only, no dataclass allocation.

For a NAT that rewrites every packet of a flow the same way, the checksum work can be done
once per flow: :func:`precompute_flow_rewrite` returns a :data:`FlowRewrite` (the new fields and
the RFC 1624 deltas), and :func:`apply_flow_rewrite` applies it to one IPv4/IPv6 TCP packet
(full or ``partial_csum`` mode, as above) with a few slice assignments and two one's-complement
additions.  It trusts its caller: the packet is TCP, ``l4`` is its TCP header offset and the
header is present (``l4 + 20 <= len(packet)``).
"""

from __future__ import annotations

import struct

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import fold
from tunkit.packet.ip import ipv6_upper_layer

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_A4 = struct.Struct("!I")
_A6 = struct.Struct("!QQ")  # 2**64 == 1 (mod 0xffff): the two halves sum like 16-bit words


FlowRewrite = tuple[bytes, bytes, int, int]
"""``(new src+dst addresses, new src+dst ports, full L4 checksum delta, address delta)``."""


def _delta(old: bytes, new: bytes) -> int:
    """One's-complement sum of ``~old + new`` over 16-bit words (RFC 1624 eqn. 3 terms).
    A big-endian integer is congruent to the sum of its 16-bit words modulo 0xffff."""
    return fold((~fold(int.from_bytes(old, "big")) & 0xFFFF) + fold(int.from_bytes(new, "big")))


def precompute_flow_rewrite(old_addrs: bytes, old_ports: bytes, new_addrs: bytes,
                            new_ports: bytes) -> FlowRewrite:
    """The rewrite of one flow direction: ``old_addrs``/``new_addrs`` are source + destination
    (8 or 32 bytes), ``old_ports``/``new_ports`` source + destination port (4 bytes)."""
    if len(old_addrs) != len(new_addrs) or len(old_addrs) not in (8, 32):
        raise ValueError("addresses must be 8 (IPv4) or 32 (IPv6) bytes, old and new alike")
    if len(old_ports) != 4 or len(new_ports) != 4:
        raise ValueError("ports must be 4 bytes")
    addr_delta = _delta(old_addrs, new_addrs)
    return (bytes(new_addrs), bytes(new_ports), fold(addr_delta + _delta(old_ports, new_ports)),
            addr_delta)


def apply_flow_rewrite(packet: bytearray | memoryview, l4: int, rw: FlowRewrite,
                       partial_csum: bool) -> None:
    """Apply a precomputed rewrite to one TCP packet in place (see the module doc)."""
    # One's-complement additions of two 16-bit values, folded inline (this runs per packet):
    # a + b <= 0x1fffe, so one end-around carry suffices.
    addrs, ports, full, addr_delta = rw
    csum = _H.unpack_from(packet, l4 + 16)[0]
    if partial_csum:  # the non-inverted pseudo-header sum, where only the addresses are
        csum += addr_delta
        csum = (csum & 0xFFFF) + (csum >> 16)
    else:
        csum = (~csum & 0xFFFF) + full
        csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    _H.pack_into(packet, l4 + 16, csum)
    packet[l4 : l4 + 4] = ports
    if len(addrs) == 8:
        packet[12:20] = addrs
        ip = (~_H.unpack_from(packet, 10)[0] & 0xFFFF) + addr_delta
        _H.pack_into(packet, 10, ~((ip & 0xFFFF) + (ip >> 16)) & 0xFFFF)
    else:
        packet[8:40] = addrs


def _l4_checksum_update(old: int, old_sum: int, new_sum: int) -> int:
    return ~fold((~old & 0xFFFF) + (~fold(old_sum) & 0xFFFF) + fold(new_sum)) & 0xFFFF


def _partial_update(old: int, old_sum: int, new_sum: int) -> int:
    return fold(old + (~fold(old_sum) & 0xFFFF) + fold(new_sum))


def rewrite_flow(
    packet: bytearray | memoryview,
    new_src: bytes | None = None,
    new_src_port: int | None = None,
    new_dst: bytes | None = None,
    new_dst_port: int | None = None,
    *,
    partial_csum: bool = False,
) -> None:
    """Rewrite the given fields of ``packet`` in place and fix its checksums (see module doc)."""
    n = len(packet)
    if n == 0:
        raise MalformedPacketError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if n < 20:
            raise MalformedPacketError("truncated IPv4 header")
        l4 = (packet[0] & 0xF) * 4
        if l4 < 20 or l4 > n:
            raise MalformedPacketError(f"IPv4 header length {l4}")
        proto = packet[9]
        alen, src_off, dst_off = 4, 12, 16
        first_fragment = not (_H.unpack_from(packet, 6)[0] & 0x1FFF)
        unpack_addr = _A4.unpack_from
    elif version == 6:
        if n < 40:
            raise MalformedPacketError("truncated IPv6 header")
        proto, l4 = ipv6_upper_layer(packet, n)
        alen, src_off, dst_off = 16, 8, 24
        first_fragment = proto >= 0
        unpack_addr = _A6.unpack_from
    else:
        raise MalformedPacketError(f"IP version {version}")

    addr_old = 0
    addr_new = 0
    if new_src is not None:
        if len(new_src) != alen:
            raise ValueError(f"source address must be {alen} bytes")
        addr_old += sum(unpack_addr(packet, src_off))
        addr_new += int.from_bytes(new_src, "big")
        packet[src_off : src_off + alen] = new_src
    if new_dst is not None:
        if len(new_dst) != alen:
            raise ValueError(f"destination address must be {alen} bytes")
        addr_old += sum(unpack_addr(packet, dst_off))
        addr_new += int.from_bytes(new_dst, "big")
        packet[dst_off : dst_off + alen] = new_dst
    if version == 4 and (new_src is not None or new_dst is not None):
        _H.pack_into(packet, 10, _l4_checksum_update(_H.unpack_from(packet, 10)[0], addr_old, addr_new))

    ports = new_src_port is not None or new_dst_port is not None
    if proto == 6 and first_fragment:
        csum_off = l4 + 16
        need = l4 + 18
    elif proto == 17 and first_fragment:
        csum_off = l4 + 6
        need = l4 + 8
    elif proto in (1, 58) and not ports:
        if proto == 1 or not (new_src or new_dst):
            return
        csum_off = l4 + 2
        need = l4 + 4
    elif not ports:
        return  # other protocols (or a non-first fragment): only the IP header changes
    else:
        raise MalformedPacketError(f"cannot rewrite ports of protocol {proto}")
    if need > n:
        raise MalformedPacketError("truncated transport header")

    old_sum = addr_old
    new_sum = addr_new
    if ports:
        sport, dport = _HH.unpack_from(packet, l4)
        if new_src_port is not None:
            old_sum += sport
            new_sum += new_src_port
            sport = new_src_port
        if new_dst_port is not None:
            old_sum += dport
            new_sum += new_dst_port
            dport = new_dst_port
        _HH.pack_into(packet, l4, sport, dport)
    csum = _H.unpack_from(packet, csum_off)[0]
    if partial_csum:
        if addr_old != addr_new:
            _H.pack_into(packet, csum_off, _partial_update(csum, addr_old, addr_new))
        return
    if proto == 17:
        if csum == 0 and version == 4:
            return
        csum = _l4_checksum_update(csum, old_sum, new_sum) or 0xFFFF
    else:
        csum = _l4_checksum_update(csum, old_sum, new_sum)
    _H.pack_into(packet, csum_off, csum)
