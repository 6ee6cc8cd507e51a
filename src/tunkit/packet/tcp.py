"""TCP header: parse, build (with checksum over the pseudo-header), flag names.

Contract: ``parse_tcp(buf, offset)`` reads the header at ``offset`` and raises
:class:`MalformedPacketError` if it is truncated or its data offset is impossible.
``TcpHeader.build`` returns header+payload with a valid checksum for the given addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tunkit.errors import MalformedPacketError
from tunkit.packet.checksum import Buffer, internet_checksum, pseudo_header_sum
from tunkit.packet.ip import PROTO_TCP

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

TCP_HEADER_LEN: Final = 20
CHECKSUM_OFFSET: Final = 16
OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_TIMESTAMPS: Final = 8

_TCP = struct.Struct("!HHIIBBHHH")
_FLAG_LETTERS = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"), (ECE, "E"), (CWR, "W"))


@dataclass(frozen=True, slots=True)
class TcpHeader:
    """A TCP header; ``options`` is padded by the caller to a multiple of 4 bytes."""

    src_port: int
    dst_port: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 65535
    checksum: int = 0
    urgent: int = 0
    options: bytes = b""

    @property
    def header_length(self) -> int:
        return TCP_HEADER_LEN + len(self.options)

    def build(self, src: bytes, dst: bytes, payload: Buffer = b"") -> bytes:
        """Header + payload with the checksum computed over the pseudo-header."""
        if len(self.options) % 4 or len(self.options) > 40:
            raise ValueError("TCP options must be a multiple of 4 bytes, at most 40")
        raw = bytearray(
            _TCP.pack(
                self.src_port, self.dst_port, self.seq, self.ack, (self.header_length // 4) << 4,
                self.flags, self.window, 0, self.urgent,
            )
        )
        raw += self.options
        raw += payload
        csum = internet_checksum(raw, pseudo_header_sum(src, dst, PROTO_TCP, len(raw)))
        struct.pack_into("!H", raw, CHECKSUM_OFFSET, csum)
        return bytes(raw)


def parse_tcp(buf: Buffer, offset: int = 0, end: int | None = None) -> TcpHeader:
    """Parse the TCP header at ``buf[offset:]`` (``end`` bounds the segment)."""
    end = len(buf) if end is None else end
    if offset < 0 or end - offset < TCP_HEADER_LEN or end > len(buf):
        raise MalformedPacketError(f"TCP header truncated ({end - offset} bytes)")
    sport, dport, seq, ack, doff, flags, win, csum, urg = _TCP.unpack_from(buf, offset)
    hl = (doff >> 4) * 4
    if hl < TCP_HEADER_LEN or offset + hl > end:
        raise MalformedPacketError(f"TCP data offset {hl}")
    return TcpHeader(
        src_port=sport, dst_port=dport, seq=seq, ack=ack, flags=flags, window=win,
        checksum=csum, urgent=urg, options=bytes(buf[offset + TCP_HEADER_LEN : offset + hl]),
    )


def flag_string(flags: int) -> str:
    """tcpdump-style flags: ``S``, ``S.``, ``P.``, ``F.``, ``R``, ``.``."""
    s = "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)
    if flags & ACK:
        s += "."
    return s or "none"


def build_tcp_segment(
    src: bytes, dst: bytes, src_port: int, dst_port: int, payload: Buffer = b"", *,
    seq: int = 0, ack: int = 0, flags: int = ACK, window: int = 65535, options: bytes = b"",
) -> bytes:
    """TCP header + payload with a valid checksum."""
    hdr = TcpHeader(src_port, dst_port, seq=seq, ack=ack, flags=flags, window=window, options=options)
    return hdr.build(src, dst, payload)
