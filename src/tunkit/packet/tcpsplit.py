"""Split a TCP super-packet into segments laid out at a fixed stride (a sender's hot path).

:func:`plan_tcp_split` reads a TCPV4/TCPV6 GSO super-packet (the IP packet after its
virtio_net_hdr) and returns a :class:`TcpSplit`, or None for anything else (gso NONE,
UDP_L4: callers fall back to :func:`tunkit.packet.vnet.gso_split`).  It raises
:class:`~tunkit.errors.MalformedPacketError` like ``gso_split`` for inconsistent input.

:func:`tcp_split_into` writes segment ``i`` at ``out[i*stride :]``: ``split.full_size``
bytes for every segment but the last, ``split.last_size`` for the last.  The bytes it
produces are exactly :func:`~tunkit.packet.vnet.gso_split`'s (same lengths, IPv4 ids,
sequence numbers, FIN/PSH on the last segment, CWR on the first, valid IPv4 header and
TCP checksums).  Each row is zeroed after its segment up to ``stride``: a caller that
encrypts the rows gets its zero padding for free.

Every segment is handled at once: payloads and header templates are copied with two 2-D
numpy assignments, and the TCP checksums are one row sum over the laid-out segments (the
varying fields already in place), so a 64 KiB super-packet costs about thirty numpy calls
whatever its segment count.  Pure: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer, ones_complement_sum, pseudo_header_sum
from tunkit.packet.ip import PROTO_TCP, locate_l4

_GSO_TCPV4, _GSO_TCPV6, _GSO_ECN = 1, 4, 0x80
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
_H = struct.Struct("!H")
_FOLD = 0xFFFF


@dataclass(frozen=True, slots=True)
class TcpSplit:
    """How a TCP super-packet splits; see the module docstring.

    ``template`` is the first ``hdr_len`` bytes with the fields that vary per segment
    zeroed (IPv4 id and checksum, sequence number, TCP checksum, FIN/PSH/CWR) and the
    length field of a full-size segment.  ``ip_sum`` is that IPv4 header's sum and
    ``pseudo_sum`` the pseudo-header sum of a full-size segment (both folded).
    """

    version: int
    l4: int
    hdr_len: int
    mss: int
    count: int
    end: int
    template: bytes
    ip_id: int
    seq: int
    first_flags: int
    last_flags: int
    ip_sum: int
    pseudo_sum: int
    last_pseudo_sum: int

    @property
    def full_size(self) -> int:
        return self.hdr_len + self.mss

    @property
    def last_size(self) -> int:
        return self.end - (self.count - 1) * self.mss

    @property
    def destination(self) -> bytes:
        """The destination address (4 or 16 bytes) every segment goes to."""
        return self.template[16:20] if self.version == 4 else self.template[24:40]

    def min_stride(self) -> int:
        """The smallest stride :func:`tcp_split_into` accepts: the full size, rounded up to 4."""
        return (self.full_size + 3) & ~3


def plan_tcp_split(gso_type: int, gso_size: int, packet: Buffer) -> TcpSplit | None:
    """See the module docstring; ``gso_type``/``gso_size`` come from the vnet header."""
    gso = gso_type & ~_GSO_ECN
    if gso not in (_GSO_TCPV4, _GSO_TCPV6):
        return None
    version, proto, l4, end = locate_l4(packet)
    if proto != PROTO_TCP or version != (4 if gso == _GSO_TCPV4 else 6):
        raise MalformedPacketError(f"gso_type {gso_type:#x} on a packet that is not TCPv{version}")
    if l4 + 20 > end:
        raise MalformedPacketError("truncated TCP header in super-packet")
    hdr_len = l4 + (packet[l4 + 12] >> 4) * 4
    if hdr_len < l4 + 20 or hdr_len > end:
        raise MalformedPacketError("super-packet shorter than its headers")
    mss = gso_size
    if mss <= 0:
        raise MalformedPacketError("gso_size 0 on a GSO packet")
    if l4 % 4:
        return None  # an IPv4 header is a multiple of 4 bytes; odd v6 layouts go the slow way
    count = max(1, -(-(end - hdr_len) // mss))
    template = bytearray(packet[:hdr_len])
    flags = template[l4 + 13]
    seq = int.from_bytes(template[l4 + 4 : l4 + 8], "big")
    template[l4 + 4 : l4 + 8] = bytes(4)
    template[l4 + 13] = flags & ~(_FIN | _PSH | _CWR)
    template[l4 + 16 : l4 + 18] = bytes(2)
    full_l4 = hdr_len - l4 + mss
    last_l4 = end - (count - 1) * mss - l4
    if version == 4:
        src, dst = bytes(template[12:16]), bytes(template[16:20])
        ip_id = int.from_bytes(template[4:6], "big")
        _H.pack_into(template, 2, hdr_len + mss)
        template[4:6] = template[10:12] = bytes(2)
        ip_sum = ones_complement_sum(template[:l4])
    else:
        src, dst = bytes(template[8:24]), bytes(template[24:40])
        ip_id = ip_sum = 0
        _H.pack_into(template, 4, hdr_len + mss - 40)
    return TcpSplit(
        version, l4, hdr_len, mss, count, end, bytes(template), ip_id, seq, flags & _CWR,
        flags & (_FIN | _PSH), ip_sum, pseudo_header_sum(src, dst, PROTO_TCP, full_l4),
        pseudo_header_sum(src, dst, PROTO_TCP, last_l4),
    )  # fmt: skip


@lru_cache(maxsize=64)
def _steps(count: int, step: int) -> npt.NDArray[np.int64]:
    steps = np.arange(count, dtype=np.int64) * step
    steps.flags.writeable = False
    return steps


def tcp_split_into(split: TcpSplit, packet: Buffer, out: bytearray, stride: int) -> None:
    """Write the segments into ``out`` every ``stride`` bytes; see the module docstring.

    ``stride`` must be a multiple of 4 and at least :meth:`TcpSplit.min_stride`, and
    ``out`` hold ``count * stride`` bytes.
    """
    n, h, l4, mss, end = split.count, split.hdr_len, split.l4, split.mss, split.end
    full = h + mss
    if stride % 4 or stride < split.min_stride() or len(out) < n * stride:
        raise ValueError(f"stride {stride} / buffer of {len(out)} bytes too small for the split")
    last = n - 1
    base = last * stride
    size_last = split.last_size
    rows = np.frombuffer(out, dtype=np.uint8, count=n * stride).reshape(n, stride)
    if last:
        src = np.frombuffer(packet, dtype=np.uint8, count=end)
        rows[:last, h:full] = src[h : h + last * mss].reshape(last, mss)
        rows[:last, full:] = 0
    out[base + h : base + size_last] = packet[h + last * mss : end]
    out[base + size_last : base + stride] = bytes(stride - size_last)
    rows[:, :h] = np.frombuffer(split.template, dtype=np.uint8)
    out[l4 + 13] |= split.first_flags
    out[base + l4 + 13] |= split.last_flags
    seq = np.ndarray((n,), dtype=">u4", buffer=out, offset=l4 + 4, strides=(stride,))
    seq[...] = (_steps(n, mss) + split.seq) & 0xFFFFFFFF
    # Each row's TCP segment plus zeros up to a multiple of 4 bytes, as little-endian words:
    # the sum weighs byte p by 256**(p % 2) (mod 0xffff) while the checksum wants
    # 256**(1 - p % 2) (l4 is even): multiply by 256.
    words = np.ndarray((n, (full - l4 + 3) // 4), dtype="<u4", buffer=out, offset=l4,
                       strides=(stride, 4))  # fmt: skip
    sums = words.sum(axis=1, dtype=np.uint64) * np.uint64(256)
    sums += np.uint64(split.pseudo_sum)
    sums %= np.uint64(_FOLD)
    if split.last_pseudo_sum != split.pseudo_sum:
        sums[last] = (int(sums[last]) + split.last_pseudo_sum + _FOLD - split.pseudo_sum) % _FOLD
    csum = np.ndarray((n,), dtype=">u2", buffer=out, offset=l4 + 16, strides=(stride,))
    csum[...] = (np.uint64(_FOLD) - sums) % np.uint64(_FOLD)
    if split.version == 4:
        ids = (_steps(n, 1) + split.ip_id) & 0xFFFF
        np.ndarray((n,), dtype=">u2", buffer=out, offset=4, strides=(stride,))[...] = ids
        ip_csum = (3 * _FOLD - split.ip_sum - ids) % _FOLD
        if size_last != full:  # the last segment's total length differs from the template's
            _H.pack_into(out, base + 2, size_last)
            ip_csum[last] = (3 * _FOLD - split.ip_sum - int(ids[last]) - size_last + full) % _FOLD
        np.ndarray((n,), dtype=">u2", buffer=out, offset=10, strides=(stride,))[...] = ip_csum
    elif size_last != full:
        _H.pack_into(out, base + 4, size_last - 40)
