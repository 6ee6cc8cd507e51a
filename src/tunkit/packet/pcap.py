"""Classic libpcap capture writer (the format ``tcpdump -r`` reads).

Contract: ``PcapWriter(stream, linktype)`` writes the 24-byte global header at once, then
``write(packet, timestamp)`` appends one record.  Little-endian, version 2.4, nanosecond
timestamps by default (magic 0xa1b23c4d) or microseconds (0xa1b2c3d4).  Packets longer
than ``snaplen`` are truncated in the record but keep their original length.  The writer
never flushes or closes the stream: the caller owns it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Final

from tunkit.packet.checksum import Buffer

LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
MAGIC_MICROSECONDS: Final = 0xA1B2C3D4
MAGIC_NANOSECONDS: Final = 0xA1B23C4D
DEFAULT_SNAPLEN: Final = 262144

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def pcap_global_header(linktype: int, *, nanosecond: bool = True, snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    """The 24-byte file header."""
    magic = MAGIC_NANOSECONDS if nanosecond else MAGIC_MICROSECONDS
    return _GLOBAL.pack(magic, 2, 4, 0, 0, snaplen, linktype)


class PcapWriter:
    """Appends packets to a pcap stream.  Not safe for concurrent use."""

    def __init__(
        self, stream: BinaryIO, linktype: int = LINKTYPE_RAW, *, nanosecond: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
    ) -> None:
        self._stream = stream
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        self._snaplen = snaplen
        self.linktype = linktype
        self.packets_written = 0
        stream.write(pcap_global_header(linktype, nanosecond=nanosecond, snaplen=snaplen))

    def write(self, packet: Buffer, timestamp: float) -> None:
        """Append ``packet`` captured at ``timestamp`` (seconds since the epoch)."""
        sec = int(timestamp)
        frac = round((timestamp - sec) * self._scale)
        if frac >= self._scale:
            sec, frac = sec + 1, frac - self._scale
        self._write(packet, sec, frac)

    def write_ns(self, packet: Buffer, timestamp_ns: int) -> None:
        """Append ``packet`` with an exact integer nanosecond timestamp."""
        sec, ns = divmod(timestamp_ns, 1_000_000_000)
        self._write(packet, sec, ns if self._scale == 1_000_000_000 else ns // 1000)

    def _write(self, packet: Buffer, sec: int, frac: int) -> None:
        caplen = min(len(packet), self._snaplen)
        self._stream.write(_RECORD.pack(sec, frac, caplen, len(packet)))
        self._stream.write(bytes(packet[:caplen]))
        self.packets_written += 1
