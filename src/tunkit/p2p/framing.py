"""Stream framing for the point-to-point tunnel: simpletun's 2-byte frames and our fast frames.

Two framings share one shape, a big-endian length then that many bytes:

* **compat** (simpletun, PROTOCOLS.md §2): ``u16 length || packet``.  The packet is an IP
  packet (TUN, no packet-info header) or an Ethernet frame (TAP).  Nothing else is on the wire.
* **fast** (tunkit to tunkit only): ``u32 length || virtio_net_hdr || packet``, where the packet
  may be a GSO super-packet of up to 64 KiB.

Contract:

* :func:`compat_frame` / :func:`fast_frame` build one frame; :func:`pack_header_into` writes a
  header in place so the I/O layer can frame a packet it read straight into its buffer.
* :func:`scan_frames` finds every complete frame in ``buf[start:end]`` without copying and
  returns their (offset, length) pairs and where the next, incomplete frame starts.
* :class:`FrameDecoder` is the h11-style convenience wrapper: ``receive_data(bytes)`` then
  ``next_frame()`` until it returns :data:`NEED_DATA`.
* A length of 0 or above the framing's ``max_length`` raises :class:`FrameLengthError`
  (a :class:`~tunkit.errors.RemoteProtocolError`): the caller closes that connection.
  Nothing here ever reads past the bytes it was given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tunkit.errors import LocalProtocolError, RemoteProtocolError

ETHERNET_HEADER_LEN: Final = 14
VLAN_TAG_LEN: Final = 4
VNET_HDR_LEN: Final = 10
#: Largest GSO super-packet the kernel hands us: IPv6 header + 65535 payload, plus L2 and slack.
FAST_MAX_PACKET: Final = 40 + 65535 + ETHERNET_HEADER_LEN + VLAN_TAG_LEN
FAST_MAX_FRAME_PAYLOAD: Final = VNET_HDR_LEN + FAST_MAX_PACKET
COMPAT_MAX_FRAME_PAYLOAD: Final = 0xFFFF


class FrameLengthError(RemoteProtocolError):
    """The peer announced a frame length of 0 or above the allowed maximum."""


@dataclass(frozen=True)
class Framing:
    """One length-prefixed framing: header layout and the largest payload accepted."""

    name: str
    """``"compat"`` or ``"fast"``; used in log lines."""
    header: struct.Struct
    """The big-endian length header."""
    max_length: int
    """A frame longer than this (or empty) is a protocol violation."""

    @property
    def header_len(self) -> int:
        return self.header.size


class _NeedData:
    """Sentinel type: the decoder holds no complete frame yet."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def compat_max_length(mtu: int, tap: bool) -> int:
    """The largest simpletun frame we accept for a device of this MTU."""
    if mtu <= 0:
        raise LocalProtocolError(f"MTU must be positive, got {mtu}")
    extra = ETHERNET_HEADER_LEN + VLAN_TAG_LEN if tap else 0
    return min(mtu + extra, COMPAT_MAX_FRAME_PAYLOAD)


def compat_framing(mtu: int = 1500, tap: bool = False) -> Framing:
    """simpletun's framing, bounded by the device MTU (plus the Ethernet header in TAP mode)."""
    return Framing("compat", struct.Struct("!H"), compat_max_length(mtu, tap))


def fast_framing() -> Framing:
    """Our framing: u32 length, payload = virtio_net_hdr + (super-)packet."""
    return Framing("fast", struct.Struct("!I"), FAST_MAX_FRAME_PAYLOAD)


def _check_length(framing: Framing, length: int) -> None:
    if length == 0:
        raise FrameLengthError(f"{framing.name} frame with length 0")
    if length > framing.max_length:
        raise FrameLengthError(
            f"{framing.name} frame length {length} exceeds the maximum {framing.max_length}"
        )


def build_frame(framing: Framing, payload: bytes) -> bytes:
    """Header plus payload, as one bytes object (so it goes out in one write)."""
    if not payload or len(payload) > framing.max_length:
        raise LocalProtocolError(
            f"cannot frame {len(payload)} bytes with {framing.name} framing"
            f" (1..{framing.max_length})"
        )
    return framing.header.pack(len(payload)) + payload


def compat_frame(packet: bytes, mtu: int = 1500, tap: bool = False) -> bytes:
    """One simpletun frame: ``!H length`` then the packet."""
    return build_frame(compat_framing(mtu, tap), packet)


def fast_frame(payload: bytes) -> bytes:
    """One fast frame: ``!I length`` then virtio_net_hdr + packet."""
    return build_frame(fast_framing(), payload)


def pack_header_into(framing: Framing, buf: bytearray | memoryview, offset: int, length: int) -> None:
    """Write the length header for a ``length``-byte payload at ``buf[offset:]``."""
    if not 0 < length <= framing.max_length:
        raise LocalProtocolError(f"cannot frame {length} bytes with {framing.name} framing")
    framing.header.pack_into(buf, offset, length)


def scan_frames(
    framing: Framing, buf: bytes | bytearray | memoryview, start: int, end: int
) -> tuple[list[tuple[int, int]], int]:
    """Complete frames in ``buf[start:end]`` as (payload offset, payload length) pairs.

    Returns the pairs and the offset where the first incomplete frame begins (``end`` when
    everything was consumed).  Raises :class:`FrameLengthError` on a bad length header.
    """
    if not 0 <= start <= end <= len(buf):
        raise LocalProtocolError(f"bad scan window {start}:{end} for a {len(buf)}-byte buffer")
    frames: list[tuple[int, int]] = []
    header = framing.header
    hlen = header.size
    pos = start
    while end - pos >= hlen:
        (length,) = header.unpack_from(buf, pos)
        _check_length(framing, length)
        if end - pos - hlen < length:
            break
        frames.append((pos + hlen, length))
        pos += hlen + length
    return frames, pos


class FrameDecoder:
    """Buffering decoder: feed bytes, pull whole frame payloads.  Not thread-safe."""

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        self._buf += data

    def next_frame(self) -> bytes | _NeedData:
        """The next complete payload, or :data:`NEED_DATA`.  Raises FrameLengthError."""
        hlen = self.framing.header_len
        if len(self._buf) < hlen:
            return NEED_DATA
        (length,) = self.framing.header.unpack_from(self._buf, 0)
        _check_length(self.framing, length)
        if len(self._buf) < hlen + length:
            return NEED_DATA
        payload = bytes(self._buf[hlen : hlen + length])
        del self._buf[: hlen + length]
        return payload

    def take_remaining(self) -> bytes:
        """Hand over the buffered, not yet decoded bytes (used when the framing switches)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest
