"""Parse and build the four WireGuard messages (whitepaper §5.4.2-§5.4.7).

All integers are little-endian.  Every message starts with a 1-byte type and 3 reserved
zero bytes; handshake messages have a fixed size and transport messages are at least 32 bytes.

* ``parse_*`` take the whole UDP payload and return a frozen dataclass, or raise
  :class:`MalformedMessageError` (a :class:`~tunkit.errors.MalformedPacketError`) on a wrong
  size, type or non-zero reserved bytes.  They never raise anything else.
* ``build_*`` return the wire bytes.  Handshake messages are built with the MAC fields
  given (zero by default); :mod:`.cookie` fills them in.
* The transport hot path uses :data:`TRANSPORT_HEADER` (a ``struct.Struct``) directly:
  ``(type_and_reserved, receiver, counter) = TRANSPORT_HEADER.unpack_from(data)``, where a
  valid ``type_and_reserved`` equals :data:`TRANSPORT_TYPE_WORD`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tunkit.errors import MalformedPacketError

from .constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)


class MalformedMessageError(MalformedPacketError):
    """A datagram is not a well-formed WireGuard message."""


_INITIATION = struct.Struct("<I I 32s 48s 28s 16s 16s")
_RESPONSE = struct.Struct("<I I I 32s 16s 16s 16s")
_COOKIE_REPLY = struct.Struct("<I I 24s 32s")
TRANSPORT_HEADER = struct.Struct("<I I Q")
TRANSPORT_TYPE_WORD = MESSAGE_TRANSPORT  # type byte 4 + three zero bytes, read as a LE u32

_SIZES = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation (type 1, 148 bytes)."""

    sender: int
    ephemeral: bytes  # 32: initiator's unencrypted ephemeral public key
    encrypted_static: bytes  # 48: AEAD(initiator static public)
    encrypted_timestamp: bytes  # 28: AEAD(TAI64N)
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response (type 2, 92 bytes)."""

    sender: int
    receiver: int
    ephemeral: bytes  # 32
    encrypted_nothing: bytes  # 16: AEAD of the empty string
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply (type 3, 64 bytes)."""

    receiver: int
    nonce: bytes  # 24
    encrypted_cookie: bytes  # 32: XAEAD(cookie) || tag


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The 16-byte header of a transport message (type 4); the payload follows it."""

    receiver: int
    counter: int


def message_type(data: bytes) -> int:
    """The message type (1..4) of a datagram whose header and size are valid.

    Raises :class:`MalformedMessageError` for anything else.
    """
    if len(data) < 4:
        raise MalformedMessageError(f"datagram of {len(data)} bytes is too short")
    kind = data[0]
    if data[1] or data[2] or data[3]:
        raise MalformedMessageError("reserved header bytes are not zero")
    if kind == MESSAGE_TRANSPORT:
        if len(data) < TRANSPORT_MIN_SIZE:
            raise MalformedMessageError(f"transport message of {len(data)} bytes is too short")
        return kind
    size = _SIZES.get(kind)
    if size is None:
        raise MalformedMessageError(f"unknown message type {kind}")
    if len(data) != size:
        raise MalformedMessageError(f"message type {kind} must be {size} bytes, got {len(data)}")
    return kind


def _expect(data: bytes, kind: int) -> None:
    if message_type(data) != kind:
        raise MalformedMessageError(f"expected message type {kind}, got {data[0]}")


def parse_initiation(data: bytes) -> Initiation:
    _expect(data, MESSAGE_INITIATION)
    _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
    return Initiation(sender, eph, static, ts, mac1, mac2)


def parse_response(data: bytes) -> Response:
    _expect(data, MESSAGE_RESPONSE)
    _, sender, receiver, eph, empty, mac1, mac2 = _RESPONSE.unpack(data)
    return Response(sender, receiver, eph, empty, mac1, mac2)


def parse_cookie_reply(data: bytes) -> CookieReply:
    _expect(data, MESSAGE_COOKIE_REPLY)
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
    return CookieReply(receiver, nonce, cookie)


def parse_transport_header(data: bytes) -> TransportHeader:
    _expect(data, MESSAGE_TRANSPORT)
    _, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    return TransportHeader(receiver, counter)


_ZERO_MAC = bytes(MAC_SIZE)


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def build_initiation(
    sender: int,
    ephemeral: bytes,
    encrypted_static: bytes,
    encrypted_timestamp: bytes,
    mac1: bytes = _ZERO_MAC,
    mac2: bytes = _ZERO_MAC,
) -> bytes:
    _check_len("ephemeral", ephemeral, 32)
    _check_len("encrypted_static", encrypted_static, 48)
    _check_len("encrypted_timestamp", encrypted_timestamp, 28)
    return _INITIATION.pack(
        MESSAGE_INITIATION, sender, ephemeral, encrypted_static, encrypted_timestamp, mac1, mac2
    )


def build_response(
    sender: int,
    receiver: int,
    ephemeral: bytes,
    encrypted_nothing: bytes,
    mac1: bytes = _ZERO_MAC,
    mac2: bytes = _ZERO_MAC,
) -> bytes:
    _check_len("ephemeral", ephemeral, 32)
    _check_len("encrypted_nothing", encrypted_nothing, 16)
    return _RESPONSE.pack(
        MESSAGE_RESPONSE, sender, receiver, ephemeral, encrypted_nothing, mac1, mac2
    )


def build_cookie_reply(receiver: int, nonce: bytes, encrypted_cookie: bytes) -> bytes:
    _check_len("nonce", nonce, COOKIE_NONCE_SIZE)
    _check_len("encrypted_cookie", encrypted_cookie, 32)
    return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver, nonce, encrypted_cookie)


def build_transport_header(receiver: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver, counter)


assert TRANSPORT_HEADER.size == TRANSPORT_HEADER_SIZE
assert _INITIATION.size == INITIATION_SIZE
assert _RESPONSE.size == RESPONSE_SIZE
assert _COOKIE_REPLY.size == COOKIE_REPLY_SIZE
