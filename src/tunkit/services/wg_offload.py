"""TCP receive coalescing for the WireGuard daemon's TUN writes (the hot path of GRO).

:func:`coalesce_for_tun` takes the decrypted IP packets of one receive batch, in order, and
returns ``(virtio_net_hdr bytes, packet)`` pairs ready for ``writev`` on a vnet_hdr TUN.
Runs of in-order TCP segments of one flow become one super-packet (NEEDS_CSUM, TCPV4/TCPV6,
``gso_size`` = the first segment's payload, pseudo-header sum in the checksum field), so the
kernel's TCP stack handles one 64 KiB packet instead of ~45.

It produces exactly what :func:`tunkit.packet.vnet.gro_coalesce` produces, with the same
merge rules (Linux GRO's), but compares each segment against its group's first segment with
a handful of byte-slice comparisons instead of building a flow key per packet: it is the
per-packet cost that bounds the daemon's throughput.  Runs of at least ``VECTOR_MIN_RUN``
full-size followers are checked with a handful of numpy operations over all of them at once
(the same rules) and their payloads gathered with one copy. Anything that is not plain TCP (UDP,
ICMP, IP options, fragments, v6 extension headers, SYN/FIN/RST/URG, options other than
NOP/timestamps) is passed through unchanged with a zero header, in order. Pure: no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from tunkit.packet.checksum import ones_complement_sum, pseudo_header_sum

VNET_HDR = struct.Struct("<BBHHHH")
ZERO_HDR = bytes(10)
NEEDS_CSUM = 1
GSO_TCPV4 = 1
GSO_TCPV6 = 4
TCP_CSUM_OFFSET = 16
MAX_SUPER_PACKET = 65535
PROTO_TCP = 6

_FIN, _SYN, _RST, _PSH, _ACK, _URG, _CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x80
_BAD_FLAGS = _SYN | _FIN | _RST | _URG
_H = struct.Struct("!H")


def _header_mask(l4: int, hl: int) -> int:
    """Big-endian integer mask over a ``hl``-byte header: 1 bits must match the group."""
    mask = bytearray(b"\xff" * hl)
    if l4 == 20:
        mask[2:6] = bytes(4)  # total length, id
        mask[10:12] = bytes(2)  # header checksum
    else:
        mask[4:6] = bytes(2)  # payload length
    mask[l4 + 4 : l4 + 8] = bytes(4)  # sequence number
    mask[l4 + 13] = 0xFF & ~(_PSH | _CWR)  # flags: PSH may end a group, CWR is checked apart
    mask[l4 + 16 : l4 + 18] = bytes(2)  # TCP checksum
    return int.from_bytes(mask, "big")


_MASK4 = {hl: _header_mask(20, hl) for hl in range(40, 81, 4)}
_MASK6 = {hl: _header_mask(40, hl) for hl in range(60, 101, 4)}


def _vector_mask(l4: int, hl: int, mask: int) -> int:
    """The scalar mask plus the length field and the CWR bit (see :func:`_vector_run`)."""
    len_at = 2 if l4 == 20 else 4
    return mask | 0xFFFF << (8 * (hl - len_at - 2)) | _CWR << (8 * (hl - l4 - 14))


_INT_MASK = {
    (l4, hl): _vector_mask(l4, hl, mask)
    for l4, masks in ((20, _MASK4), (40, _MASK6))
    for hl, mask in masks.items()
}
_NP_MASK = {key: np.frombuffer(m.to_bytes(key[1], "big"), dtype=np.uint8)
            for key, m in _INT_MASK.items()}
# the same, CWR cleared: applied to the first segment it gives the followers' template
_TEMPLATE_MASK = {(l4, hl): m & ~(_CWR << (8 * (hl - l4 - 14))) for (l4, hl), m in _INT_MASK.items()}
VECTOR_MIN_RUN = 8
"""Runs of at least this many full-size followers are checked with numpy, all at once."""


def _only_timestamps(opts: bytes) -> bool:
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:
            return True
        if kind == 1:
            i += 1
            continue
        if kind != 8 or i + 10 > n or opts[i + 1] != 10:
            return False
        i += 10
    return True


def _tcp_start(pkt: bytes) -> tuple[int, int, int] | None:
    """(l4 offset, header length, flags) if ``pkt`` may start a TCP group, else None."""
    n = len(pkt)
    first = pkt[0] if n else 0
    if first == 0x45:
        if n < 40 or pkt[9] != PROTO_TCP or (pkt[2] << 8 | pkt[3]) != n:
            return None
        if (pkt[6] & 0x3F) or pkt[7]:  # MF or a fragment offset
            return None
        l4 = 20
    elif first >> 4 == 6:
        if n < 60 or pkt[6] != PROTO_TCP or (pkt[4] << 8 | pkt[5]) + 40 != n:
            return None
        l4 = 40
    else:
        return None
    hl = l4 + (pkt[l4 + 12] >> 4) * 4
    if hl < l4 + 20 or hl >= n:
        return None
    flags = pkt[l4 + 13]
    if flags & _BAD_FLAGS or not flags & _ACK:
        return None
    if hl > l4 + 20 and not _only_timestamps(pkt[l4 + 20 : hl]):
        return None
    return l4, hl, flags


def _emit(first: bytes, l4: int, hl: int, mss: int, payloads: list[memoryview], total: int,
          psh: bool) -> tuple[bytes, bytes]:
    head = bytearray(first[:hl])
    if psh:
        head[l4 + 13] |= _PSH
    if l4 == 20:
        _H.pack_into(head, 2, total)
        head[10:12] = b"\0\0"
        _H.pack_into(head, 10, ~ones_complement_sum(head[:20]) & 0xFFFF)
        src, dst, gso = head[12:16], head[16:20], GSO_TCPV4
    else:
        _H.pack_into(head, 4, total - 40)
        src, dst, gso = head[8:24], head[24:40], GSO_TCPV6
    _H.pack_into(head, l4 + TCP_CSUM_OFFSET,
                 pseudo_header_sum(bytes(src), bytes(dst), PROTO_TCP, total - l4))
    payloads[0:0] = [memoryview(head)]
    vnet = VNET_HDR.pack(NEEDS_CSUM, gso, hl, mss, l4, TCP_CSUM_OFFSET)
    return vnet, b"".join(payloads)


def _vector_run(packets: Sequence[bytes], sizes: list[int], i: int, first: bytes, l4: int,
                hl: int, mss: int, next_seq: int) -> tuple[int, bool, bytes]:
    """The scalar merge loop for the followers ``packets[i:]`` that have exactly the first
    segment's size, done over all of them at once: ``(followers taken, PSH seen, their
    payloads concatenated)``.  Stops where the scalar loop would (a header or sequence
    mismatch, CWR, the 64 KiB cap) and after a follower with PSH.

    Each numpy call costs about a microsecond, as much as the scalar loop spends on one
    packet, so the common case (every follower good) is decided with three of them and
    bytes comparisons: one masked copy of all the headers (the length field included:
    every follower has the first's size, and CWR cleared in the template), one strided
    view of the sequence numbers, and the PSH bits taken with a bytes slice."""
    size = len(first)
    if size % 4:
        return 0, False, b""
    stop = min(len(packets), i + (MAX_SUPER_PACKET - size) // mss)
    if stop - i < VECTOR_MIN_RUN:
        return 0, False, b""
    if sizes[i:stop].count(size) != stop - i:
        k = i
        while sizes[k] == size:
            k += 1
        stop = k
    count = stop - i
    if count < VECTOR_MIN_RUN:
        return 0, False, b""
    blob = b"".join(packets[i:stop])
    rows = np.frombuffer(blob, dtype=np.uint8).reshape(count, size)
    mask = _NP_MASK[(l4, hl)]
    masked = rows[:, :hl] & mask
    template = _vector_template(first, l4, hl)
    seqs = np.ndarray((count,), dtype=">u4", buffer=blob, offset=l4 + 4, strides=(size,))
    expected = (_steps32(count, mss) + np.uint32(next_seq)).astype(">u4")
    if masked.tobytes() == template * count and seqs.tobytes() == expected.tobytes():
        taken = count
    else:
        good = (masked == np.frombuffer(template, dtype=np.uint8)).all(axis=1) & (
            seqs == expected
        )
        taken = count if good.all() else int(np.argmin(good))
    psh = False
    if taken:
        pushed = blob[l4 + 13 : taken * size : size].translate(_PSH_BYTES).find(1)
        if pushed >= 0:
            taken = pushed + 1
            psh = True
    return taken, psh, rows[:taken, hl:].tobytes()


_PSH_BYTES = bytes(1 if b & _PSH else 0 for b in range(256))
"""``bytes.translate`` table: 1 where a flags byte has PSH, else 0."""


def _vector_template(first: bytes, l4: int, hl: int) -> bytes:
    """The first segment's header under the vector mask, CWR cleared: what every
    follower's masked header must equal in :func:`_vector_run`."""
    return (int.from_bytes(first[:hl], "big") & _TEMPLATE_MASK[(l4, hl)]).to_bytes(hl, "big")


_STEPS: dict[tuple[int, int], np.ndarray] = {}


def _steps32(count: int, mss: int) -> np.ndarray:
    """``[0, mss, 2*mss, ...]`` (``count`` values, uint32: adding a uint32 wraps), cached."""
    key = (count, mss)
    steps = _STEPS.get(key)
    if steps is None:
        if len(_STEPS) > 256:
            _STEPS.clear()
        steps = _STEPS[key] = (np.arange(count, dtype=np.int64) * mss).astype(np.uint32)
        steps.flags.writeable = False
    return steps


def coalesce_for_tun(packets: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """See the module docstring."""
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    n = len(packets)
    sizes: list[int] | None = None  # packet lengths, computed for the first long run
    i = 0
    while i < n:
        first = packets[i]
        i += 1
        start = _tcp_start(first)
        if start is None:
            append((ZERO_HDR, first))
            continue
        l4, hl, flags = start
        mss = len(first) - hl
        if flags & _PSH or i >= n:
            append((ZERO_HDR, first))
            continue
        # Every header byte of a follower must equal the first segment's, except the
        # length, IPv4 id and checksum, the sequence number, the TCP checksum and the
        # PSH/CWR bits: one masked integer comparison checks them all.
        mask = _MASK4[hl] if l4 == 20 else _MASK6[hl]
        template = int.from_bytes(first[:hl], "big") & mask
        seq_at = l4 + 4
        flags_at = l4 + 13
        len_at = 2 if l4 == 20 else 4
        len_bias = 0 if l4 == 20 else 40
        next_seq = (int.from_bytes(first[seq_at : seq_at + 4], "big") + mss) & 0xFFFFFFFF
        payloads = [memoryview(first)[hl:]]
        total = len(first)
        psh = False
        last_len = mss
        if n - i >= VECTOR_MIN_RUN:
            if sizes is None:
                sizes = list(map(len, packets))
            taken, psh, chunk = _vector_run(packets, sizes, i, first, l4, hl, mss, next_seq)
            if taken:
                payloads.append(memoryview(chunk))
                total += taken * mss
                next_seq = (next_seq + taken * mss) & 0xFFFFFFFF
                i += taken
        while i < n and last_len == mss and not psh:
            q = packets[i]
            size = len(q)
            plen = size - hl
            if (
                plen <= 0
                or plen > mss
                or total + plen > MAX_SUPER_PACKET
                or int.from_bytes(q[:hl], "big") & mask != template
                or int.from_bytes(q[seq_at : seq_at + 4], "big") != next_seq
                or (q[len_at] << 8 | q[len_at + 1]) + len_bias != size
            ):
                break
            qflags = q[flags_at]
            if qflags & _CWR:
                break
            payloads.append(memoryview(q)[hl:])
            total += plen
            last_len = plen
            next_seq = (next_seq + plen) & 0xFFFFFFFF
            i += 1
            if qflags & _PSH:
                psh = True
                break
        if len(payloads) == 1:
            append((ZERO_HDR, first))
        else:
            append(_emit(first, l4, hl, mss, payloads, total, psh))
    return out
