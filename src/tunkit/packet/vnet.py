"""virtio_net_hdr (IFF_VNET_HDR): encode/decode, checksum completion, GSO split, GRO coalesce.

Contract:

* The header is 10 bytes, little-endian: ``u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size,
  u16 csum_start, u16 csum_offset`` (``VNET_HDR``, exported for hot-path ``unpack_from``).
* NEEDS_CSUM: the L4 checksum field at ``csum_start + csum_offset`` holds the folded,
  *non-inverted* pseudo-header sum (including the full L4 length); the final checksum is the
  inverted sum of every byte from ``csum_start`` to the end.  ``complete_checksum`` does that.
* ``gso_split`` turns a TCPV4/TCPV6/UDP_L4 super-packet into ``gso_size`` segments with
  correct IP total/payload length, IPv4 id (+1 per segment), TCP sequence numbers, flags
  (FIN/PSH only on the last segment, CWR only on the first) and full, valid IPv4 header and
  L4 checksums, whatever the incoming checksum state (and whatever ``hdr_len`` says: the
  header length is read from the packet).  The payload sums of all segments are computed at
  once (``strided_sums``), payloads and header templates are copied with two numpy 2-D
  assignments, and the per-segment header fields are stamped with numpy from
  ``NUMPY_STAMP_MIN_SEGMENTS`` segments on (struct below that).  ``gso_split_into`` writes
  the segments into a caller's buffer at a fixed stride instead.  Legacy UFO (gso_type UDP=3,
  IP fragmentation) is refused.
* ``gro_coalesce`` merges runs of in-order TCP segments (and, if asked, equal-size UDP
  datagrams) of one flow into super-packets with NEEDS_CSUM, ``csum_start`` = IP header
  length, ``csum_offset`` = 16 (TCP) / 6 (UDP), ``gso_size`` = the first segment's payload
  and the pseudo-header partial sum in the L4 checksum field, at most 65535 bytes each.
  Merge rules (as Linux GRO): IPv4 without options or fragmentation, IPv6 without extension
  headers; same addresses, ToS/TTL/DF (v6: class/flow/hop limit), ports, ack, window, ECE
  and identical options (only NOP/EOL/timestamps allowed); contiguous sequence numbers;
  every segment but the last exactly ``gso_size`` long; no SYN/FIN/RST/URG; ACK set; CWR
  only on the first segment; PSH ends a group (and is kept on the super-packet).  Anything
  else passes through unchanged with a zero header (gso NONE), in order.  Input packets'
  own checksums are not verified (callers feed authenticated or kernel-made packets).
* IPv6 pseudo-headers use the header's destination (no routing-header final destination).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import (
    Buffer,
    ones_complement_sum,
    pseudo_header_sum,
    strided_sums,
)
from tunkit.packet.ip import PROTO_TCP, PROTO_UDP, locate_l4

VNET_HDR_LEN: Final = 10
VNET_HDR: Final = struct.Struct("<BBHHHH")

NEEDS_CSUM: Final = 1
DATA_VALID: Final = 2

GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80

TCP_CSUM_OFFSET: Final = 16
UDP_CSUM_OFFSET: Final = 6
MAX_SUPER_PACKET: Final = 65535
NUMPY_STAMP_MIN_SEGMENTS: Final = 8
"""From this many segments on, headers are stamped with numpy instead of per-segment struct."""

_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_H = struct.Struct("!H")
_I = struct.Struct("!I")
_HH = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """struct virtio_net_hdr (the 10-byte legacy form used by TUN/TAP)."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def encode(self) -> bytes:
        return VNET_HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )


NO_OFFLOAD: Final = VirtioNetHdr()


def decode_vnet_hdr(buf: Buffer) -> VirtioNetHdr:
    """Decode the first 10 bytes of ``buf``."""
    if len(buf) < VNET_HDR_LEN:
        raise MalformedPacketError(f"virtio_net_hdr needs 10 bytes, got {len(buf)}")
    return VirtioNetHdr(*VNET_HDR.unpack_from(buf))


def encode_vnet_hdr(
    flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
    csum_start: int = 0, csum_offset: int = 0,
) -> bytes:
    """The 10 header bytes."""
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def complete_checksum(hdr: VirtioNetHdr, packet: bytearray | memoryview) -> None:
    """Finish a NEEDS_CSUM packet's checksum in place (no-op without NEEDS_CSUM)."""
    if not hdr.flags & NEEDS_CSUM:
        return
    field = hdr.csum_start + hdr.csum_offset
    if hdr.csum_start >= len(packet) or field + 2 > len(packet):
        raise MalformedPacketError(f"csum_start {hdr.csum_start}+{hdr.csum_offset} beyond {len(packet)} bytes")
    csum = ~ones_complement_sum(memoryview(packet)[hdr.csum_start :]) & 0xFFFF
    if hdr.csum_offset == UDP_CSUM_OFFSET and csum == 0:
        csum = 0xFFFF
    _H.pack_into(packet, field, csum)


# ---------------------------------------------------------------------------- GSO split


@dataclass(slots=True)
class _SplitPlan:
    """A super-packet's layout and the constant parts of every segment's checksums.

    Checksum parts are kept as plain integers congruent mod 0xffff (one's-complement
    arithmetic only needs the residue); each segment's checksum is then
    ``(-total) % 0xffff``, which equals ``~fold(total)`` including the 0 case.
    """

    version: int
    is_tcp: bool
    l4: int
    hdr_len: int
    mss: int
    count: int
    end: int
    template: bytes
    ip_sum0: int  # IPv4 header with total length, id and checksum zeroed
    ip_id0: int
    l4_sum0: int  # pseudo-header without length + L4 header with the varying fields zeroed
    seq0: int
    base_flags: int
    first_flags: int  # CWR
    last_flags: int  # FIN, PSH
    payload_sums: npt.NDArray[np.int64]


def _plan_split(hdr: VirtioNetHdr, packet: Buffer) -> _SplitPlan | None:
    """None when the packet needs no split (gso NONE)."""
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        return None
    if gso == GSO_UDP:
        raise MalformedPacketError("gso_type UDP (UFO, IP fragmentation) is not supported")
    if gso not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise MalformedPacketError(f"unknown gso_type {hdr.gso_type:#x}")
    version, proto, l4, end = locate_l4(packet)
    if gso == GSO_TCPV4 and (version != 4 or proto != PROTO_TCP):
        raise MalformedPacketError("gso TCPV4 on a packet that is not IPv4/TCP")
    if gso == GSO_TCPV6 and (version != 6 or proto != PROTO_TCP):
        raise MalformedPacketError("gso TCPV6 on a packet that is not IPv6/TCP")
    if gso == GSO_UDP_L4 and proto != PROTO_UDP:
        raise MalformedPacketError("gso UDP_L4 on a packet that is not UDP")
    is_tcp = proto == PROTO_TCP
    if is_tcp:
        if l4 + 20 > end:
            raise MalformedPacketError("truncated TCP header in super-packet")
        l4_hl = (packet[l4 + 12] >> 4) * 4
        if l4_hl < 20:
            raise MalformedPacketError(f"TCP data offset {l4_hl}")
    else:
        l4_hl = 8
    hdr_len = l4 + l4_hl
    if hdr_len > end:
        raise MalformedPacketError("super-packet shorter than its headers")
    mss = hdr.gso_size
    if mss <= 0:
        raise MalformedPacketError("gso_size 0 on a GSO packet")
    count = max(1, -(-(end - hdr_len) // mss))

    template = bytearray(packet[:hdr_len])
    if version == 4:
        src, dst = bytes(template[12:16]), bytes(template[16:20])
        ip_id0 = _H.unpack_from(template, 4)[0]
        template[2:6] = bytes(4)
        template[10:12] = bytes(2)
        ip_sum0 = ones_complement_sum(template[:l4])
    else:
        src, dst = bytes(template[8:24]), bytes(template[24:40])
        ip_id0 = ip_sum0 = 0
    seq0 = flags0 = base_flags = 0
    if is_tcp:
        seq0, flags0 = _I.unpack_from(template, l4 + 4)[0], template[l4 + 13]
        base_flags = flags0 & ~(_FIN | _PSH | _CWR)
        template[l4 + 4 : l4 + 8] = bytes(4)
        template[l4 + 13] = base_flags
        template[l4 + 16 : l4 + 18] = bytes(2)
    else:
        template[l4 + 4 : l4 + 8] = bytes(4)
    l4_sum0 = pseudo_header_sum(src, dst, proto, 0) + ones_complement_sum(template[l4:])
    payload_sums = strided_sums(packet, hdr_len, mss, end)
    return _SplitPlan(
        version, is_tcp, l4, hdr_len, mss, count, end, bytes(template), ip_sum0, ip_id0, l4_sum0,
        seq0, base_flags, flags0 & _CWR, flags0 & (_FIN | _PSH), payload_sums,
    )


def _single(hdr: VirtioNetHdr, packet: Buffer) -> bytes:
    if hdr.flags & NEEDS_CSUM:
        buf = bytearray(packet)
        complete_checksum(hdr, buf)
        return bytes(buf)
    return bytes(packet)


def _stamp_headers(plan: _SplitPlan, out: bytearray | memoryview, offsets: Iterable[int]) -> None:
    """Write each segment's varying header fields and checksums at ``offsets`` in ``out``.

    Per segment this is a handful of integer operations and ``pack_into`` calls; the byte
    sums were all computed at once beforehand.
    """
    h, l4, mss, last = plan.hdr_len, plan.l4, plan.mss, plan.count - 1
    pack_h, pack_hh, pack_i = _H.pack_into, _HH.pack_into, _I.pack_into
    pays = plan.payload_sums.tolist()
    v4 = plan.version == 4
    for i, off in enumerate(offsets):
        plen = mss if i < last else plan.end - h - i * mss
        if v4:
            tl = h + plen
            ident = (plan.ip_id0 + i) & 0xFFFF
            pack_hh(out, off + 2, tl, ident)
            pack_h(out, off + 10, -(plan.ip_sum0 + tl + ident) % 0xFFFF)
        else:
            pack_h(out, off + 4, h - 40 + plen)
        l4_len = h - l4 + plen
        if plan.is_tcp:
            seq = (plan.seq0 + i * mss) & 0xFFFFFFFF
            flags = plan.base_flags
            if i == 0:
                flags |= plan.first_flags
            if i == last:
                flags |= plan.last_flags
            pack_i(out, off + l4 + 4, seq)
            out[off + l4 + 13] = flags
            total = plan.l4_sum0 + l4_len + seq + (flags - plan.base_flags) + pays[i]
            pack_h(out, off + l4 + 16, -total % 0xFFFF)
        else:
            # the UDP length is in the pseudo-header and in the header: counted twice
            total = plan.l4_sum0 + 2 * l4_len + pays[i]
            pack_hh(out, off + l4 + 4, l4_len, 0xFFFF - total % 0xFFFF)


def _stamp_headers_numpy(plan: _SplitPlan, out: bytearray | memoryview, rows: npt.NDArray[np.uint8],
                         stride: int = 0) -> None:
    """Vectorised :func:`_stamp_headers` (even strides): ~25 array operations in all,
    cheaper than per-segment Python from a handful of segments on.  Headers start every
    ``stride`` bytes (default ``hdr_len + gso_size``)."""
    n, h, l4, mss = plan.count, plan.hdr_len, plan.l4, plan.mss
    stride = stride or h + mss
    cols = np.frombuffer(out, dtype=">u2", count=n * stride // 2).reshape(n, stride // 2)
    k = np.arange(n, dtype=np.int64)
    plen = np.full(n, mss, dtype=np.int64)
    plen[-1] = plan.end - h - (n - 1) * mss
    if plan.version == 4:
        tl = plen + h
        ident = (k + plan.ip_id0) & 0xFFFF
        cols[:, 1] = tl
        cols[:, 2] = ident
        cols[:, 5] = -(tl + ident + plan.ip_sum0) % 0xFFFF
    else:
        cols[:, 2] = plen + (h - 40)
    pays = plan.payload_sums
    if plan.is_tcp:
        seq = (k * mss + plan.seq0) & 0xFFFFFFFF
        extra = np.zeros(n, dtype=np.int64)
        extra[0] |= plan.first_flags
        extra[-1] |= plan.last_flags
        cols[:, (l4 + 4) // 2] = seq >> 16
        cols[:, (l4 + 6) // 2] = seq & 0xFFFF
        rows[:, l4 + 13] = extra | plan.base_flags
        total = plen + seq + extra + pays + (plan.l4_sum0 + h - l4)
        cols[:, (l4 + 16) // 2] = -total % 0xFFFF
    else:
        l4_len = plen + (h - l4)
        cols[:, (l4 + 4) // 2] = l4_len
        cols[:, (l4 + 6) // 2] = 0xFFFF - (2 * l4_len + pays + plan.l4_sum0) % 0xFFFF


def gso_split(hdr: VirtioNetHdr, packet: Buffer) -> list[bytes]:
    """Split a super-packet (IP packet after the vnet header) into wire-ready segments.

    A gso NONE packet comes back as one packet, its checksum completed if NEEDS_CSUM.
    """
    plan = _plan_split(hdr, packet)
    if plan is None:
        return [_single(hdr, packet)]
    out = bytearray(plan.count * (plan.hdr_len + plan.mss))
    spans = _fill(plan, packet, out)
    view = memoryview(out)
    return [bytes(view[o : o + n]) for o, n in spans]


def split_size(hdr: VirtioNetHdr, packet: Buffer) -> int:
    """Bytes ``gso_split_into`` needs for this super-packet."""
    plan = _plan_split(hdr, packet)
    if plan is None:
        return len(packet)
    return plan.count * (plan.hdr_len + plan.mss)


def _fill(plan: _SplitPlan, packet: Buffer, out: bytearray | memoryview) -> list[tuple[int, int]]:
    """Lay the segments out at a fixed stride (``hdr_len + gso_size``) in ``out``."""
    n, h, mss = plan.count, plan.hdr_len, plan.mss
    stride = h + mss
    plen = plan.end - h
    grid = np.frombuffer(out, dtype=np.uint8, count=n * stride).reshape(n, stride)
    src = np.frombuffer(packet, dtype=np.uint8, count=plan.end)
    grid[:, :h] = np.frombuffer(plan.template, dtype=np.uint8)
    full = plen // mss
    if full:
        grid[:full, h:] = src[h : h + full * mss].reshape(full, mss)
    rest = plen - full * mss
    if rest:
        grid[full, h : h + rest] = src[h + full * mss : plan.end]
    if stride % 2 or plan.l4 % 2 or n < NUMPY_STAMP_MIN_SEGMENTS:
        _stamp_headers(plan, out, range(0, n * stride, stride))
    else:
        _stamp_headers_numpy(plan, out, grid)
    spans = [(i * stride, stride) for i in range(n)]
    spans[-1] = ((n - 1) * stride, h + plen - (n - 1) * mss)
    return spans


def gso_split_into(hdr: VirtioNetHdr, packet: Buffer, out: bytearray | memoryview) -> list[tuple[int, int]]:
    """Like :func:`gso_split` but writes the segments back to back into ``out``.

    Returns ``(offset, length)`` of each segment; segments start every ``hdr_len +
    gso_size`` bytes.  Headers and payloads are copied by numpy 2-D assignments; ``out``
    must hold :func:`split_size` bytes.
    """
    plan = _plan_split(hdr, packet)
    if plan is None:
        single = _single(hdr, packet)
        if len(out) < len(single):
            raise ValueError("output buffer too small")
        out[: len(single)] = single
        return [(0, len(single))]
    need = plan.count * (plan.hdr_len + plan.mss)
    if len(out) < need:
        raise ValueError(f"output buffer of {len(out)} bytes, {need} needed")
    return _fill(plan, packet, out)


# --------------------------------------------------------------------------- GRO coalesce


@dataclass(slots=True)
class _Group:
    key: tuple[object, ...]
    first: bytes
    hdr_len: int
    l4: int
    is_tcp: bool
    version: int
    gso_size: int
    next_seq: int
    last_len: int
    total: int
    closed: bool
    payloads: list[memoryview]


def _coalesce_key(pkt: bytes, coalesce_udp: bool) -> tuple[tuple[object, ...], int, int, bool, int, int] | None:
    """``(flow key, l4 offset, header length, is_tcp, seq, tcp flags)`` or None if unmergeable."""
    n = len(pkt)
    if n < 20:
        return None
    v = pkt[0] >> 4
    if v == 4:
        if pkt[0] != 0x45 or n < 20 or _H.unpack_from(pkt, 2)[0] != n:
            return None
        if _H.unpack_from(pkt, 6)[0] & 0x3FFF:  # MF or fragment offset
            return None
        proto, l4 = pkt[9], 20
        ipkey: bytes = bytes((pkt[1], pkt[6] & 0x40, pkt[8])) + pkt[12:20]
    elif v == 6:
        if n < 40 or _H.unpack_from(pkt, 4)[0] + 40 != n:
            return None
        proto, l4 = pkt[6], 40
        ipkey = pkt[0:4] + pkt[7:8] + pkt[8:40]
    else:
        return None
    if proto == PROTO_TCP:
        if n < l4 + 20:
            return None
        hl = (pkt[l4 + 12] >> 4) * 4
        if hl < 20 or l4 + hl > n or l4 + hl == n:
            return None
        flags = pkt[l4 + 13]
        if flags & (_SYN | _FIN | _RST | _URG) or not flags & _ACK:
            return None
        opts = pkt[l4 + 20 : l4 + hl]
        if not _only_timestamps(opts):
            return None
        # ports, ack, data offset, ECE, window and options must all match (Linux GRO rules)
        key = (v, proto, ipkey, pkt[l4 : l4 + 4], pkt[l4 + 8 : l4 + 13], flags & _ECE, pkt[l4 + 14 : l4 + 16], opts)
        return key, l4, l4 + hl, True, _I.unpack_from(pkt, l4 + 4)[0], flags
    if proto == PROTO_UDP and coalesce_udp:
        if n <= l4 + 8 or _H.unpack_from(pkt, l4 + 4)[0] != n - l4:
            return None
        return (v, proto, ipkey, pkt[l4 : l4 + 4]), l4, l4 + 8, False, 0, 0
    return None


def _only_timestamps(opts: bytes) -> bool:
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:  # EOL: the rest is padding
            return True
        if kind == 1:
            i += 1
            continue
        if kind != 8 or i + 10 > len(opts) or opts[i + 1] != 10:
            return False
        i += 10
    return True


def _emit(g: _Group) -> tuple[VirtioNetHdr, bytes]:
    if len(g.payloads) == 1:
        return NO_OFFLOAD, g.first
    head = bytearray(g.first[: g.hdr_len])
    total = g.total
    l4 = g.l4
    if g.version == 4:
        _H.pack_into(head, 2, total)
        head[10:12] = b"\0\0"
        _H.pack_into(head, 10, ~ones_complement_sum(head[:20]) & 0xFFFF)
        src, dst = bytes(head[12:16]), bytes(head[16:20])
    else:
        _H.pack_into(head, 4, total - 40)
        src, dst = bytes(head[8:24]), bytes(head[24:40])
    if g.is_tcp:
        csum_off, proto, gso = TCP_CSUM_OFFSET, PROTO_TCP, GSO_TCPV4 if g.version == 4 else GSO_TCPV6
    else:
        _H.pack_into(head, l4 + 4, total - l4)
        csum_off, proto, gso = UDP_CSUM_OFFSET, PROTO_UDP, GSO_UDP_L4
    _H.pack_into(head, l4 + csum_off, pseudo_header_sum(src, dst, proto, total - l4))
    data = bytes(head) + b"".join(g.payloads)
    return VirtioNetHdr(NEEDS_CSUM, gso, g.hdr_len, g.gso_size, l4, csum_off), data


def gro_coalesce(packets: Iterable[bytes], *, coalesce_udp: bool = False) -> list[tuple[VirtioNetHdr, bytes]]:
    """Merge runs of consecutive same-flow segments into super-packets (see module doc)."""
    out: list[tuple[VirtioNetHdr, bytes]] = []
    group: _Group | None = None
    for raw in packets:
        pkt = bytes(raw)
        info = _coalesce_key(pkt, coalesce_udp)
        if info is None:
            if group is not None:
                out.append(_emit(group))
                group = None
            out.append((NO_OFFLOAD, pkt))
            continue
        key, l4, hl, is_tcp, seq, flags = info
        plen = len(pkt) - hl
        if (
            group is not None
            and not group.closed
            and group.key == key
            and group.last_len == group.gso_size
            and plen <= group.gso_size
            and group.total + plen <= MAX_SUPER_PACKET
            and (not is_tcp or (seq == group.next_seq and not flags & _CWR))
        ):
            group.payloads.append(memoryview(pkt)[hl:])
            group.total += plen
            group.last_len = plen
            group.next_seq = (seq + plen) & 0xFFFFFFFF
            if flags & _PSH:
                group.closed = True
                group.first = _with_psh(group.first, group.l4)
            continue
        if group is not None:
            out.append(_emit(group))
        group = _Group(
            key, pkt, hl, l4, is_tcp, pkt[0] >> 4, plen, (seq + plen) & 0xFFFFFFFF, plen, len(pkt),
            bool(flags & _PSH), [memoryview(pkt)[hl:]],
        )
    if group is not None:
        out.append(_emit(group))
    return out


def _with_psh(first: bytes, l4: int) -> bytes:
    b = bytearray(first)
    b[l4 + 13] |= _PSH
    return bytes(b)


def split_all(items: Sequence[tuple[VirtioNetHdr, bytes]]) -> list[bytes]:
    """Convenience: ``gso_split`` every ``(hdr, packet)`` and concatenate the results."""
    out: list[bytes] = []
    for hdr, pkt in items:
        out.extend(gso_split(hdr, pkt))
    return out
